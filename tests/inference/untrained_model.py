"""An untrained nnU-Net model folder built in about a second, for tests of the console commands' input handling.

:func:`untrained_model` writes what ``nnUNetPredictor.initialize_from_trained_model_folder`` reads (``dataset.json``,
``plans.json``, ``fold_0/checkpoint_final.pth`` with ``network_weights``, ``init_args``, ``trainer_name``,
``inference_allowed_mirroring_axes``) for the tiny PlainConvUNet of :func:`conftest.small_plans` and a BraTS-like
``dataset.json``, inside private ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` folders. Its
predictions mean nothing; its point is that the commands run end to end in seconds.

nnU-Net reads its folder variables when its modules are imported, so a command run in this process needs
:func:`use_folders` (a ``monkeypatch`` of the environment and of every imported module's copy); a subprocess just
needs :attr:`UntrainedModel.env`. Image helpers: :func:`write_case`, :func:`write_labels` and
:func:`write_bad_image` (NaN, Inf, a truncated ``.nii.gz``).

Usage: ``from inference.untrained_model import untrained_model, use_folders``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from conftest import BRATS_DATASET_JSON, small_plans

DATASET_ID = 999
DATASET_NAME = 'Dataset999_UnitTest'      # small_plans()'s data set
CONFIGURATION = '3d_fullres'
TRAINER = 'nnUNetTrainer'
#: image shape (SimpleITK's z, y, x) of :func:`write_case`: smaller than one 16^3 patch, so one window per case
SHAPE = (10, 12, 14)
FOLDER_VARIABLES = ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')


@dataclass
class UntrainedModel:
    root: Path
    dataset_json: dict
    env: dict = field(default_factory=dict)

    @property
    def model_folder(self) -> Path:
        return self.root / 'nnUNet_results' / DATASET_NAME / f'{TRAINER}__nnUNetPlans__{CONFIGURATION}'

    @property
    def raw(self) -> Path:
        return self.root / 'nnUNet_raw' / DATASET_NAME

    def args(self, device: bool = True) -> list[str]:
        """The model flags of our commands (and ``nnUNetv2_predict``): data set, configuration, trainer, fold 0,
        CPU, no mirroring."""
        return ['-d', str(DATASET_ID), '-c', CONFIGURATION, '-tr', TRAINER, '-f', '0',
                *(['-device', 'cpu'] if device else []), '--disable_tta']


def untrained_model(root: Path, seed: int = 0) -> UntrainedModel:
    """Write an untrained ``nnUNetTrainer`` model (fold 0) of :data:`DATASET_NAME` under ``root``."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = small_plans()
    plans['foreground_intensity_properties_per_channel'] = {str(c): {} for c in range(4)}  # unused by z-scoring
    dataset_json = dict(BRATS_DATASET_JSON)
    env = {}
    for name in FOLDER_VARIABLES:
        (root / name / DATASET_NAME).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    model = UntrainedModel(root, dataset_json, env)
    (model.raw / 'dataset.json').write_text(json.dumps(dataset_json, indent=2))
    fold = model.model_folder / 'fold_0'
    fold.mkdir(parents=True)
    (model.model_folder / 'dataset.json').write_text(json.dumps(dataset_json, indent=2))
    (model.model_folder / 'plans.json').write_text(json.dumps(plans, indent=2))
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        manager, configuration, 4, manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False)
    torch.save({'network_weights': network.state_dict(), 'trainer_name': TRAINER,
                'init_args': {'plans': plans, 'configuration': CONFIGURATION, 'fold': 0,
                              'dataset_json': dataset_json},
                'inference_allowed_mirroring_axes': (0, 1, 2)}, fold / 'checkpoint_final.pth')
    return model


def use_folders(monkeypatch, model: UntrainedModel) -> None:
    """Point nnU-Net at the model's folders in this process: the environment and the module-level copies of
    ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` that nnU-Net's and our modules took at import.
    Also keeps torch's thread count (``-device cpu`` sets it to the CPU count) as it was."""
    for name, value in model.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv('nnUNet_compile', 'f')
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith(('nnunetv2', 'nnunet_missingmod')):
            continue
        for name, value in model.env.items():
            if isinstance(getattr(module, name, None), (str, type(None))) and hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)
    monkeypatch.setattr(torch, 'set_num_interop_threads', lambda n: None)


def write_image(path: Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(image, str(path))
    return path


def write_case(folder: Path, case: str, seed: int = 0, channels: Iterable[int] = range(4), shape=SHAPE,
               spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[int, Path]:
    """Modality files ``case_000C.nii.gz`` of random positive images (a brain-like box, zero around it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}
    for c in channels:
        array = np.zeros(shape, np.float32)
        array[1:-1, 1:-1, 1:-1] = rng.uniform(100, 1000, tuple(s - 2 for s in shape))
        files[c] = write_image(folder / f'{case}_{c:04d}.nii.gz', array, spacing)
    return files


def write_labels(folder: Path, case: str, shape=SHAPE) -> Path:
    """A reference label map (BraTS labels 1-3 in a small box) ``case.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = np.zeros(shape, np.uint8)
    seg[3:7, 4:8, 4:9] = 1
    seg[4:6, 5:7, 5:8] = 2
    seg[5, 6, 6] = 3
    path = folder / f'{case}.nii.gz'
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(path))
    return path


def write_test_set(folder: Path, cases: Sequence[str] = ('a', 'b')) -> tuple[Path, Path]:
    """``folder/images`` (complete cases, one seed each) and ``folder/labels`` (their label maps)."""
    images, labels = folder / 'images', folder / 'labels'
    for seed, case in enumerate(cases):
        write_case(images, case, seed=seed)
        write_labels(labels, case)
    return images, labels


#: the kinds of :func:`write_bad_image`
BAD_KINDS = ('nan', 'inf', 'truncated')
#: what the one-line error says about each kind (after ``case CASE: FILE: ``)
PROBLEM = {'nan': '1 NaN/Inf voxel(s)', 'inf': '1 NaN/Inf voxel(s)',
           'truncated': 'cannot decode the voxel values, the file is truncated or corrupt'}


def write_bad_image(path: Path, kind: str, shape=SHAPE) -> Path:
    """A modality file nnU-Net's SimpleITK reader reads without complaint but wrongly: one NaN voxel (read as 0),
    one Inf voxel (read as 0), or a valid ``.nii.gz`` cut to half its bytes (the rest zero-filled)."""
    rng = np.random.default_rng(7)
    array = rng.uniform(100, 1000, shape).astype(np.float32)
    if kind == 'nan':
        array[2, 3, 4] = np.nan
    elif kind == 'inf':
        array[2, 3, 4] = np.inf
    elif kind != 'truncated':
        raise ValueError(f'unknown kind {kind!r}; one of {BAD_KINDS}')
    write_image(path, array)
    if kind == 'truncated':
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return path


def same_tree(folder: Path) -> dict:
    """``{relative path: bytes}`` of every file under ``folder`` (to show that a command left it alone)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


__all__ = ['BAD_KINDS', 'PROBLEM', 'DATASET_ID', 'SHAPE', 'UntrainedModel', 'same_tree', 'untrained_model', 'use_folders',
           'write_bad_image', 'write_case', 'write_image', 'write_labels']
