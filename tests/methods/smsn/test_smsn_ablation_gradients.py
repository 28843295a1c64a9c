"""Every SMSN ablation/option trainer trains a different model: on the same batch, with the same weights where
the architectures agree and the same random draws, its loss gradient differs from ``nnUNetTrainerSMSN``'s.

The recipe (conftest's ``make_trainer``, ``copy_matching_weights``, ``loss_gradients``,
``relative_gradient_difference``): build both trainers, copy the default's weights into the variant wherever
name and shape match, give both the same seeded NumPy generator (fusion order) and torch seed (reparameterisation
noise), run ``forward_loss`` on the same data / deep-supervision target / availability and compare the gradients
over the parameters both have (same name and shape): ``||g_variant - g_default|| / ||g_default||``. A second
copy of the default trainer gives ~0, so the test would notice a variant that is the default model in disguise.
"""
import pytest
import torch

from conftest import copy_matching_weights, loss_gradients, make_trainer, relative_gradient_difference, small_plans
from nnunet_missingmod.training.nnUNet_extTrainer import missingmod_trainers as ft
from nnunet_missingmod.training.optimizers import OptimizerPair

torch.set_num_threads(1)

SEED = 0
#: the relative gradient difference every variant must exceed. Measured (CPU, seed 0, one map per modality from
#: each reconstruction decoder): noLr 0.039, fixed1 0.35, randomOnly 0.35 (missing-modality mask), fixed2 0.39,
#: noReorder 0.46, noSpecific 0.98, noLo 0.98, bottleneck* 1.31-1.34; the default against its own copy < 1e-5
MARGIN = 0.02
#: modalities present per sample: every sample misses some, so that "Random only" can put a missing one first
MISSING = torch.tensor([[False, True, False, True], [True, False, False, False]])
ALL_PRESENT = torch.ones(2, 4, dtype=torch.bool)
#: std of the Gaussian heads' last-layer weights of the compared networks (see the ``default`` fixture)
HEAD_STD = 0.1

VARIANTS = {
    ft.nnUNetTrainerSMSN_noReorder: ALL_PRESENT, ft.nnUNetTrainerSMSN_noLr: ALL_PRESENT,
    ft.nnUNetTrainerSMSN_noLo: ALL_PRESENT, ft.nnUNetTrainerSMSN_noSpecific: ALL_PRESENT,
    ft.nnUNetTrainerSMSN_fixed1: ALL_PRESENT, ft.nnUNetTrainerSMSN_fixed2: ALL_PRESENT,
    ft.nnUNetTrainerSMSN_randomOnly: MISSING,
    ft.nnUNetTrainerSMSN_bottleneck64_64: ALL_PRESENT, ft.nnUNetTrainerSMSN_bottleneck64_128: ALL_PRESENT,
    ft.nnUNetTrainerSMSN_bottleneck256_512: ALL_PRESENT, ft.nnUNetTrainerSMSN_bottleneck512_512: ALL_PRESENT,
}


def test_every_smsn_variant_trainer_is_covered():
    variants = {cls for cls in vars(ft).values()
                if isinstance(cls, type) and issubclass(cls, ft.nnUNetTrainerSMSN) and cls is not ft.nnUNetTrainerSMSN}
    # the capacity reference, the optimizer and the initialisation variants train the default's loss: tests below
    assert variants == set(VARIANTS) | {ft.nnUNetTrainerSMSN_width1, ft.nnUNetTrainerSMSN_Adam,
                                        ft.nnUNetTrainerSMSN_SGD, ft.nnUNetTrainerSMSN_smallInitStd}


def test_width1_encoders_have_the_plans_widths(tmp_path):
    plans = small_plans((8, 16, 32))
    wide = make_trainer(ft.nnUNetTrainerSMSN_width1, tmp_path / 'wide', plans)
    default = make_trainer(ft.nnUNetTrainerSMSN, tmp_path / 'default', plans)
    assert [e.output_channels for e in wide.bare_network.encoders] == [[8, 16, 32]] * 4
    assert [e.output_channels for e in default.bare_network.encoders] == [[8, 8, 16]] * 4


def _ids(params):
    return [id(p) for p in params]


def test_default_trains_the_bottleneck_with_adam_and_the_rest_with_nnunets_sgd(tmp_path):
    trainer = make_trainer(ft.nnUNetTrainerSMSN, tmp_path)
    fusion = trainer.bare_network.fusion
    optimizer = trainer.optimizer
    assert isinstance(optimizer, OptimizerPair)
    sgd, adam = optimizer.main, optimizer.auxiliary
    assert type(sgd) is torch.optim.SGD and type(adam) is torch.optim.Adam
    assert {k: sgd.defaults[k] for k in ('lr', 'momentum', 'nesterov', 'weight_decay')} == \
        {'lr': trainer.initial_lr, 'momentum': 0.99, 'nesterov': True, 'weight_decay': trainer.weight_decay}
    assert adam.defaults['lr'] == 1e-3 and adam.defaults['weight_decay'] == trainer.weight_decay
    bottleneck = [p for name in ('stage1', 'stage2', 'reconstruct1', 'reconstruct2')
                  for p in getattr(fusion, name).parameters()]
    in_adam = [p for g in adam.param_groups for p in g['params']]
    in_sgd = [p for g in sgd.param_groups for p in g['params']]
    assert sorted(_ids(in_adam)) == sorted(_ids(bottleneck))
    assert sorted(_ids(in_sgd + in_adam)) == sorted(_ids(trainer.network.parameters()))    # each exactly once
    assert {id(fusion.common.weight), id(next(fusion.specific.parameters()))} <= set(_ids(in_sgd))
    trainer.lr_scheduler.step(trainer.num_epochs // 2)       # nnU-Net's poly decay, each from its own start
    factor = (1 - (trainer.num_epochs // 2) / trainer.num_epochs) ** 0.9
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([trainer.initial_lr * factor, 1e-3 * factor])


def test_default_optimizer_state_survives_nnunets_checkpoint(tmp_path):
    trainer = make_trainer(ft.nnUNetTrainerSMSN, tmp_path / 'a')
    for p in trainer.network.parameters():
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()                                  # Adam moments and SGD momentum buffers exist now
    trainer.save_checkpoint(str(tmp_path / 'checkpoint.pth'))
    resumed = make_trainer(ft.nnUNetTrainerSMSN, tmp_path / 'b', seed=1)
    resumed.load_checkpoint(str(tmp_path / 'checkpoint.pth'))
    for mine, theirs in ((trainer.optimizer.main, resumed.optimizer.main),
                         (trainer.optimizer.auxiliary, resumed.optimizer.auxiliary)):
        state, loaded = mine.state_dict()['state'], theirs.state_dict()['state']
        assert len(state) == len(loaded) > 0
        assert all(torch.equal(state[i][k], loaded[i][k]) for i in state for k in state[i])


@pytest.mark.parametrize('cls, optimizer', [('nnUNetTrainerSMSN_Adam', torch.optim.Adam),
                                            ('nnUNetTrainerSMSN_SGD', torch.optim.SGD)])
def test_single_optimizer_variants_train_the_default_model(tmp_path, cls, optimizer):
    plans = small_plans((8, 16, 32))
    variant = make_trainer(getattr(ft, cls), tmp_path / 'variant', plans)
    default = make_trainer(ft.nnUNetTrainerSMSN, tmp_path / 'default', plans)
    assert type(variant.optimizer) is optimizer
    assert variant.optimizer.param_groups[0]['lr'] == pytest.approx(1e-3 if optimizer is torch.optim.Adam else 1e-2)
    assert sorted(_ids(variant.optimizer.param_groups[0]['params'])) == sorted(_ids(variant.network.parameters()))
    assert {k: v.shape for k, v in variant.network.state_dict().items()} == \
        {k: v.shape for k, v in default.network.state_dict().items()}
    assert variant.aux_loss_weights == default.aux_loss_weights


def test_small_initial_std_variant_starts_its_posteriors_at_that_std(tmp_path):
    small = make_trainer(ft.nnUNetTrainerSMSN_smallInitStd, tmp_path / 'small')
    default = make_trainer(ft.nnUNetTrainerSMSN, tmp_path / 'default')
    for trainer, logvar in ((small, -10.0), (default, 0.0)):
        for head in (trainer.bare_network.fusion.stage1, trainer.bare_network.fusion.stage2):
            latent = head[-1].out_channels // 2
            assert not head[-1].weight.any() and not head[-1].bias[:latent].any()     # mu = 0 whatever the input
            assert torch.equal(head[-1].bias[latent:], torch.full((latent,), logvar))
    assert small.aux_loss_weights == default.aux_loss_weights


def batch():
    g = torch.Generator().manual_seed(SEED)
    data = torch.randn(2, 4, 16, 16, 16, generator=g)
    target = [(torch.rand(2, 3, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i, generator=g) > 0.5).float()
              for i in range(3)]
    return data, target


def gradients(trainer, availability):
    """Loss gradients on the fixed batch (missing modalities zero-filled), seeded draws; by parameter name."""
    data, target = batch()
    return loss_gradients(trainer, data * availability[:, :, None, None, None], target, availability, SEED)


def shared_names(a, b):
    """Parameters both networks have, with the same name and shape."""
    own = dict(b.network.named_parameters())
    return [n for n, p in a.network.named_parameters() if n in own and own[n].shape == p.shape]


@pytest.fixture(scope='module')
def default(tmp_path_factory):
    """The default trainer a little past initialisation: its Gaussian heads end in zero layers (``mu = 0``,
    ``logvar = 0``), so at the very first step the fused latent is input-independent noise and the fusion order
    and ``L_r`` reach the shared parameters only through those last layers. Weights ``N(0, 0.1^2)`` there (copied
    into every variant like all other weights) make the comparison one of a network that has started learning."""
    trainer = make_trainer(ft.nnUNetTrainerSMSN, tmp_path_factory.mktemp('smsn'), seed=SEED)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for head in (trainer.bare_network.fusion.stage1, trainer.bare_network.fusion.stage2):
            head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=g) * HEAD_STD)
    return trainer


@pytest.mark.parametrize('availability', [ALL_PRESENT, MISSING], ids=['all', 'missing'])
def test_default_against_a_copy_of_itself_is_the_same(default, availability, tmp_path):
    twin = make_trainer(ft.nnUNetTrainerSMSN, tmp_path, seed=SEED + 1)     # other initial weights ...
    copied = copy_matching_weights(default.network, twin.network)
    assert len(copied) == len(list(default.network.parameters()))           # ... all replaced
    difference = relative_gradient_difference(gradients(twin, availability), gradients(default, availability),
                                              shared_names(default, twin))
    assert difference < 1e-5


@pytest.mark.parametrize('variant', list(VARIANTS), ids=lambda cls: cls.__name__.split('_', 1)[1])
def test_variant_gradient_differs_from_the_default(default, variant, tmp_path):
    availability = VARIANTS[variant]
    trainer = make_trainer(variant, tmp_path, seed=SEED + 1)
    copied = copy_matching_weights(default.network, trainer.network)
    assert any(k.startswith('encoders.') for k in copied) and any(k.startswith('decoder.') for k in copied)
    names = shared_names(default, trainer)
    assert set(names) == copied and len(names) > 0.5 * len(list(default.network.parameters()))
    difference = relative_gradient_difference(gradients(trainer, availability), gradients(default, availability),
                                              names)
    print(f'{variant.__name__}: relative gradient difference {difference:.4f} over {len(names)} shared tensors')
    assert difference > MARGIN


def test_random_only_infers_like_the_default(default, tmp_path):
    """Table 8 compares training-time orderings: in eval mode "Random only" is the default model."""
    trainer = make_trainer(ft.nnUNetTrainerSMSN_randomOnly, tmp_path, seed=SEED + 1)
    copy_matching_weights(default.network, trainer.network)
    data, _ = batch()
    outputs = []
    for t in (default, trainer):
        t.network.eval()
        with torch.no_grad():
            outputs.append(t.network(data * MISSING[:, :, None, None, None], MISSING))
        t.network.train()
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
