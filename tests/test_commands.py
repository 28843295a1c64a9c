"""Every console command of setup.py, run as a command, as shell scripts use it.

For each entry point: ``--help`` exits 0; a bad argument exits non-zero with one line on stderr naming the problem
and no traceback; the cheap commands (env, synthetic, convert_brats, small_config) really run and exit 0; shell
``&&`` chains run through. The list of commands is read from setup.py, so a new entry point without a case here
fails the suite. The expensive plan/train steps come from the session fixtures of conftest.py.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import DATASET_ID, run, small_plans

ROOT = Path(__file__).resolve().parents[1]
TRAINER = 'nnUNetTrainerModalityDropout'


def setup_py_entry_points() -> dict:
    """``{command: 'module:function'}`` of the console_scripts in setup.py."""
    text = (ROOT / 'setup.py').read_text()
    block = text[text.index('console_scripts'):]
    block = block[:block.index(']')]
    return {name: target for name, target in re.findall(r"['\"]\s*([\w.-]+)\s*=\s*([\w.]+:\w+)\s*['\"]", block)}


ENTRY_POINTS = setup_py_entry_points()


def bad_arguments(tmp: Path) -> dict:
    """``{command: (arguments, fragment the one-line error must contain)}``: one bad invocation per command."""
    missing = str(tmp / 'does_not_exist')
    return {
        'nnUNetv2_mm_env': (['--bogus'], 'unrecognized arguments: --bogus'),
        'nnUNetv2_mm_small_config': (['-d', '4711'], "unknown dataset '4711'"),
        'nnUNetv2_mm_synthetic': (['-o', str(tmp / 'synthetic'), '-n', '1', '--layout', 'brats1999'],
                                  "unknown BraTS layout 'brats1999'"),
        'nnUNetv2_mm_convert_brats': (['-i', missing, '-d', '220'], f'source folder {missing} does not exist'),
        'nnUNetv2_mm_demo': (['-n', '3', '--test-cases', '2', '--val-cases', '1'], 'leave no training case'),
        'nnUNetv2_mm_predict': (['-i', str(tmp), '-o', str(tmp / 'out'), '-d', '4711', '-c', '3d_fullres',
                                 '-device', 'cpu'], "unknown dataset '4711'"),
        'nnUNetv2_mm_benchmark': (['-i', missing, '-l', missing, '-o', str(tmp / 'out'), '-d', '4711', '-c',
                                   '3d_fullres', '-device', 'cpu'], f'input folder {missing} does not exist'),
        'nnUNetv2_mm_ciml_gradcam': (['-d', '4711', '-c', '3d_fullres', '--case', 'X', '-o', str(tmp / 'out'),
                                      '-device', 'cpu'], "unknown dataset '4711'"),
        'nnUNetv2_mm_perf': (['-d', '4711', '-c', '3d_fullres', '-device', 'cpu'], "unknown dataset '4711'"),
        'nnUNetv2_mm_compare': (['-i', missing, '-o', str(tmp / 'out')], f'{missing}: no summary.json'),
        'nnUNetv2_mm_benchmark_cost': (['-d', '4711', '-c', '3d_fullres', '-i', str(tmp), '-l', str(tmp), '-o',
                                        str(tmp / 'out'), '-device', 'cpu'], "unknown dataset '4711'"),
    }


def bad_flag_values(tmp: Path) -> dict:
    """``{case: (command, arguments, fragment, exit status)}``: bad values of flags beyond the first table's."""
    missing = str(tmp / 'does_not_exist')
    bench = ['-i', missing, '-l', missing, '-o', str(tmp / 'out'), '-d', '4711', '-c', '3d_fullres', '-device', 'cpu']
    return {
        'benchmark --absence': ('nnUNetv2_mm_benchmark', [*bench, '--absence', 'never'],
                                "argument --absence: invalid choice: 'never'", 2),
        # panoptica hidden (see the test): the one line names the extra to install
        'benchmark --lesionwise': ('nnUNetv2_mm_benchmark', [*bench, '--lesionwise'],
                                   "lesion-wise metrics need panoptica: pip install -e '.[brats]'", 1),
        'synthetic --foregrounds': ('nnUNetv2_mm_synthetic', ['-o', str(tmp / 'synthetic'), '-n', '1',
                                                              '--foregrounds', 'separate'],
                                    "argument --foregrounds: invalid choice: 'separate'", 2),
    }


@pytest.mark.parametrize('case', sorted(bad_flag_values(Path('.'))))
def test_bad_flag_value_is_one_line(case, env, tmp_path):
    name, arguments, fragment, status = bad_flag_values(tmp_path)[case]
    hidden = tmp_path / 'hidden' / 'panoptica'
    hidden.mkdir(parents=True)
    (hidden / '__init__.py').write_text("raise ImportError('panoptica hidden by the test')\n")
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(hidden.parent), env.get('PYTHONPATH')])))
    assert_one_line_error(command([name, *arguments], env), name, fragment, status=status)


#: commands whose ``-device`` defaults to cuda (as nnU-Net's), with the other required arguments
CUDA_DEFAULT = {
    'nnUNetv2_mm_predict': ['-i', '{tmp}', '-o', '{tmp}/out', '-d', '4711', '-c', '3d_fullres'],
    'nnUNetv2_mm_benchmark': ['-i', '{tmp}', '-l', '{tmp}', '-o', '{tmp}/out', '-d', '4711', '-c', '3d_fullres'],
    'nnUNetv2_mm_benchmark_cost': ['-i', '{tmp}', '-l', '{tmp}', '-o', '{tmp}/out', '-d', '4711', '-c', '3d'],
    'nnUNetv2_mm_ciml_gradcam': ['-d', '4711', '-c', '3d_fullres', '--case', 'X', '-o', '{tmp}/out'],
    'nnUNetv2_mm_perf': ['-d', '4711', '-c', '3d_fullres'],
}


@pytest.fixture
def env(tmp_path) -> dict:
    """Private, empty nnU-Net folders (so that data set 4711 is unknown whatever the user's set-up)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', nnUNet_n_proc_DA='0', nnUNet_compile='f')
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    env.pop('NNUNET_MM_TRACEBACK', None)
    return env


def command(cmd: list, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)


_WARNING = re.compile(r'^\S+:\d+: \w*Warning: ')


def our_lines(stderr: str) -> list:
    """The non-empty lines of ``stderr`` without Python warnings of other libraries (``file:line: XWarning: ...``
    and the source line Python prints under it)."""
    lines, skip = [], False
    for line in stderr.splitlines():
        if _WARNING.match(line):
            skip = True
            continue
        if skip and line.startswith((' ', '\t')):
            continue
        skip = False
        if line.strip():
            lines.append(line)
    return lines


def assert_one_line_error(result: subprocess.CompletedProcess, prog: str, fragment: str, status=None) -> str:
    """Non-zero exit, no traceback, and exactly one line on stderr: ``PROG: error: ...FRAGMENT...``."""
    assert result.returncode != 0, result.stdout + result.stderr
    if status is not None:
        assert result.returncode == status, result.stderr
    assert 'Traceback' not in result.stderr and 'Traceback' not in result.stdout, result.stderr
    lines = our_lines(result.stderr)
    assert len(lines) == 1, f'expected one line on stderr, got {len(lines)}:\n{result.stderr}'
    assert lines[0].startswith(f'{prog}: error: ') and fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------- every command
def test_setup_py_entry_points_are_installed_and_all_have_cases(tmp_path):
    assert len(ENTRY_POINTS) >= 10 and 'nnUNetv2_mm_predict' in ENTRY_POINTS
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group='console_scripts')
                 if ep.name.startswith('nnUNetv2_mm_')}
    assert installed == ENTRY_POINTS, 'reinstall the package (pip install -e .): setup.py and the installed ' \
                                      'console scripts differ'
    missing = sorted(set(ENTRY_POINTS) - set(bad_arguments(tmp_path)))
    assert not missing, f'console command(s) without a bad-argument test in test_commands.py: {missing}'


@pytest.mark.parametrize('name', sorted(ENTRY_POINTS))
def test_help_exits_zero(name, env):
    result = command([name, '--help'], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage:') and name in result.stdout.splitlines()[0], result.stdout[:300]


@pytest.mark.parametrize('name', sorted(ENTRY_POINTS))
def test_bad_argument_is_one_line_without_traceback(name, env, tmp_path):
    arguments, fragment = bad_arguments(tmp_path)[name]
    assert_one_line_error(command([name, *arguments], env), name, fragment)


def bad_split_arguments(tmp: Path, source: Path, split: Path) -> dict:
    """``{case: (command, arguments, fragment)}``: bad published-split input (``source``: two synthetic cases;
    ``split``: a split file listing one more case)."""
    return {
        'unknown split name': ('nnUNetv2_mm_convert_brats', ['-i', source, '-d', '220', '--split', 'rfnet2019'],
                               "unknown split 'rfnet2019': neither a file nor a shipped split"),
        'split case not in the source': ('nnUNetv2_mm_convert_brats', ['-i', source, '-d', '220', '--split', split],
                                         f'split file {split}: 1 listed case(s) not in the source folder {source}: '
                                         f'BraTS20_Training_007'),
        'splits not a multiple': ('nnUNetv2_mm_compare', ['-i', tmp / 'a1', tmp / 'a2', tmp / 'b1', '-o', tmp / 'out',
                                                          '--average-splits', '2'], 'not a multiple of 2'),
    }


@pytest.mark.parametrize('case', ['unknown split name', 'split case not in the source', 'splits not a multiple'])
def test_bad_split_input_is_one_line_and_writes_nothing(case, env, tmp_path):
    from nnunet_missingmod.dataset_conversion.synthetic_brats import generate_dataset
    source, split = tmp_path / 'src', tmp_path / 'split.json'
    generate_dataset(source, 2, 'brats2020', shape=(24, 28, 20), progress=False)
    split.write_text(json.dumps({'train': ['BraTS20_Training_001'],
                                 'test': ['BraTS20_Training_002', 'BraTS20_Training_007']}))
    name, arguments, fragment = bad_split_arguments(tmp_path, source, split)[case]
    assert_one_line_error(command([name, *arguments], env), name, fragment, status=1)
    assert not any(Path(env['nnUNet_raw']).iterdir()) and not any(Path(env['nnUNet_preprocessed']).iterdir())
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', sorted(ENTRY_POINTS))
def test_usage_error_is_one_line_with_status_2(name, env):
    """argparse's usage errors (here an unknown option, or required arguments missing) are one line too."""
    assert_one_line_error(command([name, '--no-such-option'], env), name, '(see ', status=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA device')
@pytest.mark.parametrize('name', sorted(CUDA_DEFAULT))
def test_default_cuda_device_without_gpu_is_one_line(name, env, tmp_path):
    arguments = [a.replace('{tmp}', str(tmp_path)) for a in CUDA_DEFAULT[name]]
    assert_one_line_error(command([name, *arguments], env), name, 'no CUDA device: pass -device cpu')


def test_every_command_module_wraps_main_once():
    """Each entry point's function is the shared wrapper (exit status, one-line errors, Ctrl-C)."""
    import importlib
    for name, target in ENTRY_POINTS.items():
        module, function = target.split(':')
        main = getattr(importlib.import_module(module), function)
        assert getattr(main, 'prog', None) == name, f'{target} is not wrapped by nnunet_missingmod.cli.command'


# ------------------------------------------------------------------------------------------ cheap real runs
def test_env_prints_the_export_line(env):
    result = command(['nnUNetv2_mm_env'], env)
    assert result.returncode == 0 and result.stdout.startswith('export nnUNet_extTrainer='), result.stderr
    assert result.stderr == ''


def test_small_config_adds_a_configuration(env, tmp_path):
    plans = small_plans()
    folder = tmp_path / 'nnUNet_preprocessed' / plans['dataset_name']
    folder.mkdir()
    (folder / 'nnUNetPlans.json').write_text(json.dumps(plans))
    result = command(['nnUNetv2_mm_small_config', '-d', '999', '-c', '3d_tiny', '--patch', '16', '16', '16',
                      '--features', '4', '8'], env)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / 'nnUNetPlans.json').read_text())['configurations']['3d_tiny']['patch_size'] == [16] * 3


def test_synthetic_convert_and_back_in_an_and_chain(env, tmp_path):
    """synthetic && convert_brats && --to-source && a per-release script: every step exits 0 (convert_brats used
    to exit 1 after writing a correct data set, printing the path on stderr)."""
    src, raw, back = tmp_path / 'src', Path(env['nnUNet_raw']), tmp_path / 'back'
    module = 'nnunet_missingmod.dataset_conversion.Dataset221_BraTS2021'
    chain = ' && '.join([
        f'nnUNetv2_mm_synthetic -o {src} -n 2 --shape 24 28 20',
        f'nnUNetv2_mm_convert_brats -i {src} -d 220 --quiet',
        f'nnUNetv2_mm_convert_brats --to-source {raw}/Dataset220_BraTS2020/labelsTr {back} --layout brats2020 --quiet',
        f'{shlex.quote(sys.executable)} -m {module} -i {src} --quiet',
        'echo CHAIN-OK'])
    result = subprocess.run(['bash', '-c', chain], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and 'CHAIN-OK' in result.stdout, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr and 'PosixPath' not in result.stderr and str(raw) not in result.stderr
    assert len(list((raw / 'Dataset220_BraTS2020' / 'imagesTr').iterdir())) == 8
    assert (raw / 'Dataset221_BraTS2021' / 'dataset.json').is_file() and len(list(back.iterdir())) == 2
    # the same conversion again: refused in one line, nothing changed
    again = command(['nnUNetv2_mm_convert_brats', '-i', src, '-d', '220', '--quiet'], env)
    assert_one_line_error(again, 'nnUNetv2_mm_convert_brats', 'already exists; use --overwrite')


def test_truncated_file_is_refused_by_the_command(env, tmp_path):
    src = tmp_path / 'src'
    run(['nnUNetv2_mm_synthetic', '-o', str(src), '-n', '2', '--shape', '24', '28', '20'], env)
    t1 = src / 'BraTS20_Training_002' / 'BraTS20_Training_002_t1.nii.gz'
    t1.write_bytes(t1.read_bytes()[:len(t1.read_bytes()) // 2])
    result = command(['nnUNetv2_mm_convert_brats', '-i', src, '-d', '220', '--quiet'], env)
    assert_one_line_error(result, 'nnUNetv2_mm_convert_brats', str(t1))
    assert not any(Path(env['nnUNet_raw']).iterdir()), 'nothing written'


def test_stale_temporary_folders_of_killed_conversions_are_removed(env, tmp_path):
    """A SIGKILLed conversion leaves ``.DatasetXXX_*.tmp-<pid>``; the next run removes those of dead processes."""
    src, raw = tmp_path / 'src', Path(env['nnUNet_raw'])
    run(['nnUNetv2_mm_synthetic', '-o', str(src), '-n', '12', '--shape', '40', '48', '32'], env)
    proc = subprocess.Popen(['nnUNetv2_mm_convert_brats', '-i', str(src), '-d', '220', '--quiet'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = raw / f'.Dataset220_BraTS2020.tmp-{proc.pid}'
    deadline = time.time() + 120
    while not tmp.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    if not tmp.exists():  # the conversion was faster than the poll: leave what a kill leaves by hand
        (tmp / 'imagesTr').mkdir(parents=True)
    shutil.rmtree(raw / 'Dataset220_BraTS2020', ignore_errors=True)
    alive = raw / f'.Dataset221_Other.tmp-{os.getpid()}'  # a running conversion's folder is left alone
    alive.mkdir()
    run(['nnUNetv2_mm_convert_brats', '-i', str(src), '-d', '220', '--quiet'], env)
    assert not tmp.exists() and alive.exists()
    assert sorted(p.name for p in raw.iterdir()) == [alive.name, 'Dataset220_BraTS2020']


def test_ctrl_c_is_one_line_and_status_130(env, tmp_path):
    out = tmp_path / 'synthetic'
    # SIGINT back to its default in the child: a shell starts background jobs with SIGINT ignored, and a Python
    # process that inherits an ignored SIGINT keeps ignoring it (the test would then wait for its timeout)
    proc = subprocess.Popen(['nnUNetv2_mm_synthetic', '-o', str(out), '-n', '500'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out.is_dir() and any(p.is_dir() for p in out.iterdir())) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert 'Traceback' not in stderr and our_lines(stderr)[-1] == 'nnUNetv2_mm_synthetic: interrupted'


# ------------------------------------------------------------------------------ with the trained session model
def _copy_case(raw: Path, case: str, images: Path, labels: Path | None = None) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for f in sorted((raw / 'imagesTr').glob(f'{case}_0*.nii.gz')):
        shutil.copyfile(f, images / f.name)
    if labels is not None:
        labels.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / 'labelsTr' / f'{case}.nii.gz', labels / f'{case}.nii.gz')


def _model(nnunet_dataset) -> list[str]:
    return ['-d', str(DATASET_ID), '-c', nnunet_dataset.configuration, '-tr', TRAINER, '-f', '0', '-device', 'cpu',
            '--disable_tta', '--disable_progress_bar']


@pytest.fixture(scope='module')
def model_and_cases(nnunet_dataset, trained_model, tmp_path_factory):
    trained_model(TRAINER)
    root = tmp_path_factory.mktemp('commands_model')
    cases = sorted(p.name[:-7] for p in (nnunet_dataset.raw / 'labelsTr').iterdir())[:2]
    for case in cases:
        _copy_case(nnunet_dataset.raw, case, root / 'images', root / 'labels')
    return root, cases


def test_predict_then_benchmark_chain(nnunet_dataset, model_and_cases, tmp_path):
    root, cases = model_and_cases
    env, model = nnunet_dataset.env, ' '.join(_model(nnunet_dataset))
    pred, bench = tmp_path / 'pred', tmp_path / 'bench'
    chain = ' && '.join([
        f"nnUNetv2_mm_predict -i {root / 'images'} -o {pred} {model} -npp 0 -nps 0",
        f"nnUNetv2_mm_benchmark -i {root / 'images'} -l {root / 'labels'} -o {bench} {model} "
        f"--subsets FLAIR T1+T1ce+T2+FLAIR --save_predictions",
        'echo CHAIN-OK'])
    result = subprocess.run(['bash', '-c', chain], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0 and 'CHAIN-OK' in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert all((pred / f'{c}.nii.gz').is_file() for c in cases) and (bench / 'summary.json').is_file()
    assert (bench / 'predictions' / 'FLAIR').is_dir()

    # a reused -o is refused (old predictions/ would sit beside new reports), before the model is loaded
    again = command(['nnUNetv2_mm_benchmark', '-i', root / 'images', '-l', root / 'labels', '-o', bench,
                     *_model(nnunet_dataset), '--subsets', 'FLAIR'], env)
    assert_one_line_error(again, 'nnUNetv2_mm_benchmark', 'is not empty')
    (bench / 'notes.txt').write_text('mine')
    again = command(['nnUNetv2_mm_benchmark', '-i', root / 'images', '-l', root / 'labels', '-o', bench,
                     *_model(nnunet_dataset), '--subsets', 'FLAIR', '--overwrite'], env)
    assert again.returncode == 0, again.stderr
    assert not (bench / 'predictions').exists(), '--overwrite clears the earlier run'
    assert (bench / 'notes.txt').read_text() == 'mine'
    assert json.loads((bench / 'summary.json').read_text())['subsets'] == ['FLAIR']


def test_benchmark_checks_references_before_predicting(nnunet_dataset, model_and_cases, tmp_path):
    root, cases = model_and_cases
    labels = tmp_path / 'labels'
    shutil.copytree(root / 'labels', labels)
    bad = labels / f'{cases[-1]}.nii.gz'
    img = nib.load(str(bad))
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(bad))
    out = tmp_path / 'bench'
    # the good case sorts first: a benchmark that checked references only while predicting would already have
    # written its predictions
    result = command(['nnUNetv2_mm_benchmark', '-i', root / 'images', '-l', labels, '-o', out,
                      *_model(nnunet_dataset), '--save_predictions'], nnunet_dataset.env)
    assert_one_line_error(result, 'nnUNetv2_mm_benchmark', f'{bad}: unexpected label values [7]')
    assert not out.exists() or not any(out.iterdir()), 'nothing written, nothing predicted'


def test_predict_refuses_a_malformed_case_and_predicts_the_others(nnunet_dataset, model_and_cases, tmp_path):
    root, cases = model_and_cases
    images = tmp_path / 'images'
    shutil.copytree(root / 'images', images)
    bad = 'ZZ_malformed'
    for f in sorted((root / 'images').glob(f'{cases[0]}_0*.nii.gz')):
        shutil.copyfile(f, images / f.name.replace(cases[0], bad))
    t1 = images / f'{bad}_0000.nii.gz'
    img = nib.load(str(t1))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:-4], img.affine), str(t1))  # another shape
    out = tmp_path / 'pred'
    result = command(['nnUNetv2_mm_predict', '-i', images, '-o', out, *_model(nnunet_dataset), '-npp', '0',
                      '-nps', '0'], nnunet_dataset.env, timeout=1800)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert our_lines(result.stderr)[-1].startswith(f'nnUNetv2_mm_predict: error: 1 case(s) refused: {bad}')
    assert all((out / f'{c}.nii.gz').is_file() for c in cases) and not (out / f'{bad}.nii.gz').exists()
    report = json.loads((out / 'missing_modalities.json').read_text())
    assert sorted(report['cases']) == cases and 'shape' in report['refused'][bad]


@pytest.mark.parametrize('flags, fragment', [(['-f', '3'], 'fold(s) 3 not trained'),
                                             (['-chk', 'checkpoint_nope.pth'], 'checkpoint_nope.pth does not exist'),
                                             (['-tr', 'nnUNetTrainerNope'], 'no trained model in')])
def test_predict_without_the_model_is_one_line(nnunet_dataset, model_and_cases, tmp_path, flags, fragment):
    root, _ = model_and_cases
    result = command(['nnUNetv2_mm_predict', '-i', root / 'images', '-o', tmp_path / 'pred',
                      *_model(nnunet_dataset), *flags], nnunet_dataset.env)
    assert_one_line_error(result, 'nnUNetv2_mm_predict', fragment)


# ------------------------------------------------------------------------------------ the shared wrapper itself
def test_command_wrapper_status_and_messages(capsys):
    """What every entry point gets from ``nnunet_missingmod.cli.command``: a returned path is not an exit status,
    torch's no-driver error anywhere becomes the one-line hint, Ctrl-C is 130, a bug is one line naming its type."""
    from nnunet_missingmod.cli import command as wrap

    def raising(error):
        def main(argv=None):
            raise error
        return wrap('prog')(main)

    assert wrap('prog')(lambda argv=None: Path('/somewhere'))() == 0
    assert wrap('prog')(lambda argv=None: 3)() == 3
    assert raising(RuntimeError('Found no NVIDIA driver on your system. Please check ...'))() == 1
    assert capsys.readouterr().err == 'prog: error: no CUDA device: pass -device cpu\n'
    assert raising(AssertionError('Torch not compiled with CUDA enabled'))() == 1
    assert capsys.readouterr().err == 'prog: error: no CUDA device: pass -device cpu\n'
    assert raising(KeyboardInterrupt())() == 130
    assert capsys.readouterr().err.strip() == 'prog: interrupted'
    assert raising(FileNotFoundError('no trained model in X\nsecond line'))() == 1
    assert capsys.readouterr().err == 'prog: error: no trained model in X; second line\n'
    assert raising(ZeroDivisionError('division by zero'))() == 1
    assert capsys.readouterr().err.startswith('prog: error: ZeroDivisionError: division by zero (set NNUNET_MM_')


# ------------------------------------------------------ nnU-Net's folder variables, data set ids, output paths
def _summary_folder(folder: Path) -> Path:
    """A minimal benchmark output (two modalities, one region) that nnUNetv2_mm_compare accepts."""
    from nnunet_missingmod.evaluation.tables import write_reports
    subsets, n_missing = ['A', 'B', 'A+B'], {'A': 1, 'B': 1, 'A+B': 0}
    rows = [{'case': 'c', 'subset': s, 'n_missing': n_missing[s], 'region': 'WT', 'Dice': 0.5, 'HD95': 1.0}
            for s in subsets]
    write_reports(rows, subsets, n_missing, ['WT'], str(folder), model={'trainer': 'T'})
    return folder


def _plans_folder(env: dict) -> Path:
    plans = small_plans()
    folder = Path(env['nnUNet_preprocessed']) / plans['dataset_name']
    folder.mkdir()
    (folder / 'nnUNetPlans.json').write_text(json.dumps(plans))
    return folder


@pytest.mark.parametrize('value', [None, ''])
def test_unset_nnunet_preprocessed_is_one_line_not_a_bug(env, tmp_path, value):
    """nnU-Net 2.8 wraps its folders in objects that are never ``None``: an unset variable ended in nnU-Net's
    RuntimeError, reported as a bug. An empty one would have been the current folder."""
    (Path(env['nnUNet_raw']) / 'Dataset999_UnitTest').mkdir()  # the id resolves through nnUNet_raw
    env = dict(env)
    if value is None:
        env.pop('nnUNet_preprocessed')
    else:
        env['nnUNet_preprocessed'] = value
    result = command(['nnUNetv2_mm_small_config', '-d', '999', '-c', '3d_tiny'], env)
    line = assert_one_line_error(result, 'nnUNetv2_mm_small_config',
                                 'nnUNet_preprocessed is not set', status=1)
    assert 'RuntimeError' not in line and 'NNUNET_MM_TRACEBACK' not in line and 'export nnUNet_preprocessed=' in line


def test_two_data_sets_with_one_id_are_named_not_unknown(env):
    _plans_folder(env)
    (Path(env['nnUNet_raw']) / 'Dataset999_Other').mkdir()
    result = command(['nnUNetv2_mm_small_config', '-d', '999', '-c', '3d_tiny'], env)
    line = assert_one_line_error(result, 'nnUNetv2_mm_small_config', 'dataset id 999 is ambiguous', status=1)
    assert 'Dataset999_Other' in line and 'Dataset999_UnitTest' in line and 'unknown dataset' not in line


def test_dataset_name_helper(env, monkeypatch):
    from nnunet_missingmod.cli import CommandError, dataset_name, require_env_path
    for name in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        monkeypatch.setenv(name, env[name])
    (Path(env['nnUNet_results']) / 'Dataset042_Results').mkdir()
    (Path(env['nnUNet_raw']) / 'Dataset4200_Other').mkdir()  # another id that merely starts with 42
    assert dataset_name('42') == dataset_name(42) == 'Dataset042_Results'
    assert dataset_name('Dataset007_Given') == 'Dataset007_Given'
    with pytest.raises(CommandError, match="unknown dataset 'brain': neither a dataset id"):
        dataset_name('brain')
    with pytest.raises(CommandError, match="unknown dataset '43'"):
        dataset_name('43')
    assert require_env_path('nnUNet_raw') == env['nnUNet_raw']
    monkeypatch.setenv('nnUNet_raw', env['nnUNet_raw'] + '/absent')
    with pytest.raises(CommandError, match=r'nnUNet_raw=.*/absent is not a folder'):
        require_env_path('nnUNet_raw')
    monkeypatch.delenv('nnUNet_raw')
    with pytest.raises(CommandError, match='nnUNet_raw is not set: the raw data; export nnUNet_raw='):
        require_env_path('nnUNet_raw', 'the raw data')


def test_output_path_that_exists_as_a_file_is_one_line_naming_it(env, tmp_path):
    """``-o FILE/out``: the FileExistsError of creating ``FILE`` was reported as a bug."""
    bench = _summary_folder(tmp_path / 'bench')
    (tmp_path / 'file').write_text('x')
    result = command(['nnUNetv2_mm_compare', '-i', bench, '-o', tmp_path / 'file' / 'out'], env)
    line = assert_one_line_error(result, 'nnUNetv2_mm_compare', f"{tmp_path / 'file'}: file exists", status=1)
    assert 'FileExistsError' not in line and 'NNUNET_MM_TRACEBACK' not in line


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create entries in: a read-only temporary folder, or /sys for root."""
    folder = tmp_path / 'read_only'
    folder.mkdir()
    folder.chmod(0o500)
    if not os.access(folder, os.W_OK):
        return folder
    try:
        os.mkdir('/sys/nnunet_missingmod_probe')
    except PermissionError:
        return Path('/sys')
    except OSError:
        pass
    else:  # pragma: no cover - /sys writable
        os.rmdir('/sys/nnunet_missingmod_probe')
    pytest.skip('no folder on this machine refuses writing to this user')


def test_permission_denied_on_the_output_is_one_line_naming_it(env, tmp_path):
    bench = _summary_folder(tmp_path / 'bench')
    parent = _unwritable_folder(tmp_path)
    try:
        result = command(['nnUNetv2_mm_compare', '-i', bench, '-o', parent / 'cmp'], env)
    finally:
        (tmp_path / 'read_only').chmod(0o700)
    line = assert_one_line_error(result, 'nnUNetv2_mm_compare', str(parent), status=1)
    assert 'PermissionError' not in line and 'NNUNET_MM_TRACEBACK' not in line
    assert 'permission denied' in line or 'operation not permitted' in line, line


def test_command_wrapper_reports_os_errors_on_paths_as_user_errors(capsys):
    from nnunet_missingmod.cli import command as wrap

    def raising(error):
        def main(argv=None):
            raise error
        return wrap('prog')(main)

    assert raising(PermissionError(13, 'Permission denied', '/data/out'))() == 1
    assert capsys.readouterr().err == 'prog: error: /data/out: permission denied\n'
    assert raising(FileExistsError(17, 'File exists', '/data/out'))() == 1
    assert capsys.readouterr().err == 'prog: error: /data/out: file exists\n'
    assert raising(PermissionError(1, 'Operation not permitted', '/a', None, '/b'))() == 1
    assert capsys.readouterr().err == 'prog: error: /a -> /b: operation not permitted\n'
    assert raising(PermissionError('no access to the GPU'))() == 1
    assert capsys.readouterr().err == 'prog: error: no access to the GPU\n'
    assert raising(OSError(28, 'No space left on device', '/data/out/x.nii.gz'))() == 1
    assert capsys.readouterr().err == 'prog: error: /data/out/x.nii.gz: no space left on device\n'
    assert raising(OSError(5, 'Input/output error'))() == 1  # no path: still a bug report
    assert capsys.readouterr().err.startswith('prog: error: OSError: ')


@pytest.mark.parametrize('prog, variable, extra', [
    ('nnUNetv2_mm_predict', 'nnUNet_results', ['-i', '{tmp}/in', '-o', '{tmp}/out']),
    ('nnUNetv2_mm_perf', 'nnUNet_preprocessed', ['-o', '{tmp}/out']),
    ('nnUNetv2_mm_benchmark_cost', 'nnUNet_raw', ['-i', '{tmp}/in', '-l', '{tmp}/in', '-o', '{tmp}/out']),
])
def test_unset_nnunet_folder_is_one_line_in_every_command(env, tmp_path, prog, variable, extra):
    (Path(env['nnUNet_raw']) / 'Dataset999_UnitTest').mkdir()
    (tmp_path / 'in').mkdir()
    env = {k: v for k, v in env.items() if k != variable}
    args = [a.format(tmp=tmp_path) for a in extra]
    result = command([prog, '-d', '999', '-c', '3d_fullres', *args, '-device', 'cpu'], env)
    line = assert_one_line_error(result, prog, f'{variable} is not set', status=1)
    assert 'RuntimeError' not in line and not (tmp_path / 'out').exists()
