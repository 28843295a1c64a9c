"""Parallel single-modality network of Hölder-MI (Cheng et al., arXiv:2507.01254): channel encoders f_i + one
shared U-Net backbone T.

``h_i = T(f_i(x_i); theta)`` for every *available* modality i, and the dynamic combination (DC module) predicts a
modality subset S as the mean of its members' outputs ``Y_S = mean_{i in S} h_i`` (Algorithm 1, step 3).

* **f_i** are one grouped convolution (``groups = M``: modality i only sees channel i) followed by the plans' norm
  and non-linearity, mapping every modality into the same C-channel space (C = the backbone's first width). Being
  one parameter tensor for all modalities, it is always part of the graph, which keeps DDP with
  ``find_unused_parameters=False`` working whatever modalities a rank's batch happens to contain.
* **T** is the plans' own architecture (``network_arch_class_name``, e.g. ``PlainConvUNet``), built by nnU-Net's
  ``get_network_from_plans`` with ``C`` input channels and its widths multiplied by ``width_factor``. It runs
  *once* on the (sample, modality) pairs stacked into the batch dimension, with no Python loop over modalities:
  at inference on the available pairs only (missing modalities get no backbone pass, the cost is proportional to
  the number of available modalities, the paper's Theorem 4); in training on all ``B * M`` pairs, the missing
  ones excluded from every combination by zero weights, so that the step has no mask-dependent shape and no host
  sync (Algorithm 1 trains on the full set: every pair is present unless a case has an all-zero channel).
  Per-sample normalisation (nnU-Net's instance norm) keeps the available pairs' outputs exactly as before; with
  batch-statistics norms the missing pairs would enter the statistics.
* **Normalisation per modality** (``modality_specific_norm``, default on): T's convolutions are shared, its
  normalisation layers keep one affine (scale, shift) per modality, as the authors' code keeps one GroupNorm per
  modality (:mod:`nnunet_missingmod.methods.holder_mi.modality_norm`).
* **Combination of logits.** ``Y_S`` averages the per-modality *logits* (pre-sigmoid/softmax). Averaging logits is a
  product of experts in probability space (sigmoid/softmax of a mean of logits); it keeps the output a plain logit
  tensor that nnU-Net's losses, its sliding-window Gaussian blending and its export (``apply_inference_nonlin``)
  consume unchanged, and it is what Algorithm 1 writes (``Mean({h_i})`` of the backbone outputs).

In training mode the network also enumerates/draws the modality subsets of Algorithm 1 (:meth:`training_subsets`)
and returns (:class:`~nnunet_missingmod.networks.outputs.NetworkOutput`), besides the prediction for the given
mask, the extras

* ``'subset_outputs'``: per deep-supervision level the predictions of every subset, (S, B, K, *spatial);
* ``'subsets'``: the (S, B, M) subset masks and ``'subset_weights'`` their (S,) weights in every
  average over subsets (0 for the codes a batch without a complete sample does not use);
* ``'features'``: the per-pair encoder features of the MI levels (N, C_k, *spatial) and
  ``'pair_index'`` (N, 2) (sample, modality) of each pair;
* ``'log'`` (with the MI module): the figures of :class:`VariationalMILoss` for the training log;

and the loss

* ``'mi'``: the unweighted L_MI (Eq. 4-5, nats per sample) between ``d_f`` (mean over the sample's available
  modalities, the target) and ``d_m`` (mean over the subset), averaged over all training subsets (the full set included, as in Algorithm 1),
  when the network was built with an MI module. By default (``mi_num_levels = 1``) the features are the
  deepest encoder stage, the "deep feature" of the paper and the bottleneck ``c5d`` the authors' code uses.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunet_missingmod.methods.holder_mi.mutual_information import VariationalMILoss
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.methods.holder_mi.modality_norm import make_norms_modality_specific
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.networks.plans import PlansArchitecture, scale_widths


def combine_pairs(values: torch.Tensor, pair_index: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    """Mean over the modalities of each subset: (N, *rest) pair values -> (S, B, *rest).

    ``pair_index`` (N, 2) holds (sample, modality) of each row of ``values``; ``subsets`` (S, B, M) bool. Pairs whose
    modality is not in a subset (or not present) do not contribute; every (subset, sample) must contain at least one
    pair (an empty one gives 0; it is not checked, which would read the weights back to the host). One matrix
    product, differentiable w.r.t. ``values``.
    """
    S, B, _ = subsets.shape
    n = values.shape[0]
    member = subsets[:, pair_index[:, 0], pair_index[:, 1]]                        # (S, N)
    of_sample = pair_index[:, 0].unsqueeze(0) == torch.arange(B, device=values.device).unsqueeze(1)  # (B, N)
    weights = (member.unsqueeze(1) & of_sample.unsqueeze(0)).to(values.dtype)     # (S, B, N)
    weights = (weights / weights.sum(-1, keepdim=True).clamp_min(1)).reshape(S * B, n)
    return (weights @ values.reshape(n, -1)).reshape(S, B, *values.shape[1:])


class SharedBackboneNetwork(MissingModalityNetwork):
    """Channel encoders f_i + shared backbone T + dynamic combination (+ optional MI heads for L_MI).

    Args:
        num_modalities: M.
        num_classes: segmentation heads (regions or classes).
        architecture: the plans' architecture of T, widths already scaled (its class must expose ``encoder``
            returning skips and ``decoder``); built by ``get_network_from_plans``.
        deep_supervision: T's deep-supervision outputs.
        channel_encoder_kernel: kernel size of f_i (1 or 3 in the paper's spirit; 3 by default).
        mi_num_levels: number of deepest encoder stages used for L_MI (``None`` = all; 0 = no MI module).
        modality_specific_norm: one affine per modality in every normalisation layer of T.
        mi_gamma0, mi_sigma_min: see :class:`~nnunet_missingmod.methods.holder_mi.mutual_information.VariationalMILoss`.
        subsets_per_step: ``None`` = all non-empty subsets of the available modalities per training step
            (Algorithm 1); an int draws that many subsets uniformly per sample.
    """

    def __init__(self, num_modalities: int, num_classes: int, architecture: PlansArchitecture,
                 deep_supervision: bool = True, channel_encoder_kernel: int = 3,
                 mi_num_levels: Optional[int] = None, mi_gamma0: float = 1.0, mi_sigma_min: float = 1e-2,
                 subsets_per_step: Optional[int] = None, seed: Optional[int] = None,
                 modality_specific_norm: bool = True):
        super().__init__()
        self.num_modalities = int(num_modalities)
        backbone_kwargs = architecture.resolved_kwargs()
        widths = backbone_kwargs['features_per_stage']
        n_stages = backbone_kwargs['n_stages']
        self.common_channels = widths[0] if not isinstance(widths, int) else widths
        conv_op = backbone_kwargs['conv_op']
        norm_op = backbone_kwargs.get('norm_op')
        nonlin = backbone_kwargs.get('nonlin')
        layers = [conv_op(num_modalities, num_modalities * self.common_channels, channel_encoder_kernel,
                          padding=channel_encoder_kernel // 2, groups=num_modalities, bias=True)]
        if norm_op is not None:
            layers.append(norm_op(num_modalities * self.common_channels, **(backbone_kwargs.get('norm_op_kwargs') or {})))
        if nonlin is not None:
            layers.append(nonlin(**(backbone_kwargs.get('nonlin_kwargs') or {})))
        self.channel_encoders = nn.Sequential(*layers)
        self.backbone = architecture.build(self.common_channels, num_classes, deep_supervision)  # initialised
        if not (hasattr(self.backbone, 'encoder') and hasattr(self.backbone, 'decoder')):
            raise TypeError(f"{type(self.backbone).__name__} has no encoder/decoder pair; the shared backbone needs "
                            f"a U-Net of dynamic_network_architectures (e.g. PlainConvUNet, ResidualEncoderUNet)")
        init = getattr(self.backbone, 'initialize', None)
        if init is None:
            init = InitWeights_He(1e-2)
            self.backbone.apply(init)
        self.channel_encoders.apply(init)
        # a plain list: the layers are registered inside the backbone already
        self.modality_affines = make_norms_modality_specific(self.backbone, norm_op, num_modalities) \
            if modality_specific_norm and norm_op is not None else []

        stage_widths = scale_widths(widths, 1.0, n_stages)
        k = n_stages if mi_num_levels is None else int(mi_num_levels)
        if not 0 <= k <= n_stages:
            raise ValueError(f"mi_num_levels must be between 0 and {n_stages}, got {mi_num_levels}")
        self.mi_stages = tuple(range(n_stages - k, n_stages))          # 0-based encoder stages used for L_MI
        self.mi = VariationalMILoss([stage_widths[s] for s in self.mi_stages], list(range(1, k + 1)),
                                    conv_op, mi_gamma0, mi_sigma_min) if k else None
        self.subsets_per_step = subsets_per_step
        self.rng = np.random.default_rng(seed)

    @classmethod
    def build_from_architecture(cls, architecture: PlansArchitecture, num_input_channels: int,
                                num_output_channels: int, *, width_factor: float, deep_supervision: bool,
                                **method_kwargs) -> 'SharedBackboneNetwork':
        """``from_plans(configuration_manager, M, K, width_factor=..., deep_supervision=..., **options)``: T is the
        plans' architecture with scaled widths; ``options`` are the constructor's keyword arguments
        (``channel_encoder_kernel``, ``mi_num_levels``, ``mi_gamma0``, ``subsets_per_step``, ...)."""
        return cls(num_input_channels, num_output_channels, architecture.scaled(width_factor), deep_supervision,
                   **method_kwargs)

    # ------------------------------------------------------------------ subsets
    def training_subsets(self, availability: torch.Tensor):
        """``(subsets, weights)``: (S, B, M) bool subsets of each sample's available modalities used in one training
        step, and (S,) weights of the subsets in the step's averages (1 or 0). Tensor operations on the mask's
        device: no host sync, ``S`` does not depend on the mask.

        ``subsets_per_step is None`` (Algorithm 1): subset code ``c = 1 .. 2^M - 1`` selects, in every sample, the
        available modalities whose *rank* among that sample's available ones has bit set in ``c``; an empty
        selection (a sample with fewer available modalities) falls back to all its available modalities. Codes
        ``c >= 2^k`` (k = largest number of available modalities in the batch) get weight 0, so the averages run
        over ``c = 1 .. 2^k - 1``: for a batch whose samples have the same number of available modalities
        (complete data: every sample) exactly the non-empty subsets. ``subsets_per_step = n``: n subsets per
        sample drawn uniformly over its non-empty subsets (a uniform code ``1 .. 2^k_b - 1`` of its ``k_b``
        available modalities, from :attr:`rng`), all of weight 1.
        """
        B, M = availability.shape
        device = availability.device
        rank = (availability.cumsum(1) - 1).clamp_min(0)                                   # (B, M)
        if self.subsets_per_step is None:
            codes = torch.arange(1, 2 ** M, device=device)[:, None]                        # (S, 1)
            weights = (codes[:, 0] < 2 ** availability.sum(1).max()).float()
        else:
            uniform = torch.from_numpy(self.rng.random((int(self.subsets_per_step), B))).to(device)
            codes = 1 + (uniform * (2 ** availability.sum(1) - 1)).long()                # (S, B)
            weights = torch.ones(codes.shape[0], device=device)
        chosen = ((codes[..., None] >> rank) & 1).bool() & availability                 # (S, B, M)
        subsets = torch.where(chosen.any(-1, keepdim=True), chosen, availability)
        return subsets, weights

    # ------------------------------------------------------------------ forward
    def forward_with_mask(self, x: torch.Tensor, availability: torch.Tensor):
        B, M = availability.shape
        if M != self.num_modalities:
            raise ValueError(f"network built for {self.num_modalities} modalities, got {M} channels")
        d = self.channel_encoders(x)
        d = d.reshape(B, M, self.common_channels, *d.shape[2:])
        if self.training:                                                             # (N, 2): (sample, modality)
            pair_index = torch.cartesian_prod(torch.arange(B, device=x.device), torch.arange(M, device=x.device))
        else:
            pair_index = availability.nonzero()
        for affine in self.modality_affines:
            affine.rows = pair_index[:, 1]
        skips = self.backbone.encoder(d[pair_index[:, 0], pair_index[:, 1]])       # one batched backbone pass
        out = self.backbone.decoder(skips)
        outputs = out if isinstance(out, (list, tuple)) else [out]
        full = availability.unsqueeze(0)
        seg = [combine_pairs(o, pair_index, full)[0] for o in outputs]
        seg = seg if isinstance(out, (list, tuple)) else seg[0]
        if not self.training:
            return NetworkOutput(seg, {}, {})

        subsets, weights = self.training_subsets(availability)
        features = [skips[s] for s in self.mi_stages]
        extras = {'subset_outputs': [combine_pairs(o, pair_index, subsets) for o in outputs],
                  'subsets': subsets, 'subset_weights': weights, 'features': features, 'pair_index': pair_index}
        losses = {}
        if self.mi is not None:
            d_full = [combine_pairs(f, pair_index, full)[0] for f in features]      # (B, C, ...): teacher
            d_missing = [combine_pairs(f, pair_index, subsets) for f in features]  # (S, B, C, ...): students
            losses['mi'], extras['log'] = self.mi(d_full, d_missing, weights[:, None].expand(-1, B))
        return NetworkOutput(seg, losses, extras)

    def auxiliary_head_parameters(self):
        """The MI heads (``mu_k``, ``sigma``): trained by ``L_MI`` alone, left out of the gradient shares."""
        return list(self.mi.parameters()) if self.mi is not None else []
