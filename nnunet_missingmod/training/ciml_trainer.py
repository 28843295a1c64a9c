"""``nnUNetTrainerCIML``: complementary information mutual learning with modality dropout, and its ablations.

Loss (Eq. 8 per segmentor): nnU-Net's region loss (DC+BCE, deep supervision) of each segmentor on its own
regions and on the samples where its modality is present, plus ``beta * KL`` of its CIG modules (beta = 0.5, the
paper's best value), plus ``ciml_fallback_weight`` times the loss of its fallback heads (the regions outside its
task, see :mod:`nnunet_missingmod.networks.ciml`). The terms of the segmentors are summed, so each segmentor's
parameters get the gradient of its own loss, as if trained alone. Logged unweighted terms: ``seg_<modality>``
(one per segmentor with a task), ``fallback`` and ``kl``.

The task map (modality names -> region names) is a class attribute. It is resolved against dataset.json in
``__init__`` and written into the plans configuration as ``ciml_task_map`` (region indices per modality); nnU-Net
saves those plans into the model folder, and ``build_network_architecture`` -- called on the class, without
dataset.json, by ``nnUNetv2_predict`` -- reads it back from ``configuration_manager.configuration``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_missingmod.losses.ciml import SegmentorRegionLoss
from nnunet_missingmod.networks.ciml import CIMLNetwork, resolve_task_map
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality

#: key of the resolved task map in the plans configuration
TASK_MAP_KEY = 'ciml_task_map'


class nnUNetTrainerCIML(nnUNetTrainerMissingModality):
    """CIML (full model: message passing + cross-modal attention + variational complementary information)."""

    #: modality name -> region names (dataset label names or WT/TC/ET). ``None``: the paper's BraTS map
    #: (FLAIR->WT, T1->TC, T2->WT+TC, T1ce->TC+ET) when the data set has those names, else all -> all.
    ciml_task_map: Optional[Mapping[str, Sequence[str]]] = None
    #: Table 5 variant: 'none' | 'plain' | 'attention' | 'vi' | 'attention_vi'
    ciml_fusion: str = 'attention_vi'
    #: feature widths of each segmentor relative to the plans' U-Net (compute budget, see the README)
    ciml_width_factor: float = 0.25
    #: weight of the fallback heads' loss (regions outside a segmentor's task)
    ciml_fallback_weight: float = 0.1
    #: beta of Eq. 8 for the KL term
    aux_loss_weights: Dict[str, float] = {'kl': 0.5}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.label_manager.has_regions:
            raise ValueError("nnUNetTrainerCIML needs region-based training (dataset.json 'labels' with regions and "
                             "'regions_class_order'): each segmentor predicts a subset of the sigmoid regions")
        task_map = resolve_task_map(self.ciml_task_map, dataset_json)
        self.plans_manager.plans['configurations'][configuration][TASK_MAP_KEY] = task_map
        self.configuration_manager.configuration[TASK_MAP_KEY] = task_map
        self.ciml_resolved_task_map = task_map
        self.segmentor_loss: Optional[SegmentorRegionLoss] = None

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CIMLNetwork:
        task_map = configuration_manager.configuration.get(TASK_MAP_KEY)
        if task_map is None:
            raise ValueError(f"plans configuration has no {TASK_MAP_KEY!r}: it is written by {cls.__name__}.__init__ "
                             f"and saved with the plans into the model folder; use the plans.json of a trained model")
        return CIMLNetwork.from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            task_map, width_factor=cls.ciml_width_factor, fusion=cls.ciml_fusion,
            deep_supervision=enable_deep_supervision)

    def initialize(self):
        super().initialize()
        weights = self.loss.weight_factors if isinstance(self.loss, DeepSupervisionWrapper) else None
        self.segmentor_loss = SegmentorRegionLoss(self.configuration_manager.batch_dice, self.is_ddp, weights,
                                                  has_ignore_label=self.label_manager.has_ignore_label)

    def compute_loss(self, output, aux: Dict[str, torch.Tensor], target, availability: torch.Tensor
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Sum over segmentors of (primary-region loss + beta KL + fallback weight * fallback loss)."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        outputs = aux['_segmentor_outputs']
        num_regions = outputs[0][0].shape[1]
        terms: Dict[str, torch.Tensor] = {}
        fallback = []
        for m, task in enumerate(self.ciml_resolved_task_map):
            present = availability[:, m]
            if task:
                terms[f'seg_{self.modality_names[m]}'] = self.segmentor_loss(outputs[m], targets, task, present)
            others = [r for r in range(num_regions) if r not in task]
            if others:
                fallback.append(self.segmentor_loss(outputs[m], targets, others, present))
        total = sum(terms.values())
        if fallback:
            terms['fallback'] = sum(fallback)
            total = total + self.ciml_fallback_weight * terms['fallback']
        extra = {k: v for k, v in aux.items() if not k.startswith('_')}
        unweighted = [k for k in extra if k not in self.aux_loss_weights]
        if unweighted:
            raise KeyError(f"{type(self).__name__}.aux_loss_weights has no weight for {unweighted}")
        for name, value in extra.items():
            terms[name] = value
            total = total + self.aux_loss_weights[name] * value
        return total, terms


# --------------------------------------------------------------------------- Table 5: component ablations
class nnUNetTrainerCIML_NoMessage(nnUNetTrainerCIML):
    """Table 5 'Baseline': independent segmentors, no message passing."""
    ciml_fusion = 'none'


class nnUNetTrainerCIML_Message(nnUNetTrainerCIML):
    """Table 5 '+Message': concatenated messages -> one conv + norm + sigmoid, added to the local feature."""
    ciml_fusion = 'plain'


class nnUNetTrainerCIML_MessageAttention(nnUNetTrainerCIML):
    """Table 5 '+Message +Attention': cross-modal spatial attention, no variational inference (no KL)."""
    ciml_fusion = 'attention'


class nnUNetTrainerCIML_MessageVI(nnUNetTrainerCIML):
    """Table 5 '+Message +VI': variational complementary information without the attention maps."""
    ciml_fusion = 'vi'


# --------------------------------------------------------------------------- Table 6: task decompositions
class nnUNetTrainerCIML_TaskMap1(nnUNetTrainerCIML):
    """Table 6 row 1: FLAIR->TC, T1->TC+ET, T2->WT, T1ce->TC."""
    ciml_task_map = {'FLAIR': ('TC',), 'T1': ('TC', 'ET'), 'T2': ('WT',), 'T1ce': ('TC',)}


class nnUNetTrainerCIML_TaskMap2(nnUNetTrainerCIML):
    """Table 6 row 2: FLAIR->WT, T1->WT, T2->TC, T1ce->TC+ET."""
    ciml_task_map = {'FLAIR': ('WT',), 'T1': ('WT',), 'T2': ('TC',), 'T1ce': ('TC', 'ET')}


class nnUNetTrainerCIML_TaskMap3(nnUNetTrainerCIML):
    """Table 6 row 3: FLAIR->WT, T1->WT+TC, T2->TC, T1ce->ET."""
    ciml_task_map = {'FLAIR': ('WT',), 'T1': ('WT', 'TC'), 'T2': ('TC',), 'T1ce': ('ET',)}


class nnUNetTrainerCIML_TaskMap4(nnUNetTrainerCIML):
    """Table 6 row 4: FLAIR->WT, T1->WT+TC, T2->WT+TC, T1ce->TC+ET."""
    ciml_task_map = {'FLAIR': ('WT',), 'T1': ('WT', 'TC'), 'T2': ('WT', 'TC'), 'T1ce': ('TC', 'ET')}



# --------------------------------------------------------------------------- compute budget
class nnUNetTrainerCIML_budget(nnUNetTrainerCIML):
    """Within the package budget (training step <= 1.3x time, <= 1.5x peak memory of nnUNetTrainer on the same plans):
    segmentors at 3/16 of the plans' widths instead of 1/4. On nnU-Net's 3d_fullres plans of the synthetic data set
    (CPU, README "Compute") the default's four segmentors need 1.49-1.58x nnU-Net's peak memory, this variant
    1.15x (0.40x step time, 0.92x prediction time)."""
    ciml_width_factor = 0.1875
