"""The multi-encoder trainers (fusion baselines and SMSN) build their networks from the class attributes."""
import inspect

from nnunet_missingmod.methods.fusion.modules import AttentionFusion, ConcatFusion
from nnunet_missingmod.methods.smsn.fusion import SMSNFusion
from nnunet_missingmod.networks.multi_encoder import MultiEncoderFusionUNet
from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality
from nnunet_missingmod.training.nnUNet_extTrainer import missingmod_trainers as ft

ARCH = {
    "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


class FakeConfigurationManager:
    """The two ConfigurationManager properties the fusion trainers read."""
    network_arch_init_kwargs = ARCH
    network_arch_init_kwargs_req_import = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def build(trainer, **kw):
    return trainer.build_network_architecture(None, FakeConfigurationManager, 4, 3, **kw)


# ------------------------------------------------------------------ class-level (no data needed)
def test_build_network_architecture_is_a_classmethod_nnunet_recognises():
    for trainer in (ft.nnUNetTrainerConcatFusion, ft.nnUNetTrainerAttentionFusion, ft.nnUNetTrainerSMSN):
        assert issubclass(trainer, nnUNetTrainerMissingModality)
        assert 'plans_manager' in inspect.signature(trainer.build_network_architecture).parameters
    assert isinstance(build(ft.nnUNetTrainerConcatFusion).fusion, ConcatFusion)
    assert isinstance(build(ft.nnUNetTrainerAttentionFusion).fusion, AttentionFusion)
    net = build(ft.nnUNetTrainerSMSN, enable_deep_supervision=False)
    assert isinstance(net, MultiEncoderFusionUNet) and isinstance(net.fusion, SMSNFusion)
    assert net.decoder.deep_supervision is False


def test_smsn_defaults_follow_the_paper():
    net = build(ft.nnUNetTrainerSMSN)
    fusion = net.fusion
    assert [s[0].output_channels for s in net.encoders[0].stages] == [8, 8, 16]   # width factor 0.5, floor 8
    assert fusion.order_mode == 'random'
    assert (fusion.beta, fusion.gamma) == (0.7, 0.3)                              # Table 5
    assert fusion.stage1[0].out_channels == 16 and fusion.stage2[0].out_channels == 32   # (C, 2C), Table 9
    # Eq. 4: compression weight 1, the per-sample KL scaled by the voxels x regions of the segmentation mean
    assert ft.nnUNetTrainerSMSN.aux_loss_weights == {'kl': 1.0, 'recon': 1.0, 'orth': 1.0}
    assert ft.nnUNetTrainerSMSN.per_sample_terms == ('kl',)
    assert ft.nnUNetTrainerSMSN.loss_term_units['kl'] == 'nats/sample'
    assert fusion.orthogonality_cosine is True          # L_o as squared cosine (measured, see the docstring)
    assert ft.nnUNetTrainerSMSN.loss_term_units['recon'] == 'nats/voxel'
    # the reconstruction decoders reach the patch resolution (two x2 stages) from the (C, 2C) bottlenecks
    assert fusion.reconstruct1.scale == [4, 4, 4] and fusion.reconstruct2.scale == [4, 4, 4]
    assert fusion.reconstruct1.layers[0].in_channels == 16 and fusion.reconstruct2.layers[0].in_channels == 32
    # one map per modality, in channel order (q_psi(x_i | z) of Eq. 6 for every modality i)
    assert fusion.reconstruct1.layers[-1].out_channels == 4 and fusion.reconstruct2.layers[-1].out_channels == 4


def test_ablation_trainers_change_only_their_switch():
    assert build(ft.nnUNetTrainerSMSN_noReorder).fusion.order_mode == 'none'
    assert build(ft.nnUNetTrainerSMSN_randomOnly).fusion.order_mode == 'random_only'
    assert build(ft.nnUNetTrainerSMSN_fixed1).fusion.order_mode == 'fixed'
    assert ft.nnUNetTrainerSMSN_fixed2.smsn_fixed_order == ('T1ce', 'T2', 'FLAIR', 'T1')
    assert not hasattr(build(ft.nnUNetTrainerSMSN_noLr).fusion, 'reconstruct1')
    no_specific = build(ft.nnUNetTrainerSMSN_noSpecific).fusion
    assert not hasattr(no_specific, 'specific') and not no_specific.use_orthogonality
    no_lo = build(ft.nnUNetTrainerSMSN_noLo).fusion
    assert hasattr(no_lo, 'specific') and not no_lo.use_orthogonality
    sizes = {cls.__name__: (build(cls).fusion.stage1[0].out_channels, build(cls).fusion.stage2[0].out_channels)
             for cls in (ft.nnUNetTrainerSMSN_bottleneck64_64, ft.nnUNetTrainerSMSN_bottleneck64_128,
                         ft.nnUNetTrainerSMSN_bottleneck256_512, ft.nnUNetTrainerSMSN_bottleneck512_512)}
    assert list(sizes.values()) == [(8, 8), (8, 16), (32, 64), (64, 64)]          # C = 16 at the bottleneck


def test_width_factor_is_read_from_the_class():
    wide = type('Wide', (ft.nnUNetTrainerAttentionFusion,), {'width_factor': 1.0})
    assert [s[0].output_channels for s in build(wide).encoders[0].stages] == [8, 16, 32]


# ------------------------------------------------------------------ nnUNetv2_train / nnUNetv2_predict
