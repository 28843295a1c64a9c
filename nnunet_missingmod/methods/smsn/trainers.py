"""SMSN (T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang, "Sequential Information Bottleneck Fusion:
Towards Robust and Generalizable Multi-Modal Brain Tumor Segmentation") and its ablations (the paper's Tables 4, 8
and 9) as one-attribute subclasses. The network is the multi-encoder U-Net of the fusion baselines with
:class:`~nnunet_missingmod.methods.smsn.fusion.SMSNFusion` at the bottleneck.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerVanillaAdam1en3

from nnunet_missingmod.methods.fusion.trainers import nnUNetTrainerConcatFusion
from nnunet_missingmod.methods.smsn.fusion import SMSNFusion
from nnunet_missingmod.modalities import modality_index
from nnunet_missingmod.training.optimizers import OptimizerPair, PolyLRSchedulerPerGroup

#: SMSN Table 8: "Fixed 1" starts from the least informative modality, "Fixed 2" from the most informative one
FIXED_ORDERS = {
    'fixed1': ('T1', 'T2', 'FLAIR', 'T1ce'),
    'fixed2': ('T1ce', 'T2', 'FLAIR', 'T1'),
}


class nnUNetTrainerSMSN(nnUNetTrainerConcatFusion):
    """SMSN: modality re-ordering, two-stage information-bottleneck fusion, specific feature extraction.

    T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang, "Sequential Information Bottleneck Fusion: Towards
    Robust and Generalizable Multi-Modal Brain Tumor Segmentation" (Sec. 4; the network is
    :class:`~nnunet_missingmod.methods.smsn.fusion.SMSNFusion` inside the multi-encoder U-Net).

    Loss = nnU-Net's segmentation loss (``'seg'``) + ``w_kl * L_e`` + ``L_r`` + ``L_o`` (Sec. 4, "Final Loss":
    all terms optimised jointly, no further weights given):

    * ``'kl'`` -- ``L_e`` (Eq. 5), KL of both stages' posteriors to ``N(0, I)`` in **nats per sample** (summed
      over every latent dimension, channels x voxels), a per-sample term under the base trainer's one scaling rule:
      it enters divided by the patch's voxels x regions. Weight 1: Eq. 4 weighs the compression terms
      ``I([x_1, x_2]; z_1)`` and ``I(z_1, [x_3, x_4]; z_2)`` with 1 and the relevance terms with ``beta`` and
      ``gamma``; the relevance terms are log-likelihoods summed over the voxels of a sample, which nnU-Net's losses
      and ``L_r`` average instead, so the per-sample KL is averaged by the same count. (A weight on the KL summed
      per sample next to per-voxel means is, in effect, the voxel count times too strong: the posteriors then sit at
      the prior and ``z_2`` carries nothing.) Each stage's KL and its fraction of active latent channels are in the
      training log every epoch. At initialisation the Gaussian heads sit at the prior (KL = 0).
    * ``'recon'`` -- ``L_r`` (Eq. 6) with ``beta = 0.7`` / ``gamma = 0.3`` inside: availability-masked Gaussian
      reconstruction of the *input modalities* by two small decoders, nats per voxel summed over the present
      modalities.
    * ``'orth'`` -- ``L_o``, read as the **squared cosine** between ``z~_2`` and each present ``x_{s_i}`` per voxel,
      summed over modalities (:attr:`smsn_orthogonality_cosine`). The paper writes the raw squared dot product
      ``sum_i (z_2 . x_{s_i})^2``, whose value grows with the feature width and scale, so that it takes nearly
      the whole gradient norm of untrained networks (docs/results/2026-11-26-loss-term-scales.md): training would
      first of all shrink ``z~_2`` and the specific features, whose scale the dot product rewards. The cosine has
      the same zero set (zero iff orthogonal) and is scale-free. Set ``smsn_orthogonality_cosine = False`` for the
      dot product.

    **Optimizers.** The information bottleneck proper (the Gaussian heads and the reconstruction decoders,
    :meth:`~nnunet_missingmod.methods.smsn.fusion.SMSNFusion.bottleneck_parameters`) is trained with Adam at
    :attr:`smsn_bottleneck_adam_lr`, the rest of the network with nnU-Net's SGD, both on nnU-Net's poly schedule.
    Under SGD alone the reconstruction decoders learn nothing within nnU-Net-length schedules (their only losses are
    per-voxel means, and SGD's step is proportional to the gradient), ``L_r`` then rewards no information in ``z``
    and the KL compresses both latents to the prior; with Adam on these modules the decoders learn and the latents
    stay informative (docs/results/2026-12-05-smsn-bottleneck-optimizer.md). The paper's encoders and decoder follow
    mmFormer and M2FTrans, which train everything with Adam: :class:`nnUNetTrainerSMSN_Adam`.
    """

    #: 'random' (paper), 'random_only', 'none', or 'fixed' with the order :attr:`smsn_fixed_order`
    smsn_order_mode: str = 'random'
    #: modality names (dataset.json channel_names) of the fixed fusion order of ``smsn_order_mode = 'fixed'``
    smsn_fixed_order: Optional[Tuple[str, ...]] = None
    #: (K_1, K_2) relative to the bottleneck width: the paper's best 128, 256 for 128 channels (Table 9)
    smsn_bottleneck_ratios: Tuple[float, float] = (1.0, 2.0)
    #: Eq. 6 weights of the stage-I and stage-II reconstructions (Table 5 best: 0.7, 0.3)
    smsn_beta: float = 0.7
    smsn_gamma: float = 0.3
    smsn_use_reconstruction: bool = True
    smsn_use_specific: bool = True
    smsn_use_orthogonality: bool = True
    smsn_num_heads: int = 8
    smsn_depth: int = 1
    #: width of the reconstruction decoders at the patch resolution (doubling per coarser stage, at most 64)
    smsn_reconstruction_channels: int = 8
    #: L_o as the squared cosine (default) instead of the paper's squared dot product, see the class docstring
    smsn_orthogonality_cosine: bool = True
    #: the Gaussian heads' posterior std at initialisation; None: the prior's (mu = 0, sigma = 1)
    smsn_initial_std: Optional[float] = None
    #: Adam's learning rate for the Gaussian heads and reconstruction decoders (the class docstring); None: nnU-Net's
    #: single optimizer for the whole network
    smsn_bottleneck_adam_lr: Optional[float] = 1e-3
    #: see the class docstring: Eq. 4's compression weight 1 (the KL per sample scaled by the base trainer's rule),
    #: L_r and L_o as in the paper
    aux_loss_weights: Dict[str, float] = {'kl': 1.0, 'recon': 1.0, 'orth': 1.0}
    per_sample_terms = ('kl',)
    #: units of the terms as reduced by the losses (a subclass with the dot-product L_o must change 'orth')
    loss_term_units: Dict[str, str] = {'kl': 'nats/sample', 'recon': 'nats/voxel',
                                       'orth': 'cos^2/voxel summed over modalities'}

    @classmethod
    def fusion_factory(cls):
        def build(num_modalities: int, channels: int, block_kwargs: dict, kernel_size, strides=None) -> SMSNFusion:
            return SMSNFusion(num_modalities, channels, block_kwargs, kernel_size,
                              bottleneck_ratios=cls.smsn_bottleneck_ratios,
                              order_mode=cls.smsn_order_mode,
                              use_reconstruction=cls.smsn_use_reconstruction, use_specific=cls.smsn_use_specific,
                              use_orthogonality=cls.smsn_use_orthogonality, beta=cls.smsn_beta, gamma=cls.smsn_gamma,
                              num_heads=cls.smsn_num_heads, depth=cls.smsn_depth, strides=strides,
                              reconstruction_channels=cls.smsn_reconstruction_channels,
                              orthogonality_cosine=cls.smsn_orthogonality_cosine,
                              initial_std=cls.smsn_initial_std)
        return build

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        if self.smsn_bottleneck_adam_lr is None:
            return optimizer, lr_scheduler
        bottleneck = self.bare_network.fusion.bottleneck_parameters()
        ids = {id(p) for p in bottleneck}
        rest = [p for p in self.network.parameters() if id(p) not in ids]
        pair = OptimizerPair(type(optimizer)(rest, **optimizer.defaults),
                             torch.optim.Adam(bottleneck, self.smsn_bottleneck_adam_lr, weight_decay=self.weight_decay))
        return pair, PolyLRSchedulerPerGroup(pair, self.num_epochs)

    def initialize(self):
        super().initialize()
        if (self.smsn_order_mode == 'fixed') != (self.smsn_fixed_order is not None):
            raise ValueError(f"{type(self).__name__}: smsn_order_mode 'fixed' and smsn_fixed_order go together "
                             f"(got {self.smsn_order_mode!r} and {self.smsn_fixed_order})")
        if self.smsn_fixed_order is not None:
            if len(self.smsn_fixed_order) != len(self.modality_names):
                raise ValueError(f"{type(self).__name__}: fixed order {self.smsn_fixed_order} names "
                                 f"{len(self.smsn_fixed_order)} modalities, the data set has {self.modality_names}")
            order = [modality_index(self.dataset_json, name) for name in self.smsn_fixed_order]
            self.bare_network.fusion.set_order(order)
            self.print_to_log_file(f"SMSN fixed fusion order: {list(self.smsn_fixed_order)} (channels {order})")


# ---------------------------------------------------------------- Table 4: module / loss ablations
class nnUNetTrainerSMSN_noReorder(nnUNetTrainerSMSN):
    """Table 4, first column: no re-ordering (fusion in channel order)."""
    smsn_order_mode = 'none'


class nnUNetTrainerSMSN_noLr(nnUNetTrainerSMSN):
    """Table 4: without the reconstruction loss ``L_r`` (and its decoders)."""
    smsn_use_reconstruction = False


class nnUNetTrainerSMSN_noLo(nnUNetTrainerSMSN):
    """Table 4: specific feature extraction kept, orthogonality loss ``L_o`` removed."""
    smsn_use_orthogonality = False


class nnUNetTrainerSMSN_noSpecific(nnUNetTrainerSMSN):
    """Table 4: without the specific feature extraction module, hence also without ``L_o``."""
    smsn_use_specific = False
    smsn_use_orthogonality = False


# ---------------------------------------------------------------- Table 8: fusion order
class nnUNetTrainerSMSN_fixed1(nnUNetTrainerSMSN):
    """Table 8 "Fixed 1": T1, T2, FLAIR, T1ce."""
    smsn_order_mode = 'fixed'
    smsn_fixed_order = FIXED_ORDERS['fixed1']


class nnUNetTrainerSMSN_fixed2(nnUNetTrainerSMSN):
    """Table 8 "Fixed 2": T1ce, T2, FLAIR, T1."""
    smsn_order_mode = 'fixed'
    smsn_fixed_order = FIXED_ORDERS['fixed2']


class nnUNetTrainerSMSN_randomOnly(nnUNetTrainerSMSN):
    """Table 8 "Random only": a plain random permutation, the first modality may be missing."""
    smsn_order_mode = 'random_only'


# ---------------------------------------------------------------- Table 9: bottleneck sizes (K_1, K_2 for C = 128)
class nnUNetTrainerSMSN_bottleneck64_64(nnUNetTrainerSMSN):
    """Table 9: bottleneck sizes 64, 64 for 128-channel modality features."""
    smsn_bottleneck_ratios = (0.5, 0.5)


class nnUNetTrainerSMSN_bottleneck64_128(nnUNetTrainerSMSN):
    """Table 9: bottleneck sizes 64, 128 for 128-channel modality features."""
    smsn_bottleneck_ratios = (0.5, 1.0)


class nnUNetTrainerSMSN_bottleneck256_512(nnUNetTrainerSMSN):
    """Table 9: bottleneck sizes 256, 512 for 128-channel modality features."""
    smsn_bottleneck_ratios = (2.0, 4.0)


class nnUNetTrainerSMSN_bottleneck512_512(nnUNetTrainerSMSN):
    """Table 9: bottleneck sizes 512, 512 for 128-channel modality features."""
    smsn_bottleneck_ratios = (4.0, 4.0)


# ---------------------------------------------------------------- capacity reference
class nnUNetTrainerSMSN_width1(nnUNetTrainerSMSN):
    """Modality encoders at the plans' full widths instead of half: the capacity reference for the default, so
    that an ablation study can tell a shortfall of capacity from one of mechanism."""
    width_factor = 1.0


# ---------------------------------------------------------------- optimizer
class nnUNetTrainerSMSN_Adam(nnUNetTrainerSMSN, nnUNetTrainerVanillaAdam1en3):
    """SMSN trained with Adam (nnU-Net's ``nnUNetTrainerVanillaAdam1en3``: lr 1e-3, nnU-Net's weight decay and
    poly schedule) for the whole network, instead of the default's nnU-Net SGD with Adam for the bottleneck alone;
    model and losses are the default's.

    The paper's encoders and decoder follow mmFormer and M2FTrans, which train with Adam. Under nnU-Net's SGD the
    reconstruction decoders of ``L_r`` learn nothing within the short schedules measured here (``recon`` stays at
    ``recon_zero``), so ``L_r`` rewards no information in ``z`` and the KL compresses the bottleneck to the prior;
    with Adam the decoders learn and the latent stays informative (docs/results/2026-12-03-mechanisms.md)."""
    smsn_bottleneck_adam_lr = None


class nnUNetTrainerSMSN_SGD(nnUNetTrainerSMSN):
    """The whole network on nnU-Net's SGD, the Gaussian heads and reconstruction decoders included (the default
    trains those with Adam, see :class:`nnUNetTrainerSMSN`); model and losses are the default's."""
    smsn_bottleneck_adam_lr = None


class nnUNetTrainerSMSN_smallInitStd(nnUNetTrainerSMSN):
    """The Gaussian heads' posterior std starts at exp(-5) ~ 0.0067 (the deep variational information bottleneck's
    start, Alemi et al., ICLR 2017) instead of at the prior's 1, where ``z`` is pure noise and the KL's gradient on
    the log-variance is zero; model, losses and optimizer are the default's."""
    smsn_initial_std = math.exp(-5.0)
