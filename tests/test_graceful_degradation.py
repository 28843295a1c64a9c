"""Modality dropout degrades gracefully under single-modality input; the stock nnU-Net trainer collapses.

Both models are trained equally long on the same data and configuration: nnU-Net's own ``nnUNetTrainer`` (stock
network, loop and loss) and ``nnUNetTrainerModalityDropout``, one epoch of :data:`ITERATIONS` iterations each (set
as trainer attributes, nnU-Net's hyper-parameters). Training goes through nnU-Net's ``run_training`` without
``nnUNetv2_train``'s final validation (mirrored sliding windows over whole volumes, slow on a CPU); both models are
scored by ``nnUNetv2_mm_benchmark --val`` on the fold's validation cases under the full set and the four
single-modality subsets.
"""
import json
import sys

import pytest

from conftest import run

CONFIG = '3d_degrade'
STOCK, DROPOUT = 'nnUNetTrainer', 'nnUNetTrainerModalityDropout'
ITERATIONS = 200
SINGLE = ['FLAIR', 'T1ce', 'T1', 'T2']
FULL = 'FLAIR+T1ce+T1+T2'
TRAIN = ('import sys, torch\n'
         'from nnunetv2.run.run_training import get_trainer_from_args\n'
         'trainer = get_trainer_from_args(sys.argv[1], sys.argv[2], 0, sys.argv[3], device=torch.device("cpu"))\n'
         'trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = '
         '1, int(sys.argv[4]), 5\n'
         'trainer.run_training()')


@pytest.fixture(scope='module')
def summaries(nnunet_dataset, tmp_path_factory):
    ds, env = nnunet_dataset, nnunet_dataset.env
    run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(ds.dataset_id), '-c', CONFIG,
         '--patch', '32', '32', '32', '--features', '8', '16', '32', '--batch-size', '2',
         '--epochs', '1', '--iterations', str(ITERATIONS), '--val-iterations', '5'], env)
    out = {}
    for trainer in (STOCK, DROPOUT):
        run([sys.executable, '-c', TRAIN, str(ds.dataset_id), CONFIG, trainer, str(ITERATIONS)], env, timeout=1800)
        folder = tmp_path_factory.mktemp(trainer)
        run(['nnUNetv2_mm_benchmark', '-d', str(ds.dataset_id), '-c', CONFIG, '-tr', trainer, '-f', '0', '--val',
             '-o', str(folder), '--subsets', FULL, *SINGLE, '-device', 'cpu', '--disable_tta',
             '--disable_progress_bar'], env, timeout=1800)
        out[trainer] = json.loads((folder / 'summary.json').read_text())['mean']['Dice']
    return out


def test_dropout_degrades_gracefully_while_stock_collapses(summaries):
    """Whole-tumour Dice of the worst single-modality input, the region both models learn in 200 iterations (ET is
    not always learned yet). Calibrated on four unseeded runs of this set-up (one at 150 iterations): the stock
    model's worst single modality (always T1ce) kept 3-13 % of its full-set WT Dice, the dropout model's 38-70 %,
    a gap of 0.20-0.51 Dice."""
    print({name: {s: {r: round(v, 3) for r, v in d[s].items()} for s in d} for name, d in summaries.items()})
    full = {name: d[FULL]['WT'] for name, d in summaries.items()}
    worst = {name: min(d[s]['WT'] for s in SINGLE) for name, d in summaries.items()}
    # both models learned the whole tumour with every modality present
    assert full[STOCK] > 0.5 and full[DROPOUT] > 0.5
    # stock collapses: its worst single modality keeps less than a third of its full-set Dice
    assert worst[STOCK] < full[STOCK] / 3
    # dropout degrades gracefully: its worst keeps more than a quarter, far above the stock model's worst
    assert worst[DROPOUT] > full[DROPOUT] / 4
    assert worst[DROPOUT] > worst[STOCK] + 0.15
