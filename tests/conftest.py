"""Shared fixtures: a small synthetic BraTS-like data set taken through nnU-Net's real console commands.

``nnunet_dataset`` generates, converts, plans and preprocesses once per test session (about a minute on two CPU
cores); ``trained_model(trainer)`` trains a trainer for :data:`SMOKE_ITERATIONS` iterations with ``nnUNetv2_train``'s
entry point, seeded (:data:`SEEDED_TRAIN`), on the ``3d_smoke`` configuration and caches the result folder for the
session; ``held_out`` generates :data:`N_HELD_OUT` cases that no training sees, on which :func:`assert_learned`
compares a trained model with its own initial weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

DATASET_ID = 990
DATASET_NAME = 'Dataset990_SynthTest'
SMOKE_CONFIG = '3d_smoke'
N_CASES = 10
#: training iterations of the ``3d_smoke`` configuration: enough for every trainer to rank held-out tumour voxels
#: clearly better than its initial weights do (:func:`assert_learned`), not for a usable segmentation: on these
#: widths (4-16 channels) nnU-Net's training often passes through an all-background phase after its first 20
#: iterations (whole-tumour probabilities below 0.5 everywhere, Dice 0), so no test thresholds the prediction.
#: After 40 iterations nnUNetTrainerConcatFusion and nnUNetTrainerAttentionFusion had closed as little as 10 % and
#: 31 % of their gap (:func:`assert_learned`), after 80 every trainer at least 65 % (docs/results/
#: 2026-12-02-learning-tests.md). Learning to segment is checked at 1000 iterations in
#: ``tests/e2e/test_modality_dropout_degradation_e2e.py``
SMOKE_ITERATIONS = 80
#: voxels of the synthetic cases (3 mm): about the physical size of the default, a third of its voxels, so that
#: nnU-Net's sliding-window validation and the benchmarks need few windows on a CPU
SHAPE = (48, 56, 40)
#: seed of every ``trained_model`` run
TRAIN_SEED = 0
#: held-out cases (fixture ``held_out``): synthetic generator seed 2 (the training set is seed 0, the
#: degradation test's held-out set seed 1; a case depends only on its seed and index), data set 992
N_HELD_OUT = 6
HELD_OUT_SEED = 2
HELD_OUT_ID = 992
#: ``nnUNetv2_train`` (its console entry point, ``nnunetv2.run.run_training:run_training_entry``, with the same
#: arguments) after seeding Python's, NumPy's and torch's generators with the first argument: nnU-Net 2.8 seeds none
#: of them, and our trainers draw their own generator from NumPy's. With ``nnUNet_n_proc_DA=0`` (augmentation in
#: the training process) and one OpenMP thread a run repeats on one machine. It also saves the weights the run
#: starts from, ``checkpoint_initial.pth`` next to ``checkpoint_final.pth`` (nnU-Net's checkpoint format, so
#: nnU-Net's predictor loads it), written once the trainer is initialized, before the first training step.
SEEDED_TRAIN = '''
import os, random, sys
import numpy as np, torch
from nnunetv2.run.run_training import run_training_entry
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
seed = int(sys.argv.pop(1))
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
on_train_start = nnUNetTrainer.on_train_start
def save_initial_weights(self):
    on_train_start(self)
    if self.current_epoch == 0:
        self.save_checkpoint(os.path.join(self.output_folder, 'checkpoint_initial.pth'))
nnUNetTrainer.on_train_start = save_initial_weights
sys.argv[0] = 'nnUNetv2_train'
sys.exit(run_training_entry())
'''


#: fixtures that plan, preprocess or train with nnU-Net's commands: a test that uses one (directly or through another
#: fixture) is marked ``slow``, as are every test under tests/e2e/ and the DDP tests (process spawns); ``pytest -m "not slow"`` runs the rest
SLOW_FIXTURES = {'nnunet_dataset', 'trained_model', 'held_out'}


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: plans/trains with nnU-Net, spawns DDP processes or runs a training study '
                                       '(deselect with -m "not slow")')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'e2e' in item.path.parts or SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())) or 'ddp' in item.name.lower() or \
                item.get_closest_marker('slow'):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's gloo process group."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a console command; on failure show its output in the assertion message."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({result.returncode})\n"
                                    f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def synthetic_raw_dataset(source: Path, dataset_id: int, name: str, n_cases: int, seed: int, env: dict) -> Path:
    """Generate ``n_cases`` synthetic BraTS cases (:data:`SHAPE`, 3 mm) into ``source`` and convert them to
    ``Dataset<ID>_<name>`` in nnU-Net raw layout with our console modules; returns that raw folder."""
    run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.synthetic_brats', '-o', str(source),
         '-n', str(n_cases), '--seed', str(seed), '--shape', *map(str, SHAPE), '--spacing', '3'], env)
    run([sys.executable, '-m', 'nnunet_missingmod.dataset_conversion.brats', '-i', str(source),
         '-d', str(dataset_id), '-n', name], env)
    return Path(env['nnUNet_raw']) / f'Dataset{dataset_id:03d}_{name}'


#: dataset.json of a converted BraTS data set (our converter's channels, labels and regions)
BRATS_DATASET_JSON = {
    'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
    'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': [3]},
    'regions_class_order': [1, 2, 3], 'numTraining': 4, 'file_ending': '.nii.gz'}


def small_plans(features=(4, 8, 16), patch=(16, 16, 16), batch_size: int = 2) -> dict:
    """nnU-Net plans (one ``3d_fullres`` configuration, PlainConvUNet) small enough for a CPU unit test."""
    n = len(features)
    return {
        'dataset_name': 'Dataset999_UnitTest', 'plans_name': 'nnUNetPlans',
        'original_median_spacing_after_transp': [1.0, 1.0, 1.0], 'original_median_shape_after_transp': list(patch),
        'image_reader_writer': 'SimpleITKIO', 'transpose_forward': [0, 1, 2], 'transpose_backward': [0, 1, 2],
        'experiment_planner_used': 'ExperimentPlanner', 'label_manager': 'LabelManager',
        'foreground_intensity_properties_per_channel': {},
        'configurations': {'3d_fullres': {
            'data_identifier': 'nnUNetPlans_3d_fullres', 'preprocessor_name': 'DefaultPreprocessor',
            'batch_size': batch_size, 'patch_size': list(patch), 'median_image_size_in_voxels': list(patch),
            'spacing': [1.0, 1.0, 1.0], 'normalization_schemes': ['ZScoreNormalization'] * 4,
            'use_mask_for_norm': [True] * 4, 'resampling_fn_data': 'resample_data_or_seg_to_shape',
            'resampling_fn_seg': 'resample_data_or_seg_to_shape', 'resampling_fn_data_kwargs': {},
            'resampling_fn_seg_kwargs': {}, 'resampling_fn_probabilities': 'resample_data_or_seg_to_shape',
            'resampling_fn_probabilities_kwargs': {}, 'batch_dice': False,
            'architecture': {
                'network_class_name': 'dynamic_network_architectures.architectures.unet.PlainConvUNet',
                'arch_kwargs': {
                    'n_stages': n, 'features_per_stage': list(features), 'conv_op': 'torch.nn.modules.conv.Conv3d',
                    'kernel_sizes': [[3, 3, 3]] * n, 'strides': [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                    'n_conv_per_stage': [2] * n, 'n_conv_per_stage_decoder': [2] * (n - 1), 'conv_bias': True,
                    'norm_op': 'torch.nn.modules.instancenorm.InstanceNorm3d',
                    'norm_op_kwargs': {'eps': 1e-5, 'affine': True}, 'dropout_op': None,
                    'dropout_op_kwargs': None, 'nonlin': 'torch.nn.LeakyReLU', 'nonlin_kwargs': {'inplace': True}},
                '_kw_requires_import': ['conv_op', 'norm_op', 'dropout_op', 'nonlin']}}}}


def make_trainer(cls, root: Path, plans: dict | None = None, dataset_json: dict | None = None, seed: int = 0):
    """An initialized trainer of class ``cls`` on the CPU, built from :func:`small_plans` (no data on disk: the
    nnU-Net folders point into ``root``). ``seed`` seeds NumPy and torch first, so network weights and the
    trainer's generator are repeatable."""
    import numpy as np
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):   # nnU-Net reads them lazily
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(root / name)
    # initialize() infers the dataset class from the file endings of the preprocessed folder; no case is loaded
    data_folder = root / 'nnUNet_preprocessed' / (plans or small_plans())['dataset_name'] / 'nnUNetPlans_3d_fullres'
    data_folder.mkdir(parents=True, exist_ok=True)
    (data_folder / 'unit.b2nd').touch()
    np.random.seed(seed)
    torch.manual_seed(seed)
    plans = dict(plans or small_plans(), continue_training=False)   # nnU-Net 2.8's run_training adds this key
    trainer = cls(plans, '3d_fullres', 0, dataset_json or BRATS_DATASET_JSON, device=torch.device('cpu'))
    trainer.initialize()
    return trainer


@dataclass
class NnUNetDataset:
    root: Path
    env: dict
    dataset_id: int = DATASET_ID
    dataset_name: str = DATASET_NAME
    configuration: str = SMOKE_CONFIG

    @property
    def raw(self) -> Path:
        return Path(self.env['nnUNet_raw']) / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        return Path(self.env['nnUNet_preprocessed']) / self.dataset_name

    @property
    def results(self) -> Path:
        return Path(self.env['nnUNet_results']) / self.dataset_name

    def result_folder(self, trainer: str, plans: str = 'nnUNetPlans') -> Path:
        return self.results / f'{trainer}__{plans}__{self.configuration}'


def nnunet_environment(root: Path) -> dict:
    """Environment for nnU-Net subprocesses: private data folders, CPU-friendly worker counts, our trainers."""
    from nnunet_missingmod.env import ext_trainer_path
    env = dict(os.environ)
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_extTrainer=ext_trainer_path(os.environ.get('nnUNet_extTrainer')),
               nnUNet_n_proc_DA='0', nnUNet_def_n_proc='2', nnUNet_compile='f', OMP_NUM_THREADS='1')
    return env


@pytest.fixture(scope='session')
def nnunet_dataset(tmp_path_factory) -> NnUNetDataset:
    root = tmp_path_factory.mktemp('nnunet')
    env = nnunet_environment(root)
    synthetic_raw_dataset(root / 'brats_source', DATASET_ID, 'SynthTest', N_CASES, 0, env)
    # planning calls torch.set_num_threads(nnUNet_n_proc_DA), which must be positive
    run(['nnUNetv2_plan_and_preprocess', '-d', str(DATASET_ID), '-c', '3d_fullres', '-np', '2'],
        {**env, 'nnUNet_n_proc_DA': '1'})
    run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(DATASET_ID), '-c', SMOKE_CONFIG,
         '--patch', '32', '32', '32', '--features', '4', '8', '16', '--batch-size', '2',
         '--epochs', '1', '--iterations', str(SMOKE_ITERATIONS), '--val-iterations', '1'], env)
    return NnUNetDataset(root=root, env=env)


@pytest.fixture(scope='session')
def trained_model(nnunet_dataset):
    """``trained_model(trainer) -> result folder`` of a short, seeded ``nnUNetv2_train`` run on fold 0 of the
    ``3d_smoke`` configuration (:data:`SEEDED_TRAIN`, seed :data:`TRAIN_SEED`; cached for the session):
    ``checkpoint_initial.pth``, ``checkpoint_final.pth`` and nnU-Net's final validation."""
    done: dict[str, Path] = {}

    def train(trainer: str) -> Path:
        if trainer not in done:
            run([sys.executable, '-c', SEEDED_TRAIN, str(TRAIN_SEED), str(DATASET_ID), SMOKE_CONFIG, '0',
                 '-tr', trainer, '-device', 'cpu'], nnunet_dataset.env)
            folder = nnunet_dataset.result_folder(trainer)
            for checkpoint in ('checkpoint_initial.pth', 'checkpoint_final.pth'):
                assert (folder / 'fold_0' / checkpoint).is_file()
            done[trainer] = folder
        return done[trainer]

    return train


@pytest.fixture(scope='session')
def held_out(nnunet_dataset) -> Path:
    """Raw folder (``imagesTr``, ``labelsTr``) of :data:`N_HELD_OUT` synthetic cases that no training sees."""
    return synthetic_raw_dataset(nnunet_dataset.root / 'held_out_source', HELD_OUT_ID, 'SynthHeldOutSmoke',
                                 N_HELD_OUT, HELD_OUT_SEED, nnunet_dataset.env)


#: least fraction of its gap to a perfect ranking (1 - initial ROC AUC) that a :data:`SMOKE_ITERATIONS`-iteration
#: model must close on the held-out cases (:func:`assert_learned`)
MIN_GAP_CLOSED = 0.4


def whole_tumour_auc(result_folder: Path, raw: Path, checkpoints=('checkpoint_initial.pth', 'checkpoint_final.pth'),
                     fold: int = 0) -> dict[str, float]:
    """``{checkpoint: ROC AUC}``: how well each checkpoint's whole-tumour probability (the first region) separates
    the tumour voxels of the cases in ``raw`` (``imagesTr``, ``labelsTr``) from the rest, pooled over the cases'
    voxels (0.5 is chance; scikit-learn counts it, not the package's metrics). Predicted in this process by
    nnU-Net's predictor as ``nnUNetv2_predict --disable_tta --save_probabilities`` predicts (nnU-Net's
    preprocessing, sliding windows, probabilities resampled to the original image), each case preprocessed once.
    Unlike Dice it does not depend on whether a briefly trained network's probabilities have crossed 0.5 yet."""
    import copy

    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from sklearn.metrics import roc_auc_score

    from nnunet_missingmod.env import ext_trainer_path

    cases = sorted(p.name[:-len('.nii.gz')] for p in (raw / 'labelsTr').glob('*.nii.gz'))
    assert cases, f'no labels in {raw}'
    truth = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(raw / 'labelsTr' / f'{c}.nii.gz'))).ravel() > 0
                            for c in cases])
    preprocessed, aucs = None, {}
    for checkpoint in checkpoints:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)
        with pytest.MonkeyPatch.context() as patch:     # nnU-Net finds our trainers through nnUNet_extTrainer
            patch.setenv('nnUNet_extTrainer', ext_trainer_path(os.environ.get('nnUNet_extTrainer')))
            predictor.initialize_from_trained_model_folder(str(result_folder), (fold,), checkpoint)
        if preprocessed is None:
            channels = len(predictor.dataset_json['channel_names'])
            preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
            preprocessed = [preprocessor.run_case([str(raw / 'imagesTr' / f'{c}_{i:04d}.nii.gz') for i in range(channels)],
                                                  None, predictor.plans_manager, predictor.configuration_manager,
                                                  predictor.dataset_json) for c in cases]
        whole_tumour = []
        for data, _, properties in preprocessed:
            logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
            _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
                copy.deepcopy(properties), return_probabilities=True)
            whole_tumour.append(np.asarray(probabilities[0], dtype=np.float64).ravel())   # (z, y, x), like SimpleITK
        scores = np.concatenate(whole_tumour)
        assert scores.shape == truth.shape, f'{checkpoint}: {scores.shape} vs {truth.shape}'
        aucs[checkpoint] = float(roc_auc_score(truth, scores))
    return aucs


def assert_learned(result_folder: Path, held_out: Path, min_gap_closed: float = MIN_GAP_CLOSED) -> dict[str, float]:
    """The trained model (``checkpoint_final.pth``) ranks the tumour voxels of the held-out cases better than the
    same network did with the weights its training started from (``checkpoint_initial.pth``): of the initial
    weights' gap to a perfect ranking, 1 - AUC (whole-tumour ROC AUC, :func:`whole_tumour_auc`), it closes more than
    ``min_gap_closed``. A model that learned nothing closes 0 (its weights are its initial ones), one that got worse
    a negative fraction; an all-background or constant prediction has AUC 0.5.

    Why a gain over the initial weights and not a level: untrained smoke-size networks rank the synthetic tumours
    well above chance (their intensities differ): 0.63-0.87 on these held-out cases over six trainers and three
    seeds, so a level such as 0.7 passes some untrained networks. Why the fraction of the gap and not the AUC
    difference: the difference cannot exceed 1 - initial (0.13 for an initial 0.87). Measured after 80 iterations
    (seeds 0-2 of :data:`SEEDED_TRAIN`, every trainer tested here): 0.65-0.98 of the gap closed, trained AUC
    0.92-0.995 (docs/results/2026-12-02-learning-tests.md); hence :data:`MIN_GAP_CLOSED`."""
    aucs = whole_tumour_auc(result_folder, held_out)
    initial, trained = aucs['checkpoint_initial.pth'], aucs['checkpoint_final.pth']
    closed = (trained - initial) / (1 - initial)
    print(f'{result_folder.name}: held-out whole-tumour ROC AUC {initial:.3f} -> {trained:.3f} '
          f'({closed:.0%} of the gap closed)')
    assert closed > min_gap_closed, (f'{result_folder.name}: held-out whole-tumour ROC AUC {trained:.3f} after '
                                     f'training, {initial:.3f} with its initial weights: {closed:.0%} of the gap '
                                     f'to 1 closed, not more than {min_gap_closed:.0%}')
    return aucs


def copy_matching_weights(source: torch.nn.Module, destination: torch.nn.Module) -> set:
    """Load the parameters of ``source`` into ``destination`` where name and shape agree; returns their names.
    Buffers are not copied: they belong to the variant's definition (e.g. SMSN's fixed fusion ``order``)."""
    own = dict(destination.named_parameters())
    matching = {k: v for k, v in source.named_parameters() if k in own and own[k].shape == v.shape}
    destination.load_state_dict(matching, strict=False)
    return set(matching)


def loss_gradients(trainer, data, target, availability, seed: int = 0) -> dict:
    """``{parameter name: gradient}`` of the trainer's total training loss on one batch (train mode; torch and the
    trainer's generator seeded with ``seed`` first, so reparameterisation noise and random orders repeat)."""
    import numpy as np
    torch.manual_seed(seed)
    trainer.rng = np.random.default_rng(seed)
    trainer.share_rng(trainer.network)
    trainer.network.train()
    loss, _ = trainer.forward_loss(data, target, availability)
    named = [(n, p) for n, p in trainer.network.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def relative_gradient_difference(variant: dict, reference: dict, names) -> float:
    """``||g_variant - g_reference|| / ||g_reference||`` over the parameters ``names`` (missing gradients = 0)."""
    num = den = 0.0
    for n in names:
        ref = reference.get(n)
        var = variant.get(n)
        ref = torch.zeros(()) if ref is None else ref
        var = torch.zeros(()) if var is None else var
        num += float((var - ref).double().square().sum())
        den += float(ref.double().square().sum())
    return (num / max(den, 1e-30)) ** 0.5
