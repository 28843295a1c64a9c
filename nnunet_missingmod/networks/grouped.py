"""Copies of one module, one per modality, run as a single grouped pass.

``M`` modules of equal structure that differ only in their weights (the per-modality ``PlainConvEncoder`` of the
fusion networks, the segmentors of CIML) are evaluated on a ``(B, M * C, *spatial)`` tensor whose channels are grouped
by modality: every convolution becomes one convolution with ``groups = M`` (the copies' weights concatenated along
the output channels), every instance norm one norm over the ``M * C`` channels (its statistics are per sample and
channel, so nothing mixes between copies), element-wise and per-channel layers run as they are. The result is what
the copies give one by one on their channel groups (up to floating-point summation order), with one kernel per layer
instead of ``M`` and no Python loop over modalities. The copies keep their own parameters (state_dict keys do not
change); the concatenation is part of the graph, so each copy receives its own gradient.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

#: layers that act on each channel (or element) alone: a grouped pass applies the first copy as it is
_CHANNELWISE = (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.dropout._DropoutNd)


def _cat(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    if tensors[0] is None or len(tensors) == 1:      # one copy (e.g. a lone CIG gate): its own tensor, no copy
        return tensors[0]
    return torch.cat(list(tensors), 0)


def _conv(modules: Sequence[_ConvNd], x: torch.Tensor) -> torch.Tensor:
    first = modules[0]
    if first.padding_mode != 'zeros' or isinstance(first.padding, str):
        raise TypeError("grouped convolutions need zero padding given as sizes")
    groups = first.groups * len(modules)
    weight, bias = _cat([m.weight for m in modules]), _cat([m.bias for m in modules])
    dims = len(first.kernel_size)
    if isinstance(first, _ConvTransposeNd):
        return getattr(F, f'conv_transpose{dims}d')(x, weight, bias, first.stride, first.padding,
                                                    first.output_padding, groups, first.dilation)
    return getattr(F, f'conv{dims}d')(x, weight, bias, first.stride, first.padding, first.dilation, groups)


def _instance_norm(modules: Sequence[_InstanceNorm], x: torch.Tensor) -> torch.Tensor:
    first = modules[0]
    if first.track_running_stats:
        raise TypeError("grouped instance norms cannot track running statistics")
    return F.instance_norm(x, None, None, _cat([m.weight for m in modules]), _cat([m.bias for m in modules]),
                           True, first.momentum if first.momentum is not None else 0.0, first.eps)


def grouped_forward(modules: Sequence[nn.Module], x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Run ``modules`` (equal structure) on ``x`` of shape ``(B, M * C_in, *spatial)``, copy ``m`` on channel group
    ``m``; returns what the modules return (a ``PlainConvEncoder`` its skips), channels grouped the same way."""
    first = modules[0]
    if isinstance(first, PlainConvEncoder):
        skips = []
        for stages in zip(*(m.stages for m in modules)):
            x = grouped_forward(stages, x)
            skips.append(x)
        return skips if first.return_skips else skips[-1]
    if isinstance(first, StackedConvBlocks):
        return grouped_forward([m.convs for m in modules], x)
    if isinstance(first, ConvDropoutNormReLU):
        return grouped_forward([m.all_modules for m in modules], x)
    if isinstance(first, nn.Sequential):
        for layers in zip(*modules):
            x = grouped_forward(layers, x)
        return x
    if isinstance(first, _ConvNd):
        return _conv(modules, x)
    if isinstance(first, _InstanceNorm):
        return _instance_norm(modules, x)
    if isinstance(first, _CHANNELWISE):
        return first(x)
    raise TypeError(f"{type(first).__name__} cannot run as a grouped pass over modalities")
