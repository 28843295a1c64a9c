"""Modality dropout degrades gracefully under single-modality input; the stock nnU-Net trainer collapses.

Both models are trained equally long, with the same seed, on the same data and configuration: nnU-Net's own
``nnUNetTrainer`` (stock network, loop and loss) and ``nnUNetTrainerModalityDropout``, one epoch of
:data:`ITERATIONS` iterations each (set as trainer attributes, nnU-Net's hyper-parameters). Training goes through
nnU-Net's ``run_training`` without ``nnUNetv2_train``'s final validation (mirrored sliding windows over whole
volumes, slow on a CPU). Both models are scored by ``nnUNetv2_mm_benchmark -i -l`` on :data:`N_HELD_OUT` held-out
synthetic cases (another generator seed) under the full set and the four single-modality subsets: two validation
cases of the 10-case fold were too few for a stable verdict.
"""
import json
import sys

import pytest

from conftest import run, synthetic_raw_dataset

CONFIG = '3d_degrade'
STOCK, DROPOUT = 'nnUNetTrainer', 'nnUNetTrainerModalityDropout'
ITERATIONS = 1000
SEED = 0
N_HELD_OUT = 12
SINGLE = ['FLAIR', 'T1ce', 'T1', 'T2']
FULL = 'FLAIR+T1ce+T1+T2'
#: seeded training: Python, NumPy and torch RNGs, and the trainer's own dropout generator; with nnUNet_n_proc_DA=0
#: (single-threaded augmentation) and one OpenMP thread a CPU run is repeatable on one machine
TRAIN = ('import random, sys, numpy as np, torch\n'
         'from nnunetv2.run.run_training import get_trainer_from_args\n'
         'seed = int(sys.argv[5])\n'
         'random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)\n'
         'trainer = get_trainer_from_args(sys.argv[1], sys.argv[2], 0, sys.argv[3], device=torch.device("cpu"))\n'
         'if hasattr(trainer, "rng"):\n'
         '    trainer.rng = np.random.default_rng(seed)\n'
         'trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = '
         '1, int(sys.argv[4]), 5\n'
         'trainer.run_training()')


@pytest.fixture(scope='module')
def summaries(nnunet_dataset, tmp_path_factory):
    ds, env = nnunet_dataset, nnunet_dataset.env
    raw = synthetic_raw_dataset(tmp_path_factory.mktemp('held_out') / 'brats', 991, 'SynthHeldOut', N_HELD_OUT,
                                1, env)
    run([sys.executable, '-m', 'nnunet_missingmod.small_config', '-d', str(ds.dataset_id), '-c', CONFIG,
         '--patch', '32', '32', '32', '--features', '8', '16', '32', '--batch-size', '2',
         '--epochs', '1', '--iterations', str(ITERATIONS), '--val-iterations', '5'], env)
    out = {}
    for trainer in (STOCK, DROPOUT):
        run([sys.executable, '-c', TRAIN, str(ds.dataset_id), CONFIG, trainer, str(ITERATIONS), str(SEED)], env,
            timeout=1800)
        folder = tmp_path_factory.mktemp(trainer)
        run(['nnUNetv2_mm_benchmark', '-d', str(ds.dataset_id), '-c', CONFIG, '-tr', trainer, '-f', '0',
             '-i', str(raw / 'imagesTr'), '-l', str(raw / 'labelsTr'), '-o', str(folder),
             '--subsets', FULL, *SINGLE, '-device', 'cpu', '--disable_tta', '--disable_progress_bar'], env,
            timeout=1800)
        out[trainer] = json.loads((folder / 'summary.json').read_text())['mean']['Dice']
    return out


def test_dropout_degrades_gracefully_while_stock_collapses(summaries):
    """Whole-tumour Dice averaged over the four single-modality inputs (a mean, not the noisier worst case).

    Calibrated on seeds 0, 1, 2 of this set-up (held-out WT Dice, single-modality mean / full set): stock
    0.21/0.84, 0.29/0.82, 0.40/0.84 (keeps 25-48 %; T1ce, T1 and T2 alone fall to 0.01-0.34), dropout 0.65/0.79,
    0.65/0.73, 0.67/0.81 (keeps 83-88 %), a gap of 0.27-0.44 Dice. At 200-300 iterations the models were not
    converged enough for a stable verdict (the gap ranged from 0.1 to 0.5 on two validation cases)."""
    print({name: {s: {r: round(v, 3) for r, v in d[s].items()} for s in d} for name, d in summaries.items()})
    full = {name: d[FULL]['WT'] for name, d in summaries.items()}
    single = {name: sum(d[s]['WT'] for s in SINGLE) / len(SINGLE) for name, d in summaries.items()}
    # both models learned the whole tumour with every modality present
    assert full[STOCK] > 0.6 and full[DROPOUT] > 0.6
    # stock collapses: on average a single modality keeps less than 60 % of its full-set Dice
    assert single[STOCK] < 0.6 * full[STOCK]
    # dropout degrades gracefully: more than 70 % kept, far above the stock model
    assert single[DROPOUT] > 0.7 * full[DROPOUT]
    assert single[DROPOUT] > single[STOCK] + 0.15
