"""Bottleneck fusion modules of the multi-encoder networks (:mod:`nnunet_missingmod.networks.multi_encoder`).

Every fusion module is called as ``fused, aux = fusion(features, availability)`` with

* ``features``: ``(B, M, C, *spatial)`` bottleneck features of the ``M`` modality encoders, in channel order;
  entries of missing modalities are zero (their encoders are not run) and are excluded by every fusion;
* ``availability``: ``(B, M)`` bool, True = present, at least one modality per sample;
* ``fused``: ``(B, C, *spatial)`` for the shared decoder; ``aux``: unweighted auxiliary losses in training mode,
  ``{}`` in eval mode.

Every parameter takes part in every forward pass whatever the mask (missing entries are removed with masks and
``torch.where``, not by skipping modules), so DDP with ``find_unused_parameters=False`` works.

* :class:`ConcatFusion` -- parallel fusion by masked concatenation + convolution (mmFormer-style baseline).
* :class:`AttentionFusion` -- parallel fusion by a transformer over all modality tokens, missing modalities
  removed from attention by ``key_padding_mask`` (mmFormer's inter-modal transformer).
* :class:`SMSNFusion` -- the sequential information-bottleneck fusion of SMSN (Liu et al.), see its docstring.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Type

import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

from nnunet_missingmod.losses.information_bottleneck import gaussian_kl_standard_normal, \
    masked_reconstruction_loss, orthogonality_loss

Aux = Dict[str, torch.Tensor]


def _spatial_view(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B, M)`` -> ``(B, M, 1, ..., 1)`` broadcastable to a ``(B, M, C, *spatial)`` stack of ``ndim`` dims."""
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def masked_mean(features: torch.Tensor, availability: torch.Tensor) -> torch.Tensor:
    """Mean over the available modalities of a ``(B, M, C, *spatial)`` stack -> ``(B, C, *spatial)``."""
    weights = _spatial_view(availability, features.ndim).to(features.dtype)
    count = availability.sum(1).clamp_min(1).to(features.dtype)
    return (features * weights).sum(1) / _spatial_view(count, features.ndim - 1)


def _num_heads(channels: int, requested: int, min_head_dim: int = 16) -> int:
    """The largest head count ``<= requested`` that divides ``channels`` with heads at least ``min_head_dim`` wide
    (narrow bottlenecks of small configurations get fewer heads rather than 1-channel heads)."""
    floor = min(min_head_dim, channels)
    return max(h for h in range(1, min(requested, channels) + 1) if channels % h == 0 and channels // h >= floor)


class ModalityTransformer(nn.Module):
    """Pre-norm transformer over the voxels of ``T`` feature maps, with padded maps masked out of attention.

    Input ``(B, T, C, *spatial)``; every voxel of every map is one token of width ``C``. A depth-wise convolution
    (shared by all maps) adds a position encoding that does not depend on the patch size, a learned embedding per
    map tells the maps (modalities) apart. ``pad`` ``(B, T)`` bool marks maps that must not be attended to.
    """

    def __init__(self, num_maps: int, channels: int, conv_op: Type[nn.Module], num_heads: int = 8, depth: int = 1,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.position = conv_op(channels, channels, 3, padding=1, groups=channels)
        self.embedding = nn.Parameter(torch.zeros(num_maps, channels))
        nn.init.trunc_normal_(self.embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(channels, _num_heads(channels, num_heads), int(mlp_ratio * channels),
                                           dropout=0.0, activation='gelu', batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, maps: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, t, c = maps.shape[:3]
        spatial = maps.shape[3:]
        flat = maps.reshape(b * t, c, *spatial)
        flat = flat + self.position(flat)
        tokens = flat.reshape(b, t, c, -1).transpose(2, 3) + self.embedding[None, :, None, :].to(flat.dtype)
        n = tokens.shape[2]
        key_padding_mask = pad[:, :, None].expand(b, t, n).reshape(b, t * n)
        out = self.transformer(tokens.reshape(b, t * n, c), src_key_padding_mask=key_padding_mask)
        return out.reshape(b, t, n, c).transpose(2, 3).reshape(b, t, c, *spatial)


class ConcatFusion(nn.Module):
    """Parallel fusion: masked channel concatenation of all modalities, then conv-norm-nonlin back to ``C``.

    Missing modalities are zero slots of the concatenation; the present ones are rescaled by ``M / #present``
    (as inverted dropout does) so that the convolution sees inputs of the same magnitude for every subset.
    """

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int]):
        super().__init__()
        self.num_modalities = num_modalities
        self.block = ConvDropoutNormReLU(input_channels=num_modalities * channels, output_channels=channels,
                                         kernel_size=kernel_size, stride=1, **block_kwargs)

    def forward(self, features: torch.Tensor, availability: torch.Tensor) -> Tuple[torch.Tensor, Aux]:
        b, m = availability.shape
        scale = availability.to(features.dtype) * (m / availability.sum(1, keepdim=True).to(features.dtype))
        stacked = features * _spatial_view(scale, features.ndim)
        return self.block(stacked.flatten(1, 2)), {}


class AttentionFusion(nn.Module):
    """Parallel fusion by attention (mmFormer's inter-modal transformer): all voxels of all modalities are tokens.

    Tokens of missing modalities are excluded from attention with ``key_padding_mask``; the transformer outputs
    of the present modalities are averaged.
    """

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int],
                 num_heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0):
        super().__init__()
        self.transformer = ModalityTransformer(num_modalities, channels, block_kwargs['conv_op'], num_heads, depth,
                                               mlp_ratio)

    def forward(self, features: torch.Tensor, availability: torch.Tensor) -> Tuple[torch.Tensor, Aux]:
        return masked_mean(self.transformer(features, ~availability), availability), {}


#: the re-ordering modes of SMSN (Table 8 and Table 4)
ORDER_MODES = ('random', 'random_only', 'fixed', 'none')


class SMSNFusion(nn.Module):
    """SMSN's information-bottleneck fusion module (IBFM) + modality-specific feature extraction (Sec. 4).

    Per sample:

    1. **Re-ordering** (``order_mode``): ``'random'`` (paper) -- a uniformly drawn *available* modality first, the
       remaining ``M - 1`` (present or not) in uniformly random order; ``'random_only'`` -- a uniform random
       permutation (Table 8, "Random only"); ``'fixed'`` -- the order stored in the buffer :attr:`order` (Table 8
       "Fixed 1/2"; the trainer writes it from modality names, it is saved with the checkpoint); ``'none'`` --
       channel order (Table 4, no re-ordering). In eval mode the order is deterministic: ``'random'`` takes the
       present modalities first, each group in :attr:`order` (default channel order); ``'random_only'`` takes
       :attr:`order` as it is; the fixed modes are the same as in training.
    2. **Two-stage IB fusion** (Eq. 4-5): stage I maps ``[x_1, x_2]`` (channel concatenation of the first two
       modality features in the drawn order) to a diagonal Gaussian ``(mu_1, logvar_1)`` with ``K_1`` channels;
       stage II maps ``[z_1, x_3, ..., x_M]`` to ``(mu_2, logvar_2)`` with ``K_2`` channels. Generalisation to
       ``M`` modalities: the first two always form stage I and stage II takes *all* the remaining ``M - 2``
       (for ``M = 4`` exactly the paper's ``[z_1, x_3, x_4]``; for ``M = 2`` stage II refines ``z_1`` alone).
       Missing modalities enter as zero features, as in the paper ("a missing modality (represented as a zero
       tensor)"). The Gaussian heads are per-voxel MLPs (1x1 convolutions); ``z`` is reparameterised in
       training and the mean is used in eval mode. ``L_e`` (aux ``'kl'``) is the sum over the two stages of the
       KL to ``N(0, I)``, each averaged per latent element (float32).
    3. **Reconstruction** (Eq. 6, aux ``'recon'``): 1x1-conv decoders ``psi_0(z_1) -> (x_1, x_2)`` and
       ``psi_1(z_2) -> (x_3, ..., x_M)`` (the equation's ``z_0/z_1`` subscripts are read as the two stage outputs
       ``z_1/z_2``, as its text says); squared error (the log-likelihood of a unit-variance Gaussian decoder)
       counted only where ``M_i = 1``, weighted ``beta`` (stage I, default 0.7) and ``gamma`` (stage II,
       default 0.3) -- the best pair of Table 5 and the setting of Tables 2 and 4. The reconstruction targets are
       detached so that the encoders cannot shrink their features to make reconstruction trivial.
    4. **Specific feature extraction** (Sec. 4): ``z_2`` is projected to ``C`` channels (``z~_2``) so that it can
       be added to the modality features; a transformer runs over the voxels of the ``M`` modality feature maps
       and ``z~_2`` (missing modalities masked out of attention) and its output is split back into ``x_{s_i}``.
       ``L_o`` (aux ``'orth'``) is the squared cosine similarity between ``z~_2`` and each present ``x_{s_i}`` per
       voxel. ``x'_i = x_{s_i} + z~_2``; the decoder gets the mean of ``x'_i`` over the present modalities.
       Without the specific module (Table 4 ablation) ``x'_i = x_i + z~_2`` and there is no ``L_o``.

    ``bottleneck_sizes`` are ``(K_1, K_2)``; the paper's best (Table 9) is 128 and 256 for 128-channel modality
    features, i.e. ``(C, 2C)``, the default.
    """

    def __init__(self, num_modalities: int, channels: int, block_kwargs: dict, kernel_size: Sequence[int],
                 bottleneck_sizes: Tuple[int, int] | None = None, order_mode: str = 'random',
                 use_reconstruction: bool = True, use_specific: bool = True, use_orthogonality: bool = True,
                 beta: float = 0.7, gamma: float = 0.3, num_heads: int = 8, depth: int = 1, mlp_ratio: float = 2.0):
        super().__init__()
        if num_modalities < 2:
            raise ValueError(f"SMSN fuses modalities sequentially and needs at least 2, got {num_modalities}")
        if order_mode not in ORDER_MODES:
            raise ValueError(f"unknown order_mode {order_mode!r}; choose one of {ORDER_MODES}")
        if use_orthogonality and not use_specific:
            raise ValueError("the orthogonality loss acts on the specific features: it needs use_specific=True")
        conv_op = block_kwargs['conv_op']
        k1, k2 = bottleneck_sizes if bottleneck_sizes is not None else (channels, 2 * channels)
        self.num_modalities, self.channels = num_modalities, channels
        self.order_mode = order_mode
        self.use_reconstruction, self.use_specific, self.use_orthogonality = \
            use_reconstruction, use_specific, use_orthogonality
        self.beta, self.gamma = beta, gamma
        self.register_buffer('order', torch.arange(num_modalities))
        self.stage1 = self._gaussian_head(conv_op, 2 * channels, k1)
        self.stage2 = self._gaussian_head(conv_op, k1 + (num_modalities - 2) * channels, k2)
        self.common = conv_op(k2, channels, 1)
        if use_reconstruction:
            self.reconstruct1 = conv_op(k1, 2 * channels, 1)
            self.reconstruct2 = conv_op(k2, (num_modalities - 2) * channels, 1) if num_modalities > 2 else None
        if use_specific:
            self.specific = ModalityTransformer(num_modalities + 1, channels, conv_op, num_heads, depth, mlp_ratio)

    @staticmethod
    def _gaussian_head(conv_op, in_channels: int, latent: int) -> nn.Sequential:
        return nn.Sequential(conv_op(in_channels, latent, 1), nn.LeakyReLU(1e-2), conv_op(latent, 2 * latent, 1))

    def set_order(self, order: Sequence[int]) -> None:
        """Set the fixed / eval priority order (channel indices, a permutation of ``range(M)``)."""
        if sorted(int(i) for i in order) != list(range(self.num_modalities)):
            raise ValueError(f"order {list(order)} is not a permutation of range({self.num_modalities})")
        self.order.copy_(torch.as_tensor(list(order), dtype=torch.long))

    def draw_order(self, availability: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` per-sample fusion order (channel indices), see step 1 of the class docstring."""
        b, m = availability.shape
        base = self.order.to(availability.device).expand(b, m)
        if self.order_mode in ('fixed', 'none'):
            return base if self.order_mode == 'fixed' else torch.arange(m, device=availability.device).expand(b, m)
        if not self.training:
            if self.order_mode == 'random_only':
                return base
            missing_in_base = (~availability.gather(1, base)).to(torch.uint8)
            return base.gather(1, torch.sort(missing_in_base, dim=1, stable=True).indices)
        keys = torch.rand(b, m, device=availability.device)
        if self.order_mode == 'random':
            first = torch.where(availability, torch.rand(b, m, device=availability.device), -1.0).argmax(1)
            keys[torch.arange(b, device=keys.device), first] = -1.0
        return keys.argsort(1)

    def _sample(self, head: nn.Module, inputs: torch.Tensor):
        mu, logvar = head(inputs).chunk(2, dim=1)
        if not self.training:
            return mu, mu, logvar
        std = torch.exp(0.5 * logvar.float())             # float32: exp overflows in half precision
        return (mu.float() + torch.randn_like(std) * std).to(mu.dtype), mu, logvar

    def forward(self, features: torch.Tensor, availability: torch.Tensor) -> Tuple[torch.Tensor, Aux]:
        b, m, c = features.shape[:3]
        spatial = features.shape[3:]
        order = self.draw_order(availability)
        rows = torch.arange(b, device=features.device)[:, None]
        ordered, ordered_mask = features[rows, order], availability[rows, order]

        z1, mu1, logvar1 = self._sample(self.stage1, ordered[:, :2].flatten(1, 2))
        z2, mu2, logvar2 = self._sample(self.stage2, torch.cat([z1, ordered[:, 2:].flatten(1, 2)], 1))
        common = self.common(z2)

        aux: Aux = {}
        if self.training:
            aux['kl'] = gaussian_kl_standard_normal(mu1, logvar1) + gaussian_kl_standard_normal(mu2, logvar2)
            if self.use_reconstruction:
                target = ordered.detach()
                recon = self.beta * masked_reconstruction_loss(
                    self.reconstruct1(z1).reshape(b, 2, c, *spatial), target[:, :2], ordered_mask[:, :2])
                if self.reconstruct2 is not None:
                    recon = recon + self.gamma * masked_reconstruction_loss(
                        self.reconstruct2(z2).reshape(b, m - 2, c, *spatial), target[:, 2:], ordered_mask[:, 2:])
                aux['recon'] = recon

        if self.use_specific:
            maps = torch.cat([features, common[:, None]], 1)
            pad = torch.cat([~availability, availability.new_zeros(b, 1)], 1)
            specific = self.specific(maps, pad)[:, :m]
            if self.training and self.use_orthogonality:
                present = _spatial_view(availability, specific.ndim - 1)
                aux['orth'] = orthogonality_loss(specific, common[:, None], present, dim=2)
        else:
            specific = features
        return masked_mean(specific + common[:, None], availability), aux
