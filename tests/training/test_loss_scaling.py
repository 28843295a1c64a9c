"""The base trainer's one scaling rule for per-sample information terms, its logged figures and clipping count."""
import numpy as np
import pytest
import torch

from conftest import make_trainer
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerModalityDropout


class PerSampleKL(nnUNetTrainerModalityDropout):
    aux_loss_weights = {'kl': 0.5, 'recon': 2.0}
    per_sample_terms = ('kl',)


def test_per_sample_terms_are_divided_by_voxels_times_regions(tmp_path):
    trainer = make_trainer(PerSampleKL, tmp_path)
    # small_plans: a 16^3 patch; the BraTS data set of the tests has three sigmoid regions (WT, TC, ET)
    n = 16 * 16 * 16 * 3
    assert trainer.per_sample_scale() == pytest.approx(1 / n)
    assert trainer.term_weight('kl') == pytest.approx(0.5 / n)
    assert trainer.term_weight('recon') == 2.0 and trainer.term_weight('seg') == 1.0

    seg = torch.tensor(0.25)
    trainer.loss = lambda segmentation, target: seg
    output = NetworkOutput(None, {'kl': torch.tensor(1000.0), 'recon': torch.tensor(0.1)}, {})
    total, terms = trainer.compute_loss(output, None, torch.ones(2, 4, dtype=torch.bool))
    assert float(total) == pytest.approx(0.25 + 0.5 * 1000.0 / 12288 + 2.0 * 0.1)
    assert float(terms['kl']) == 1000.0                     # logged unscaled, in its own unit


def test_logged_figures_and_clipped_steps_reach_the_training_log(tmp_path, monkeypatch):
    trainer = make_trainer(PerSampleKL, tmp_path)
    lines = []
    monkeypatch.setattr(trainer, 'print_to_log_file', lambda *args, **kw: lines.append(' '.join(map(str, args))))
    trainer.on_train_epoch_start()
    for value, clipped in ((1.0, True), (3.0, False)):
        trainer._epoch_log['kl_stage1'].append(torch.tensor(value))
        trainer._epoch_clipped.append(torch.tensor(clipped))
    trainer.on_train_epoch_end([{'loss': np.array(1.0)}, {'loss': np.array(2.0)}])
    assert any('train figures: kl_stage1 2' in line for line in lines), lines
    assert any('clipped at 12 in 50.0% of the steps' in line for line in lines), lines


def test_epoch_loss_terms_hold_one_value_per_step_and_clear_at_epoch_start(tmp_path, monkeypatch):
    trainer = make_trainer(PerSampleKL, tmp_path)
    monkeypatch.setattr(trainer, 'present_channels', lambda key: np.ones(4, dtype=bool))
    trainer.gradient_share_steps = 0                         # the one-off per-term gradient diagnostic
    weight = next(trainer.network.parameters())
    steps = iter([(0.5, 7.0), (0.25, 3.0)])

    def forward_loss(data, target, availability):
        seg, kl = next(steps)
        return (weight.sum() * 0.0 + seg, {'seg': torch.tensor(seg), 'kl': torch.tensor(kl)})

    monkeypatch.setattr(trainer, 'forward_loss', forward_loss)
    trainer.on_train_epoch_start()
    batch = {'data': torch.zeros(2, 4, 16, 16, 16), 'target': torch.zeros(2, 3, 16, 16, 16), 'keys': ['a', 'b']}
    for _ in range(2):
        trainer.train_step(batch)
    terms = trainer.epoch_loss_terms
    assert {k: [float(v) for v in values] for k, values in terms.items()} == {'seg': [0.5, 0.25], 'kl': [7.0, 3.0]}
    terms['seg'].clear()                                     # a copy: the trainer's record is untouched
    assert len(trainer.epoch_loss_terms['seg']) == 2
    trainer.on_train_epoch_start()
    assert trainer.epoch_loss_terms == {}
