"""CIML's cross-modality information gate (CIG) and a U-Net decoder with a gate before each stage."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_missingmod.losses.gaussian import initial_log_variance, reparameterised_sample_with_kl
from nnunet_missingmod.networks.grouped import grouped_forward

#: CIML's message fusion variants of the paper's Table 5 (``'none'``: no gate at all)
MESSAGE_FUSIONS = ('none', 'plain', 'attention', 'vi', 'attention_vi')


class CIGModule(nn.Module):
    """Cross-modality information gate of one decoder stage of one segmentor (Fig. 8, Table 1).

    ``message_fusion`` selects the Table 5 variant: ``'plain'`` (+Message: concatenated messages -> conv + norm +
    sigmoid), ``'attention'`` (+Attention, no VI), ``'vi'`` (+VI, attention maps replaced by the availability mask)
    and ``'attention_vi'`` (full CIG). ``forward`` returns the gated feature; after a call, :attr:`last` holds the
    tensors of that call (attention maps, per-message complementary representations, mu/log-variance).

    ``initial_std`` (VI variants): the posterior's standard deviation at initialisation, set through the bias of the
    log-variance convolution (``log sigma^2 = 2 ln initial_std``; its weights keep PyTorch's default). ``None``
    keeps PyTorch's default bias, i.e. ``sigma ~ 1``: the prior's, where the KL's gradient on the log-variance is
    zero. A small value is the deep variational information bottleneck's practice (A. A. Alemi, I. Fischer,
    J. V. Dillon, K. Murphy, "Deep Variational Information Bottleneck", ICLR 2017: ``sigma = softplus(f(x) - 5)``,
    about 0.0067 at the start): the messages start nearly deterministic and the KL raises sigma from there.
    """

    def __init__(self, channels: int, num_messages: int, conv_op, kernel_size, norm_op, norm_op_kwargs,
                 nonlin, nonlin_kwargs, message_fusion: str = 'attention_vi', initial_std: Optional[float] = None):
        super().__init__()
        if message_fusion not in MESSAGE_FUSIONS[1:]:
            raise ValueError(f"unknown CIG message fusion {message_fusion!r}; choose one of {MESSAGE_FUSIONS[1:]}")
        if num_messages < 1:
            raise ValueError("a CIG module needs at least one message")
        self.message_fusion = message_fusion
        self.channels = channels
        self.num_messages = num_messages
        self.use_attention = message_fusion in ('attention', 'attention_vi')
        self.use_vi = message_fusion in ('vi', 'attention_vi')
        padding = [(k - 1) // 2 for k in kernel_size]
        norm_op_kwargs = norm_op_kwargs or {}
        nonlin_kwargs = nonlin_kwargs or {}
        k = num_messages
        if message_fusion == 'plain':
            self.plain = nn.Sequential(conv_op(k * channels, channels, kernel_size, 1, padding, bias=True),
                                       norm_op(channels, **norm_op_kwargs), nn.Sigmoid())
        if self.use_attention:
            self.attention = nn.Sequential(
                conv_op(2 * (k + 1), 4 * (k + 1), kernel_size, 1, padding, bias=True),
                norm_op(4 * (k + 1), **norm_op_kwargs), nonlin(**nonlin_kwargs),
                conv_op(4 * (k + 1), k, 1, 1, 0, bias=True), norm_op(k, **norm_op_kwargs), nn.Sigmoid())
        if self.use_vi:
            # one (mu, log-variance) 1x1 conv pair per message, run as a single grouped conv
            self.mu_logvar = conv_op(k * channels, 2 * k * channels, 1, 1, 0, groups=k, bias=True)
            if initial_std is not None:
                with torch.no_grad():   # output channels per message: C means, then C log-variances
                    self.mu_logvar.bias.view(k, 2, channels)[:, 1] = initial_log_variance(initial_std)
        elif initial_std is not None:
            raise ValueError(f"initial_std applies to the variational gates ('vi', 'attention_vi'), not "
                             f"{message_fusion!r}")
        if message_fusion != 'plain':
            self.align = conv_op(channels, channels, 1, 1, 0, bias=False)
        self.last: Dict[str, object] = {}

    def forward(self, local: torch.Tensor, messages: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """``local`` (B, C, ...); ``messages`` K tensors (B, C, ...); ``mask`` (B, K) float, 1 = message present."""
        return run_gates([self], local.unsqueeze(1), torch.stack(tuple(messages), 1).unsqueeze(1),
                         mask.unsqueeze(1))[:, 0]

    def kl_per_sample(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,) KL of this gate's complementary representations to N(0, I) in nats, from the last training forward:
        summed over the present messages (``mask`` (B, K)), channels and voxels; float32 (float64 for a float64
        network). A sample without a present message gives 0."""
        if 'kl' not in self.last:
            raise RuntimeError("the gate has no KL: it is computed by a training forward of a VI variant")
        kl = self.last['kl']                                                  # (B, K)
        return (kl * mask.to(kl.dtype)).sum(1)


def _channel_pool(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean and max over the channel axis ``dim``, stacked in its place (CIG_Attention's pooled maps)."""
    return torch.stack((t.mean(dim), t.amax(dim)), dim)


def run_gates(gates: Sequence[CIGModule], local: torch.Tensor, messages: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """``M`` gates of equal structure (the gates of one decoder stage of CIML's ``M`` segmentors) as one grouped
    pass (:func:`~nnunet_missingmod.networks.grouped.grouped_forward`: every convolution one convolution with
    ``groups = M``): ``local`` (B, M, C, ...), ``messages`` (B, M, K, C, ...), ``mask`` (B, M, K), gate ``m`` on
    ``local[:, m]``, ``messages[:, m]``, ``mask[:, m]``; returns the gated features (B, M, C, ...).

    After the call each gate's :attr:`CIGModule.last` holds its share: ``'attention'`` (B, K, ...), ``'mu'`` and
    ``'logvar'`` (B, K, C, ...), in training ``'kl'`` (B, K) (each message's KL to N(0, I) summed over channels and
    voxels, float32 or float64;
    :func:`~nnunet_missingmod.losses.gaussian.reparameterised_sample_with_kl`) and the log's ``'std'`` and
    ``'share'`` (B,) (:func:`_message_figures`),
    ``'representations'`` (K tensors (B, C, ...)), and ``'representation_sum'``, the
    (B, M, C, ...) sum over messages that the alignment convolution receives, of which the gate's is slot
    ``'slot'`` (the tensor in the graph: gradients of the output with respect to a gate's summed representation,
    Grad-CAM's Eq. 15, are taken there).
    """
    first = gates[0]
    b, m, k, c = messages.shape[:4]
    spatial = local.shape[3:]
    mask_b = mask.reshape(b, m, k, *(1,) * len(spatial)).to(local.dtype)
    stacked = messages * mask_b.unsqueeze(3)                                   # missing messages -> 0
    if first.message_fusion == 'plain':
        for gate in gates:
            gate.last = {}
        return local + grouped_forward([g.plain for g in gates], stacked.flatten(1, 3)).unflatten(1, (m, c))
    if first.use_attention:
        pooled = torch.cat((_channel_pool(local, 2), _channel_pool(stacked, 3).flatten(2, 3)), 2)  # (B, M, 2(K+1))
        attention = grouped_forward([g.attention for g in gates], pooled.flatten(1, 2)).unflatten(1, (m, k)) * mask_b
    else:
        attention = mask_b.expand(-1, -1, -1, *spatial)
    weighted = stacked * attention.unsqueeze(3)
    mu = logvar = kl = None
    if first.use_vi:
        stats = grouped_forward([g.mu_logvar for g in gates], weighted.flatten(1, 3)).unflatten(1, (m, k, 2, c))
        mu, logvar = stats[:, :, :, 0], stats[:, :, :, 1]
        z = mu
        if first.training:
            z, kl = reparameterised_sample_with_kl(mu, logvar, torch.randn_like(mu), start_dim=3)   # kl (B, M, K)
        z = z * mask_b.unsqueeze(3)
    else:
        z = weighted
    summed = z.sum(2)                                                          # (B, M, C, ...)
    figures = _message_figures(gates, local, mu, logvar, mask_b) if kl is not None else None
    for i, gate in enumerate(gates):
        gate.last = {'attention': attention[:, i], 'representations': z[:, i].unbind(1),
                     'representation_sum': summed, 'slot': i}
        if mu is not None:
            gate.last.update(mu=mu[:, i], logvar=logvar[:, i])
        if kl is not None:
            gate.last.update(kl=kl[:, i], std=figures[0][:, i], share=figures[1][:, i])
    return local + grouped_forward([g.align for g in gates], summed.flatten(1, 2)).unflatten(1, (m, c))


@torch.no_grad()
def _message_figures(gates: Sequence[CIGModule], local: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     mask_b: torch.Tensor):
    """Per sample and gate (each (B, M), float32), for the training log: the mean posterior std ``sigma`` over
    the present messages' elements, and the *share* of the messages at inference, ``rms(align(sum_j a_j mu_j)) /
    rms(F)``: the size of what the gate adds to the local feature F when ``kappa = mu``, relative to F. (A share near
    0 means the messages barely move the decoder at test time; in training the sample's noise comes on top.)"""
    present = mask_b.unsqueeze(3).float()                                      # (B, M, K, 1, ...)
    elements = (mask_b.float().flatten(2).sum(2) * logvar.shape[3:].numel()).clamp_min(1.0)    # (B, M)
    std = (logvar.float().mul(0.5).exp() * present).flatten(2).sum(2) / elements
    added = grouped_forward([g.align for g in gates], (mu * mask_b.unsqueeze(3)).sum(2).flatten(1, 2))
    added = added.unflatten(1, (local.shape[1], -1)).float()
    share = added.square().flatten(2).mean(2).sqrt() / local.float().square().flatten(2).mean(2).sqrt().clamp_min(1e-12)
    return std, share


# ----------------------------------------------------------------------------------------------- gated decoder
#: ``gate(stage, features) -> features``: applied to the input of decoder stage ``stage`` (0 = the bottleneck)
StageGate = Callable[[int, torch.Tensor], torch.Tensor]


class GatedUNetDecoder(UNetDecoder):
    """dynamic_network_architectures' ``UNetDecoder`` with a gate on the input of every stage.

    Made from a built (and initialised) ``UNetDecoder``, whose layers it takes over as they are: the encoder
    reference, the transposed convolutions, the ``StackedConvBlocks`` stages and the segmentation layers (same
    modules, same state_dict keys, no new parameter). ``forward(skips, gate)`` is ``UNetDecoder.forward`` with
    ``lres = gate(s, lres)`` before stage ``s`` up-samples: CIML's cross-modality information gates (Table 1: a
    gate precedes each up-sampling step). Without a gate it is ``UNetDecoder.forward``. The gates are not part of
    the decoder (the network owns them): a gate may read other modules' features, e.g. other segmentors' skips.
    """

    def __init__(self, decoder: UNetDecoder):
        nn.Module.__init__(self)         # not UNetDecoder.__init__: the layers exist already, with their weights
        self.deep_supervision = decoder.deep_supervision
        self.encoder = decoder.encoder
        self.num_classes = decoder.num_classes
        self.stages = decoder.stages
        self.transpconvs = decoder.transpconvs
        self.seg_layers = decoder.seg_layers

    def forward(self, skips: Sequence[torch.Tensor], gate: Optional[StageGate] = None):
        """``skips`` in the encoder's order (bottleneck last); returns what ``UNetDecoder`` returns: the highest
        resolution logits, or with deep supervision the list of all stages' logits, highest resolution first."""
        lres = skips[-1]
        outputs: List[torch.Tensor] = []
        last = len(self.stages) - 1
        for s, (up, stage, seg_layer) in enumerate(zip(self.transpconvs, self.stages, self.seg_layers)):
            if gate is not None:
                lres = gate(s, lres)
            x = stage(torch.cat((up(lres), skips[-(s + 2)]), 1))
            if self.deep_supervision or s == last:
                outputs.append(seg_layer(x))
            lres = x
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]
