"""Fusion trainers: training and prediction through nnU-Net's commands, and learning: each trained model ranks the
tumour voxels of held-out cases better than its own initial weights (:func:`conftest.assert_learned`)."""
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import DATASET_ID, assert_learned, run


def _predict(nnunet_dataset, trainer, tmp_path):
    """Predict two training cases (the second with T2 zero-filled) with the stock nnUNetv2_predict."""
    images = tmp_path / 'images'
    images.mkdir()
    cases = sorted(p.name[:-12] for p in (nnunet_dataset.raw / 'imagesTr').glob('*_0000.nii.gz'))[:2]
    for case in cases:
        for c in range(4):
            shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{case}_{c:04d}.nii.gz', images)
    t2 = nib.load(images / f'{cases[1]}_0002.nii.gz')
    nib.save(nib.Nifti1Image(np.zeros(t2.shape, np.float32), t2.affine, t2.header), images / f'{cases[1]}_0002.nii.gz')
    out = tmp_path / 'pred'
    run(['nnUNetv2_predict', '-i', str(images), '-o', str(out), '-d', str(DATASET_ID), '-c',
         nnunet_dataset.configuration, '-tr', trainer, '-f', '0', '-device', 'cpu', '--disable_tta'],
        nnunet_dataset.env)
    for case in cases:
        seg = nib.load(out / f'{case}.nii.gz')
        reference = nib.load(images / f'{case}_0000.nii.gz')
        assert seg.shape == reference.shape
        assert np.allclose(seg.affine, reference.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.parametrize('trainer, terms', [('nnUNetTrainerConcatFusion', ()),
                                            ('nnUNetTrainerAttentionFusion', ()),
                                            ('nnUNetTrainerSMSN', ('kl', 'recon', 'orth'))])
def test_fusion_trainer_trains_predicts_and_learns(trainer, terms, nnunet_dataset, trained_model, held_out, tmp_path):
    folder = trained_model(trainer)
    log = next((folder / 'fold_0').glob('training_log_*.txt')).read_text()
    assert 'modality subsets drawn:' in log
    if terms:
        line = next(line for line in log.splitlines() if 'train loss terms (unweighted' in line)
        for term in terms:
            assert f' {term} ' in line
        if trainer == 'nnUNetTrainerSMSN':   # the units; the KL per sample at weight 1 / (voxels x regions)
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
            plans = PlansManager(str(folder / 'plans.json')).get_configuration(nnunet_dataset.configuration)
            assert f'nats/sample x{1 / (np.prod(plans.patch_size) * 3):g}' in line and 'nats/voxel' in line
    checkpoint = torch.load(folder / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['trainer_name'] == trainer
    assert any(k.startswith('encoders.3.') for k in checkpoint['network_weights'])
    _predict(nnunet_dataset, trainer, tmp_path)
    assert_learned(folder, held_out)


def test_fixed_order_trainer_stores_the_order_by_modality_name(nnunet_dataset, trained_model, tmp_path):
    folder = trained_model('nnUNetTrainerSMSN_fixed2')
    checkpoint = torch.load(folder / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    # channels of the converted data set: 0 T1, 1 T1ce, 2 T2, 3 FLAIR; Fixed 2 = T1ce, T2, FLAIR, T1
    assert checkpoint['network_weights']['fusion.order'].tolist() == [1, 2, 3, 0]
    log = next((folder / 'fold_0').glob('training_log_*.txt')).read_text()
    assert "SMSN fixed fusion order: ['T1ce', 'T2', 'FLAIR', 'T1'] (channels [1, 2, 3, 0])" in log
    _predict(nnunet_dataset, 'nnUNetTrainerSMSN_fixed2', tmp_path)
