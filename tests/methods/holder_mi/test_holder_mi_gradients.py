"""Every Hölder-MI ablation and option trainer changes the training gradient (no variant is silently the default).

Each variant is built with the default's weights (where names and shapes agree) and differentiated on the same
batch; the relative norm of the gradient difference over the shared parameters must clear a margin. The default
against a second copy of itself gives exactly 0, so the comparison can tell "the same model".
"""
import numpy as np
import pytest
import torch

from conftest import copy_matching_weights, loss_gradients, make_trainer, relative_gradient_difference, small_plans
from nnunet_missingmod.methods.holder_mi import trainers as hm
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerModalityDropout

#: measured relative differences (2026-12-02, this batch, L_HD per voxel and L_MI per sample by default): noMI 0.017,
#: noHD 0.99, DiceOnly 0.99, KL 0.019, TV 0.66, Hellinger 0.71, NeymanChi2 3.2, JS 0.77, MSE 0.59, BCE 0.019,
#: imageDensity 0.98, axisDensity 0.98, alpha 1.05/1.08/1.15/1.2: 0.0092/0.0036/0.0089/0.0175. Margins are about a
#: third of these; the default against itself gives exactly 0. Per voxel against a hard label the Hölder divergence
#: is close to BCE (and to KL(label || prediction), which is BCE there), hence their small differences.
MARGINS = {
    hm.nnUNetTrainerHolderMI_noMI: 0.005, hm.nnUNetTrainerHolderMI_noHD: 0.3, hm.nnUNetTrainerHolderMI_DiceOnly: 0.3,
    hm.nnUNetTrainerHolderMI_KL: 0.005, hm.nnUNetTrainerHolderMI_TV: 0.2, hm.nnUNetTrainerHolderMI_Hellinger: 0.2,
    hm.nnUNetTrainerHolderMI_NeymanChi2: 1.0, hm.nnUNetTrainerHolderMI_JS: 0.2, hm.nnUNetTrainerHolderMI_MSE: 0.2,
    hm.nnUNetTrainerHolderMI_BCE: 0.005, hm.nnUNetTrainerHolderMI_imageDensity: 0.3,
    hm.nnUNetTrainerHolderMI_axisDensity: 0.3, hm.nnUNetTrainerHolderMI_alpha1_05: 3e-3,
    hm.nnUNetTrainerHolderMI_alpha1_08: 1e-3, hm.nnUNetTrainerHolderMI_alpha1_15: 3e-3,
    hm.nnUNetTrainerHolderMI_alpha1_2: 5e-3,
}

#: the Table V ablations at the budget width, against nnUNetTrainerHolderMI_budget on plans 32-128 (widths 8-32).
#: Measured: noMI 0.042, noHD 0.95
BUDGET_MARGINS = {hm.nnUNetTrainerHolderMI_budget_noMI: 0.005, hm.nnUNetTrainerHolderMI_budget_noHD: 0.3}


def batch():
    torch.manual_seed(0)
    data = torch.randn(2, 4, 16, 16, 16)
    y = torch.zeros(2, 3, 16, 16, 16)
    y[:, 0, 3:13, 3:13, 3:13] = 1
    y[:, 1, 5:11, 5:11, 5:11] = 1
    y[:, 2, 6:10, 6:10, 6:10] = 1
    return data, [y[:, :, ::2 ** i, ::2 ** i, ::2 ** i] for i in range(3)], torch.ones(2, 4, dtype=torch.bool)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp('holder_mi')
    trainer = make_trainer(hm.nnUNetTrainerHolderMI, root)
    return root, trainer, loss_gradients(trainer, *batch())


def test_every_variant_is_listed():
    variants = {c for c in vars(hm).values() if isinstance(c, type) and issubclass(c, hm.nnUNetTrainerHolderMI)
                and not issubclass(c, hm.nnUNetTrainerHolderMI_budget) and c is not hm.nnUNetTrainerHolderMI}
    assert variants == set(MARGINS)
    budget_variants = {c for c in vars(hm).values() if isinstance(c, type)
                       and issubclass(c, hm.nnUNetTrainerHolderMI_budget) and c is not hm.nnUNetTrainerHolderMI_budget}
    assert budget_variants == set(BUDGET_MARGINS)


def test_default_against_itself_is_zero(reference):
    root, trainer, gradients = reference
    twin = make_trainer(hm.nnUNetTrainerHolderMI, root, seed=1)
    names = copy_matching_weights(trainer.network, twin.network)
    assert relative_gradient_difference(loss_gradients(twin, *batch()), gradients, names) == 0.0


@pytest.mark.parametrize('cls', list(MARGINS), ids=lambda c: c.__name__)
def test_variant_gradient_differs_from_default(cls, reference):
    root, trainer, gradients = reference
    variant = make_trainer(cls, root, seed=1)
    names = copy_matching_weights(trainer.network, variant.network)
    assert len(names) >= 50  # the backbone and channel encoders are shared
    assert relative_gradient_difference(loss_gradients(variant, *batch()), gradients, names) > MARGINS[cls]


def test_no_pnf_is_early_fusion_with_plain_dice(tmp_path):
    """Table V row 1: nnU-Net's network, loss = soft Dice only (no BCE), unlike nnUNetTrainerModalityDropout."""
    plans = small_plans(features=(4, 8, 16, 32))
    ablation = make_trainer(hm.nnUNetTrainerHolderMI_noPNF, tmp_path, plans)
    dropout = make_trainer(nnUNetTrainerModalityDropout, tmp_path, plans)
    assert type(ablation.network) is type(dropout.network)
    data, target, availability = batch()
    with torch.no_grad():
        output = ablation.network(data)
    probabilities = [torch.sigmoid(o).double().numpy() for o in output]
    labels = [t.double().numpy() for t in target]
    dice = [float(np.mean((2 * (p * y).sum((2, 3, 4)) + 1e-5) / (p.sum((2, 3, 4)) + y.sum((2, 3, 4)) + 1e-5)))
            for p, y in zip(probabilities, labels)]
    expected = -(2 / 3 * dice[0] + 1 / 3 * dice[1])
    assert float(ablation.loss(output, target)) == pytest.approx(expected, rel=1e-5)
    assert float(dropout.loss(output, target)) > expected + 0.1  # nnU-Net's loss adds BCE


def test_budget_variant_is_narrow_and_draws_two_subsets(tmp_path):
    default = make_trainer(hm.nnUNetTrainerHolderMI, tmp_path, small_plans(features=(32, 64, 128)))
    budget = make_trainer(hm.nnUNetTrainerHolderMI_budget, tmp_path, small_plans(features=(32, 64, 128)))
    assert budget.network.common_channels == default.network.common_channels // 4
    data, target, availability = batch()
    budget.network.train()
    _, losses, extras = budget.network(data, availability, full_output=True)
    assert extras['subset_outputs'][0].shape[0] == 2


@pytest.mark.parametrize('cls', list(BUDGET_MARGINS), ids=lambda c: c.__name__)
def test_budget_ablation_keeps_the_budget_and_changes_the_gradient(cls, tmp_path):
    plans = small_plans(features=(32, 64, 128))
    budget = make_trainer(hm.nnUNetTrainerHolderMI_budget, tmp_path / 'budget', plans)
    ablation = make_trainer(cls, tmp_path / 'ablation', plans, seed=1)
    assert ablation.network.common_channels == budget.network.common_channels == 8
    assert ablation.network.subsets_per_step == budget.network.subsets_per_step == 2
    names = copy_matching_weights(budget.network, ablation.network)
    assert len(names) >= 50
    diff = relative_gradient_difference(loss_gradients(ablation, *batch()), loss_gradients(budget, *batch()), names)
    print(f'{cls.__name__}: relative gradient difference {diff:.3f}')
    assert diff > BUDGET_MARGINS[cls]
