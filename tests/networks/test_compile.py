"""torch.compile: why it is off by default for the availability-protocol networks, and the trainer rule itself."""
import pytest
import torch
import torch._dynamo as dynamo
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_missingmod.methods.smsn.trainers import nnUNetTrainerSMSN
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerModalityDropout
from methods.fusion.test_fusion_modules import build

torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['concat', 'attention', 'holder_mi', 'ciml'])
def test_training_forward_is_one_graph(name):
    """Issue #16: masks enter as tensor operations, so dynamo captures the training forward without a graph break
    (SMSN and the Hölder-MI subset draws break only at the trainer's seeded NumPy generator)."""
    from methods.ciml.test_ciml_network import make_network
    from methods.holder_mi.test_holder_mi_network import network
    net = {'concat': lambda: build('concat'), 'attention': lambda: build('attention'), 'holder_mi': network,
           'ciml': make_network}[name]().train()
    x = torch.randn(2, 4, *((16,) * 3 if name == 'ciml' else (8,) * 3))
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)
    dynamo.reset()
    assert dynamo.explain(net)(x, mask, full_output=True).graph_break_count == 0
    dynamo.reset()


def test_dynamo_graph_breaks_on_availability_but_stays_exact():
    """In eval mode the forward checks the mask on the host (one graph break); compiled and eager outputs agree."""
    net = build('smsn').eval()
    x = torch.randn(2, 4, 8, 8, 8)
    masks = [torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool),
             torch.tensor([[0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)]
    dynamo.reset()
    assert dynamo.explain(net)(x, masks[0]).graph_break_count > 0
    compiled = torch.compile(net, backend='aot_eager')
    with torch.no_grad():
        for mask in masks:
            torch.testing.assert_close(compiled(x, mask)[0], net(x, mask)[0])
    dynamo.reset()


def bare_trainer(cls, network):
    trainer = object.__new__(cls)
    trainer.is_ddp, trainer.network, trainer.device = False, network, torch.device('cuda')
    trainer.log = []
    trainer.print_to_log_file = lambda *args, **kwargs: trainer.log.append(' '.join(map(str, args)))
    return trainer


@pytest.mark.parametrize('setting, expected', [(None, False), ('t', True), ('f', False)])
def test_protocol_networks_compile_only_when_asked(monkeypatch, setting, expected):
    if setting is None:
        monkeypatch.delenv('nnUNet_compile', raising=False)
    else:
        monkeypatch.setenv('nnUNet_compile', setting)
    trainer = bare_trainer(nnUNetTrainerSMSN, build('smsn'))
    assert trainer._do_i_compile() is expected
    assert trainer._do_i_compile() is expected
    told = [line for line in trainer.log if 'torch.compile is off for MultiEncoderFusionUNet' in line]
    assert len(told) == (0 if expected else 1)  # said once in the log


def test_plain_unet_keeps_nnunet_default(monkeypatch):
    monkeypatch.delenv('nnUNet_compile', raising=False)
    unet = PlainConvUNet(4, 2, (4, 8), torch.nn.Conv3d, 3, (1, 2), 1, 3, 1, norm_op=torch.nn.InstanceNorm3d)
    trainer = bare_trainer(nnUNetTrainerModalityDropout, unet)
    assert trainer._do_i_compile() is True and trainer.log == []
    trainer.device = torch.device('cpu')
    assert trainer._do_i_compile() is False
