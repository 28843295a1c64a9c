"""SMSN's bottleneck fusion module for the multi-encoder U-Net
(:class:`~nnunet_missingmod.networks.multi_encoder.MultiEncoderFusionUNet`), built and called like the parallel
fusions of :mod:`nnunet_missingmod.methods.fusion.modules` (whose docstring states the protocol), reading the
network input for its reconstruction loss.

T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang, "Sequential Information Bottleneck Fusion: Towards Robust
and Generalizable Multi-Modal Brain Tumor Segmentation" ("the paper" below).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunet_missingmod.losses.gaussian import gaussian_kl_standard_normal, initial_log_variance
from nnunet_missingmod.methods.fusion.modules import Losses
from nnunet_missingmod.methods.smsn.losses import masked_reconstruction_loss, orthogonality_loss
from nnunet_missingmod.networks.masking import masked_mean
from nnunet_missingmod.networks.transformer import ModalityTransformer


#: the re-ordering modes of SMSN (Table 8 and Table 4)
ORDER_MODES = ('random', 'random_only', 'fixed', 'none')


def _as_stride_lists(strides: Sequence | None, ndim: int) -> List[List[int]]:
    """The plans' strides (ints or per-axis lists) as per-axis lists; ``None`` -> no down-sampling."""
    if strides is None:
        return []
    return [list(s) if isinstance(s, (list, tuple)) else [int(s)] * ndim for s in strides]


class ReconstructionDecoder(nn.Module):
    """A narrow decoder ``psi`` from a bottleneck latent back to input modalities (SMSN Eq. 6).

    ``(B, in_channels, *bottleneck)`` -> ``(B, out_channels, *patch)``, following the encoder's down-sampling
    stages (the plans' ``strides``) in reverse: every stage but the last is a transposed convolution (kernel =
    stride) followed by one conv-norm-nonlin block (dynamic_network_architectures ``ConvDropoutNormReLU``,
    kernel 3, no dropout); the last stage is a transposed convolution straight to one output channel per
    reconstructed modality, so nothing but that one cheap layer runs at the patch resolution. The width is
    ``base_channels`` at half the patch resolution and doubles per coarser stage up to ``max_channels``; no conv
    block runs at the patch resolution, which keeps the decoders' share of SMSN's training step small (measured
    against a conv block there: docs/results/2026-11-26-compute-cpu.md). Without down-sampling the decoder is a
    single 1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, strides: Sequence | None, block_kwargs: dict,
                 base_channels: int = 8, max_channels: int = 64):
        super().__init__()
        conv_op = block_kwargs['conv_op']
        ndim = convert_conv_op_to_dim(conv_op)
        transposed = get_matching_convtransp(conv_op)
        ups = [s for s in _as_stride_lists(strides, ndim) if any(i > 1 for i in s)][::-1]   # bottleneck first
        layers: List[nn.Module] = []
        channels = in_channels
        for j, stride in enumerate(ups[:-1]):
            width = min(base_channels * 2 ** (len(ups) - 2 - j), max_channels)
            layers.append(transposed(channels, width, stride, stride, bias=True))
            layers.append(ConvDropoutNormReLU(
                conv_op, width, width, 3, 1, bool(block_kwargs.get('conv_bias', True)),
                block_kwargs.get('norm_op'), block_kwargs.get('norm_op_kwargs'), None, None,
                block_kwargs.get('nonlin'), block_kwargs.get('nonlin_kwargs'), block_kwargs.get('nonlin_first', False)))
            channels = width
        layers.append(transposed(channels, out_channels, ups[-1], ups[-1], bias=True) if ups
                      else conv_op(channels, out_channels, 1))
        self.layers = nn.Sequential(*layers)
        self.scale = [int(np.prod([s[d] for s in ups])) for d in range(ndim)] if ups else [1] * ndim

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


#: KL per latent element (nats) above which a latent channel counts as active (its mean over samples and voxels)
ACTIVE_CHANNEL_NATS = 0.01


def latent_figures(kl: torch.Tensor, name: str) -> Losses:
    """Logged figures of one stage's ``(B, K, *spatial)`` element-wise KL to the prior: ``kl_<name>`` in nats per
    sample (summed over channels and voxels, mean over samples) and ``active_<name>``, the fraction of the ``K``
    latent channels whose mean KL per element exceeds :data:`ACTIVE_CHANNEL_NATS` (a channel below it carries
    almost nothing about the input: the KL to a fixed prior bounds the information from above)."""
    per_channel = kl.transpose(0, 1).flatten(1).mean(1)
    return {f'kl_{name}': kl.flatten(1).sum(1).mean(), f'active_{name}': (per_channel > ACTIVE_CHANNEL_NATS).float().mean()}


def latent_share(latent_part: torch.Tensor, features: torch.Tensor, availability: torch.Tensor,
                 varying: bool = False) -> torch.Tensor:
    """Logged figure ``latent_share``: rms of what the fused latent adds to the decoder's input, ``W z_2`` (``z~_2``
    without the projection's bias, ``(B, C, *spatial)``), over the rms of the term it is added to, the present
    modalities' ``x_{s_i}`` (``(B, M, C, *spatial)``). Near 0, the decoder's input is ``x_{s_i}`` alone whatever
    ``z_2`` holds: a knock-out of the bottleneck changes nothing.

    ``varying=True`` (figure ``latent_share_varying``): ``W z_2`` less its spatial mean per sample and channel. A
    per-channel constant added to the decoder's input is mostly removed by the decoder's instance normalisation, so
    a large ``latent_share`` with a small ``latent_share_varying`` is a latent the decoder uses as a bias only."""
    latent = latent_part.detach().float()
    if varying:
        latent = latent - latent.mean(tuple(range(2, latent.ndim)), keepdim=True)
    present = features[availability]
    return latent.square().mean().sqrt() / present.detach().float().square().mean().sqrt()


class SMSNFusion(nn.Module):
    """SMSN's information-bottleneck fusion module (IBFM) + modality-specific feature extraction (the paper's
    Sec. 4; "Table n" below are the paper's tables).

    Per sample:

    1. **Re-ordering** (``order_mode``): ``'random'`` (paper) -- a uniformly drawn *available* modality first, the
       remaining ``M - 1`` (present or not) in uniformly random order; ``'random_only'`` -- a uniform random
       permutation (Table 8, "Random only"); ``'fixed'`` -- the order stored in the buffer :attr:`order` (Table 8
       "Fixed 1/2"; the trainer writes it from modality names, it is saved with the checkpoint); ``'none'`` --
       channel order (Table 4, no re-ordering). The random draws come from the NumPy generator :attr:`rng` (the
       trainer replaces it by its own seeded generator, so a seeded run repeats). **Eval mode** is
       deterministic: ``'random'`` and ``'random_only'`` both take the present modalities first, each group in
       :attr:`order` (default channel order) -- Table 8 compares *training-time* orderings, so "Random only"
       differs from the paper's strategy only in training; ``'fixed'`` keeps its fixed order and ``'none'``
       the channel order (those ablations have no ordering strategy at all, in training or inference).
    2. **Two-stage IB fusion** (Eq. 4-5): stage I maps ``[x_1, x_2]`` (channel concatenation of the first two
       modality features in the drawn order) to a diagonal Gaussian ``(mu_1, logvar_1)`` with ``K_1`` channels;
       stage II maps ``[z_1, x_3, ..., x_M]`` to ``(mu_2, logvar_2)`` with ``K_2`` channels. Generalisation to
       ``M`` modalities: the first two always form stage I and stage II takes *all* the remaining ``M - 2``
       (for ``M = 4`` exactly the paper's ``[z_1, x_3, x_4]``; for ``M = 2`` stage II refines ``z_1`` alone).
       Missing modalities enter as zero features, as in the paper ("a missing modality (represented as a zero
       tensor)"). The Gaussian heads are per-voxel MLPs (1x1 convolutions) whose last layer starts at zero, so
       that ``mu = 0, logvar = 0`` (the prior) at initialisation. (He-initialised, stage I's large log-variances
       chain through ``z_1`` into stage II and the first KL explodes: docs/results/2026-11-26-loss-term-scales.md.)
       ``z`` is
       reparameterised in training and the mean is used in eval mode. ``L_e`` (loss ``'kl'``, Eq. 5) is the sum
       over the two stages of the KL to ``N(0, I)`` in **nats per sample** (summed over all latent dimensions
       -- channels x voxels -- averaged over the batch, float32), the variational-IB reduction. Each stage's KL and
       the fraction of its latent channels that are active (:func:`latent_figures`) are returned as logged
       figures: a bottleneck whose KL collapses to 0 carries nothing to the decoder.
    3. **Reconstruction** (Eq. 6, loss ``'recon'``): two small decoders (:class:`ReconstructionDecoder`) rebuild the
       *input modalities* at the patch resolution: ``psi_0(z_1)`` the first two modalities of the drawn order,
       ``psi_1(z_2)`` the remaining ``M - 2`` (the equation's ``z_0/z_1`` subscripts are read as the two stage
       outputs ``z_1/z_2``, as its text says). Each decoder gives one map per modality in channel order, Eq. 6's
       ``q_psi(x_i | z)`` for modality ``i``, and only the maps of its stage's modalities are scored: with the
       random fusion order a decoder with one output per *position* would have to tell from ``z`` which modality
       it is rebuilding. Loss: the unit-variance Gaussian NLL per voxel
       (``0.5 * squared error``, nats/voxel), summed over the *present* modalities only (``M_i = 1``; a missing
       modality contributes exactly zero), weighted ``beta`` (stage I, default 0.7) and ``gamma`` (stage II,
       default 0.3) -- the best pair of Table 5 and the setting of Tables 2 and 4. Needs the network input
       (``image``) in training. The logged figure ``recon_zero`` is ``L_r`` of decoders that predict zero on the
       same batch and mask: ``recon`` at ``recon_zero`` means the decoders rebuild nothing, so ``L_r`` rewards
       no information in ``z``.
    4. **Specific feature extraction** (Sec. 4): ``z_2`` is projected to ``C`` channels (``z~_2``) so that it can
       be added to the modality features; a transformer runs over the voxels of the ``M`` modality feature maps
       and ``z~_2`` (missing modalities masked out of attention) and its output is split back into ``x_{s_i}``.
       ``L_o`` (loss ``'orth'``) is ``sum_i (z~_2 . x_{s_i})^2`` per voxel, summed over the present modalities,
       averaged over voxels and samples, with the dot product read as the cosine similarity by default
       (``orthogonality_cosine=True``): the paper's raw dot product grows with the feature width and scale
       and swamped the segmentation gradient in our measurements (see ``nnUNetTrainerSMSN``);
       ``orthogonality_cosine=False`` is the raw dot product, see
       :func:`~nnunet_missingmod.methods.smsn.losses.orthogonality_loss`.
       ``x'_i = x_{s_i} + z~_2``; the decoder gets the mean of ``x'_i`` over the present modalities. Without the
       specific module (Table 4 ablation) ``x'_i = x_i + z~_2`` and there is no ``L_o``. The logged figure
       ``latent_share`` (:func:`latent_share`) is the size of what ``z_2`` adds to ``x'_i`` relative to ``x_{s_i}``,
       ``latent_share_varying`` that of its spatially varying part.

    ``bottleneck_ratios`` give ``(K_1, K_2)`` relative to the modality feature width ``C`` (rounded, at least 1);
    the paper's best (Table 9) is 128 and 256 for 128-channel modality features, i.e. ``(1, 2)``, the default. ``strides`` are the encoder's strides (needed by the reconstruction
    decoders to reach the patch resolution; ``None`` = the image has the bottleneck's resolution).
    """

    #: information paths a knock-out can remove (:meth:`MissingModalityNetwork.set_knockout`): ``'bottleneck'``
    #: replaces the fused latent ``z_2`` by the prior mean 0 (``z~_2`` is then the projection's bias),
    #: ``'specific'`` bypasses the specific-feature module (``x'_i = x_i + z~_2``)
    KNOCKOUT_PATHS = ('bottleneck', 'specific')

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int],
                 bottleneck_ratios: Tuple[float, float] = (1.0, 2.0), order_mode: str = 'random',
                 use_reconstruction: bool = True, use_specific: bool = True, use_orthogonality: bool = True,
                 beta: float = 0.7, gamma: float = 0.3, num_heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0,
                 strides: Sequence | None = None, reconstruction_channels: int = 8,
                 orthogonality_cosine: bool = True, initial_std: float | None = None):
        super().__init__()
        #: the Gaussian heads' log-variance bias at the start (None: 0, the prior's)
        self.initial_logvar = None if initial_std is None else initial_log_variance(initial_std)
        if num_modalities < 2:
            raise ValueError(f"SMSN fuses modalities sequentially and needs at least 2, got {num_modalities}")
        if order_mode not in ORDER_MODES:
            raise ValueError(f"unknown order_mode {order_mode!r}; choose one of {ORDER_MODES}")
        if use_orthogonality and not use_specific:
            raise ValueError("the orthogonality loss acts on the specific features: it needs use_specific=True")
        conv_op = block_kwargs['conv_op']
        k1, k2 = (max(1, int(round(r * channels))) for r in bottleneck_ratios)
        self.num_modalities, self.channels = num_modalities, channels
        self.order_mode = order_mode
        self.use_reconstruction, self.use_specific, self.use_orthogonality = \
            use_reconstruction, use_specific, use_orthogonality
        self.orthogonality_cosine = orthogonality_cosine
        self.knocked_out = frozenset()
        self.beta, self.gamma = beta, gamma
        #: generator of the fusion order (the trainer hands its seeded generator to every module with an ``rng``)
        self.rng = np.random.default_rng()
        self.register_buffer('order', torch.arange(num_modalities))
        self.stage1 = self._gaussian_head(conv_op, 2 * channels, k1)
        self.stage2 = self._gaussian_head(conv_op, k1 + (num_modalities - 2) * channels, k2)
        self.common = conv_op(k2, channels, 1)
        if use_reconstruction:
            self.reconstruct1 = ReconstructionDecoder(k1, num_modalities, strides, block_kwargs,
                                                      reconstruction_channels)
            self.reconstruct2 = ReconstructionDecoder(k2, num_modalities, strides, block_kwargs,
                                                      reconstruction_channels) if num_modalities > 2 else None
        if use_specific:
            self.specific = ModalityTransformer(num_modalities + 1, channels, conv_op, num_heads, depth, mlp_ratio)
        self.reset_gaussian_heads()

    @staticmethod
    def _gaussian_head(conv_op, in_channels: int, latent: int) -> nn.Sequential:
        return nn.Sequential(conv_op(in_channels, latent, 1), nn.LeakyReLU(1e-2), conv_op(latent, 2 * latent, 1))

    def reset_gaussian_heads(self) -> None:
        """Zero the last layer of both Gaussian heads: ``mu = 0, logvar = 0`` (the prior, KL = 0) at the start; with
        ``initial_std`` the log-variance's bias is ``2 ln initial_std`` instead (``mu = 0``, ``sigma =
        initial_std``: the deep variational information bottleneck's small start, A. A. Alemi, I. Fischer, J. V.
        Dillon, K. Murphy, "Deep Variational Information Bottleneck", ICLR 2017). At the prior the KL's gradient on
        the log-variance is zero and ``z`` is pure noise.

        :class:`~nnunet_missingmod.networks.multi_encoder.MultiEncoderFusionUNet` calls it again (through
        :meth:`after_weight_init`) after its He initialisation of all convolutions."""
        for head in (self.stage1, self.stage2):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
            if self.initial_logvar is not None:   # output channels: K means, then K log-variances
                nn.init.constant_(head[-1].bias[head[-1].out_channels // 2:], self.initial_logvar)

    def bottleneck_parameters(self) -> List[nn.Parameter]:
        """The parameters of the information bottleneck proper, the two Gaussian heads and the reconstruction
        decoders (``nnUNetTrainerSMSN`` trains them with Adam, the rest of the network with nnU-Net's SGD)."""
        modules = [self.stage1, self.stage2] + [getattr(self, name) for name in ('reconstruct1', 'reconstruct2')
                                                if getattr(self, name, None) is not None]
        return [p for module in modules for p in module.parameters()]

    def after_weight_init(self) -> None:
        """Called by the network after its He initialisation of every convolution."""
        self.reset_gaussian_heads()

    def set_order(self, order: Sequence[int]) -> None:
        """Set the fixed / eval priority order (channel indices, a permutation of ``range(M)``)."""
        if sorted(int(i) for i in order) != list(range(self.num_modalities)):
            raise ValueError(f"order {list(order)} is not a permutation of range({self.num_modalities})")
        self.order.copy_(torch.as_tensor(list(order), dtype=torch.long))

    def draw_order(self, availability: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` per-sample fusion order (channel indices), see step 1 of the class docstring."""
        b, m = availability.shape
        device = availability.device
        base = self.order.to(device).expand(b, m)
        if self.order_mode == 'fixed':
            return base
        if self.order_mode == 'none':
            return torch.arange(m, device=device).expand(b, m)
        if not self.training:               # 'random' and 'random_only': present first, each group in ``order``
            missing_in_base = (~availability.gather(1, base)).to(torch.uint8)
            return base.gather(1, torch.sort(missing_in_base, dim=1, stable=True).indices)
        keys = torch.from_numpy(self.rng.random((b, m))).to(device)
        if self.order_mode == 'random':
            draw = torch.from_numpy(self.rng.random((b, m))).to(device)
            first = torch.where(availability, draw, -1.0).argmax(1)
            keys[torch.arange(b, device=device), first] = -1.0
        return keys.argsort(1)

    def _sample(self, head: nn.Module, inputs: torch.Tensor):
        mu, logvar = head(inputs).chunk(2, dim=1)
        if not self.training:
            return mu, mu, logvar
        std = torch.exp(0.5 * logvar.float())             # float32: exp overflows in half precision
        return (mu.float() + torch.randn_like(std) * std).to(mu.dtype), mu, logvar

    def _reconstruction_loss(self, decoder: ReconstructionDecoder, latent: torch.Tensor, image: torch.Tensor,
                             mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The decoder's masked reconstruction loss, and (detached) that of predicting zero: ``recon_zero``."""
        prediction = decoder(latent)
        if prediction.shape[2:] != image.shape[2:]:
            raise ValueError(f"the reconstruction decoder gives {tuple(prediction.shape[2:])} voxels from a "
                             f"{tuple(latent.shape[2:])} bottleneck (strides up-sample x{decoder.scale}), the image "
                             f"has {tuple(image.shape[2:])}: pass the encoder's strides to SMSNFusion")
        zero = masked_reconstruction_loss(torch.zeros_like(image), image, mask).detach()
        return masked_reconstruction_loss(prediction, image, mask), zero

    def forward(self, features: torch.Tensor, availability: torch.Tensor, image: torch.Tensor | None = None
                ) -> Tuple[torch.Tensor, Losses, Losses]:
        b, m, c = features.shape[:3]
        order = self.draw_order(availability)
        rows = torch.arange(b, device=features.device)[:, None]
        ordered = features[rows, order]

        z1, mu1, logvar1 = self._sample(self.stage1, ordered[:, :2].flatten(1, 2))
        z2, mu2, logvar2 = self._sample(self.stage2, torch.cat([z1, ordered[:, 2:].flatten(1, 2)], 1))
        if 'bottleneck' in self.knocked_out:
            z2 = torch.zeros_like(z2)                       # the prior mean: the fused latent carries nothing
        common = self.common(z2)

        losses: Losses = {}
        log: Losses = {}
        if self.training:
            kl1, kl2 = gaussian_kl_standard_normal(mu1, logvar1, 'none'), gaussian_kl_standard_normal(mu2, logvar2, 'none')
            losses['kl'] = kl1.flatten(1).sum(1).mean() + kl2.flatten(1).sum(1).mean()
            log = latent_figures(kl1.detach(), 'stage1') | latent_figures(kl2.detach(), 'stage2')
            if self.use_reconstruction:
                if image is None:
                    raise ValueError("SMSN's reconstruction loss (Eq. 6) needs the input image: call "
                                     "fusion(features, availability, image) in training")
                stage_one = torch.zeros_like(availability).scatter_(1, order[:, :2], True)
                recon, zero = self._reconstruction_loss(self.reconstruct1, z1, image, availability & stage_one)
                recon, zero = self.beta * recon, self.beta * zero
                if self.reconstruct2 is not None:
                    recon2, zero2 = self._reconstruction_loss(self.reconstruct2, z2, image,
                                                              availability & ~stage_one)
                    recon, zero = recon + self.gamma * recon2, zero + self.gamma * zero2
                losses['recon'], log['recon_zero'] = recon, zero

        if self.use_specific and 'specific' not in self.knocked_out:
            maps = torch.cat([features, common[:, None]], 1)
            pad = torch.cat([~availability, availability.new_zeros(b, 1)], 1)
            specific = self.specific(maps, pad)[:, :m]
            if self.training and self.use_orthogonality:
                losses['orth'] = orthogonality_loss(specific, common, availability,
                                                 normalize=self.orthogonality_cosine)
        else:
            specific = features
        if self.training:
            added = common - self.common.bias.view(1, -1, *[1] * (common.ndim - 2))
            log['latent_share'] = latent_share(added, specific, availability)
            log['latent_share_varying'] = latent_share(added, specific, availability, varying=True)
        return masked_mean(specific + common[:, None], availability), losses, log
