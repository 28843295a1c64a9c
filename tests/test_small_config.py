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


# ------------------------------------------------------------------------------------ the command's bad input
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402

from conftest import small_plans  # noqa: E402

PROG = 'nnUNetv2_mm_small_config'


def _plans_env(tmp_path, plans=None):
    """Private nnU-Net folders holding ``Dataset999_UnitTest/nnUNetPlans.json`` (:func:`small_plans` by default, a
    3D PlainConvUNet with 3 stages, total stride 4); returns (env, plans file)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('NNUNET_MM_TRACEBACK', None)
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (tmp_path / name).mkdir(exist_ok=True)
        env[name] = str(tmp_path / name)
    plans = plans or small_plans()
    folder = tmp_path / 'nnUNet_preprocessed' / plans['dataset_name']
    folder.mkdir(exist_ok=True)
    path = folder / 'nnUNetPlans.json'
    path.write_text(json.dumps(plans, indent=4))
    return env, path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small_config(env, *args):
    return subprocess.run([PROG, '-d', '999', *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def _assert_refused(result, fragment, status=1):
    assert result.returncode == status, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'{PROG}: error: '), result.stderr
    assert fragment in lines[0], lines[0]
    assert 'Traceback' not in result.stderr


def _cascade_plans():
    """:func:`small_plans` plus ``3d_lowres`` inheriting from ``3d_fullres`` and ``3d_cascade`` from ``3d_lowres``."""
    plans = small_plans()
    plans['configurations']['3d_lowres'] = {'inherits_from': '3d_fullres', 'batch_size': 2}
    plans['configurations']['3d_cascade'] = {'inherits_from': '3d_lowres', 'batch_size': 2}
    return plans


@pytest.mark.parametrize('name, parent', [('3d_fullres', '3d_fullres'), ('3d_fullres', '3d_cascade'),
                                          ('3d_lowres', '3d_cascade')])
def test_small_config_never_replaces_its_parent_or_an_ancestor(tmp_path, name, parent):
    """``-c 3d_fullres`` wrote a 3d_fullres inheriting from itself (nnU-Net then raises "Circular dependency");
    even --overwrite cannot make a configuration inherit from itself."""
    env, path = _plans_env(tmp_path, _cascade_plans())
    before = _digest(path)
    for extra in ([], ['--overwrite']):
        result = _small_config(env, '-c', name, '--parent', parent, '--patch', 16, 16, 16, '--features', 4, 8,
                               *extra)
        _assert_refused(result, f"-c {name}")
        assert str(path) in result.stderr and 'inherit' in result.stderr
        assert _digest(path) == before, 'the plans file is untouched'


def test_small_config_refuses_an_existing_configuration_without_overwrite(tmp_path):
    env, path = _plans_env(tmp_path)
    first = _small_config(env, '-c', '3d_tiny', '--patch', 16, 16, 16, '--features', 4, 8)
    assert first.returncode == 0, first.stderr
    before = _digest(path)
    again = _small_config(env, '-c', '3d_tiny', '--patch', 32, 32, 32, '--features', 4, 8)
    _assert_refused(again, "already has a configuration '3d_tiny'; use --overwrite")
    assert _digest(path) == before
    replaced = _small_config(env, '-c', '3d_tiny', '--patch', 32, 32, 32, '--features', 4, 8, '--overwrite')
    assert replaced.returncode == 0, replaced.stderr
    plans = json.loads(path.read_text())
    assert plans['configurations']['3d_tiny']['patch_size'] == [32, 32, 32]
    assert plans['configurations']['3d_fullres'] == small_plans()['configurations']['3d_fullres']
    assert sorted(p.name for p in path.parent.iterdir()) == ['nnUNetPlans.json'], 'no temporary file left'


@pytest.mark.parametrize('args, fragment, status', [
    (['--patch', 16, 16], '--patch gives 2 sizes but 3d_fullres is 3D (patch 16 x 16 x 16)', 1),
    (['--patch', 16, 16, 16, 16], '--patch gives 4 sizes but 3d_fullres is 3D', 1),
    (['--batch-size', 0], "argument --batch-size: '0' is not a positive whole number", 2),
    (['--iterations', -5], "argument --iterations: '-5' is not a positive whole number", 2),
    (['--epochs', 0], "argument --epochs: '0' is not a positive whole number", 2),
    (['--val-iterations', 0], "argument --val-iterations: '0' is not a positive whole number", 2),
    (['--patch', 16, 0, 16], "argument --patch: '0' is not a positive whole number", 2),
    (['--features', 4, -8], "argument --features: '-8' is not a positive whole number", 2),
    (['--parent', '2d'], "has no configuration '2d' to inherit from", 1),
])
def test_small_config_refuses_bad_sizes_and_leaves_the_plans_alone(tmp_path, args, fragment, status):
    env, path = _plans_env(tmp_path)
    before = _digest(path)
    result = _small_config(env, '-c', '3d_tiny', '--features', 4, 8, *args)
    _assert_refused(result, fragment, status)
    assert _digest(path) == before


def test_small_configuration_checks_its_python_arguments_too():
    plans = fullres_plans()
    with pytest.raises(ValueError, match='2 sizes but 3d_fullres is 3D'):
        make_small_configuration(plans, [64, 64], [8, 16])
    for kwargs, needle in (({'batch_size': 0}, 'batch size'), ({'schedule': {'num_epochs': -1}}, 'num_epochs'),
                           ({'features': [8, 0]}, 'features')):
        args = {'patch_size': [64, 64, 64], 'features': [8, 16], **kwargs}
        with pytest.raises(ValueError, match=needle):
            make_small_configuration(plans, **args)


def test_small_config_names_an_unreadable_plans_file(tmp_path):
    env, path = _plans_env(tmp_path)
    path.write_text('{"configurations": ')
    _assert_refused(_small_config(env, '-c', '3d_tiny', '--features', 4, 8), f'{path}: not valid JSON')
    path.write_text('{"plans_name": "x"}')
    _assert_refused(_small_config(env, '-c', '3d_tiny', '--features', 4, 8), f"{path}: no 'configurations'")
