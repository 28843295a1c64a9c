import pytest
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_missingmod.small_config import make_small_configuration


def fullres_plans():
    arch = {'network_class_name': 'dynamic_network_architectures.architectures.unet.PlainConvUNet',
            'arch_kwargs': {'n_stages': 5, 'features_per_stage': [32, 64, 128, 256, 320],
                            'conv_op': 'torch.nn.modules.conv.Conv3d',
                            'kernel_sizes': [[1, 3, 3]] + [[3, 3, 3]] * 4,
                            'strides': [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                            'n_conv_per_stage': [2] * 5, 'n_conv_per_stage_decoder': [2] * 4, 'conv_bias': True,
                            'norm_op': 'torch.nn.modules.instancenorm.InstanceNorm3d',
                            'norm_op_kwargs': {'eps': 1e-05, 'affine': True}, 'dropout_op': None,
                            'dropout_op_kwargs': None, 'nonlin': 'torch.nn.LeakyReLU',
                            'nonlin_kwargs': {'inplace': True}},
            '_kw_requires_import': ['conv_op', 'norm_op', 'dropout_op', 'nonlin']}
    return {'dataset_name': 'Dataset999_X', 'plans_name': 'nnUNetPlans', 'original_median_spacing_after_transp': [1, 1, 1],
            'original_median_shape_after_transp': [64, 64, 64], 'image_reader_writer': 'SimpleITKIO',
            'transpose_forward': [0, 1, 2], 'transpose_backward': [0, 1, 2], 'experiment_planner_used': 'x',
            'label_manager': 'LabelManager', 'foreground_intensity_properties_per_channel': {},
            'configurations': {'3d_fullres': {'data_identifier': 'nnUNetPlans_3d_fullres', 'batch_size': 2,
                                              'patch_size': [128, 128, 128], 'spacing': [1.0, 1.0, 1.0],
                                              'architecture': arch}}}


def test_small_configuration_inherits_and_truncates_the_network():
    plans = fullres_plans()
    plans['configurations']['3d_small'] = make_small_configuration(
        plans, patch_size=[32, 48, 48], features=[8, 16, 32], batch_size=3,
        schedule={'num_epochs': 2, 'num_iterations_per_epoch': 5})
    config = PlansManager(plans).get_configuration('3d_small')
    kwargs = config.network_arch_init_kwargs
    assert config.patch_size == [32, 48, 48] and config.batch_size == 3
    assert config.data_identifier == 'nnUNetPlans_3d_fullres'  # shares the preprocessed data
    assert kwargs['n_stages'] == 3 and kwargs['features_per_stage'] == [8, 16, 32]
    assert kwargs['strides'] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert kwargs['kernel_sizes'][0] == [1, 3, 3] and len(kwargs['n_conv_per_stage_decoder']) == 2
    assert config.configuration['mm_schedule'] == {'num_epochs': 2, 'num_iterations_per_epoch': 5}
    # the parent is untouched
    assert plans['configurations']['3d_fullres']['architecture']['arch_kwargs']['n_stages'] == 5


def test_small_configuration_builds_a_working_network():
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plans = fullres_plans()
    plans['configurations']['3d_small'] = make_small_configuration(plans, [16, 16, 16], [4, 8, 16])
    config = PlansManager(plans).get_configuration('3d_small')
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 4, 3, deep_supervision=True)
    out = net(torch.zeros(1, 4, 16, 16, 16))
    # one deep-supervision output per decoder stage (n_stages - 1), highest resolution first
    assert [tuple(o.shape) for o in out] == [(1, 3, 16, 16, 16), (1, 3, 16, 8, 8)]


def test_small_configuration_rejects_bad_requests():
    plans = fullres_plans()
    with pytest.raises(ValueError, match='not divisible'):
        make_small_configuration(plans, [30, 32, 32], [8, 16, 32, 64])
    with pytest.raises(ValueError, match='only 5'):
        make_small_configuration(plans, [64, 64, 64], [8] * 6)
    with pytest.raises(ValueError, match='2d'):
        make_small_configuration(plans, [32, 32, 32], [8, 16], parent='2d')
