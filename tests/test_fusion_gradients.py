"""Every SMSN ablation/option trainer trains a different model: on the same batch, with the same weights where
the architectures agree and the same random draws, its loss gradient differs from ``nnUNetTrainerSMSN``'s.

The recipe: build both trainers (conftest ``make_trainer``), copy the default's weights into the variant wherever
name and shape match, give both the same seeded NumPy generator (fusion order) and torch seed (reparameterisation
noise), run ``forward_loss`` on the same data / deep-supervision target / availability and compare the gradients
over the parameters both have (same name and shape): ``||g_variant - g_default|| / ||g_default||``. A second
copy of the default trainer gives ~0, so the test would notice a variant that is the default model in disguise.
"""
import numpy as np
import pytest
import torch

from conftest import make_trainer
from nnunet_missingmod.training import fusion_trainers as ft

torch.set_num_threads(1)

SEED = 0
#: the relative gradient difference every variant must exceed. Measured (CPU, seed 0): noLr 0.070, fixed1 0.42,
#: randomOnly 0.44 (missing-modality mask), fixed2 0.44, noReorder 0.51, noSpecific 0.86, noLo 0.86,
#: bottleneck* 1.24-1.30; the default against its own copy 0.0
MARGIN = 0.04
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
    assert variants == set(VARIANTS)


def batch():
    g = torch.Generator().manual_seed(SEED)
    data = torch.randn(2, 4, 16, 16, 16, generator=g)
    target = [(torch.rand(2, 3, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i, generator=g) > 0.5).float()
              for i in range(3)]
    return data, target


def copy_matching_weights(source, destination):
    """Load ``source``'s parameters into ``destination`` wherever name and shape match. Parameters only: buffers
    (SMSN's fusion ``order``, set by the fixed-order trainers) belong to the variant's definition."""
    own = dict(destination.network.named_parameters())
    matching = {k: v for k, v in source.network.named_parameters() if k in own and own[k].shape == v.shape}
    destination.network.load_state_dict(matching, strict=False)
    return matching


def loss_gradients(trainer, availability):
    """Gradients of the training loss (``forward_loss``) on the fixed batch, seeded draws; by parameter name."""
    data, target = batch()
    trainer.rng = np.random.default_rng(SEED)
    trainer.share_rng(trainer.network)
    torch.manual_seed(SEED)
    trainer.network.train()
    loss, _ = trainer.forward_loss(data * availability[:, :, None, None, None], target, availability)
    names, params = zip(*[(n, p) for n, p in trainer.network.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, p, g in zip(names, params, grads)}


def relative_difference(variant, default):
    shared = [n for n in default if n in variant and variant[n].shape == default[n].shape]
    diff = torch.sqrt(sum((variant[n] - default[n]).double().square().sum() for n in shared))
    norm = torch.sqrt(sum(default[n].double().square().sum() for n in shared))
    return float(diff / norm), len(shared)


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
    assert len(copy_matching_weights(default, twin)) == len(list(default.network.parameters()))   # ... replaced
    difference, count = relative_difference(loss_gradients(twin, availability),
                                            loss_gradients(default, availability))
    assert count == len(list(default.network.parameters()))
    assert difference < 1e-5


@pytest.mark.parametrize('variant', list(VARIANTS), ids=lambda cls: cls.__name__.split('_', 1)[1])
def test_variant_gradient_differs_from_the_default(default, variant, tmp_path):
    availability = VARIANTS[variant]
    trainer = make_trainer(variant, tmp_path, seed=SEED + 1)
    copied = copy_matching_weights(default, trainer)
    assert any(k.startswith('encoders.') for k in copied) and any(k.startswith('decoder.') for k in copied)
    difference, count = relative_difference(loss_gradients(trainer, availability),
                                            loss_gradients(default, availability))
    print(f'{variant.__name__}: relative gradient difference {difference:.4f} over {count} shared tensors')
    assert count > 0.5 * len(list(default.network.parameters()))
    assert difference > MARGIN


def test_random_only_infers_like_the_default(default, tmp_path):
    """Table 8 compares training-time orderings: in eval mode "Random only" is the default model."""
    trainer = make_trainer(ft.nnUNetTrainerSMSN_randomOnly, tmp_path, seed=SEED + 1)
    copy_matching_weights(default, trainer)
    data, _ = batch()
    outputs = []
    for t in (default, trainer):
        t.network.eval()
        with torch.no_grad():
            outputs.append(t.network(data * MISSING[:, :, None, None, None], MISSING))
        t.network.train()
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
