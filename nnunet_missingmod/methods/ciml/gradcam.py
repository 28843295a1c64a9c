"""``nnUNetv2_mm_ciml_gradcam``: Grad-CAM of CIML's complementary information (Sec. 4.6, Eq. 14-16, Fig. 12/14).

For one case and one trained ``nnUNetTrainerCIML`` model, at the shallowest CIG module of every segmentor and for
every (primary modality, region) pair of the task map:

* the information representation ``A_j`` of auxiliary modality ``j`` is its complementary representation in that
  gate (the mean ``mu_j`` at inference, i.e. what is added, after channel alignment, to the local feature);
* ``y^k`` is the segmentor's logit of region ``k`` summed over the voxels the model predicts as ``k`` (all voxels
  of the patch when it predicts none);
* Eq. 15: ``alpha_c = mean_n dy^k / dA_{j,n}^c``; Eq. 14: ``zeta_j = ReLU(sum_c alpha_c A_j^c)``;
* Eq. 16: ``w_j = sum_n zeta_{j,n} / sum_j' sum_n zeta_{j',n}`` over the auxiliary modalities of the pair, so the
  weights of a pair sum to 1 (all 0 when every heat map is 0, e.g. no auxiliary modality present).

The analysis runs on one patch of the configuration's patch size (centred on the brain's bounding box unless
``--center`` is given) of the preprocessed case. Outputs in ``-o``: ``ciml_gradcam.png`` (rows = pairs, columns
= auxiliary modalities, heat maps normalised over all rows and overlaid on the auxiliary image, as in Fig. 12),
``ciml_complementary_weights.png`` (bar chart, Fig. 14) and ``ciml_gradcam.json`` (weights and settings).
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch

from nnunet_missingmod.cli import command, require_env_path
from nnunet_missingmod.modalities import detect_availability, modality_index, zero_missing
from nnunet_missingmod.methods.ciml.network import CIMLNetwork


def complementary_information(network: CIMLNetwork, x: torch.Tensor, availability: torch.Tensor,
                              region_labels: Sequence[str], modality_labels: Sequence[str]) -> List[dict]:
    """Grad-CAM heat maps (Eq. 14-15) and complementary-information weights (Eq. 16) of one sample.

    ``x`` (1, M, *patch), ``availability`` (1, M) bool. Returns one dict per (primary, region) pair with
    ``primary``, ``region``, ``weights`` {auxiliary modality: w}, ``heatmaps`` {auxiliary modality: array at the
    gate's resolution} (missing auxiliaries: weight 0, zero map). Pairs whose primary modality is missing are left
    out.
    """
    if not isinstance(network, CIMLNetwork) or not len(network.cigs):
        raise ValueError("Grad-CAM of complementary information needs a CIML network with message passing")
    if x.shape[0] != 1:
        raise ValueError("complementary_information analyses one sample at a time")
    network.eval()
    with torch.enable_grad():
        output = network(x, availability, full_output=True)
        seg = output.segmentation
        final = seg[0] if isinstance(seg, list) else seg
        predicted = torch.sigmoid(final.detach()) > 0.5
        outputs = output.extras['segmentor_outputs']
        pairs = []
        for m, task in enumerate(network.task_map):
            if not bool(availability[0, m]):
                continue                                    # a missing modality's segmentor predicts nothing
            gate = network.cigs[m][-1]
            representations = gate.last['representations']
            others = [j for j in range(network.num_modalities) if j != m]
            for k in task:
                logits = outputs[m][0][0, k]
                region = predicted[0, k]
                y = logits[region].sum() if bool(region.any()) else logits.sum()
                # the gate aligns the sum of its representations, so each one's gradient is that of the sum
                grad = torch.autograd.grad(y, gate.last['representation_sum'], retain_graph=True)[0]
                g = grad[0, gate.last['slot']]
                heat = {}
                for j, a in zip(others, representations):
                    alpha = g.flatten(1).mean(1)                                      # Eq. 15
                    zeta = torch.relu((alpha[:, None] * a[0].detach().flatten(1)).sum(0))  # Eq. 14
                    heat[modality_labels[j]] = zeta.reshape(a.shape[2:])
                total = sum(float(h.sum()) for h in heat.values())
                weights = {name: (float(h.sum()) / total if total > 0 else 0.0) for name, h in heat.items()}  # Eq. 16
                pairs.append({'primary': modality_labels[m], 'region': region_labels[k], 'weights': weights,
                              'heatmaps': {n: h.cpu().numpy() for n, h in heat.items()}})
    return pairs


# ------------------------------------------------------------------------------------------------ case handling
def _case_files(case: str, dataset_json: dict, raw_folder: str) -> List[str]:
    ending = dataset_json['file_ending']
    n = len(dataset_json['channel_names'])
    for sub in ('imagesTr', 'imagesTs'):
        files = [os.path.join(raw_folder, sub, f'{case}_{c:04d}{ending}') for c in range(n)]
        if all(os.path.isfile(f) for f in files):
            return files
    found = sorted(glob.glob(os.path.join(raw_folder, 'images*', f'{case}_*{ending}')))
    raise FileNotFoundError(f"case {case!r}: expected {n} files {case}_0000{ending}..{case}_{n - 1:04d}{ending} in "
                            f"{raw_folder}/imagesTr or imagesTs, found {found}")


def _crop(data: np.ndarray, patch: Sequence[int], center: Optional[Sequence[int]]):
    """Patch of ``data`` (M, *spatial) around ``center`` (default: centre of the non-zero bounding box), zero-padded."""
    spatial = data.shape[1:]
    if center is None:
        nonzero = np.argwhere(np.any(data != 0, axis=0))
        center = ((nonzero.min(0) + nonzero.max(0)) // 2) if len(nonzero) else np.array(spatial) // 2
    if len(center) != len(spatial):
        raise ValueError(f"--center needs {len(spatial)} coordinates, got {list(center)}")
    out = np.zeros((data.shape[0],) + tuple(patch), dtype=np.float32)
    src, dst, start = [], [], []
    for c, p, s in zip(center, patch, spatial):
        lo = int(c) - p // 2
        a, b = max(lo, 0), min(lo + p, s)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
        start.append(lo)
    out[(slice(None),) + tuple(dst)] = data[(slice(None),) + tuple(src)]
    return out, start


def _save_figures(pairs: List[dict], image: np.ndarray, modality_labels: Sequence[str], output_folder: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from torch.nn.functional import interpolate

    patch = image.shape[1:]
    auxiliaries = [n for n in modality_labels if any(n in p['heatmaps'] for p in pairs)]
    upsampled = []
    for p in pairs:
        maps = {}
        for name, h in p['heatmaps'].items():
            t = torch.from_numpy(h)[None, None].float()
            maps[name] = interpolate(t, size=patch, mode='trilinear' if len(patch) == 3 else 'bilinear',
                                     align_corners=False)[0, 0].numpy()
        upsampled.append(maps)
    vmax = max([float(m.max()) for maps in upsampled for m in maps.values()] + [1e-12])   # normalised over rows
    energy = sum(m for maps in upsampled for m in maps.values())
    axial = int(np.argmax(energy.reshape(energy.shape[0], -1).sum(1))) if len(patch) == 3 else None

    fig, axes = plt.subplots(len(pairs), len(auxiliaries), figsize=(2.6 * len(auxiliaries), 2.6 * len(pairs)),
                             squeeze=False)
    for r, (p, maps) in enumerate(zip(pairs, upsampled)):
        for c, name in enumerate(auxiliaries):
            ax = axes[r, c]
            ax.axis('off')
            if name not in maps:
                ax.set_title(f"{name} (primary)", fontsize=8)
                continue
            img = image[modality_labels.index(name)]
            img, heat = (img[axial], maps[name][axial]) if axial is not None else (img, maps[name])
            ax.imshow(img, cmap='gray')
            ax.imshow(heat, cmap='viridis', alpha=0.5, vmin=0, vmax=vmax)
            ax.set_title(f"{p['primary']}->{p['region']}: {name} w={p['weights'][name]:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_folder, 'ciml_gradcam.png'), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(pairs), 3.2))
    width = 0.8 / max(len(auxiliaries), 1)
    for c, name in enumerate(auxiliaries):
        ax.bar(np.arange(len(pairs)) + c * width, [p['weights'].get(name, 0.0) for p in pairs], width, label=name)
    ax.set_xticks(np.arange(len(pairs)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{p['primary']}->{p['region']}" for p in pairs], rotation=30, ha='right', fontsize=8)
    ax.set_ylabel('complementary information weight')
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(output_folder, 'ciml_complementary_weights.png'), dpi=100)
    plt.close(fig)


def check_input_images(model_folder: str, image_files: Optional[Sequence[str]], case: Optional[str],
                       output_folder: str) -> List[str]:
    """The image files of the case (``image_files`` or those of ``case`` in the raw data set), checked before the
    model is loaded: one per modality of the model's ``dataset.json``, present, outside ``output_folder``, readable
    with every voxel finite (a NIfTI file decoded again with nibabel: SimpleITK reads NaN/Inf as 0 and zero-fills a
    truncated file) and of one shape and spacing
    (:func:`~nnunet_missingmod.inference.predict.check_case_images`). ValueError / FileNotFoundError naming the file.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_missingmod.inference.case_files import check_case_images

    dataset_json = load_json(os.path.join(model_folder, 'dataset.json'))
    plans_manager = PlansManager(load_json(os.path.join(model_folder, 'plans.json')))
    names = [dataset_json['channel_names'][k] for k in sorted(dataset_json['channel_names'], key=int)]
    if image_files is None:
        raw = require_env_path('nnUNet_raw', 'the files of --case are found there (or give them with -i)')
        image_files = _case_files(case, dataset_json, os.path.join(raw, plans_manager.dataset_name))
    image_files = list(image_files)
    if len(image_files) != len(names):
        raise ValueError(f"{len(image_files)} image files given but the model expects {len(names)} ({names})")
    absent = [f for f in image_files if not os.path.isfile(f)]
    if absent:
        raise FileNotFoundError(f"image files not found: {absent}")
    output_folder = os.path.abspath(output_folder)
    if any(os.path.dirname(os.path.abspath(f)) == output_folder for f in image_files):
        raise ValueError(f"output folder {output_folder} holds the input images; choose another one")
    label = case or re.sub(r'_\d{4}' + re.escape(dataset_json['file_ending']) + '$', '',
                           os.path.basename(image_files[0]))
    check_case_images(label, dict(enumerate(image_files)), plans_manager.image_reader_writer_class())
    return image_files


def run(model_folder: str, fold, output_folder: str, image_files: Optional[Sequence[str]] = None,
        case: Optional[str] = None, checkpoint: str = 'checkpoint_final.pth', center=None,
        missing: Sequence[str] = (), device: str = 'cpu') -> dict:
    """Analyse one case (``image_files`` or ``case`` id in the raw data set); returns the JSON written."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_missingmod.env import enable_ext_trainers
    from nnunet_missingmod.regions import region_names

    enable_ext_trainers()
    if (image_files is None) == (case is None):
        raise ValueError("give either image files (-i) or a case id (--case)")
    image_files = check_input_images(model_folder, image_files, case, output_folder)
    output_folder = os.path.abspath(output_folder)
    predictor = nnUNetPredictor(device=torch.device(device), verbose=False, verbose_preprocessing=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint)
    network = predictor.network
    if not isinstance(network, CIMLNetwork):
        raise ValueError(f"{model_folder} is a {predictor.trainer_name} model, not a CIML model")
    dataset_json = predictor.dataset_json
    names = [dataset_json['channel_names'][k] for k in sorted(dataset_json['channel_names'], key=int)]

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(list(image_files), None, predictor.plans_manager,
                                       predictor.configuration_manager, dataset_json)
    patch, start = _crop(np.asarray(data, dtype=np.float32), predictor.configuration_manager.patch_size, center)
    x = torch.from_numpy(patch)[None].to(device)
    availability = detect_availability(x)
    for name in missing:
        availability[0, modality_index(dataset_json, name)] = False
    if not bool(availability.any()):
        raise ValueError("no modality left for the analysis")
    x = zero_missing(x, availability)
    network.to(device)
    pairs = complementary_information(network, x, availability, region_names(dataset_json), names)

    os.makedirs(output_folder, exist_ok=True)
    _save_figures(pairs, patch, names, output_folder)
    result = {
        'model_folder': os.path.abspath(model_folder), 'fold': fold, 'checkpoint': checkpoint,
        'image_files': [os.path.abspath(f) for f in image_files], 'case': case,
        'available_modalities': [n for n, a in zip(names, availability[0].tolist()) if a],
        'patch_start': [int(s) for s in start], 'patch_size': list(predictor.configuration_manager.patch_size),
        'gate_resolution': list(next(iter(pairs[0]['heatmaps'].values())).shape) if pairs else None,
        'definition': 'Eq. 14-16: zeta_j = ReLU(sum_c alpha_c A_j^c), alpha_c = mean_n dy^k/dA_j^c, '
                      'w_j = sum_n zeta_j / sum_j sum_n zeta_j over the auxiliary modalities of a pair',
        'pairs': [{'primary': p['primary'], 'region': p['region'], 'weights': p['weights'],
                   'heatmap_sums': {n: float(h.sum()) for n, h in p['heatmaps'].items()}} for p in pairs],
    }
    with open(os.path.join(output_folder, 'ciml_gradcam.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


@command('nnUNetv2_mm_ciml_gradcam')
def main(argv: Optional[Sequence[str]] = None) -> int:
    from nnunet_missingmod.cli import ArgumentParser, check_device
    from nnunet_missingmod.inference.predict import add_missing_argument, add_nnunet_predict_arguments, check_model
    parser = ArgumentParser(prog='nnUNetv2_mm_ciml_gradcam', description=__doc__.split('\n\n')[0],
                            epilog='The model flags are those of nnUNetv2_predict / nnUNetv2_mm_predict; this command '
                                   'analyses one model, so -tr defaults to nnUNetTrainerCIML and -f to 0 (one fold).')
    add_nnunet_predict_arguments(parser, only=('-d', '-p', '-tr', '-c', '-f', '-chk', '-device'))
    parser.set_defaults(tr='nnUNetTrainerCIML', f=['0'])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('-i', '--images', nargs='+', help='one image file per modality, in channel order')
    source.add_argument('--case', help="case id in $nnUNet_raw/<dataset>/imagesTr or imagesTs")
    parser.add_argument('-o', '--output', required=True, help='output folder for the PNGs and the JSON')
    parser.add_argument('--center', nargs='+', type=int, help='patch centre (voxel indices of the preprocessed case)')
    add_missing_argument(parser)
    args = parser.parse_args(argv)
    if len(args.f) != 1:
        parser.error(f'-f {" ".join(map(str, args.f))}: the analysis uses one fold')
    check_device(args.device)
    model_folder = check_model(args.d, args.tr, args.p, args.c, args.f, args.chk)
    fold = args.f[0] if str(args.f[0]) == 'all' else int(args.f[0])
    missing = [n.strip() for n in re.split(r'[,+]', args.missing or '') if n.strip()]
    result = run(model_folder, fold, args.output, args.images, args.case, args.chk, args.center, missing,
                 args.device)
    for p in result['pairs']:
        print(f"{p['primary']:>8} -> {p['region']:<18} " +
              ', '.join(f"{n} {w:.3f}" for n, w in p['weights'].items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
