"""End to end: nnUNetv2_train with nnUNetTrainerCIML (seeded, ``trained_model``), stock nnUNetv2_predict, learning on
held-out cases (:func:`conftest.assert_learned`), and the Grad-CAM command."""
from __future__ import annotations

import json
import shutil

import numpy as np
import SimpleITK as sitk

from conftest import DATASET_ID, SMOKE_CONFIG, assert_learned, run


def test_ciml_train_predict_learn_and_gradcam(nnunet_dataset, trained_model, held_out, tmp_path):
    folder = trained_model('nnUNetTrainerCIML')
    plans = json.loads((folder / 'plans.json').read_text())
    # channels T1, T1ce, T2, FLAIR; regions WT, TC, ET: FLAIR->WT, T1->TC, T2->WT+TC, T1ce->TC+ET
    assert plans['configurations'][SMOKE_CONFIG]['ciml_task_map'] == [[1], [1, 2], [0, 1], [0]]

    first = sorted((nnunet_dataset.raw / 'imagesTr').glob('*_0000.nii.gz'))[0]
    case = first.name[:-len('_0000.nii.gz')]
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for c in range(4):
        shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz', inputs)
    # FLAIR missing: zero-filled file, the stock predictor derives the availability from the zero channel
    flair = sitk.ReadImage(str(inputs / f'{case}_0003.nii.gz'))
    zero = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(flair)))
    zero.CopyInformation(flair)
    sitk.WriteImage(zero, str(inputs / f'{case}_0003.nii.gz'))
    predictions = tmp_path / 'pred'
    run(['nnUNetv2_predict', '-i', str(inputs), '-o', str(predictions), '-d', str(DATASET_ID), '-c', SMOKE_CONFIG,
         '-tr', 'nnUNetTrainerCIML', '-f', '0', '-device', 'cpu', '--disable_tta', '-npp', '1', '-nps', '1'],
        nnunet_dataset.env)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f'{case}.nii.gz')))
    assert seg.shape == sitk.GetArrayFromImage(flair).shape
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    assert_learned(folder, held_out)

    out = tmp_path / 'gradcam'
    run(['nnUNetv2_mm_ciml_gradcam', '-d', str(DATASET_ID), '-c', SMOKE_CONFIG, '-tr', 'nnUNetTrainerCIML', '-f', '0',
         '--case', case, '-o', str(out), '-device', 'cpu'], nnunet_dataset.env)
    for png in ('ciml_gradcam.png', 'ciml_complementary_weights.png'):
        assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    result = json.loads((out / 'ciml_gradcam.json').read_text())
    assert result['model_folder'] == str(folder)
    assert result['available_modalities'] == ['T1', 'T1ce', 'T2', 'FLAIR']
    pairs = {(p['primary'], p['region']): p for p in result['pairs']}
    assert set(pairs) == {('T1', 'TC'), ('T1ce', 'TC'), ('T1ce', 'ET'), ('T2', 'WT'), ('T2', 'TC'), ('FLAIR', 'WT')}
    for (primary, _), p in pairs.items():
        assert set(p['weights']) == {'T1', 'T1ce', 'T2', 'FLAIR'} - {primary}
        total = sum(p['heatmap_sums'].values())
        if total > 0:                                                   # Eq. 16: weights of a pair sum to 1
            assert abs(sum(p['weights'].values()) - 1.0) < 1e-6
            for name, w in p['weights'].items():
                assert abs(w - p['heatmap_sums'][name] / total) < 1e-6
        else:
            assert all(w == 0.0 for w in p['weights'].values())
