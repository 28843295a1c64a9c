"""SMSN (T. Liu, X. Yang, W. Wang, A. Nguyen, H. Jiang, K. Huang, "Sequential Information Bottleneck Fusion:
Towards Robust and Generalizable Multi-Modal Brain Tumor Segmentation") and its ablations (the paper's Tables 4, 8
and 9) as one-attribute subclasses. The network is the multi-encoder U-Net of the fusion baselines with
:class:`~nnunet_missingmod.methods.smsn.fusion.SMSNFusion` at the bottleneck.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from nnunet_missingmod.methods.fusion.trainers import nnUNetTrainerConcatFusion
from nnunet_missingmod.methods.smsn.fusion import SMSNFusion
from nnunet_missingmod.modalities import modality_index

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
      over every latent dimension, channels x voxels). Weight ``1e-3``: the paper puts no weight on ``L_e`` in
      its final loss but derives it from the IB objective ``I(Z; Y) - beta I(X; Z)`` (Eq. 1) through the variational
      approximation of Alemi et al. ("Deep variational information bottleneck", ICLR 2017), whose KL is summed
      over the latent dimensions and weighted by a small ``beta`` (1e-3 is their best range). Measured on the
      small CPU plans (C = 32, 16^3 patches, 40 SGD steps on one batch): with weight 1 the KL held 99.9-100 % of
      the gradient norm at steps 10-30 (segmentation 0.6-1 %) and drove the latent down to 0.06 nats/sample
      by step 40 (posterior collapse: ``z_2`` carries nothing to the decoder); with 1e-3 its share was 2-10 %
      and the latent kept 1.5 nats/sample. At initialisation the Gaussian heads sit at the prior (KL = 0, zero
      KL gradient).
    * ``'recon'`` -- ``L_r`` (Eq. 6) with ``beta = 0.7`` / ``gamma = 0.3`` inside: availability-masked Gaussian
      reconstruction of the *input modalities* by two small decoders, nats per voxel summed over the present
      modalities.
    * ``'orth'`` -- ``L_o``, read as the **squared cosine** between ``z~_2`` and each present ``x_{s_i}`` per voxel,
      summed over modalities (:attr:`smsn_orthogonality_cosine`). The paper writes the raw squared dot product
      ``sum_i (z_2 . x_{s_i})^2``; measured at the first step of untrained networks on the small plans, its value
      grows with the width (104, 364, 618, 1380 for bottleneck widths C = 8, 32, 64, 160) and it held >= 99.999 %
      of the gradient norm (segmentation 0.004-0.08 %): training would first of all shrink ``z~_2`` and the
      specific features, whose scale the dot product rewards; the cosine (same zero set: zero iff orthogonal)
      held 22-89 % with segmentation 22-56 %. Set ``smsn_orthogonality_cosine = False`` for the dot
      product.
    """

    #: 'random' (paper), 'random_only', 'none'; a fixed order is given by :attr:`smsn_fixed_order`
    smsn_order_mode: str = 'random'
    #: modality names (dataset.json channel_names) of a fixed fusion order, or None
    smsn_fixed_order: Optional[Tuple[str, ...]] = None
    #: (K_1, K_2) relative to the bottleneck width: the paper's best 128, 256 for 128 channels (Table 9)
    smsn_bottleneck_ratios: Tuple[float, float] = (1.0, 2.0)
    #: Eq. 6 weights of the stage-I and stage-II reconstructions (Table 5 best: 0.7, 0.3)
    smsn_beta: float = 0.7
    smsn_gamma: float = 0.3
    smsn_reconstruction: bool = True
    smsn_specific: bool = True
    smsn_orthogonality: bool = True
    smsn_num_heads: int = 8
    smsn_depth: int = 1
    #: width of the reconstruction decoders at the patch resolution (doubling per coarser stage, at most 64)
    smsn_reconstruction_channels: int = 8
    #: L_o as the squared cosine (default) instead of the paper's squared dot product, see the class docstring
    smsn_orthogonality_cosine: bool = True
    #: see the class docstring: KL in nats/sample at the variational-IB weight 1e-3, L_r and L_o as in the paper
    aux_loss_weights: Dict[str, float] = {'kl': 1e-3, 'recon': 1.0, 'orth': 1.0}
    #: units of the terms as reduced by the losses (a subclass with the dot-product L_o must change 'orth')
    loss_term_units: Dict[str, str] = {'kl': 'nats/sample', 'recon': 'nats/voxel',
                                       'orth': 'cos^2/voxel summed over modalities'}

    @classmethod
    def fusion_factory(cls):
        def build(num_modalities: int, channels: int, block_kwargs: dict, kernel_size, strides=None) -> SMSNFusion:
            sizes = tuple(max(1, int(round(r * channels))) for r in cls.smsn_bottleneck_ratios)
            return SMSNFusion(num_modalities, channels, block_kwargs, kernel_size, bottleneck_sizes=sizes,
                              order_mode='fixed' if cls.smsn_fixed_order is not None else cls.smsn_order_mode,
                              use_reconstruction=cls.smsn_reconstruction, use_specific=cls.smsn_specific,
                              use_orthogonality=cls.smsn_orthogonality, beta=cls.smsn_beta, gamma=cls.smsn_gamma,
                              num_heads=cls.smsn_num_heads, depth=cls.smsn_depth, strides=strides,
                              reconstruction_channels=cls.smsn_reconstruction_channels,
                              orthogonality_normalize=cls.smsn_orthogonality_cosine)
        return build

    def initialize(self):
        super().initialize()
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
    smsn_reconstruction = False


class nnUNetTrainerSMSN_noLo(nnUNetTrainerSMSN):
    """Table 4: specific feature extraction kept, orthogonality loss ``L_o`` removed."""
    smsn_orthogonality = False


class nnUNetTrainerSMSN_noSpecific(nnUNetTrainerSMSN):
    """Table 4: without the specific feature extraction module, hence also without ``L_o``."""
    smsn_specific = False
    smsn_orthogonality = False


# ---------------------------------------------------------------- Table 8: fusion order
class nnUNetTrainerSMSN_fixed1(nnUNetTrainerSMSN):
    """Table 8 "Fixed 1": T1, T2, FLAIR, T1ce."""
    smsn_fixed_order = FIXED_ORDERS['fixed1']


class nnUNetTrainerSMSN_fixed2(nnUNetTrainerSMSN):
    """Table 8 "Fixed 2": T1ce, T2, FLAIR, T1."""
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
