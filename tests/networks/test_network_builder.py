"""One builder and one output type for every missing-modality network (issue items 4 and 5).

* every network is built by ``MissingModalityNetwork.from_plans(configuration_manager, M, K, width_factor=...,
  deep_supervision=..., **method_kwargs)`` -- the same call, the same keyword names;
* ``network(x, availability, full_output=True)`` is a ``NetworkOutput``: scalar losses apart from the extras;
* CIML's decoders are ``GatedUNetDecoder``: dynamic_network_architectures' ``UNetDecoder`` layers with a gate per
  stage, and without a gate exactly ``UNetDecoder.forward``.
"""
from __future__ import annotations

import functools
import inspect

import pytest
import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import small_plans
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.methods.ciml.gates import GatedUNetDecoder
from nnunet_missingmod.methods.ciml.network import CIMLNetwork
from nnunet_missingmod.methods.fusion.modules import AttentionFusion, ConcatFusion
from nnunet_missingmod.methods.smsn.fusion import SMSNFusion
from nnunet_missingmod.networks.multi_encoder import MultiEncoderFusionUNet
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.networks.plans import PlansArchitecture, scale_arch_widths, scale_widths
from nnunet_missingmod.methods.holder_mi.network import SharedBackboneNetwork

torch.set_num_threads(1)

FEATURES = (8, 16, 32)
PATCH = (8, 8, 8)

#: every network family with its method's own keyword arguments
NETWORKS = {
    'concat': (MultiEncoderFusionUNet, {'fusion': ConcatFusion}),
    'attention': (MultiEncoderFusionUNet, {'fusion': AttentionFusion}),
    'smsn': (MultiEncoderFusionUNet, {'fusion': functools.partial(SMSNFusion, num_heads=2)}),
    'holder_mi': (SharedBackboneNetwork, {'mi_num_levels': 1}),
    'ciml': (CIMLNetwork, {'task_map': [[1], [1, 2], [0, 1], [0]], 'message_fusion': 'attention_vi'}),
}


def configuration():
    return PlansManager(small_plans(FEATURES, patch=PATCH)).get_configuration('3d_fullres')


def build(name, width_factor=0.5, deep_supervision=True):
    cls, method_kwargs = NETWORKS[name]
    torch.manual_seed(0)
    return cls.from_plans(configuration(), 4, 3, width_factor=width_factor, deep_supervision=deep_supervision,
                          **method_kwargs)


def batch():
    availability = torch.tensor([[True, True, True, True], [True, False, True, False]])
    x = torch.randn(2, 4, *PATCH, generator=torch.Generator().manual_seed(0))
    return x * availability[:, :, None, None, None], availability


def test_one_builder_with_one_signature():
    """No network redefines the builder: one ``from_plans`` with ``width_factor`` / ``deep_supervision`` keywords."""
    base = inspect.signature(MissingModalityNetwork.from_plans)
    assert list(base.parameters)[:3] == ['configuration_manager', 'num_input_channels', 'num_output_channels']
    assert base.parameters['width_factor'].kind is inspect.Parameter.KEYWORD_ONLY
    assert base.parameters['deep_supervision'].kind is inspect.Parameter.KEYWORD_ONLY
    for cls, _ in NETWORKS.values():
        assert cls.from_plans.__func__ is MissingModalityNetwork.from_plans.__func__
        assert inspect.signature(cls.from_plans) == base


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_every_network_is_built_by_the_one_builder(name):
    cls, _ = NETWORKS[name]
    net = build(name, width_factor=0.5, deep_supervision=False)
    assert isinstance(net, cls)
    widths = [list(m.output_channels) for m in net.modules()
              if isinstance(getattr(m, 'output_channels', None), (list, tuple))]
    assert scale_widths(FEATURES, 0.5) in widths and list(FEATURES) not in widths
    x, availability = batch()
    with torch.no_grad():
        seg = net.eval()(x, availability)
    assert isinstance(seg, torch.Tensor) and seg.shape == (2, 3, *PATCH)        # deep_supervision=False
    net.set_deep_supervision_enabled(True)
    with torch.no_grad():
        assert [tuple(s.shape[2:]) for s in net(x, availability)] == [(8, 8, 8), (4, 4, 4)]


def test_the_plans_architecture_scales_every_width_once():
    kwargs = {'n_stages': 3, 'features_per_stage': [32, 64, 128], 'bottleneck_channels': [8, 16, 32],
              'stem_channels': 32}
    scaled = scale_arch_widths(kwargs, 0.25)
    assert scaled['features_per_stage'] == [8, 16, 32] and scaled['bottleneck_channels'] == [8, 8, 8]
    assert scaled['stem_channels'] == 8 and kwargs['features_per_stage'] == [32, 64, 128]   # input unchanged
    architecture = PlansArchitecture.of(configuration())
    assert architecture.scaled(0.5).network_arch_init_kwargs['features_per_stage'] == scale_widths(FEATURES, 0.5)


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_the_output_separates_losses_from_extras(name):
    net = build(name).train()
    x, availability = batch()
    output = net(x, availability, full_output=True)
    assert isinstance(output, NetworkOutput)
    assert isinstance(output.segmentation, list) and output.segmentation[0].shape == (2, 3, *PATCH)
    assert not set(output.losses) & set(output.extras)
    assert all(not k.startswith('_') for k in (*output.losses, *output.extras))
    for value in output.losses.values():                                   # every loss is a scalar tensor
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and torch.isfinite(value)
    expected_losses = {'concat': set(), 'attention': set(), 'smsn': {'kl', 'recon', 'orth'}, 'holder_mi': {'mi'},
                       'ciml': {'kl'}}[name]
    assert set(output.losses) == expected_losses
    if name == 'holder_mi':
        assert {'subset_outputs', 'subset_weights', 'subsets', 'features', 'pair_index'} <= set(output.extras)
    if name == 'ciml':
        assert {'segmentor_outputs', 'combination_weights', 'kl_nats_per_sample'} <= set(output.extras)

    net.eval()
    with torch.no_grad():
        output = net(x, availability, full_output=True)
        plain = net(x, availability)          # stock nnU-Net call: the segmentation alone
    assert output.losses == {}
    for a, b in zip(output.segmentation, plain):
        assert torch.equal(a, b)


def test_gated_decoder_without_gate_is_the_unet_decoder():
    """Same layers, same state_dict keys, same output as dynamic_network_architectures' UNetDecoder."""
    torch.manual_seed(0)
    unet = PlansArchitecture.of(configuration()).build(1, 3, deep_supervision=True)
    keys = list(unet.state_dict())
    skips = unet.encoder(torch.randn(2, 1, *PATCH))
    with torch.no_grad():
        reference = UNetDecoder.forward(unet.decoder, skips)
        unet.decoder = GatedUNetDecoder(unet.decoder)
        gated = unet.decoder(skips)
    assert list(unet.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(gated, reference))

    calls = []

    def gate(stage, features):
        calls.append((stage, tuple(features.shape[1:])))
        return features * 2.0
    with torch.no_grad():
        doubled = unet.decoder(skips, gate)
    assert calls == [(0, (32, 2, 2, 2)), (1, (16, 4, 4, 4))]              # before each up-sampling, deepest first
    assert not torch.equal(doubled[0], gated[0])


def test_ciml_decoders_are_gated_unet_decoders():
    net = build('ciml')
    assert all(isinstance(s.decoder, GatedUNetDecoder) for s in net.segmentors)
    assert len(net.cigs) == 4 and all(len(c) == len(s.decoder.stages) for c, s in zip(net.cigs, net.segmentors))


def test_a_network_without_a_plans_builder_says_so():
    """A network that is never built from plans (e.g. a test's) works, and ``from_plans`` names what it lacks."""
    class Unplanned(MissingModalityNetwork):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(4, 3, 1)

        def forward_with_mask(self, x, availability):
            seg = self.conv(x)
            return NetworkOutput(seg, {'reg': seg.square().mean()}, {'features': seg})

    net = Unplanned()
    x, availability = batch()
    output = net(x, availability, full_output=True)
    assert isinstance(output, NetworkOutput) and set(output.losses) == {'reg'} and set(output.extras) == {'features'}
    assert torch.equal(net(x, availability), output.segmentation)
    with pytest.raises(NotImplementedError, match='build_from_architecture'):
        Unplanned.from_plans(configuration(), 4, 3, width_factor=1.0)
