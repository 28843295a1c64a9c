"""Synthetic BraTS-like data in the real BraTS folder layouts.

A small, deterministic stand-in for BraTS that keeps what makes the missing-modality problem real:

* **Anatomy** - a skull-stripped brain (irregular ellipsoid, zero background) with a cortical grey-matter ribbon,
  sulcal CSF, deep grey matter, white matter and two lateral ventricles (CSF).
* **Tumour** (``pathology='glioma'``, the default) - an irregular oedema blob around a tumour core; the core is an
  enhancing rim around a necrotic centre. Position, size, shape and orientation are random; about one case in six
  has no enhancing tumour (a non-enhancing core, BraTS label 1) and about one in six only a few small enhancing
  patches.
* **Metastases** (``pathology='metastasis'``, BraTS-METS-like) - two to five small lesions scattered over the
  brain, each a solid or ring-enhancing core (a small necrotic centre in the larger ones) inside a wide vasogenic
  oedema of 2.5-4 times the core's radius; neighbouring oedemas merge. Small cores, large oedema, several
  components: the test set of SMSN's generalisation experiment (glioma-trained model on metastases).
* **Contrasts** (relative intensities, see :data:`TISSUE_INTENSITY`) follow the usual radiological reading:

  ======== ====== ====== ====== ======
  tissue   T1     T1ce   T2     FLAIR
  ======== ====== ====== ====== ======
  CSF      dark   dark   bright dark (suppressed)
  GM       mid    mid    mid    mid
  WM       bright bright dark   mid-dark
  oedema   mid    mid    bright bright
  necrosis dark   dark   bright mid
  enh. rim mid    bright mid    bright
  ======== ====== ====== ====== ======

  Oedema is modelled physically: the underlying white/grey matter mixed with a smoothly varying fraction of
  water, which moves it towards CSF on T1 and T2 (so on T1/T2 it looks like grey matter with a bit of CSF partial
  volume) while FLAIR, which suppresses free water only, shows it bright. FLAIR is therefore the modality that
  separates oedema from normal tissue, T1ce the only one that shows the enhancing tumour, and T1 has little tumour
  contrast.
* **Acquisition** - Gaussian point-spread blur (partial volume), a smooth multiplicative bias field per scan,
  Rician noise, a random intensity scale per scan, stored as int16; segmentation as uint8.

Default geometry: ``80 x 96 x 64`` voxels (x = left-right, y = posterior-anterior, z = inferior-superior) at
2 mm isotropic spacing, a 160 x 192 x 128 mm field of view that holds a brain-sized ellipsoid - about 1/20 of the
voxels of a 1 mm BraTS volume so that preprocessing and training stay cheap on a CPU. Anatomy scales with the
shape, so small shapes (e.g. ``40 x 48 x 32`` for unit tests) give the same picture at a coarser resolution.

Foregrounds: by default every modality shares the brain mask (one skull-stripping for all series).
``foregrounds='own'`` (``--foregrounds own``) gives each series its own foreground as separately acquired and
skull-stripped series have (:data:`OWN_FOREGROUNDS`): FLAIR's brain mask eroded by about 4 mm, T2 acquired with a
field of view that stops short of the vertex (the top 30 % of the volume along z is empty), T1 and T1ce on the
full brain mask. The labels and the other voxels are those of the shared-foreground case of the same seed.

Determinism: case ``i`` of seed ``s`` is drawn from ``numpy.random.SeedSequence(s, spawn_key=(i,))``, so the same
seed gives byte-identical arrays, and a case does not depend on how many cases are generated.

Command line::

    nnUNetv2_mm_synthetic -o DIR -n N [--layout brats2020|brats2023] [--seed S] [--shape X Y Z]
                          [--pathology glioma|metastasis] [--foregrounds shared|own]
    python -m nnunet_missingmod.dataset_conversion.synthetic_brats -o DIR -n N ...

``DIR`` is created if missing. An existing ``DIR`` must be empty or a previous synthetic output (it holds the
marker file :data:`MARKER`); in the latter case only the case folders written by that previous run are replaced.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from nnunet_missingmod.cli import ArgumentParser, command
from nnunet_missingmod.dataset_conversion.brats_layouts import LAYOUTS, canonical_layout
from nnunet_missingmod.dataset_conversion.synthetic_shapes import (blob, ellipsoid_distance, smooth_field,
                                                                    voxel_coordinates)

DEFAULT_SHAPE = (80, 96, 64)
DEFAULT_SPACING = 2.0
MARKER = 'synthetic_brats.json'

#: Modality names in the package's channel order (as in the converted data set).
MODALITIES = ('T1', 'T1ce', 'T2', 'FLAIR')

#: Neutral label convention of :func:`generate_case` (the BraTS 2023 one): 1 necrosis / non-enhancing core,
#: 2 oedema, 3 enhancing tumour.
NCR, ED, ET = 1, 2, 3
#: Tissue codes of the ``tissue`` map returned by :func:`generate_case`.
CSF, GM, WM = 1, 2, 3

#: Relative intensities (T1, T1ce, T2, FLAIR) before bias field, noise and per-scan scaling.
TISSUE_INTENSITY = {
    'csf': (0.30, 0.32, 1.00, 0.18),
    'gm': (0.68, 0.70, 0.58, 0.62),
    'wm': (0.90, 0.92, 0.42, 0.50),
    # free water as seen inside oedema: T1/T2 like CSF, FLAIR not suppressed (bound/interstitial water)
    'oedema_water': (0.30, 0.32, 1.00, 1.50),
    'necrosis': (0.36, 0.36, 0.95, 0.55),
    'enhancing': (0.60, 1.45, 0.72, 1.00),
}


def _anatomy(rng: np.random.Generator, shape: Sequence[int]):
    coords = voxel_coordinates(shape)
    shape_arr = np.asarray(shape, dtype=np.float64)
    centre = (shape_arr - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * shape_arr
    radii = np.array([0.40, 0.42, 0.40]) * shape_arr * rng.uniform(0.93, 1.03, 3)
    dist = ellipsoid_distance(coords, centre, radii)
    dist = dist + 0.05 * smooth_field(rng, shape, min(shape) / 4)
    brain = dist < 1.0

    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = WM
    # cortical ribbon of varying thickness (gyri) with CSF in the sulci and on the surface
    ribbon = dist + 0.06 * smooth_field(rng, shape, max(2.0, min(shape) / 16)) > 0.82
    tissue[brain & ribbon] = GM
    sulci = smooth_field(rng, shape, max(1.5, min(shape) / 24)) > 0.9
    tissue[brain & ((ribbon & sulci) | (dist > 0.96))] = CSF
    # deep grey matter (thalamus / basal ganglia) on both sides
    for side in (-1, 1):
        c = centre + np.array([side * 0.19, -0.02, -0.06]) * shape_arr
        r = np.array([0.07, 0.11, 0.09]) * shape_arr * rng.uniform(0.85, 1.15, 3)
        tissue[brain & (ellipsoid_distance(coords, c, r) < 1.0)] = GM
    # lateral ventricles
    ventricles = np.zeros(shape, bool)
    for side in (-1, 1):
        c = centre + np.array([side * 0.07, 0.03, 0.06]) * shape_arr
        r = np.array([0.045, 0.20, 0.08]) * shape_arr * rng.uniform(0.8, 1.25, 3)
        vd = ellipsoid_distance(coords, c, r) + 0.15 * smooth_field(rng, shape, max(1.5, min(shape) / 10))
        ventricles |= vd < 1.0
    ventricles &= brain
    tissue[ventricles] = CSF
    return coords, brain, tissue, ventricles, dist


def _tumour(rng, coords, shape, brain, tissue, ventricles, dist):
    """Label map (0, NCR, ED, ET), the oedema water fraction and a description of the drawn tumour."""
    shape_arr = np.asarray(shape, dtype=np.float64)
    brain_radius = 0.41 * float(np.mean(shape_arr))
    candidates = np.flatnonzero((tissue == WM) & (dist < 0.6) & ~ventricles)
    if candidates.size == 0:
        candidates = np.flatnonzero(brain & ~ventricles)
    centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape), dtype=np.float64)

    kind = rng.choice(['regular', 'no_et', 'small_et'], p=[0.68, 0.16, 0.16])
    oedema_r = brain_radius * rng.uniform(0.30, 0.52)
    core_r = oedema_r * rng.uniform(0.45, 0.75)
    necrosis_frac = 0.0 if rng.random() < 0.12 else rng.uniform(0.35, 0.75)
    offset = rng.uniform(-1, 1, 3) * 0.3 * (oedema_r - core_r)

    oedema = blob(rng, coords, shape, centre, oedema_r)
    core = blob(rng, coords, shape, centre + offset, core_r, irregularity=0.2)
    necrosis = (blob(rng, coords, shape, centre + offset, core_r * necrosis_frac, irregularity=0.15)
                if necrosis_frac > 0 else np.zeros(shape, bool))
    core &= brain
    necrosis &= core
    whole = (oedema & brain & ~ventricles) | core

    seg = np.zeros(shape, np.uint8)
    seg[whole] = ED
    if kind == 'no_et':
        seg[core] = NCR
    else:
        rim = core & ~necrosis
        if kind == 'small_et':
            patches = smooth_field(rng, shape, max(1.5, core_r / 2)) > 1.0
            seg[core] = NCR
            seg[rim & patches] = ET
        else:
            seg[rim] = ET
            seg[necrosis] = NCR
    water = np.clip(0.5 + 0.12 * smooth_field(rng, shape, max(1.5, oedema_r / 2)), 0.3, 0.7)
    info = {'kind': str(kind), 'centre': [round(float(c), 2) for c in centre], 'oedema_radius': round(oedema_r, 2),
            'core_radius': round(core_r, 2), 'necrosis_fraction': round(float(necrosis_frac), 3)}
    return seg, water.astype(np.float32), info


def _metastases(rng, coords, shape, brain, tissue, ventricles, dist):
    """Like :func:`_tumour` for two to five metastases: small (ring-)enhancing cores in wide oedema."""
    brain_radius = 0.41 * float(np.mean(np.asarray(shape, dtype=np.float64)))
    candidates = np.flatnonzero(brain & ~ventricles & (tissue != CSF) & (dist < 0.8))
    if candidates.size == 0:
        candidates = np.flatnonzero(brain & ~ventricles)
    oedema = np.zeros(shape, bool)
    core = np.zeros(shape, bool)
    necrosis = np.zeros(shape, bool)
    lesions = []
    for _ in range(int(rng.integers(2, 6))):
        centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape), dtype=np.float64)
        core_r = brain_radius * rng.uniform(0.06, 0.14)
        oedema_r = core_r * rng.uniform(2.5, 4.0)
        oedema |= blob(rng, coords, shape, centre, oedema_r)
        core |= blob(rng, coords, shape, centre, core_r, irregularity=0.15)
        if core_r > 0.09 * brain_radius and rng.random() < 0.6:   # ring enhancement around a necrotic centre
            necrosis |= blob(rng, coords, shape, centre, core_r * rng.uniform(0.4, 0.6), irregularity=0.1)
        lesions.append({'centre': [round(float(c), 2) for c in centre], 'core_radius': round(core_r, 2),
                        'oedema_radius': round(oedema_r, 2)})
    core &= brain
    seg = np.zeros(shape, np.uint8)
    seg[oedema & brain & ~ventricles] = ED
    seg[core] = ET
    seg[core & necrosis] = NCR
    water = np.clip(0.5 + 0.12 * smooth_field(rng, shape, 2.0), 0.3, 0.7)
    return seg, water.astype(np.float32), {'kind': 'metastasis', 'lesions': lesions}


#: tumour generators by pathology
PATHOLOGIES = {'glioma': _tumour, 'metastasis': _metastases}
#: ``foregrounds='own'``: per modality, ``(erosion in mm, fraction of the z axis cut off at the top)``
OWN_FOREGROUNDS = {'T1': (0.0, 0.0), 'T1ce': (0.0, 0.0), 'T2': (0.0, 0.3), 'FLAIR': (4.0, 0.0)}
FOREGROUNDS = ('shared', 'own')


def modality_foreground(brain: np.ndarray, name: str, spacing: float, foregrounds: str = 'shared') -> np.ndarray:
    """The voxels where modality ``name`` has signal: the brain mask (``'shared'``), or the brain mask eroded and
    cut as :data:`OWN_FOREGROUNDS` says (``'own'``)."""
    if foregrounds not in FOREGROUNDS:
        raise ValueError(f'unknown foregrounds {foregrounds!r}; choose one of {FOREGROUNDS}')
    if foregrounds == 'shared':
        return brain
    erosion_mm, top_cut = OWN_FOREGROUNDS[name]
    mask = brain
    if erosion_mm > 0:
        mask = ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1),
                                      iterations=max(1, int(round(erosion_mm / spacing))))
    if top_cut > 0:
        mask = mask.copy()
        mask[:, :, int(round(brain.shape[2] * (1 - top_cut))):] = False
    return mask


def _modality_image(rng, m: int, shape, brain, tissue, seg, water) -> np.ndarray:
    """One scan: tissue contrast, texture, blur, bias field, Rician noise, skull-stripping, per-scan scaling."""
    val = {k: v[m] for k, v in TISSUE_INTENSITY.items()}
    img = np.zeros(shape, np.float32)
    img[tissue == CSF] = val['csf']
    img[tissue == GM] = val['gm']
    img[tissue == WM] = val['wm']
    # oedema: underlying parenchyma (sulcal CSF is effaced -> grey matter) mixed with water
    oedema = seg == ED
    base = np.where(tissue == WM, val['wm'], val['gm']).astype(np.float32)
    img[oedema] = ((1 - water) * base + water * val['oedema_water'])[oedema]
    img[seg == NCR] = val['necrosis']
    img[seg == ET] = val['enhancing']
    tumour = seg > 0
    texture = 1 + np.where(tumour, 0.06, 0.03) * smooth_field(rng, shape, 2.0)
    img *= texture
    img = ndimage.gaussian_filter(img, 0.6)
    img *= np.exp(rng.uniform(0.05, 0.15) * smooth_field(rng, shape, max(shape) / 2.5))
    sigma = rng.uniform(0.02, 0.045) * val['wm']
    img = np.sqrt((img + sigma * rng.standard_normal(shape, dtype=np.float32)) ** 2
                  + (sigma * rng.standard_normal(shape, dtype=np.float32)) ** 2)
    img *= np.exp(rng.uniform(np.log(400), np.log(2500)))
    img[~brain] = 0
    return np.clip(np.rint(img), 0, np.iinfo(np.int16).max).astype(np.int16)


def affine_for(shape: Sequence[int], spacing: float = DEFAULT_SPACING) -> np.ndarray:
    """BraTS-like orientation (LPS on disk, i.e. RAS affine ``diag(-s, -s, s)``), centred on the origin."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return affine


def generate_case(rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE,
                  spacing: float = DEFAULT_SPACING, pathology: str = 'glioma', foregrounds: str = 'shared') -> dict:
    """Draw one case with a tumour of ``pathology`` (see :data:`PATHOLOGIES`); ``foregrounds``: see
    :func:`modality_foreground`.

    Returns a dict with ``images`` (``{'T1', 'T1ce', 'T2', 'FLAIR'}`` -> int16 arrays), ``seg`` (uint8, neutral
    convention 0 background, 1 necrosis/non-enhancing core, 2 oedema, 3 enhancing tumour), ``brain`` (bool),
    ``tissue`` (uint8, 0 background, 1 CSF, 2 GM, 3 WM; the normal tissue under the tumour), ``affine`` and
    ``info`` (tumour parameters).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f'shape must be three sizes of at least 8 voxels, got {shape}')
    if pathology not in PATHOLOGIES:
        raise ValueError(f'unknown pathology {pathology!r}; choose one of {sorted(PATHOLOGIES)}')
    if foregrounds not in FOREGROUNDS:
        raise ValueError(f'unknown foregrounds {foregrounds!r}; choose one of {FOREGROUNDS}')
    coords, brain, tissue, ventricles, dist = _anatomy(rng, shape)
    seg, water, info = PATHOLOGIES[pathology](rng, coords, shape, brain, tissue, ventricles, dist)
    images = {name: _modality_image(rng, m, shape, brain, tissue, seg, water) for m, name in enumerate(MODALITIES)}
    if foregrounds != 'shared':
        for name, image in images.items():
            image[~modality_foreground(brain, name, spacing, foregrounds)] = 0
    return {'images': images, 'seg': seg, 'brain': brain, 'tissue': tissue, 'affine': affine_for(shape, spacing),
            'info': info}


def case_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of case ``index`` (1-based) for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units('mm', 'sec')
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def write_case(case: dict, out_dir: Path, case_name: str, layout: str) -> Path:
    """Write one case of :func:`generate_case` in a BraTS layout; returns its folder."""
    spec = LAYOUTS[canonical_layout(layout)]
    folder = Path(out_dir) / case_name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, array in case['images'].items():
        _save_nifti(array, case['affine'], folder / spec.filename(case_name, name))
    from_neutral = np.zeros(256, np.uint8)
    for neutral, source in ((NCR, spec.source_label('NCR')), (ED, spec.source_label('ED')),
                            (ET, spec.source_label('ET'))):
        from_neutral[neutral] = source
    _save_nifti(from_neutral[case['seg']], case['affine'], folder / spec.filename(case_name, 'seg'))
    return folder


def _check_output_folder(out_dir: Path) -> list[str]:
    """Previous synthetic cases to replace; refuses folders that are neither empty nor a synthetic output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f'output {out_dir} exists and is not a folder')
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    marker = out_dir / MARKER
    if not marker.is_file():
        raise ValueError(f'output folder {out_dir} is not empty and holds no {MARKER}: refusing to write synthetic '
                         f'cases into a folder that is not a previous synthetic output')
    try:
        previous = json.loads(marker.read_text())['cases']
    except (ValueError, KeyError) as e:
        raise ValueError(f'cannot read the marker file {marker}: {e}') from e
    return [c for c in previous if c and '/' not in c and c not in ('.', '..')]


def generate_dataset(out_dir, n: int, layout: str = 'brats2020', seed: int = 0,
                     shape: Sequence[int] = DEFAULT_SHAPE, spacing: float = DEFAULT_SPACING,
                     progress: bool = True, pathology: str = 'glioma', foregrounds: str = 'shared') -> list[Path]:
    """Write ``n`` synthetic cases (numbered from 1) in a BraTS layout into ``out_dir``; returns the case folders."""
    if n < 1:
        raise ValueError(f'number of cases must be positive, got {n}')
    if pathology not in PATHOLOGIES:
        raise ValueError(f'unknown pathology {pathology!r}; choose one of {sorted(PATHOLOGIES)}')
    if foregrounds not in FOREGROUNDS:
        raise ValueError(f'unknown foregrounds {foregrounds!r}; choose one of {FOREGROUNDS}')
    spec = LAYOUTS[canonical_layout(layout)]
    out_dir = Path(out_dir)
    previous = _check_output_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in previous:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
    names = [spec.synthetic_case_name(i) for i in range(1, n + 1)]
    # the marker first: an interrupted run can be re-run into the same folder
    (out_dir / MARKER).write_text(json.dumps({
        'generator': 'nnunet_missingmod.dataset_conversion.synthetic_brats', 'layout': spec.name, 'seed': seed,
        'shape': list(map(int, shape)), 'spacing_mm': spacing, 'pathology': pathology, 'foregrounds': foregrounds,
        'cases': names}, indent=1))
    folders = []
    for i, name in enumerate(tqdm(names, desc='synthetic cases', disable=not progress), start=1):
        case = generate_case(case_rng(seed, i), shape, spacing, pathology, foregrounds)
        folders.append(write_case(case, out_dir, name, spec.name))
    return folders


@command('nnUNetv2_mm_synthetic')
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog='nnUNetv2_mm_synthetic',
        description='Write a synthetic BraTS-like data set (T1, T1ce, T2, FLAIR + segmentation) in a real BraTS '
                    'folder layout; convert it with nnUNetv2_mm_convert_brats.')
    parser.add_argument('-o', '--output', required=True, help='output folder (created; must be empty or a previous '
                                                              'synthetic output)')
    parser.add_argument('-n', '--num-cases', type=int, required=True, help='number of cases')
    parser.add_argument('--layout', default='brats2020', help='brats2020 (also brats2018/2019/2021: _flair, _t1, '
                        '_t1ce, _t2, _seg; labels 0,1,2,4) or brats2023 (-t1n, -t1c, -t2w, -t2f, -seg; labels 0-3)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (same seed -> identical data)')
    parser.add_argument('--shape', type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=('X', 'Y', 'Z'),
                        help=f'volume size in voxels (default {DEFAULT_SHAPE})')
    parser.add_argument('--spacing', type=float, default=DEFAULT_SPACING, help='isotropic voxel size in mm')
    parser.add_argument('--pathology', choices=sorted(PATHOLOGIES), default='glioma',
                        help='glioma (default) or BraTS-METS-like metastases (several small lesions, wide oedema)')
    parser.add_argument('--foregrounds', choices=FOREGROUNDS, default='shared',
                        help="shared (default): every modality on one brain mask; own: each series its own "
                             "foreground (FLAIR's eroded by 4 mm, T2's field of view without the top 30 %% of z)")
    args = parser.parse_args(argv)
    generate_dataset(args.output, args.num_cases, args.layout, args.seed, args.shape, args.spacing,
                     pathology=args.pathology, foregrounds=args.foregrounds)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
