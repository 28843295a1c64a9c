"""Issue #18: scaled stage widths never collapse below ``min(plans width, 8)`` channels, in every network family.

On small plans (widths 8-64) ``width_factor x features_per_stage`` used to give 1-2 channels in the first stages
(``nnUNetTrainerCIML_budget``: 3/16 x 8 = 1.5 -> 2), and such segmentors learned no TC and no ET. nnU-Net itself
never plans a stage narrower than its base width, so the floor is ``min(plans width, 8)``.
"""
from __future__ import annotations

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import small_plans
from nnunet_missingmod.networks.plans import scale_widths

PLANS_WIDTHS = (8, 16, 32, 64)
FLOOR = 8


def encoder_widths(network: torch.nn.Module) -> list[list[int]]:
    """Stage widths of every encoder of a network (the modules with a list ``output_channels``)."""
    found = [list(m.output_channels) for m in network.modules()
             if isinstance(getattr(m, 'output_channels', None), (list, tuple))]
    assert found, f'{type(network).__name__} has no encoder with output_channels'
    return found


def build(trainer_name: str):
    from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers
    cls = discover_trainers()[trainer_name]
    plans = small_plans(PLANS_WIDTHS, patch=(32, 32, 32))
    configuration = PlansManager(plans).get_configuration('3d_fullres')
    if trainer_name.startswith('nnUNetTrainerCIML'):
        configuration.configuration['ciml_task_map'] = [[1], [1, 2], [0, 1], [0]]   # written by the trainer
    torch.manual_seed(0)
    return cls, cls.build_network_architecture(None, configuration, 4, 3, True)


@pytest.mark.parametrize('trainer_name, factor, expected', [
    ('nnUNetTrainerConcatFusion', 0.5, [8, 8, 16, 32]),          # MultiEncoderFusionUNet
    ('nnUNetTrainerAttentionFusion', 0.5, [8, 8, 16, 32]),
    ('nnUNetTrainerSMSN', 0.5, [8, 8, 16, 32]),
    ('nnUNetTrainerHolderMI', 1.0, [8, 16, 32, 64]),             # SharedBackboneNetwork
    ('nnUNetTrainerHolderMI_budget', 0.25, [8, 8, 8, 16]),
    ('nnUNetTrainerCIML', 0.25, [8, 8, 8, 16]),                  # CIMLNetwork
    ('nnUNetTrainerCIML_budget', 0.1875, [8, 8, 8, 12]),
    ('nnUNetTrainerCIML_paper', 0.25, [8, 8, 8, 16]),
])
def test_no_stage_narrower_than_the_floor(trainer_name, factor, expected):
    cls, net = build(trainer_name)
    assert cls.width_factor == factor
    for widths in encoder_widths(net):
        assert len(widths) == len(PLANS_WIDTHS)
        assert all(w >= min(p, FLOOR) for w, p in zip(widths, PLANS_WIDTHS)), (trainer_name, widths)
    # the per-modality / shared encoders carry exactly the floored, scaled plans widths
    assert expected in encoder_widths(net)


def test_scale_widths_floor_rule():
    assert scale_widths([8, 16, 32, 64], 0.1875) == [8, 8, 8, 12]
    assert scale_widths([32, 64, 128, 256, 320, 320], 0.25) == [8, 16, 32, 64, 80, 80]   # unchanged where wide
    assert scale_widths([4, 8, 16], 0.25) == [4, 8, 8]             # never wider than the plans' own stage
    assert scale_widths([2, 3], 0.1) == [2, 3]
    assert scale_widths(16, 0.25, 3) == [8, 8, 8]
    assert scale_widths([8, 16, 32], 2.0) == [16, 32, 64]          # widening is untouched
    with pytest.raises(ValueError, match='positive'):
        scale_widths([8], 0.0)
