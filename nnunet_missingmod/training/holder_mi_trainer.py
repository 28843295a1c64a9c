"""``nnUNetTrainerHolderMI``: Hölder divergence + mutual-information knowledge transfer (``shared/seeds/001``).

Per training step (Algorithm 1)::

    L = mean_S [ L_Dice(Y_S, Y) + lambda_1 * L_MI(d_f, d_m(S)) + lambda_2 * L_HD(Y_S, Y) ]

over the modality subsets S of the available modalities; ``Y_S`` is the dynamic combination (mean of the
per-modality logits, :mod:`nnunet_missingmod.networks.shared_backbone`). Since the per-modality backbone outputs are
computed once per step, combining them for many subsets costs one small matrix product per deep-supervision level
plus the loss evaluations; ``subsets_per_step`` limits the number of subsets when even that is too slow.

* ``L_Dice`` is nnU-Net's own ``self.loss`` (with deep supervision): for region-based training (BraTS regions) that
  is nnU-Net's ``DC_and_BCE_loss`` (soft Dice + BCE), for label-based training ``DC_and_CE_loss``. The paper uses a
  plain Dice (Eq. 6); nnU-Net's compound loss is its robust default and keeps every other part of the pipeline
  unchanged.
* ``L_HD`` (Eq. 1-2) is evaluated at every deep-supervision level with nnU-Net's deep-supervision weights; for
  regions every region is a Bernoulli distribution (sigmoid), otherwise the softmax over classes.
* ``L_MI`` (Eq. 4-5) is computed inside the network (it owns the MI heads, so DDP sees all parameters in forward).

The base trainer's modality dropout decides which modalities exist per sample; the HolderMI default switches it
off, because Algorithm 1 trains on the full modality set and *simulates* every missing-modality case by the subset
enumeration (the full set then serves as the MI teacher ``d_f``). Real missing channels (all-zero files) are still
honoured; switch ``modality_dropout`` on to let the teacher be a random subset, too.

Logged terms (unweighted, averaged over subsets): ``seg`` (nnU-Net loss), ``mi``, ``hd``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_missingmod.losses.divergences import divergence_loss, get_divergence
from nnunet_missingmod.networks.shared_backbone import SharedBackboneNetwork
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality


class nnUNetTrainerHolderMI(nnUNetTrainerMissingModality):
    """Parallel shared-backbone network + Dice + lambda_1 L_MI + lambda_2 L_HD over modality subsets.

    Hyper-parameters are the class attributes below. The paper fixes alpha = 1.1 (Table VIII), gamma_k = gamma0 * k
    and the loss form of Eq. 7, but gives no numbers for lambda_1, lambda_2, gamma0 or K; ours are unit loss weights,
    gamma0 = 0.1 and the three deepest encoder stages (with a 5-stage encoder gamma_k = 0.3, 0.4, 0.5), which keeps
    L_MI of the order of the segmentation loss and leaves out the full-resolution levels whose S-fold feature maps
    would dominate memory.

    Cost: every available modality gets its own backbone pass, so at ``width_factor = 1`` a step costs about M times
    nnU-Net's (plus the subset losses); :class:`nnUNetTrainerHolderMI_budget` fits nnU-Net's budget.
    """

    #: lambda_1, weight of L_MI (0 builds the network without MI heads: the "no L_MI" ablation)
    lambda_mi: float = 1.0
    #: lambda_2, weight of L_HD (0 skips it: the "no L_HD" ablation)
    lambda_hd: float = 1.0
    #: gamma0 of gamma_k = gamma0 * k (k = 1-based encoder stage)
    mi_gamma0: float = 0.1
    #: number of deepest encoder stages used for L_MI (None = all)
    mi_num_levels: Optional[int] = 3
    #: Hölder exponent alpha (beta = alpha / (alpha - 1)); Table VIII
    holder_alpha: float = 1.1
    #: divergence of L_HD, see nnunet_missingmod.losses.divergences.DIVERGENCES (Table IV)
    divergence: str = 'holder'
    #: subsets per step: None = all 2^k - 1 subsets of the k available modalities (Algorithm 1), n = n random ones
    subsets_per_step: Optional[int] = None
    #: multiplies every width of the plans' backbone (the M backbone passes cost about M * width_factor^2 of FLOPs)
    width_factor: float = 1.0
    #: kernel size of the per-modality channel encoders f_i
    channel_encoder_kernel: int = 3
    #: Algorithm 1 trains on the full set and simulates missing modalities by the subset enumeration
    modality_dropout: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        get_divergence(self.divergence)  # fail at start-up, not at the first step, on an unknown name

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True
                                   ) -> SharedBackboneNetwork:
        """Built from the plans and the class attributes, so nnU-Net's predictor can call it on the class."""
        return SharedBackboneNetwork.from_plans(
            configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            width_factor=cls.width_factor, channel_encoder_kernel=cls.channel_encoder_kernel,
            mi_num_levels=cls.mi_num_levels if cls.lambda_mi > 0 else 0, mi_gamma0=cls.mi_gamma0,
            subsets_per_step=cls.subsets_per_step)

    # ------------------------------------------------------------------ losses
    def _deep_supervision_weights(self, n_outputs: int) -> Tuple[float, ...]:
        if isinstance(self.loss, DeepSupervisionWrapper):
            return tuple(self.loss.weight_factors)[:n_outputs]
        return (1.0,) + (0.0,) * (n_outputs - 1)

    def _divergence_target(self, target: torch.Tensor, n_classes: int) -> Tuple[torch.Tensor, str, Optional[torch.Tensor]]:
        """(label distribution, mode, voxel mask) of one deep-supervision level's nnU-Net target."""
        lm = self.label_manager
        if lm.has_regions:
            if lm.ignore_label is not None:
                return target[:, :-1], 'sigmoid', (~target[:, -1:].bool())
            return target, 'sigmoid', None
        labels = target[:, 0].long()
        mask = None
        if lm.ignore_label is not None:
            mask = labels != lm.ignore_label
            labels = torch.where(mask, labels, torch.zeros_like(labels))
        onehot = torch.nn.functional.one_hot(labels, n_classes).movedim(-1, 1)
        return onehot, 'softmax', mask

    def holder_loss(self, subset_outputs, target) -> torch.Tensor:
        """Deep-supervision weighted L_HD of every subset prediction (S, B, K, ...) against the target, averaged
        over subsets and voxels."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        total = torch.zeros((), device=subset_outputs[0].device)
        for weight, logits, tgt in zip(self._deep_supervision_weights(len(subset_outputs)), subset_outputs, targets):
            if weight == 0:
                continue
            label, mode, mask = self._divergence_target(tgt, logits.shape[2])
            total = total + weight * divergence_loss(logits.float(), label, mode, self.divergence,
                                                     self.holder_alpha, dim=2, mask=mask)
        return total

    def compute_loss(self, output, aux: Dict[str, torch.Tensor], target, availability: torch.Tensor
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        subset_outputs = aux['_subset_outputs']
        n_subsets = subset_outputs[0].shape[0]
        if isinstance(output, (list, tuple)):
            seg = sum(self.loss([o[s] for o in subset_outputs], target) for s in range(n_subsets)) / n_subsets
        else:
            seg = sum(self.loss(subset_outputs[0][s], target) for s in range(n_subsets)) / n_subsets
        terms = {'seg': seg}
        total = seg
        if 'mi' in aux:
            terms['mi'] = aux['mi']
            total = total + self.lambda_mi * aux['mi']
        if self.lambda_hd > 0:
            terms['hd'] = self.holder_loss(subset_outputs, target)
            total = total + self.lambda_hd * terms['hd']
        return total, terms


# ---------------------------------------------------------------------- Table V ablations
class nnUNetTrainerHolderMI_noMI(nnUNetTrainerHolderMI):
    """Table V: PNF + L_Dice + L_HD (no mutual-information transfer; the network has no MI heads)."""
    lambda_mi = 0.0


class nnUNetTrainerHolderMI_noHD(nnUNetTrainerHolderMI):
    """Table V: PNF + L_Dice + L_MI (no Hölder divergence)."""
    lambda_hd = 0.0


class nnUNetTrainerHolderMI_DiceOnly(nnUNetTrainerHolderMI):
    """Table V: PNF + L_Dice only (parallel network framework without either auxiliary loss)."""
    lambda_mi = 0.0
    lambda_hd = 0.0


# ---------------------------------------------------------------------- Table IV divergences
class nnUNetTrainerHolderMI_KL(nnUNetTrainerHolderMI):
    """Table IV: KL(label || prediction) instead of the Hölder divergence."""
    divergence = 'kl'


class nnUNetTrainerHolderMI_TV(nnUNetTrainerHolderMI):
    """Table IV: total variation."""
    divergence = 'total_variation'


class nnUNetTrainerHolderMI_Hellinger(nnUNetTrainerHolderMI):
    """Table IV: squared Hellinger distance."""
    divergence = 'squared_hellinger'


class nnUNetTrainerHolderMI_NeymanChi2(nnUNetTrainerHolderMI):
    """Table IV: Neyman chi^2."""
    divergence = 'neyman_chi2'


class nnUNetTrainerHolderMI_JS(nnUNetTrainerHolderMI):
    """Table IV: Jensen-Shannon divergence."""
    divergence = 'jensen_shannon'


# ---------------------------------------------------------------------- Table VIII exponents
class nnUNetTrainerHolderMI_alpha1_05(nnUNetTrainerHolderMI):
    """Table VIII: alpha = 1.05."""
    holder_alpha = 1.05


class nnUNetTrainerHolderMI_alpha1_08(nnUNetTrainerHolderMI):
    """Table VIII: alpha = 1.08."""
    holder_alpha = 1.08


class nnUNetTrainerHolderMI_alpha1_15(nnUNetTrainerHolderMI):
    """Table VIII: alpha = 1.15."""
    holder_alpha = 1.15


class nnUNetTrainerHolderMI_alpha1_2(nnUNetTrainerHolderMI):
    """Table VIII: alpha = 1.2."""
    holder_alpha = 1.2


# ---------------------------------------------------------------------- compute budget
class nnUNetTrainerHolderMI_budget(nnUNetTrainerHolderMI):
    """Within the package budget (training step <= 1.3x time, <= 1.5x memory of nnUNetTrainer on the same plans):
    a quarter-width shared backbone (four passes of a network with 1/16 of the FLOPs) and two random subsets per step
    instead of all 15. Measured on CPU with nnU-Net's 3d_fullres plans of the synthetic data set (patch 56x96x64,
    batch 2, widths 32-320): 0.72x step time, 1.24x peak memory, 1.03x prediction time; the default needs 4.5x,
    5.3x and 4.9x (README "Compute")."""
    width_factor = 0.25
    subsets_per_step = 2
