"""CIML: complementary information mutual learning, with missing modalities.

Paper: C. Shen, W. Li, H. Chen, X. Wang, F. Zhu, Y. Li, X. Wang, B. Jin, "Complementary Information Mutual
Learning for Multimodality Medical Image Segmentation", arXiv:2401.02717 (2024); Sec. 3.1-3.2, Eq. 8-10, Table 1.

Architecture
------------
* **Task decomposition** (Sec. 3.1): one *segmentor* per modality, whose only image input is that (primary)
  modality. A task map assigns each modality the regions its segmentor is responsible for (BraTS default
  FLAIR->WT, T1->TC, T2->WT+TC, T1ce->TC+ET). Each segmentor is the encoder-decoder U-Net of the nnU-Net plans
  (same class, stages, kernels, strides, norm, non-linearity) with its feature widths scaled by a width factor.
* **Message passing** (Sec. 3.2, Fig. 5/8, Table 1): the encoder skips of a segmentor are its *messages*. Every
  decoder stage of every segmentor starts with a cross-modality information gate (:class:`CIGModule`) applied to
  the stage input (the bottleneck for the first stage, then the previous stage's output -- the layout of Table 1,
  where a CIG precedes each up-sampling step). The gate takes that local feature and the other segmentors' encoder
  features of the same scale:

  - attention (``CIG_Attention``): channel-pooled maps (mean and max over channels) of the local feature and of
    each message -> conv(k) + norm + LeakyReLU (4(K+1) channels) -> 1x1 conv + norm + sigmoid = one spatial
    attention map per message;
  - variational inference (``CIG_Mu``/``CIG_Sigma``, one pair per message, run as one grouped 1x1 conv): from the
    attention-weighted message a mean and a log-variance; a reparameterised sample in training and the mean at
    inference; KL to N(0, 1) (float32; reduction: see *KL* below);
  - channel alignment (1x1 conv, no bias) of the summed complementary representations and residual sum with the
    local feature.

  Messages are **not detached**: the loss of segmentor m reaches, through its gates, the encoders of the other
  (present) segmentors that sent the messages. This is the paper's reading: the representation ``K_2`` of Eq. 5-10
  is a function ``f_theta(x_1, x_2, eps)`` of both modalities optimised by automatic differentiation of
  ``L_com``, and in the paper's demonstration (Sec. 4.3) the auxiliary encoder has no loss of its own, so it is
  trained only through the primary sub-task's loss (there only the *primary* features entering the mu/sigma path
  are detached). A segmentor's encoder is therefore trained by its own loss and by the losses of the segmentors
  it sends messages to ("mutual learning"). ``detach_messages=True`` (an ablation, not the paper's) detaches
  the messages from their senders: a segmentor still hears the others, but its encoder is trained by its own loss
  only, which tells what the mutual learning adds to the message passing.

* **KL** (Eq. 10): ``L_KL = 1/N sum_i KL[p(kappa_2 | x^i) || N(0, I)]`` is the KL of the *whole* complementary
  representation of a sample: summed over messages, channels and voxels of every gate of a segmentor, averaged
  over the samples in which that segmentor is present -- **nats per sample**, returned as the extra
  ``'kl_nats_per_sample'`` (summed over segmentors). The loss ``'kl'`` divides each segmentor's
  nats per sample by the number of output elements its cross-entropy averages over (patch voxels x its task's
  regions; all regions for an empty task). Reason: Eq. 7 is ``1/N sum_i [CE_i + beta KL_i]`` with ``CE_i`` the
  log-likelihood of the whole mask, whereas the implementation (Sec. 4.2) uses nnU-Net's Dice + cross-entropy,
  whose cross-entropy is a *mean* over voxels and regions; dividing the KL by the same count keeps ``beta`` the
  trade-off of Eq. 7 (Eq. 7 up to a constant factor). The literal sum weighted by ``beta = 0.5`` next to the
  per-voxel-mean cross-entropy would take the whole gradient norm and silence every message, against Table 5 (+VI
  helps) and Fig. 11 (every beta in 1e-3..10 beats nnU-Net); the rescaled term leaves the segmentation terms their
  share (first-step gradient shares of both: docs/results/2026-11-26-loss-term-scales.md).

* **Prediction**: every segmentor emits logits for *all* regions. For region r the final logit is the average of
  the logits of the available segmentors whose task contains r. Logits (not probabilities) are averaged: the
  result stays a logit map, so nnU-Net's sigmoid-based loss, validation and export work unchanged; averaging
  logits is the normalised geometric mean of the segmentors' odds, a standard ensemble rule.

Missing modalities (our extension of the paper)
-----------------------------------------------
* Every segmentor runs for every sample (its input is zero when its modality is missing); missing modalities are
  handled by masks, never by skipping modules, so every parameter receives a gradient each step (DDP with
  ``find_unused_parameters=False``). The segmentors (plain-conv U-Nets of equal shape, one input channel each)
  run as one grouped pass over all modalities, encoders, gates and decoders alike
  (:mod:`nnunet_missingmod.networks.grouped`): one kernel per layer for all segmentors, no loop over them.
* A missing modality sends no message: its encoder features are multiplied by 0 before the gate, its attention
  map is multiplied by 0 and its complementary representation (mu or sample) by 0. Its segmentor drops out of the
  average. The output therefore does not depend on a missing modality's input at all, and no loss sends a
  gradient into a missing modality's encoder through a message.
* **Fallback heads** (``fallback=True``, default): the region channels outside a segmentor's task are auxiliary
  heads (same decoder, extra output channels of the segmentation layers). The trainer supervises them with a small
  weight, and they are used *only* when no available segmentor has the region in its task; then the region is the
  average of the fallback logits of all available segmentors. Hence every region is predicted under any non-empty
  modality subset. With ``fallback=False`` (the paper, which has no such heads) a region none of whose segmentors
  is available gets the constant logit :data:`ABSENT_LOGIT`: it is predicted absent.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_missingmod.modalities import modality_index, modality_names
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.methods.ciml.gates import MESSAGE_FUSIONS, CIGModule, GatedUNetDecoder, run_gates
from nnunet_missingmod.networks.grouped import grouped_forward
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.networks.plans import PlansArchitecture
from nnunet_missingmod.regions import region_index, region_names

#: the paper's default BraTS task decomposition (Sec. 4.1.1, last row of Table 6)
BRATS_TASK_MAP = {'FLAIR': ('WT',), 'T1': ('TC',), 'T2': ('WT', 'TC'), 'T1ce': ('TC', 'ET')}

#: logit of a region none of whose segmentors is available, without fallback heads (sigmoid ~ 2e-9: absent)
ABSENT_LOGIT = -20.0


# ----------------------------------------------------------------------------------------------- task map
def resolve_task_map(task_map: Optional[Mapping[str, Sequence[str]]], dataset_json: dict) -> List[List[int]]:
    """Names -> indices: ``result[m]`` = sorted region channels of modality ``m``'s segmentor.

    ``task_map=None`` means the paper's BraTS map (Table 6's best row, :data:`BRATS_TASK_MAP`); ``'all'`` makes
    every modality's segmentor predict every region. A map is strict: a modality or region name that dataset.json
    does not have is a ValueError naming it (the default map on a data set without BraTS's names too: choose a map
    or ``'all'``), as is a region that no modality predicts. Modalities not in the map get an empty task (their
    segmentor only sends messages and trains fallback heads).
    """
    num_modalities = len(modality_names(dataset_json))
    num_regions = len(region_names(dataset_json))
    if num_regions == 0:
        raise ValueError("dataset.json has no foreground region: nothing for CIML to segment")
    if task_map == 'all':
        return [list(range(num_regions)) for _ in range(num_modalities)]
    if task_map is None:
        try:
            return resolve_task_map(BRATS_TASK_MAP, dataset_json)
        except ValueError as error:
            raise ValueError(f"the default CIML task map {BRATS_TASK_MAP} does not fit this data set ({error}): set "
                             f"ciml_task_map to a map of its modality and region names, or to 'all'") from None
    resolved: List[List[int]] = [[] for _ in range(num_modalities)]
    for modality, regions in task_map.items():
        if isinstance(regions, str):
            regions = (regions,)
        resolved[modality_index(dataset_json, modality)] = sorted({region_index(dataset_json, r) for r in regions})
    uncovered = sorted(set(range(num_regions)) - {r for task in resolved for r in task})
    if uncovered:
        names = region_names(dataset_json)
        raise ValueError(f"CIML task map {dict(task_map)} leaves regions {[names[r] for r in uncovered]} without a "
                         f"segmentor")
    return resolved


def check_task_map(task_map, num_modalities: int, num_regions: int) -> List[List[int]]:
    """Validate an index task map (as stored in the plans) against the network's channel counts."""
    if not isinstance(task_map, (list, tuple)) or len(task_map) != num_modalities:
        raise ValueError(f"CIML task map {task_map!r} must list the regions of each of the {num_modalities} "
                         f"input modalities")
    task_map = [sorted({int(r) for r in task}) for task in task_map]
    if any(r < 0 or r >= num_regions for task in task_map for r in task):
        raise ValueError(f"CIML task map {task_map} names a region outside 0..{num_regions - 1}")
    uncovered = set(range(num_regions)) - {r for task in task_map for r in task}
    if uncovered:
        raise ValueError(f"CIML task map {task_map} leaves regions {sorted(uncovered)} without a segmentor")
    return task_map


# ----------------------------------------------------------------------------------------------- network
class CIMLNetwork(MissingModalityNetwork):
    """One plans-built U-Net segmentor per modality, CIG message passing, per-region averaging (module docstring).

    ``forward(x, availability, full_output=True)`` returns a
    :class:`~nnunet_missingmod.networks.outputs.NetworkOutput` with ``segmentation`` the fused region logits (a
    deep-supervision list when enabled), ``losses``:

    * ``'kl'`` (training, VI variants): sum over segmentors of each segmentor's KL in nats per sample (all its
      gates, messages, channels and voxels; mean over the samples where it is present) divided by the number of
      output elements its cross-entropy averages over (patch voxels x task regions) -- module docstring, *KL*;

    and ``extras``:

    * ``'kl_nats_per_sample'`` (with ``'kl'``): the same sum without that division, nats per sample (Eq. 10);
    * ``'segmentor_outputs'``: per segmentor, the list of its all-region logits (highest resolution first);
    * ``'combination_weights'``: (B, M, R) weights used for the fused output (all zero for a region without an
      available segmentor when ``fallback`` is False: that region's fused logit is :data:`ABSENT_LOGIT`).

    Each segmentor's decoder is a :class:`~nnunet_missingmod.methods.ciml.gates.GatedUNetDecoder` (the plans'
    ``UNetDecoder`` with its layers as built); the gates (:class:`~nnunet_missingmod.methods.ciml.gates.CIGModule`)
    are :attr:`cigs`, ``cigs[m][s]`` the gate of segmentor ``m`` before its decoder stage ``s``.
    ``message_fusion`` is the Table 5 variant (:data:`~nnunet_missingmod.methods.ciml.gates.MESSAGE_FUSIONS`);
    ``message_initial_std`` the variational gates' posterior std at initialisation (``CIGModule``'s ``initial_std``);
    ``detach_messages`` cuts the gradient from a receiver's loss into the senders' encoders (module docstring).
    """

    def __init__(self, segmentors: Sequence[nn.Module], task_map: Sequence[Sequence[int]], num_regions: int,
                 message_fusion: str = 'attention_vi', fallback: bool = True,
                 message_initial_std: Optional[float] = None, detach_messages: bool = False):
        super().__init__()
        if message_fusion not in MESSAGE_FUSIONS:
            raise ValueError(f"unknown CIML message fusion {message_fusion!r}; choose one of {MESSAGE_FUSIONS}")
        num_modalities = len(segmentors)
        self.task_map = check_task_map(task_map, num_modalities, num_regions)
        self.knocked_out = frozenset()
        self.num_modalities = num_modalities
        self.num_regions = num_regions
        self.message_fusion = message_fusion
        self.fallback = bool(fallback)
        self.detach_messages = bool(detach_messages)
        for s in segmentors:
            if not hasattr(s, 'encoder') or not isinstance(getattr(s, 'decoder', None), UNetDecoder):
                raise ValueError(f"{type(s).__name__} is not an encoder/UNetDecoder network; CIML needs the "
                                 f"dynamic_network_architectures U-Net layout")
            if not isinstance(s.decoder, GatedUNetDecoder):
                s.decoder = GatedUNetDecoder(s.decoder)
        self.segmentors = nn.ModuleList(segmentors)
        primary = torch.zeros(num_modalities, num_regions)
        for m, task in enumerate(self.task_map):
            primary[m, task] = 1.0
        self.register_buffer('primary', primary, persistent=False)
        others = [[j for j in range(num_modalities) if j != m] for m in range(num_modalities)]
        #: (M, M - 1) the segmentors that send messages to segmentor m, a device index (gathers without host sync)
        self.register_buffer('others', torch.tensor(others, dtype=torch.long).reshape(num_modalities, -1),
                             persistent=False)
        self.cigs = nn.ModuleList()
        if message_fusion != 'none' and num_modalities > 1:
            for seg in self.segmentors:
                enc = seg.encoder
                n_dec = len(seg.decoder.stages)
                self.cigs.append(nn.ModuleList(
                    CIGModule(enc.output_channels[-(s + 1)], num_modalities - 1, enc.conv_op,
                              enc.kernel_sizes[-(s + 1)], enc.norm_op, enc.norm_op_kwargs, enc.nonlin,
                              enc.nonlin_kwargs, message_fusion, message_initial_std) for s in range(n_dec)))

    @property
    def deep_supervision(self) -> bool:
        return self.segmentors[0].decoder.deep_supervision

    def combination_weights(self, availability: torch.Tensor) -> torch.Tensor:
        """(B, M, R) averaging weights: available primary segmentors of a region, else all available fallbacks
        (else, without fallback heads, none)."""
        avail = availability.to(self.primary.dtype)[:, :, None]
        primary = avail * self.primary
        fallback = avail * (1.0 - self.primary) if self.fallback else torch.zeros_like(primary)
        has_primary = primary.sum(1, keepdim=True) > 0
        weights = torch.where(has_primary, primary, fallback)
        return weights / weights.sum(1, keepdim=True).clamp_min(1e-12)

    def _segmentor_logits(self, x: torch.Tensor, avail: torch.Tensor) -> List[torch.Tensor]:
        """All segmentors' logits, one (B, M, R, ...) tensor per output level, highest resolution first.

        Plain-conv segmentors (the plans' ``PlainConvUNet``) run as one grouped pass, encoders, gates and decoders
        alike (:meth:`_grouped_segmentors`); other encoder types one segmentor after the other."""
        encoders = [s.encoder for s in self.segmentors]
        if isinstance(encoders[0], PlainConvEncoder):
            return self._grouped_segmentors(grouped_forward(encoders, x), avail)
        skips = [encoder(x[:, m:m + 1]) for m, encoder in enumerate(encoders)]
        per_segmentor = [self._decode(m, skips, avail) for m in range(self.num_modalities)]
        return [torch.stack(level, 1) for level in zip(*per_segmentor)]

    def _grouped_segmentors(self, levels: List[torch.Tensor], avail: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`_decode` of every segmentor at once on the grouped encoder's skips ``levels`` ((B, M * C, ...),
        channels grouped by segmentor): per decoder stage one grouped pass of the ``M`` gates
        (:func:`~nnunet_missingmod.methods.ciml.gates.run_gates`, messages gathered with the (M, M - 1) index of the
        other segmentors), of the transposed convolutions, of the conv blocks and of the segmentation layers."""
        num = self.num_modalities
        decoders = [s.decoder for s in self.segmentors]
        last = len(decoders[0].stages) - 1
        lres, outputs = levels[-1], []
        mask = avail[:, self.others]                                                        # (B, M, M - 1)
        for s in range(last + 1):
            if len(self.cigs):
                messages = self._messages(levels[-(s + 1)].unflatten(1, (num, -1))[:, self.others])  # (B, M, M-1, C..)
                lres = run_gates([gates[s] for gates in self.cigs], lres.unflatten(1, (num, -1)), messages,
                                 mask).flatten(1, 2)
            up = grouped_forward([d.transpconvs[s] for d in decoders], lres).unflatten(1, (num, -1))
            skip = levels[-(s + 2)].unflatten(1, (num, -1))
            lres = grouped_forward([d.stages[s] for d in decoders], torch.cat((up, skip), 2).flatten(1, 2))
            if decoders[0].deep_supervision or s == last:
                outputs.append(grouped_forward([d.seg_layers[s] for d in decoders], lres).unflatten(1, (num, -1)))
        return outputs[::-1]

    def _decode(self, m: int, skips: List[List[torch.Tensor]], avail: torch.Tensor) -> List[torch.Tensor]:
        """Segmentor ``m``'s decoder on its own skips, its gate ``s`` receiving the other segmentors' encoder
        features of that stage's input scale as messages; all its logits, highest resolution first."""
        gate = None
        if len(self.cigs):
            others = [j for j in range(self.num_modalities) if j != m]
            cigs, mask = self.cigs[m], avail[:, self.others[m]]

            def gate(s: int, local: torch.Tensor) -> torch.Tensor:
                return cigs[s](local, [self._messages(skips[j][-(s + 1)]) for j in others], mask)
        out = self.segmentors[m].decoder(skips[m], gate)
        return out if isinstance(out, list) else [out]

    def knockout_paths(self):
        """``'messages'``: every message zeroed before the gates (networks with gates only)."""
        return ('messages',) if len(self.cigs) else ()

    def _messages(self, messages: torch.Tensor) -> torch.Tensor:
        if 'messages' in self.knocked_out:
            return torch.zeros_like(messages)
        return messages.detach() if self.detach_messages else messages

    def forward_with_mask(self, x: torch.Tensor, availability: torch.Tensor) -> NetworkOutput:
        avail = availability.to(x.dtype)
        stacked_levels = self._segmentor_logits(x, avail)                          # (B, M, R, ...) per level
        per_segmentor = [[level[:, m] for level in stacked_levels] for m in range(self.num_modalities)]
        weights = self.combination_weights(availability).to(x.dtype)
        absent = (weights.sum(1) == 0).to(x.dtype) * ABSENT_LOGIT                 # (B, R), only without fallback
        fused = []
        w = weights.reshape(weights.shape + (1,) * (x.ndim - 2))
        for stacked in stacked_levels:
            fused.append((stacked * w).sum(1) + absent.reshape(absent.shape + (1,) * (x.ndim - 2)))
        losses, extras = {}, {'segmentor_outputs': per_segmentor, 'combination_weights': weights}
        if self.training and self.message_fusion in ('vi', 'attention_vi') and len(self.cigs):
            losses['kl'], extras['kl_nats_per_sample'], extras['log'] = self._kl(avail, x.shape[2:].numel())
        seg = fused if self.deep_supervision else fused[0]
        return NetworkOutput(seg, losses, extras)

    def _kl(self, avail: torch.Tensor, num_voxels: int):
        """(loss term, nats per sample, logged figures) of the last forward's gates, summed over segmentors (module
        docstring). The figures are each gate's KL in nats per sample, ``kl_seg<m>_gate<s>`` (segmentor ``m``,
        decoder stage ``s``, 0 = the bottleneck), over the samples where segmentor ``m`` is present, and per decoder
        stage over all segmentors the posterior's mean std ``message_std_gate<s>`` and the messages' share at
        inference ``message_share_gate<s>`` (:func:`~nnunet_missingmod.methods.ciml.gates.run_gates`)."""
        term, nats, figures = 0.0, 0.0, {}
        stages = len(self.cigs[0])
        std, share = [0.0] * stages, [0.0] * stages
        receivers = avail.float()                                                # (B, M)
        hearing = receivers * (avail[:, self.others].sum(2) > 0).float()         # present, with a present message
        for m in range(self.num_modalities):
            receiver = receivers[:, m]
            count = receiver.sum().clamp_min(1.0)
            kl_m = 0.0
            for s, cig in enumerate(self.cigs[m]):
                gate = (cig.kl_per_sample(avail[:, self.others[m]]) * receiver).sum() / count   # float32
                figures[f'kl_seg{m}_gate{s}'] = gate.detach()
                kl_m = kl_m + gate
                std[s] = std[s] + (cig.last['std'] * hearing[:, m]).sum()
                share[s] = share[s] + (cig.last['share'] * hearing[:, m]).sum()
            elements = num_voxels * (len(self.task_map[m]) or self.num_regions)
            term = term + kl_m / elements
            nats = nats + kl_m
        heard = hearing.sum().clamp_min(1.0)
        for s in range(stages):
            figures[f'message_std_gate{s}'] = std[s] / heard
            figures[f'message_share_gate{s}'] = share[s] / heard
        return term, nats, figures

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def build_from_architecture(cls, architecture: PlansArchitecture, num_input_channels: int,
                                num_output_channels: int, *, width_factor: float, deep_supervision: bool,
                                task_map: Sequence[Sequence[int]], message_fusion: str = 'attention_vi',
                                fallback: bool = True, message_initial_std: Optional[float] = None,
                                detach_messages: bool = False) -> 'CIMLNetwork':
        """``from_plans(configuration_manager, M, R, width_factor=..., deep_supervision=..., task_map=...,
        message_fusion=..., fallback=..., message_initial_std=..., detach_messages=...)``: one segmentor per
        modality (one input channel each), the plans' U-Net with its widths scaled, built by nnU-Net's
        ``get_network_from_plans``."""
        scaled = architecture.scaled(width_factor)
        segmentors = [scaled.build(1, num_output_channels, deep_supervision) for _ in range(num_input_channels)]
        return cls(segmentors, task_map, num_output_channels, message_fusion, fallback, message_initial_std,
                   detach_messages)
