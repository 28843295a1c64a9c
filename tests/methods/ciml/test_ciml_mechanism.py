"""CIML's messages in the training log (KL per gate) and knocked out at inference; strict task maps."""
import math

import pytest
import torch

from conftest import BRATS_DATASET_JSON, make_trainer
from methods.ciml.test_ciml_network import make_network
from nnunet_missingmod.methods.ciml import trainers as ct
from nnunet_missingmod.methods.ciml.gates import CIGModule
from nnunet_missingmod.methods.ciml.network import resolve_task_map


def test_training_forward_logs_the_kl_of_every_gate():
    net = make_network().train()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16, 16)
    availability = torch.tensor([[True, True, True, True], [True, False, True, False]])
    out = net(x, availability, full_output=True)
    log = out.extras['log']
    stages = range(len(net.cigs[0]))
    kl = {f'kl_seg{m}_gate{s}' for m in range(4) for s in stages}
    assert set(log) == kl | {f'message_{f}_gate{s}' for f in ('std', 'share') for s in stages}
    # every gate's figure is its KL per sample over the samples where its segmentor is present; their sum is Eq. 10
    assert sum(float(log[k]) for k in kl) == pytest.approx(float(out.extras['kl_nats_per_sample'].detach()), rel=1e-5)
    assert all(float(v) > 0 for v in log.values())


def _gate(fusion='attention_vi', initial_std=None):
    torch.manual_seed(0)
    return CIGModule(6, 3, torch.nn.Conv3d, [3, 3, 3], torch.nn.InstanceNorm3d, {'affine': True},
                     torch.nn.LeakyReLU, {}, fusion, initial_std)


def test_initial_std_is_the_posterior_std_of_an_empty_message():
    gate = _gate(initial_std=0.02).train()
    local = torch.randn(2, 6, 4, 5, 6)
    gate(local, [torch.zeros_like(local)] * 3, torch.ones(2, 3))   # zero messages: log-variance = its bias
    sigma = gate.last['logvar'].mul(0.5).exp()
    assert torch.allclose(sigma, torch.full_like(sigma, 0.02), rtol=1e-5)
    # per element KL(N(mu, 0.02^2) || N(0, 1)) >= 0.5 (0.02^2 - 1 - ln 0.02^2) = 3.4122 nats
    elements = 3 * 6 * 4 * 5 * 6
    assert float(gate.last['kl'].detach().sum(1).min()) >= elements * 0.5 * (0.02 ** 2 - 1 - 2 * math.log(0.02)) * (1 - 1e-5)
    with pytest.raises(ValueError, match='initial_std must be positive'):
        _gate(initial_std=0.0)
    with pytest.raises(ValueError, match="variational gates .* not 'attention'"):
        _gate('attention', initial_std=0.1)


def test_logged_message_figures_are_the_posterior_std_and_what_the_gate_adds_at_inference():
    gate = _gate()
    local = torch.randn(2, 6, 4, 5, 6)
    messages = [torch.randn(2, 6, 4, 5, 6) for _ in range(3)]
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    gate.train()
    gate(local, messages, mask)
    std, share = gate.last['std'], gate.last['share']
    sigma = gate.last['logvar'].detach().mul(0.5).exp()              # (B, K, C, ...)
    assert float(std[0]) == pytest.approx(float(sigma[0, [0, 2]].mean()), rel=1e-5)
    assert float(std[1]) == pytest.approx(float(sigma[1].mean()), rel=1e-5)
    with torch.no_grad():
        added = gate.eval()(local, messages, mask) - local        # at inference the gate adds align(sum_j a_j mu_j)
    rms = lambda t: t.square().flatten(1).mean(1).sqrt()
    assert torch.allclose(share, rms(added) / rms(local), rtol=1e-4)
    assert (share > 0).all()


def test_default_gates_start_nearly_deterministic_and_the_prior_start_variant_at_sigma_one(tmp_path):
    default = make_trainer(ct.nnUNetTrainerCIML, tmp_path)
    prior = make_trainer(ct.nnUNetTrainerCIML_priorInitStd, tmp_path / 'prior')
    for net, expected in ((default.bare_network, -10.0), (prior.bare_network, None)):
        for gates in net.cigs:
            for gate in gates:
                c = gate.channels
                logvar_bias = gate.mu_logvar.bias.view(gate.num_messages, 2, c)[:, 1]
                if expected is None:   # PyTorch's default: uniform in +-1/sqrt(fan in), sigma ~ 1
                    assert logvar_bias.abs().max() <= 1 / math.sqrt(c) + 1e-6
                else:
                    assert torch.allclose(logvar_bias, torch.full_like(logvar_bias, expected))


def test_message_knockout_changes_the_prediction_and_is_undone():
    net = make_network().eval()
    x, availability = torch.randn(1, 4, 16, 16, 16), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        reference = net(x, availability)[0]
        net.set_knockout(['messages'])
        knocked = net(x, availability)[0]
        net.set_knockout([])
        assert torch.equal(net(x, availability)[0], reference)
    assert (knocked - reference).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r'no information path messages to knock out \(it has: none\)'):
        make_network(fusion='none').set_knockout(['messages'])


def test_default_task_map_on_a_data_set_without_brats_names_is_an_error():
    other = {'channel_names': {'0': 'CT', '1': 'PET'}, 'labels': {'background': 0, 'lesion': 1}, 'file_ending': '.nii.gz'}
    with pytest.raises(ValueError, match=r"does not fit this data set \(unknown region 'WT'.* or to 'all'"):
        resolve_task_map(None, other)
    assert resolve_task_map('all', other) == [[0], [0]]
    with pytest.raises(ValueError, match="unknown region 'NET'"):
        resolve_task_map({'T1': ('NET',), 'FLAIR': ('WT', 'TC', 'ET')}, BRATS_DATASET_JSON)


def test_section_3_1_map_gives_et_a_second_primary_segmentor(tmp_path):
    trainer = make_trainer(ct.nnUNetTrainerCIML_TaskMapText, tmp_path)
    # channels: T1, T1ce, T2, FLAIR; regions: WT 0, TC 1, ET 2
    assert trainer.ciml_resolved_task_map == [[1, 2], [1, 2], [0, 1], [0]]
    default = make_trainer(ct.nnUNetTrainerCIML, tmp_path)
    assert default.ciml_resolved_task_map == [[1], [1, 2], [0, 1], [0]]
