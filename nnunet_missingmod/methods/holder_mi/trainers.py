"""``nnUNetTrainerHolderMI``: Hölder divergence + mutual-information knowledge transfer, and its ablations.

R. Cheng, X. Qiu, M. Li, Y. Zhang, C. Li, F. Yu, "Robust brain tumor segmentation with incomplete MRI modalities
using Hölder divergence and mutual information-enhanced knowledge transfer", arXiv:2507.01254, 2025 (authors' code:
``Lboy11/Brain-Tumor-Segmentation``). Per training step (Algorithm 1, Eq. 7)::

    L = mean_S [ L_Dice(Y_S, Y) + lambda_1 * L_MI(d_f, d_m(S)) + lambda_2 * L_HD(Y_S, Y) ]

over the modality subsets S of the available modalities; ``Y_S`` is the dynamic combination (mean of the
per-modality logits, :mod:`nnunet_missingmod.methods.holder_mi.network`). The per-modality backbone outputs are
computed once per step, so combining them for many subsets costs one small matrix product per deep-supervision
level plus the loss evaluations; ``subsets_per_step`` limits the number of subsets when even that is too slow.

* ``L_Dice`` (Eq. 6) is nnU-Net's soft Dice (``MemoryEfficientSoftDiceLoss``, deep supervision, the plans'
  ``batch_dice``) *without* nnU-Net's BCE/CE: with BCE inside the segmentation term, the Table IV row "BCE" and the
  Table V rows would not be what they say. The denominator is ``sum p + sum y`` as in the authors' code (Eq. 6
  prints squares). ``holder_segmentation_loss = 'dice_bce'`` restores nnU-Net's compound loss.
* ``L_HD`` (Eq. 1-2) is, by default, the printed Eq. 1: a mean over voxels of the Hölder divergence between the
  predicted and the label's Bernoulli distribution per region (:mod:`nnunet_missingmod.methods.holder_mi.divergences`
  says why; ``holder_divergence_domain`` selects the other readings), at every deep-supervision level with nnU-Net's
  deep-supervision weights.
* ``L_MI`` (Eq. 4-5) is computed inside the network (it owns the MI heads, so DDP sees all parameters in forward),
  on the deepest encoder stage by default, against the standardised, detached full-set features
  (:mod:`nnunet_missingmod.methods.holder_mi.mutual_information`: a bound that rescaling cannot meet), in nats per
  sample and scaled by the base trainer's one rule for per-sample terms. ``std_c(d_f)``, ``sigma_c`` and the
  unexplained variance fraction ``rho`` are in the training log every epoch; the gradient shares leave the MI
  heads out (they only receive ``L_MI``).
* ``lambda_1 = aux_loss_weights['mi']``, ``lambda_2 = aux_loss_weights['hd']``: the paper gives no values; the
  authors' code adds both terms with weight 1.

The base trainer's modality dropout decides which modalities exist per sample; the HolderMI default switches it
off, because Algorithm 1 trains on the full modality set and *simulates* every missing-modality case by the subset
enumeration (the full set then serves as the MI teacher ``d_f``). Real missing channels (all-zero files) are still
honoured; switch ``modality_dropout`` on to let the teacher be a random subset, too.

Logged terms (unweighted, averaged over subsets): ``seg`` (Dice), ``mi`` (nats per sample, up to Eq. 5's
constant), ``hd``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_missingmod.methods.holder_mi.divergences import check_loss_name, divergence_loss
from nnunet_missingmod.networks.outputs import NetworkOutput
from nnunet_missingmod.methods.holder_mi.network import SharedBackboneNetwork
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality, \
    nnUNetTrainerModalityDropout

#: segmentation losses a trainer of this module can train with
SEGMENTATION_LOSSES = ('dice', 'dice_bce')


def build_segmentation_loss(trainer, name: str):
    """nnU-Net's loss of ``trainer`` (deep supervision, ignore label, batch Dice as planned), with its BCE/CE part
    switched off for ``'dice'`` (Eq. 6)."""
    if name not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown holder_segmentation_loss {name!r}; choose one of {SEGMENTATION_LOSSES}")
    loss = nnUNetTrainer._build_loss(trainer)
    if name == 'dice':
        inner = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
        inner.weight_ce = 0.0
    return loss


class nnUNetTrainerHolderMI(nnUNetTrainerMissingModality):
    """Parallel shared-backbone network + Dice + lambda_1 L_MI + lambda_2 L_HD over modality subsets.

    Hyper-parameters are the class attributes below. The paper fixes alpha = 1.1 (Table VIII) and gamma_k = gamma0 * k
    (Eq. 13) but gives no numbers for lambda_1, lambda_2, gamma0 or K; ours follow the authors' code: unit weights and
    one level (the deepest encoder stage) with weight 1.

    Cost: every available modality gets its own backbone pass, so at ``width_factor = 1`` a step costs about M times
    nnU-Net's (plus the subset losses); :class:`nnUNetTrainerHolderMI_budget` fits nnU-Net's budget.
    """

    #: lambda_1 (``'mi'``) and lambda_2 (``'hd'``); weight 0 removes a term (and, for ``'mi'``, the MI heads)
    aux_loss_weights: Dict[str, float] = {'mi': 1.0, 'hd': 1.0}
    loss_term_units: Dict[str, str] = {'mi': 'nats/sample'}
    per_sample_terms = ('mi',)
    #: 'dice' (Eq. 6) or 'dice_bce' (nnU-Net's compound loss)
    holder_segmentation_loss: str = 'dice'
    #: gamma0 of gamma_k = gamma0 * k (k = 1..K over the used levels, shallowest first)
    holder_mi_gamma0: float = 1.0
    #: number of deepest encoder stages used for L_MI (None = all)
    holder_mi_num_levels: Optional[int] = 1
    #: Hölder exponent alpha (beta = alpha / (alpha - 1)); Table VIII
    holder_alpha: float = 1.1
    #: divergence of L_HD (Table IV): see nnunet_missingmod.methods.holder_mi.divergences (DIVERGENCES, VOXEL_LOSSES)
    holder_divergence: str = 'holder'
    #: 'voxel' (Eq. 1 as printed: a mean over voxels), 'image' (densities over the patch) or 'axis' (the authors'
    #: code: densities along the first spatial axis); see the module docstring for why 'voxel' is the default
    holder_divergence_domain: str = 'voxel'
    #: subsets per step: None = all 2^k - 1 subsets of the k available modalities (Algorithm 1), n = n random ones
    holder_subsets_per_step: Optional[int] = None
    #: multiplies every width of the plans' backbone (the M backbone passes cost about M * width_factor^2 of FLOPs)
    width_factor: float = 1.0
    #: kernel size of the per-modality channel encoders f_i
    holder_channel_encoder_kernel: int = 3
    #: one affine per modality in the backbone's normalisation layers (the authors' GroupNormPara)
    holder_modality_specific_norm: bool = True
    #: Algorithm 1 trains on the full set and simulates missing modalities by the subset enumeration
    modality_dropout: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        check_loss_name(self.holder_divergence, self.holder_divergence_domain)  # fail at start-up, not at the first step

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True
                                   ) -> SharedBackboneNetwork:
        """Built from the plans and the class attributes, so nnU-Net's predictor can call it on the class."""
        return SharedBackboneNetwork.from_plans(
            configuration_manager, num_input_channels, num_output_channels, width_factor=cls.width_factor,
            deep_supervision=enable_deep_supervision, channel_encoder_kernel=cls.holder_channel_encoder_kernel,
            mi_num_levels=cls.holder_mi_num_levels if cls.aux_loss_weights.get('mi', 0) > 0 else 0,
            mi_gamma0=cls.holder_mi_gamma0, subsets_per_step=cls.holder_subsets_per_step,
            modality_specific_norm=cls.holder_modality_specific_norm)

    def _build_loss(self):
        return build_segmentation_loss(self, self.holder_segmentation_loss)

    # ------------------------------------------------------------------ losses
    def _deep_supervision_weights(self, n_outputs: int) -> Tuple[float, ...]:
        if isinstance(self.loss, DeepSupervisionWrapper):
            return tuple(self.loss.weight_factors)[:n_outputs]
        return (1.0,) + (0.0,) * (n_outputs - 1)

    def _divergence_target(self, target: torch.Tensor, n_classes: int) -> Tuple[torch.Tensor, str, Optional[torch.Tensor]]:
        """(label distribution, mode, voxel mask with a size-1 class axis) of one deep-supervision level's target."""
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
            mask = mask[:, None]
        onehot = torch.nn.functional.one_hot(labels, n_classes).movedim(-1, 1)
        return onehot, 'softmax', mask

    def holder_loss(self, subset_outputs, target, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deep-supervision weighted L_HD (Eq. 1-2) of every subset prediction (S, B, K, ...) against the target,
        averaged over the subsets with ``weights`` (S,) (default: equal) and over samples and classes (or voxels);
        one vectorised evaluation over the subsets."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        level_weights = self._deep_supervision_weights(len(subset_outputs))

        def one_subset(*levels):
            total = torch.zeros((), device=levels[0].device)
            for weight, logits, tgt in zip(level_weights, levels, targets):
                if weight != 0:
                    label, mode, mask = self._divergence_target(tgt, logits.shape[1])
                    total = total + weight * divergence_loss(logits.float(), label, mode, self.holder_divergence,
                                                             self.holder_alpha, dim=1, mask=mask,
                                                             domain=self.holder_divergence_domain)
            return total
        return _subset_mean(torch.func.vmap(one_subset)(*subset_outputs), weights)

    def segmentation_terms(self, output: NetworkOutput, target, availability: torch.Tensor
                           ) -> Dict[str, torch.Tensor]:
        """Dice (and L_HD) of every subset's prediction, averaged over the subsets with the network's subset weights
        (Algorithm 1); nnU-Net's loss evaluated once, vectorised over the subsets (``torch.func.vmap``), except
        under DDP with batch Dice, whose all-gather cannot be vectorised: there one call per subset."""
        subset_outputs, weights = output.extras['subset_outputs'], output.extras['subset_weights']
        deep_supervision = isinstance(output.segmentation, (list, tuple))

        def one_subset(*levels):
            return self.loss(list(levels) if deep_supervision else levels[0], target)
        if self.is_ddp and self.configuration_manager.batch_dice:
            seg = torch.stack([one_subset(*(o[s] for o in subset_outputs)) for s in range(len(weights))])
        else:
            seg = torch.func.vmap(one_subset)(*subset_outputs)
        terms = {'seg': _subset_mean(seg, weights)}
        if self.term_weight('hd') > 0:
            terms['hd'] = self.holder_loss(subset_outputs, target, weights)
        return terms


def _subset_mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Weighted mean of per-subset values (S,) (plain mean without weights)."""
    if weights is None:
        return values.mean()
    return (values * weights.to(values.dtype)).sum() / weights.sum().to(values.dtype)


# ---------------------------------------------------------------------- Table V ablations
class nnUNetTrainerHolderMI_noPNF(nnUNetTrainerModalityDropout):
    """Table V row 1: no parallel network framework -- nnU-Net's early-fusion U-Net trained on random modality
    subsets with the Dice loss only (Eq. 6)."""

    def _build_loss(self):
        return build_segmentation_loss(self, 'dice')


class nnUNetTrainerHolderMI_noMI(nnUNetTrainerHolderMI):
    """Table V: PNF + L_Dice + L_HD (no mutual-information transfer; the network has no MI heads)."""
    aux_loss_weights = {'mi': 0.0, 'hd': 1.0}


class nnUNetTrainerHolderMI_noHD(nnUNetTrainerHolderMI):
    """Table V: PNF + L_Dice + L_MI (no Hölder divergence)."""
    aux_loss_weights = {'mi': 1.0, 'hd': 0.0}


class nnUNetTrainerHolderMI_DiceOnly(nnUNetTrainerHolderMI):
    """Table V row 2: PNF + L_Dice only (the parallel network with plain Dice, Eq. 6)."""
    aux_loss_weights = {'mi': 0.0, 'hd': 0.0}


# ---------------------------------------------------------------------- Table IV divergences
class nnUNetTrainerHolderMI_KL(nnUNetTrainerHolderMI):
    """Table IV: KL(label || prediction) instead of the Hölder divergence."""
    holder_divergence = 'kl'


class nnUNetTrainerHolderMI_TV(nnUNetTrainerHolderMI):
    """Table IV: total variation."""
    holder_divergence = 'total_variation'


class nnUNetTrainerHolderMI_Hellinger(nnUNetTrainerHolderMI):
    """Table IV: squared Hellinger distance."""
    holder_divergence = 'squared_hellinger'


class nnUNetTrainerHolderMI_NeymanChi2(nnUNetTrainerHolderMI):
    """Table IV: Neyman chi^2."""
    holder_divergence = 'neyman_chi2'


class nnUNetTrainerHolderMI_JS(nnUNetTrainerHolderMI):
    """Table IV: Jensen-Shannon divergence."""
    holder_divergence = 'jensen_shannon'


class nnUNetTrainerHolderMI_MSE(nnUNetTrainerHolderMI):
    """Table IV: mean squared error between the probability and the label, per voxel."""
    holder_divergence = 'mse'


class nnUNetTrainerHolderMI_BCE(nnUNetTrainerHolderMI):
    """Table IV: binary cross-entropy per voxel (categorical CE for label-based training)."""
    holder_divergence = 'bce'


class nnUNetTrainerHolderMI_imageDensity(nnUNetTrainerHolderMI):
    """Option: L_HD between the prediction's and the label's densities over the whole patch (Definition 1 with
    Omega the image); it cannot fall much below its value for a uniform prediction."""
    holder_divergence_domain = 'image'


class nnUNetTrainerHolderMI_axisDensity(nnUNetTrainerHolderMI):
    """Option: the authors' code (``utils/loss.py``, ``DiceCoef``): densities along the first spatial axis."""
    holder_divergence_domain = 'axis'


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
    instead of all 15, where the default (the paper's Algorithm 1 at full width) is far over the budget. Whether it
    meets the budget on a given device and configuration is measured by ``nnUNetv2_mm_perf`` (docs/compute.md; the
    figures: docs/results/2026-11-23-compute-cpu.md and later pages)."""
    width_factor = 0.25
    holder_subsets_per_step = 2


class nnUNetTrainerHolderMI_budget_noMI(nnUNetTrainerHolderMI_noMI, nnUNetTrainerHolderMI_budget):
    """Table V's ``_noMI`` ablation at the budget width: :class:`nnUNetTrainerHolderMI_budget` without L_MI."""


class nnUNetTrainerHolderMI_budget_noHD(nnUNetTrainerHolderMI_noHD, nnUNetTrainerHolderMI_budget):
    """Table V's ``_noHD`` ablation at the budget width: :class:`nnUNetTrainerHolderMI_budget` without L_HD."""
