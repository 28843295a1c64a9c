"""End to end through nnU-Net's own console commands: discovery, training, continuation, prediction.

``trained_model`` trains with ``nnUNetv2_train``'s entry point, seeded; ``test_continue_training_with_dash_dash_c``
runs the ``nnUNetv2_train`` console script itself."""
import shutil
import sys

import nibabel as nib
import numpy as np
import torch

from conftest import DATASET_ID, assert_learned, run


def test_modality_dropout_trains_logs_subsets_and_predicts_zero_filled_cases(nnunet_dataset, trained_model, held_out,
                                                                              tmp_path):
    folder = trained_model('nnUNetTrainerModalityDropout')
    log = next((folder / 'fold_0').glob('training_log_*.txt')).read_text()
    assert 'modality subsets drawn:' in log
    checkpoint = torch.load(folder / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['trainer_name'] == 'nnUNetTrainerModalityDropout'

    # stock nnUNetv2_predict: one case with every modality, one with FLAIR (channel 3) zero-filled
    images = tmp_path / 'images'
    images.mkdir()
    full, case = sorted(p.name[:-12] for p in (nnunet_dataset.raw / 'imagesTr').glob('*_0000.nii.gz'))[:2]
    for name in (full, case):
        for c in range(4):
            shutil.copy(nnunet_dataset.raw / 'imagesTr' / f'{name}_{c:04d}.nii.gz', images)
    flair = nib.load(images / f'{case}_0003.nii.gz')
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.float32), flair.affine, flair.header),
             images / f'{case}_0003.nii.gz')
    out = tmp_path / 'pred'
    run(['nnUNetv2_predict', '-i', str(images), '-o', str(out), '-d', str(DATASET_ID), '-c',
         nnunet_dataset.configuration, '-tr', 'nnUNetTrainerModalityDropout', '-f', '0', '-device', 'cpu',
         '--disable_tta', '--save_probabilities'], nnunet_dataset.env)
    seg = nib.load(out / f'{case}.nii.gz')
    assert seg.shape == flair.shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    for name in (full, case):                       # WT, TC, ET probabilities in nnU-Net's (z, y, x) order
        probabilities = np.load(out / f'{name}.npz')['probabilities']
        assert probabilities.shape == (3, *flair.shape[::-1])
        assert probabilities.min() >= 0 and probabilities.max() <= 1
    # it learned: on held-out cases it ranks tumour voxels better than its own initial weights
    assert_learned(folder, held_out)


def test_continue_training_with_dash_dash_c(nnunet_dataset):
    config = '3d_smoke_continue'

    def small_config(epochs, *extra):
        run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(DATASET_ID), '-c', config,
             '--patch', '32', '32', '32', '--features', '4', '8', '16', '--epochs', str(epochs),
             '--iterations', '2', '--val-iterations', '1', *extra], nnunet_dataset.env)

    train = ['nnUNetv2_train', str(DATASET_ID), config, '0', '-tr', 'nnUNetTrainerModalityDropout',
             '-device', 'cpu', '--npz']
    small_config(1)
    run(train, nnunet_dataset.env)
    small_config(2, '--overwrite')  # the same configuration, now with two epochs
    result = run(train + ['--c'], nnunet_dataset.env)  # nnU-Net 2.8 spells it --c
    fold = nnunet_dataset.results / f'nnUNetTrainerModalityDropout__nnUNetPlans__{config}' / 'fold_0'
    checkpoint = torch.load(fold / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['current_epoch'] == 2
    assert 'Epoch 1' in result.stdout and 'Epoch 0\n' not in result.stdout
    assert f"resumed from {fold / 'checkpoint_final.pth'}, epoch 1" in result.stdout
