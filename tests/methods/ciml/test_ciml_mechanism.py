"""CIML's messages in the training log (KL per gate) and knocked out at inference; strict task maps."""
import pytest
import torch

from conftest import BRATS_DATASET_JSON, make_trainer
from methods.ciml.test_ciml_network import make_network
from nnunet_missingmod.methods.ciml import trainers as ct
from nnunet_missingmod.methods.ciml.network import resolve_task_map


def test_training_forward_logs_the_kl_of_every_gate():
    net = make_network().train()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16, 16)
    availability = torch.tensor([[True, True, True, True], [True, False, True, False]])
    out = net(x, availability, full_output=True)
    log = out.extras['log']
    assert set(log) == {f'kl_seg{m}_gate{s}' for m in range(4) for s in range(len(net.cigs[0]))}
    # every gate's figure is its KL per sample over the samples where its segmentor is present; their sum is Eq. 10
    assert sum(float(v) for v in log.values()) == pytest.approx(float(out.extras['kl_nats_per_sample'].detach()), rel=1e-5)
    assert all(float(v) > 0 for v in log.values())


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
