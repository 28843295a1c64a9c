"""``nnUNetTrainerCIML``: complementary information mutual learning with modality dropout, and its ablations.

Paper: C. Shen, W. Li, H. Chen, X. Wang, F. Zhu, Y. Li, X. Wang, B. Jin, "Complementary Information Mutual
Learning for Multimodality Medical Image Segmentation", arXiv:2401.02717 (2024).

Loss (Eq. 8 per segmentor, summed over segmentors; the base trainer's one rule ``total = sum_k w_k L_k``):

* ``seg_<modality>`` (weight 1, one per segmentor with a task): nnU-Net's region loss (Dice + BCE, deep
  supervision, the trainer's ``batch_dice``) of that segmentor on its task's regions, computed on the sub-batch of
  samples where its modality is present (:class:`~nnunet_missingmod.methods.ciml.losses.SegmentorRegionLoss`);
* ``kl`` (weight ``beta = 0.5``, the paper's best value, Fig. 11): the KL of its gates' complementary
  representations (Eq. 10), in nats per sample divided by the number of output elements of its cross-entropy, so
  that ``beta`` keeps its Eq. 7 meaning next to nnU-Net's mean cross-entropy (see
  :mod:`nnunet_missingmod.methods.ciml.network`, *KL*, for the reasoning; the gradient shares:
  docs/results/2026-11-26-loss-term-scales.md);
* ``fallback`` (weight ``aux_loss_weights['fallback']`` = 0.1; our extension, not in the paper): the same loss on
  the regions outside each segmentor's task, which trains the fallback heads used when all segmentors of a region
  are missing. :class:`nnUNetTrainerCIML_paper` has no fallback term;
* ``kl_per_sample`` (weight 0, logged only): the same KL in nats per sample, Eq. 10 literally.

Initialisation (a reading; the paper gives none): the gates' posterior std starts at ``exp(-5)``, the deep
variational information bottleneck's start, not at the prior's 1, where the messages are mostly noise in training
and go unused at inference (:class:`nnUNetTrainerCIML_priorInitStd`; docs/methods/ciml.md, *Where sigma starts*).

Gradients: messages are not detached, so a segmentor's loss also trains the encoders of the present segmentors
that send it messages (the paper's reading, see :mod:`nnunet_missingmod.methods.ciml.network`); a segmentor is *not*
trained as if alone.

The task map (modality names -> region names) is a class attribute. It is resolved against dataset.json in
``__init__`` and written into the plans configuration as ``ciml_task_map`` (region indices per modality); nnU-Net
saves those plans into the model folder, and ``build_network_architecture`` -- called on the class, without
dataset.json, by ``nnUNetv2_predict`` -- reads it back from ``configuration_manager.configuration``.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_missingmod.methods.ciml.losses import SegmentorRegionLoss
from nnunet_missingmod.methods.ciml.network import CIMLNetwork, resolve_task_map
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.regions import region_names
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality

#: key of the resolved task map in the plans configuration
TASK_MAP_KEY = 'ciml_task_map'


class nnUNetTrainerCIML(nnUNetTrainerMissingModality):
    """CIML (full model: message passing + cross-modal attention + variational complementary information)."""

    #: modality name -> region names of its segmentor (dataset label names or WT/TC/ET). ``None``: the paper's BraTS
    #: map (FLAIR->WT, T1->TC, T2->WT+TC, T1ce->TC+ET), an error on a data set without those names; ``'all'``: every
    #: segmentor predicts every region
    ciml_task_map: Optional[Union[str, Mapping[str, Sequence[str]]]] = None
    #: Table 5 variant of the message fusion in the gates: 'none' | 'plain' | 'attention' | 'vi' | 'attention_vi'
    ciml_message_fusion: str = 'attention_vi'
    #: feature widths of each segmentor relative to the plans' U-Net (compute budget, see docs/compute.md); the same
    #: attribute as the fusion and Hölder-MI trainers' ``width_factor`` (formerly ``ciml_width_factor``)
    width_factor: float = 0.25
    #: fallback heads (our extension): supervise the regions outside each segmentor's task and predict a region
    #: from them when all its segmentors are missing. False: the paper's model (no such loss; region predicted absent)
    ciml_fallback: bool = True
    #: the variational gates' posterior std at initialisation, exp(-5) ~ 0.0067 as in the deep variational information
    #: bottleneck (Alemi et al., ICLR 2017); None: PyTorch's default bias, sigma ~ 1 (the prior's), under which the
    #: messages are mostly noise in training and unused at inference (:class:`nnUNetTrainerCIML_priorInitStd`)
    ciml_message_initial_std: Optional[float] = math.exp(-5.0)
    #: True: messages detached from their senders, whose encoders then learn from their own loss only (an ablation
    #: of the mutual learning; the paper trains the messages end to end)
    ciml_detach_messages: bool = False
    #: beta of Eq. 8 for the KL term, weight of the fallback heads' loss; kl_per_sample is logged only
    aux_loss_weights: Dict[str, float] = {'kl': 0.5, 'fallback': 0.1, 'kl_per_sample': 0.0}
    loss_term_units: Dict[str, str] = {'kl': 'nats/(voxel*region)', 'kl_per_sample': 'nats/sample'}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.label_manager.has_regions:
            raise ValueError("nnUNetTrainerCIML needs region-based training (dataset.json 'labels' with regions and "
                             "'regions_class_order'): each segmentor predicts a subset of the sigmoid regions")
        if self.ciml_fallback and 'fallback' not in self.aux_loss_weights:
            raise KeyError(f"{type(self).__name__}.aux_loss_weights needs a 'fallback' weight (ciml_fallback is on)")
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
            configuration_manager, num_input_channels, num_output_channels, width_factor=cls.width_factor,
            deep_supervision=enable_deep_supervision, task_map=task_map, message_fusion=cls.ciml_message_fusion,
            fallback=cls.ciml_fallback, message_initial_std=cls.ciml_message_initial_std,
            detach_messages=cls.ciml_detach_messages)

    def initialize(self):
        super().initialize()
        weights = self.loss.weight_factors if isinstance(self.loss, DeepSupervisionWrapper) else None
        self.segmentor_loss = SegmentorRegionLoss(self.configuration_manager.batch_dice, self.is_ddp, weights,
                                                  has_ignore_label=self.label_manager.has_ignore_label)
        regions = region_names(self.dataset_json)
        self.print_to_log_file('CIML task map: ' + ', '.join(
            f"{name} -> {'+'.join(regions[r] for r in task) or 'messages only'}"
            for name, task in zip(self.modality_names, self.ciml_resolved_task_map)))

    def segmentation_terms(self, output: NetworkOutput, target, availability: torch.Tensor
                           ) -> Dict[str, torch.Tensor]:
        """Unweighted ``seg_<modality>`` per segmentor with a task, ``fallback`` (summed over segmentors, when
        :attr:`ciml_fallback`) and the logged-only ``kl_per_sample``; the base class adds ``kl`` and weighs."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        outputs = output.extras['segmentor_outputs']
        num_regions = outputs[0][0].shape[1]
        terms: Dict[str, torch.Tensor] = {}
        fallback = []
        for m, task in enumerate(self.ciml_resolved_task_map):
            present = availability[:, m]
            if task:
                terms[f'seg_{self.modality_names[m]}'] = self.segmentor_loss(outputs[m], targets, task, present)
            others = [r for r in range(num_regions) if r not in task]
            if self.ciml_fallback and others:
                fallback.append(self.segmentor_loss(outputs[m], targets, others, present))
        if fallback:
            terms['fallback'] = sum(fallback)
        if 'kl_nats_per_sample' in output.extras:
            terms['kl_per_sample'] = output.extras['kl_nats_per_sample'].detach()
        return terms


# --------------------------------------------------------------------------- Table 5: component ablations
class nnUNetTrainerCIML_NoMessage(nnUNetTrainerCIML):
    """Table 5 'Baseline': independent segmentors, no message passing."""
    ciml_message_fusion = 'none'


class nnUNetTrainerCIML_Message(nnUNetTrainerCIML):
    """Table 5 '+Message': concatenated messages -> one conv + norm + sigmoid, added to the local feature."""
    ciml_message_fusion = 'plain'
    ciml_message_initial_std = None     # no posterior


class nnUNetTrainerCIML_MessageAttention(nnUNetTrainerCIML):
    """Table 5 '+Message +Attention': cross-modal spatial attention, no variational inference (no KL)."""
    ciml_message_fusion = 'attention'
    ciml_message_initial_std = None     # no posterior


class nnUNetTrainerCIML_MessageVI(nnUNetTrainerCIML):
    """Table 5 '+Message +VI': variational complementary information without the attention maps."""
    ciml_message_fusion = 'vi'


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


class nnUNetTrainerCIML_TaskMapText(nnUNetTrainerCIML):
    """The map of the paper's Sec. 3.1 text: FLAIR->WT, T1->TC+ET, T2->WT+TC, T1ce->TC+ET (its Table 6 and Sec. 4
    give T1 -> TC alone, the default): without T1ce, ET then still has a primary segmentor."""
    ciml_task_map = {'FLAIR': ('WT',), 'T1': ('TC', 'ET'), 'T2': ('WT', 'TC'), 'T1ce': ('TC', 'ET')}



# --------------------------------------------------------------------------- the paper's model
class nnUNetTrainerCIML_paper(nnUNetTrainerCIML):
    """The paper's CIML: Eq. 8 per segmentor (its task regions + beta KL), no fallback heads, no modality dropout.

    Without the fallback loss each decoder is trained on its own task's regions only, as in the paper (the other
    output channels of its segmentation layers stay untrained and are never used). The paper trains and evaluates
    on complete cases, so modality dropout is off (missing channels of a case -- all-zero files -- still count as
    missing). At inference with missing modalities, a region with at least one available segmentor is the average
    of those segmentors' logits; a region **all of whose segmentors are missing is predicted absent** (constant
    logit :data:`~nnunet_missingmod.methods.ciml.network.ABSENT_LOGIT`), e.g. ET without T1ce under the BraTS task map.
    """
    ciml_fallback = False
    modality_dropout = False
    aux_loss_weights = {'kl': 0.5, 'kl_per_sample': 0.0}


# --------------------------------------------------------------------------- compute budget
class nnUNetTrainerCIML_budget(nnUNetTrainerCIML):
    """Within the package budget (training step <= 1.3x time, <= 1.5x peak memory of nnUNetTrainer on the same plans):
    segmentors at 3/16 of the plans' widths instead of 1/4, no stage narrower than min(plans width, 8) channels
    (:func:`~nnunet_missingmod.networks.plans.scale_widths`; 3d_fullres widths 32..320 give 8, 12, 24, 48, 60, 60).
    It is for plans where the default's four segmentors exceed the memory budget (measured by ``nnUNetv2_mm_perf``:
    docs/compute.md; the figures: docs/results/2026-11-26-compute-cpu.md). On plans with no stage wider than 32
    channels (e.g. the unit tests' 4-16, or widths 8-32) the floor makes this variant the same network as the
    default."""
    width_factor = 0.1875


class nnUNetTrainerCIML_budget_NoMessage(nnUNetTrainerCIML_NoMessage, nnUNetTrainerCIML_budget):
    """Table 5's 'Baseline' at the budget width: :class:`nnUNetTrainerCIML_budget` without message passing."""


class nnUNetTrainerCIML_budget_MessageAttention(nnUNetTrainerCIML_MessageAttention, nnUNetTrainerCIML_budget):
    """Table 5's '+Message +Attention' at the budget width: :class:`nnUNetTrainerCIML_budget` with deterministic
    messages (no posterior, no KL), which tells what the variational part adds to the messages at this width."""


class nnUNetTrainerCIML_budget_DetachedMessage(nnUNetTrainerCIML_budget):
    """:class:`nnUNetTrainerCIML_budget` with its messages detached from their senders: every segmentor still
    hears the others through its gates, but no loss reaches an encoder except its own segmentor's. Next to
    ``_budget`` and ``_budget_NoMessage`` it tells whether a cost of message passing comes from what a segmentor
    hears or from what the other segmentors' losses do to its encoder."""
    ciml_detach_messages = True


class nnUNetTrainerCIML_width1(nnUNetTrainerCIML):
    """Segmentors at the plans' full widths (four nnU-Net-wide U-Nets): the capacity reference for the
    narrower defaults, so that an ablation study can tell a shortfall of capacity from one of mechanism."""
    width_factor = 1.0


class nnUNetTrainerCIML_priorInitStd(nnUNetTrainerCIML):
    """The variational gates' posterior std starts at ~1, the prior's (PyTorch's default bias of the log-variance
    convolution): the default before 2026-12-04. There the KL's gradient on the log-variance is zero, and under
    nnU-Net's SGD the heads stay near their initialisation for a short schedule: a message is then mostly noise in
    training, and the trained model does not use the messages at inference (the figures:
    docs/results/2026-12-04-posterior-initial-std.md)."""
    ciml_message_initial_std = None
