"""Hölder pseudo-divergence (Eq. 1-2) and the Table IV alternatives."""
import numpy as np
import pytest
import torch

from nnunet_missingmod.methods.holder_mi.divergences import DIVERGENCES, divergence_loss, divergence_map, get_divergence, \
    holder_divergence, image_divergence

ALTERNATIVES = [n for n in DIVERGENCES if n != 'holder']


def numpy_holder(p, q, alpha):
    """Eq. 2 evaluated literally over the last axis."""
    beta = alpha / (alpha - 1)
    return -np.log((p * q).sum(-1) / ((p ** alpha).sum(-1) ** (1 / alpha) * (q ** beta).sum(-1) ** (1 / beta)))


def test_holder_matches_numpy_categorical_soft_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 3, 3)).astype(np.float64)
    q = rng.dirichlet(np.ones(4), size=(2, 3, 3)).transpose(0, 3, 1, 2)
    ours = divergence_map(torch.from_numpy(logits), torch.from_numpy(q), 'softmax', 'holder', alpha=1.1)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = numpy_holder(p.transpose(0, 2, 3, 1), q.transpose(0, 2, 3, 1), 1.1)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6, atol=1e-9)
    assert expected.min() > 0


@pytest.mark.parametrize('alpha', [1.05, 1.1, 1.5])
def test_holder_matches_numpy_bernoulli_one_hot(alpha):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2, size=(2, 3, 4, 4))
    labels = (rng.random((2, 3, 4, 4)) > 0.5).astype(np.float64)
    ours = divergence_map(torch.from_numpy(logits), torch.from_numpy(labels), 'sigmoid', 'holder', alpha=alpha)
    p = 1 / (1 + np.exp(-logits))
    expected = numpy_holder(np.stack([p, 1 - p], -1), np.stack([labels, 1 - labels], -1), alpha)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    # Eq. 1 read per voxel: the loss is the voxel (and region) mean
    assert float(divergence_loss(torch.from_numpy(logits), torch.from_numpy(labels), 'sigmoid', alpha=alpha,
                                 domain='voxel')) == pytest.approx(expected.mean(), rel=1e-5)


def test_holder_zero_at_one_hot_and_decreasing_towards_label():
    label = torch.tensor([[0.0, 1.0, 0.0]])
    one_hot_logp = torch.log(label.clamp(min=1e-7))
    assert float(holder_divergence(one_hot_logp, one_hot_logp, dim=1)) < 1e-6
    # predictions moving towards the label: strictly decreasing, always >= 0
    values = []
    for t in [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]:
        logits = torch.tensor([[0.5, 0.0 + t, -0.3]])
        values.append(float(divergence_map(logits, label, 'softmax', 'holder')))
    assert all(v >= 0 for v in values)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 1e-5


def test_holder_one_hot_label_finite_gradients():
    logits = torch.tensor([[[30.0], [-30.0], [0.0]]], requires_grad=True)
    label = torch.tensor([[[0.0], [1.0], [0.0]]])
    loss = divergence_loss(logits, label, 'softmax', domain='voxel')
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(loss.detach()) > 1  # confidently wrong prediction: large divergence


def test_holder_alpha_must_exceed_one():
    with pytest.raises(ValueError, match='alpha'):
        holder_divergence(torch.zeros(2), torch.zeros(2), dim=0, alpha=1.0)


@pytest.mark.parametrize('name', ALTERNATIVES + ['holder'])
def test_divergences_zero_at_equality_and_nonnegative(name):
    fn = get_divergence(name)
    rng = np.random.default_rng(2)
    # equality: one-hot label vs the same (clamped) one-hot prediction
    one_hot = torch.eye(4, dtype=torch.float64)
    log_one_hot = torch.log(one_hot.clamp(min=1e-7))
    assert float(fn(log_one_hot, log_one_hot, dim=1).abs().max()) < 1e-5
    # random pairs of distributions: >= 0, and > 0 when they differ
    p = torch.from_numpy(rng.dirichlet(np.ones(4), size=50))
    q = torch.from_numpy(rng.dirichlet(np.ones(4), size=50))
    values = fn(p.log(), q.log(), dim=1)
    assert float(values.min()) > 0
    if name != 'holder':  # Hölder is a pseudo-divergence: zero iff p^alpha ~ q^beta, not at p = q
        assert float(fn(p.log(), p.log(), dim=1).abs().max()) < 1e-10


def test_alternatives_closed_forms():
    p = torch.tensor([0.2, 0.8], dtype=torch.float64)
    q = torch.tensor([0.6, 0.4], dtype=torch.float64)
    lp, lq = p.log(), q.log()
    assert float(get_divergence('kl')(lp, lq, 0)) == pytest.approx(0.6 * np.log(3) + 0.4 * np.log(0.5))
    assert float(get_divergence('total_variation')(lp, lq, 0)) == pytest.approx(0.4)
    assert float(get_divergence('squared_hellinger')(lp, lq, 0)) == pytest.approx(
        1 - np.sqrt(0.12) - np.sqrt(0.32))
    assert float(get_divergence('neyman_chi2')(lp, lq, 0)) == pytest.approx(0.16 / 0.2 + 0.16 / 0.8)
    js = 0.5 * (0.2 * np.log(0.2 / 0.4) + 0.8 * np.log(0.8 / 0.6)) + 0.5 * (0.6 * np.log(0.6 / 0.4) + 0.4 * np.log(0.4 / 0.6))
    assert float(get_divergence('JENSEN_SHANNON')(lp, lq, 0)) == pytest.approx(js)


@pytest.mark.parametrize('domain', ['image', 'voxel'])
def test_one_hot_and_empty_labels_stay_finite_for_all(domain):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = (torch.rand(2, 3, 4, 4) > 0.5).float()
    labels[0, 2] = 0  # an empty region (no enhancing tumour in the patch)
    for name in list(DIVERGENCES) + ['mse', 'bce']:
        loss = divergence_loss(logits, labels, 'sigmoid', name, domain=domain)
        grad, = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


def test_voxel_mask_and_broadcast_over_subsets():
    logits = torch.randn(3, 2, 2, 4, 4)  # (S, B, R, ...)
    labels = (torch.rand(2, 2, 4, 4) > 0.5).float()
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, :2] = True
    masked = divergence_loss(logits, labels, 'sigmoid', dim=2, mask=mask, domain='voxel')
    direct = divergence_map(logits, labels, 'sigmoid', dim=2)[..., :2, :].mean()
    assert float(masked) == pytest.approx(float(direct), rel=1e-6)


# --------------------------------------------------------------------------- densities over the image (default)
def softmax_np(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize('alpha', [1.1, 1.5])
def test_image_holder_is_definition_1_over_the_voxels(alpha):
    """Per sample and region: p = softmax over all voxels of sigmoid(logits), q = softmax of the label map (the
    authors' DiceCoef, normalised over the whole patch), Eq. 2 evaluated literally over the voxels."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2, size=(2, 3, 4, 5, 3))
    labels = (rng.random((2, 3, 4, 5, 3)) > 0.7).astype(np.float64)
    ours = image_divergence(torch.from_numpy(logits), torch.from_numpy(labels), 'sigmoid', 'holder', alpha)
    assert ours.shape == (2, 3)
    for b in range(2):
        for r in range(3):
            p = softmax_np((1 / (1 + np.exp(-logits[b, r]))).ravel())
            q = softmax_np(labels[b, r].ravel())
            assert float(ours[b, r]) == pytest.approx(float(numpy_holder(p, q, alpha)), rel=1e-6)
    assert float(divergence_loss(torch.from_numpy(logits), torch.from_numpy(labels), 'sigmoid', alpha=alpha)) == \
        pytest.approx(float(ours.mean()), rel=1e-9)


def test_image_holder_zero_iff_p_alpha_proportional_to_q_beta():
    """Hölder's equality case over a domain: D(p : q) = 0 for p ~ q^(beta/alpha), > 0 for p = q != uniform."""
    alpha = 1.1
    beta = alpha / (alpha - 1)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    p = q ** (beta / alpha)
    p = p / p.sum()
    assert float(holder_divergence(p.log(), q.log(), dim=0, alpha=alpha)) == pytest.approx(0.0, abs=1e-12)
    assert float(holder_divergence(q.log(), q.log(), dim=0, alpha=alpha)) > 1e-3


def test_image_holder_is_not_bce_and_voxel_holder_is():
    """The finding that made the image reading the default: per voxel against hard labels the Hölder term's
    gradient is BCE's (cosine ~1); over the image it points elsewhere."""
    torch.manual_seed(0)
    y = torch.zeros(2, 3, 16, 16, 16)
    y[:, 0, 4:12, 4:12, 4:12] = 1
    y[:, 1, 6:10, 6:10, 6:10] = 1
    y[:, 2, 7:9, 7:9, 7:9] = 1
    logits = torch.randn(2, 3, 16, 16, 16, requires_grad=True)

    def grad(loss):
        return torch.autograd.grad(loss, logits)[0].flatten()

    bce = grad(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
    voxel = grad(divergence_loss(logits, y, 'sigmoid', domain='voxel'))
    image = grad(divergence_loss(logits, y, 'sigmoid', domain='image'))
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(voxel, bce, dim=0)) > 0.999
    assert float(cos(image, bce, dim=0)) < 0.6
    # and the Table IV alternatives over the image are not BCE either
    for name in DIVERGENCES:
        g = grad(divergence_loss(logits, y, 'sigmoid', name, domain='image'))
        assert float(cos(g, bce, dim=0)) < 0.9, name


def test_image_divergence_mask_cuts_gradient_and_softmax_excludes_background():
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 4, 4, 4)), 3).movedim(-1, 1).float()
    mask = torch.ones(2, 1, 4, 4, 4, dtype=torch.bool)
    mask[:, :, 0] = False
    values = image_divergence(logits, labels, 'softmax', mask=mask)
    assert values.shape == (2, 2)  # background class excluded
    grad, = torch.autograd.grad(values.sum(), logits)
    assert float(grad[:, :, 0].abs().max()) == 0.0 and float(grad[:, :, 1:].abs().max()) > 0


def test_standard_losses_mse_and_bce():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 4, 4))
    labels = (rng.random((2, 3, 4, 4)) > 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    mse = ((p - labels) ** 2).mean()
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    t = torch.from_numpy
    assert float(divergence_loss(t(logits), t(labels), 'sigmoid', 'mse')) == pytest.approx(mse, rel=1e-9)
    assert float(divergence_loss(t(logits), t(labels), 'sigmoid', 'BCE')) == pytest.approx(bce, rel=1e-9)


def test_unknown_names():
    with pytest.raises(ValueError, match='unknown divergence'):
        get_divergence('wasserstein')
    with pytest.raises(ValueError, match='domain'):
        divergence_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), 'sigmoid', domain='patch')
    with pytest.raises(ValueError, match='mode'):
        divergence_map(torch.zeros(1, 2), torch.zeros(1, 2), 'tanh')


@pytest.mark.parametrize('mode', ['sigmoid', 'softmax'])
def test_half_precision_inputs_are_evaluated_in_float32(mode):
    """Mixed precision (nnU-Net's autocast on GPUs) hands over float16 logits: same values as float32, finite."""
    torch.manual_seed(0)
    logits = 8 * torch.randn(2, 3, 4, 4, 4)
    target = (torch.rand(2, 3, 4, 4, 4) > 0.5).float()
    if mode == 'softmax':
        target = torch.nn.functional.one_hot(target.argmax(1), 3).movedim(-1, 1).float()
    reference = divergence_map(logits.half().float(), target, mode)
    half = divergence_map(logits.half(), target.half(), mode)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, reference)


def test_axis_domain_matches_numpy():
    """The authors' reading: per class, softmax of the probability map and of the label map along the first spatial
    axis, the Hölder divergence along it, averaged over the other positions (and samples, classes)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2, size=(2, 3, 5, 4, 3))
    labels = (rng.random((2, 3, 5, 4, 3)) > 0.7).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    dens_p = np.exp(p) / np.exp(p).sum(2, keepdims=True)
    dens_q = np.exp(labels) / np.exp(labels).sum(2, keepdims=True)
    expected = numpy_holder(np.moveaxis(dens_p, 2, -1), np.moveaxis(dens_q, 2, -1), 1.1).mean()
    ours = divergence_loss(torch.from_numpy(logits), torch.from_numpy(labels), 'sigmoid', 'holder', 1.1,
                           domain='axis')
    assert float(ours) == pytest.approx(expected, rel=1e-6)


def test_only_the_voxel_reading_reaches_zero():
    """Why 'voxel' is the default: a perfect prediction of a small tumour (2 % of a 24^3 patch) gives exactly 0 per
    voxel, but keeps the density readings at most of their value for an uninformed (all 0.5) prediction."""
    label = torch.zeros(1, 1, 24, 24, 24)
    label[..., 9:15, 9:15, 8:14] = 1.0                                 # 216 of 13824 voxels
    uninformed, perfect = torch.zeros_like(label), (2 * label - 1) * 30
    ratio = {}
    for domain in ('voxel', 'image', 'axis'):
        start = float(divergence_loss(uninformed, label, 'sigmoid', 'holder', 1.1, domain=domain))
        end = float(divergence_loss(perfect, label, 'sigmoid', 'holder', 1.1, domain=domain))
        ratio[domain] = end / start
    assert ratio['voxel'] < 1e-6
    assert ratio['image'] > 0.8 and ratio['axis'] > 0.5
