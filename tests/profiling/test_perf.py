import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import DATASET_ID, nnunet_environment, run, synthetic_raw_dataset
from nnunet_missingmod.profiling.perf import LOSS_FIGURES, busy_cpu_note, busy_cpus, kept_for_backward_mb, loss_figures, \
    markdown_table, ratios, step_per_flop, training_step_gflops, within_budget


def test_ratios_are_relative_to_nnunet_trainer():
    results = {'nnUNetTrainer': {'step_s': 2.0, 'peak_memory_mb': 0.0},
               'nnUNetTrainerX': {'step_s': 3.0, 'peak_memory_mb': 5.0}}
    rel = ratios(results)
    assert rel['nnUNetTrainer']['step_s'] == 1.0 and rel['nnUNetTrainerX']['step_s'] == 1.5
    assert rel['nnUNetTrainerX']['peak_memory_mb'] is None  # no ratio to a zero reference


def test_budget_verdict_uses_design_limits():
    assert within_budget({'step_s': 1.3, 'peak_memory_mb': 1.5, 'predict_s': 1.0}) is True
    assert within_budget({'step_s': 1.31, 'peak_memory_mb': 1.0, 'predict_s': 1.0}) is False
    assert within_budget({'step_s': 1.0, 'peak_memory_mb': 1.6, 'predict_s': 1.0}) is False
    assert within_budget({'step_s': 1.0, 'peak_memory_mb': None, 'predict_s': 1.0}) is None
    table = markdown_table({'nnUNetTrainer': dict(parameters=1e6, gflops_per_patch=2.0, step_s=1.0,
                                                  peak_memory_mb=100.0, predict_s=1.0),
                            'slow': dict(parameters=1e6, gflops_per_patch=2.0, step_s=1.4, peak_memory_mb=100.0,
                                         predict_s=1.0)}, 'header')
    # unknown figures (step FLOPs, CPU time, kept bytes of an older perf.json) are dashes
    row = '| slow | – | 1.00 | 2.0 | – | 1.400 | – | 100 | – | 1.00 | 1.40 | – | – | – | 1.00 | – | 1.00 | NO |'
    assert row in table
    with_step_flops = markdown_table(
        {'nnUNetTrainer': dict(parameters=1e6, gflops_per_patch=2.0, gflops_per_step=12.0, step_s=1.0,
                               peak_memory_mb=100.0, predict_s=1.0),
         'wide': dict(parameters=1e6, gflops_per_patch=4.0, gflops_per_step=30.0, step_s=2.0, peak_memory_mb=100.0,
                      predict_s=1.0)}, 'header')
    # 2x the time for 2.5x the FLOPs of a step: 0.8 of what the FLOPs say
    assert '| wide | – | 1.00 | 4.0 | 30.0 | 2.000 | – | 100 | – | 1.00 | 2.00 | 2.50 | 0.80 | – |' in with_step_flops
    compiled = markdown_table({'nnUNetTrainer': dict(parameters=1e6, gflops_per_patch=2.0, step_s=1.0,
                                                     compiled=True, peak_memory_mb=100.0, predict_s=1.0)}, 'header')
    assert '| nnUNetTrainer | yes | 1.00 |' in compiled
    assert 'compiled' not in ratios({'nnUNetTrainer': dict(step_s=1.0, compiled=True)})['nnUNetTrainer']


def test_kept_for_backward_counts_saved_activations_once_and_no_parameters():
    class Trainer:
        def __init__(self):
            self.network = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Sigmoid())

        def train_step(self, batch):
            self.network(batch).square().sum().backward()

    trainer = Trainer()
    network = trainer.network
    # the linear layer keeps its input (its weight, a parameter, does not count), the sigmoid its output, and the
    # square the same output again (one storage, counted once): 1024 x (256 + 512) float32
    assert kept_for_backward_mb(trainer, torch.randn(1024, 256)) == 1024 * (256 + 512) * 4 / 2 ** 20
    assert trainer.network is network and network[0].weight.grad is not None


def test_step_per_flop_is_the_step_ratio_over_the_step_flop_ratio():
    assert step_per_flop({'step_s': 1.5, 'gflops_per_step': 1.25}) == pytest.approx(1.2)
    assert step_per_flop({'step_s': 1.5}) is None and step_per_flop({'step_s': 1.5, 'gflops_per_step': None}) is None
    assert step_per_flop({'step_s': None, 'gflops_per_step': 2.0}) is None


def test_training_step_flops_count_forward_and_the_backward_that_runs():
    class Trainer:
        def __init__(self):
            self.network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Flatten(),
                                               torch.nn.Linear(4 * 8 ** 3, 16))

        def train_step(self, batch):
            self.network(batch).square().sum().backward()

    # written out: the convolution (2 x 4 x 8^3 outputs, 1 x 27 multiply-adds each) forward and its weight gradient,
    # not its input gradient (the batch needs none); the linear layer (2 x 16 outputs, 2048 multiply-adds each)
    # forward, weight gradient and input gradient; element-wise work, biases and the loss count nothing
    conv = 2 * (2 * 4 * 8 ** 3) * 27
    linear = 2 * (2 * 16) * 2048
    assert training_step_gflops(Trainer(), torch.randn(2, 1, 8, 8, 8)) == (2 * conv + 3 * linear) / 1e9


@pytest.mark.parametrize('transposed', [False, True])
@pytest.mark.parametrize('groups', [1, 4])
def test_training_step_flops_of_grouped_convolutions_are_three_forward_passes(groups, transposed):
    """Forward, input gradient and weight gradient of a (transposed) convolution with ``groups`` groups: three
    times the forward multiply-adds, written out here (torch's own formula counts the weight gradient of a grouped
    convolution ``groups`` times: 5 forward passes at groups = 4, 6 for the transposed one)."""
    import torch.nn.functional as F

    class Trainer:
        network = torch.nn.Identity()

        def train_step(self, batch):
            x, w = batch
            y = F.conv_transpose3d(x, w, stride=2, groups=groups) if transposed else \
                F.conv3d(x, w, padding=1, groups=groups)
            y.sum().backward()

    x = torch.randn(2, 32, 8, 8, 8, requires_grad=True)
    kernel = 2 if transposed else 3
    w = torch.randn(32, 32 // groups, kernel, kernel, kernel, requires_grad=True)
    # every one of the 2 x 8^3 positions of the input (transposed) or of the output (same padding) takes
    # 32 x 32 / groups x kernel^3 multiply-adds
    forward = 2 * (2 * 8 ** 3) * 32 * (32 // groups) * kernel ** 3
    assert training_step_gflops(Trainer(), (x, w)) == 3 * forward / 1e9


def test_busy_cpu_note_flags_a_loaded_machine(monkeypatch):
    assert busy_cpu_note(busy=0.3, cpus=2) is None
    note = busy_cpu_note(busy=4.2, cpus=2)
    assert note.startswith('4.2 of 2 CPUs busy') and 'unreliable' in note
    assert busy_cpu_note(busy=0.99, cpus=2) is None and busy_cpu_note(busy=1.0, cpus=2) is not None
    monkeypatch.setattr('nnunet_missingmod.profiling.perf.busy_cpus', lambda: 7.5)
    monkeypatch.setattr('os.cpu_count', lambda: 4)
    assert busy_cpu_note().startswith('7.5 of 4 CPUs busy')


#: /proc/stat as recorded on a 2-core machine (its first lines, the intr line cut short; the counters are ticks since boot, summed over the
#: CPUs in the aggregate ``cpu`` line: user nice system idle iowait irq softirq steal guest guest_nice)
PROC_STAT = """cpu  199178 0 32971 121400 1827 0 402 2790 0 0
cpu0 79913 0 14828 82466 451 0 188 1482 0 0
cpu1 119264 0 18142 38934 1375 0 214 1308 0 0
intr 1084548 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 11 0 0 0 0 358 308 0 41 1 62856 0 3305
ctxt 2310431
btime 1764175058
processes 14951
procs_running 3
procs_blocked 0
"""


def later(stat: str, **ticks: int) -> str:
    """``stat`` with the aggregate line's counters advanced by ``ticks`` (e.g. ``user=100``)."""
    fields = ('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal', 'guest', 'guest_nice')
    first, rest = stat.split('\n', 1)
    values = [int(v) + ticks.get(name, 0) for name, v in zip(fields, first.split()[1:])]
    return ' '.join(['cpu '] + [str(v) for v in values]) + '\n' + rest


def snapshots(*texts):
    """A ``read`` for :func:`busy_cpus` that returns the recorded snapshots in turn."""
    it = iter(texts)
    return lambda: next(it)


@pytest.mark.parametrize('ticks, busy', [
    (dict(user=100, idle=100), 1.0),                 # one of the two cores ran a busy loop for the interval
    (dict(user=150, system=30, softirq=10, steal=10), 2.0),   # both busy; stolen time is not ours either
    (dict(idle=150, iowait=50), 0.0),               # waiting for I/O is idle
    (dict(user=25, nice=25, idle=140, iowait=10), 0.5),
    (dict(user=100, idle=100, guest=100), 1.0),     # guest time is already counted in user
])
def test_busy_cpus_counts_the_non_idle_share_between_two_snapshots(ticks, busy):
    assert busy_cpus(0, snapshots(PROC_STAT, later(PROC_STAT, **ticks))) == pytest.approx(busy)


def test_busy_cpus_counts_the_cpus_of_the_snapshot():
    four = PROC_STAT.replace('cpu1 ', 'cpu2 79913 0 14828 82466 451 0 188 1482 0 0\ncpu3 1 0 0 1 0 0 0 0 0 0\ncpu1 ')
    assert busy_cpus(0, snapshots(four, later(four, user=100, idle=300))) == pytest.approx(1.0)


def test_busy_cpus_without_proc_stat_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr('os.getloadavg', lambda: (3.25, 2.0, 1.0))

    def missing():
        raise FileNotFoundError('/proc/stat')

    assert busy_cpus(0, missing) == 3.25
    assert busy_cpus(0, snapshots('not a snapshot', PROC_STAT)) == 3.25
    assert busy_cpus(0, snapshots(PROC_STAT, PROC_STAT)) == 0.0        # no tick in between: nothing measured


def test_busy_cpus_reads_this_machine():
    """Only bounds: how busy the machine is depends on what else runs."""
    if not os.path.exists('/proc/stat'):
        pytest.skip('no /proc/stat')
    assert 0.0 <= busy_cpus(0.2) <= os.cpu_count()


def test_perf_command_measures_trainers_side_by_side(nnunet_dataset, tmp_path):
    out = tmp_path / 'perf'
    run(['nnUNetv2_mm_perf', '-d', str(DATASET_ID), '-c', nnunet_dataset.configuration,
         '-tr', 'nnUNetTrainerModalityDropout', '--steps', '2', '--warmup', '1', '-device', 'cpu', '-o', str(out)],
        nnunet_dataset.env)
    report = json.loads((out / 'perf.json').read_text())
    plans = json.loads((nnunet_dataset.preprocessed / 'nnUNetPlans.json').read_text())
    results = report['results']
    assert list(results) == ['nnUNetTrainer', 'nnUNetTrainerModalityDropout']
    for figures in results.values():
        assert figures['parameters'] > 0 and figures['gflops_per_patch'] > 0
        assert figures['step_s'] > 0 and figures['step_cpu_s'] > 0 and figures['predict_s'] > 0
        assert figures['peak_memory_mb'] >= 0
        assert figures['compiled'] is False  # nnU-Net never compiles on a CPU
        assert figures['kept_for_backward_mb'] > 0
        # the same batch at every step of SGD: finite, and no overflow count on a CPU (no float16 autocast)
        assert figures['nonfinite_steps'] == 0 and figures['nonfinite_terms'] == []
        assert figures['amp_skipped_steps'] is None and figures['loss_first'] > 0
        # a training step: forward and backward (about twice the forward) of every sample of the batch, the first
        # convolution's input gradient and the eval patch's missing deep-supervision heads aside
        batch = plans['configurations'][nnunet_dataset.configuration]['batch_size']
        assert 2.5 * batch < figures['gflops_per_step'] / figures['gflops_per_patch'] < 3.1 * batch
    assert report['complete'] is True
    # same network from the same plans: identical size and FLOPs
    assert results['nnUNetTrainer']['parameters'] == results['nnUNetTrainerModalityDropout']['parameters']
    assert results['nnUNetTrainer']['gflops_per_patch'] == results['nnUNetTrainerModalityDropout']['gflops_per_patch']
    # and the same tensors kept for backward (dropping modalities changes the input's values, not the graph)
    assert results['nnUNetTrainer']['kept_for_backward_mb'] == \
        results['nnUNetTrainerModalityDropout']['kept_for_backward_mb']
    assert results['nnUNetTrainer']['gflops_per_step'] == results['nnUNetTrainerModalityDropout']['gflops_per_step']
    assert report['ratios']['nnUNetTrainer']['step_s'] == 1.0
    table = (out / 'perf.md').read_text()
    assert table == markdown_table(results, table.splitlines()[0])
    assert '| nnUNetTrainerModalityDropout |' in table


@pytest.mark.slow
def test_perf_on_a_data_set_with_fewer_than_five_cases(tmp_path):
    """Three training cases: nnU-Net's 5-fold split is impossible, perf measures on fold 'all' (it used to fail
    with scikit-learn's "Cannot have number of splits n_splits=5 greater than the number of samples"), and writes
    nothing into nnUNet_results."""
    env = nnunet_environment(tmp_path)
    synthetic_raw_dataset(tmp_path / 'src', 993, 'ThreeCases', 3, 0, env)
    run(['nnUNetv2_plan_and_preprocess', '-d', '993', '-c', '3d_fullres', '-np', '1'], {**env, 'nnUNet_n_proc_DA': '1'})
    run(['nnUNetv2_mm_small_config', '-d', '993', '-c', '3d_smoke', '--patch', '32', '32', '32', '--features', '4',
         '8', '16'], env)
    out = tmp_path / 'perf'
    result = subprocess.run(['nnUNetv2_mm_perf', '-d', '993', '-c', '3d_smoke', '-tr', 'nnUNetTrainerModalityDropout',
                             '--steps', '1', '--warmup', '0', '-device', 'cpu', '-o', str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(json.loads((out / 'perf.json').read_text())['results']) == ['nnUNetTrainer',
                                                                           'nnUNetTrainerModalityDropout']
    assert not any((tmp_path / 'nnUNet_results').iterdir())


def test_perf_rejects_an_unknown_trainer_before_measuring(nnunet_dataset, tmp_path):
    out = tmp_path / 'perf'
    result = subprocess.run(['nnUNetv2_mm_perf', '-d', str(DATASET_ID), '-c', nnunet_dataset.configuration, '-tr',
                             'nnUNetTrainerModalityDropout', 'nnUNetTrainerNoSuchThing', '-device', 'cpu', '-o',
                             str(out)], capture_output=True, text=True, env=nnunet_dataset.env, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        'nnUNetv2_mm_perf: error: unknown trainer nnUNetTrainerNoSuchThing: nnUNetv2_train finds no such class in '
        'nnunetv2 or nnUNet_extTrainer']
    assert 'measuring' not in result.stdout and not out.exists()


def test_interrupted_perf_keeps_the_trainers_it_measured(nnunet_dataset, tmp_path):
    """Ctrl-C after the first trainer: exit status 130, and perf.json/perf.md hold that trainer, marked partial."""
    out = tmp_path / 'perf'
    proc = subprocess.Popen(['nnUNetv2_mm_perf', '-d', str(DATASET_ID), '-c', nnunet_dataset.configuration, '-tr',
                             'nnUNetTrainerModalityDropout', '--steps', '1', '--warmup', '0', '-device', 'cpu', '-o',
                             str(out)], env=nnunet_dataset.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # a shell's background job ignores SIGINT, and Python keeps an inherited SIG_IGN
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while not (out / 'perf.json').exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == 'nnUNetv2_mm_perf: interrupted'
    report = json.loads((out / 'perf.json').read_text())
    assert report['complete'] is False and list(report['results']) == ['nnUNetTrainer']
    header = (out / 'perf.md').read_text().splitlines()[0]
    assert header.endswith('(partial: 1 of 2 trainers measured)')
    assert sorted(p.name for p in out.iterdir()) == ['perf.json', 'perf.md']  # no temporary file left behind


def test_loss_figures_name_non_finite_steps_and_terms_and_count_overflowed_steps():
    nan, inf = float('nan'), float('inf')
    terms = {'seg': [torch.tensor(0.9), torch.tensor(0.8)], 'kl': [torch.tensor(1.0), torch.tensor(inf)],
             'mi': [torch.tensor(nan, dtype=torch.float16), torch.tensor(2.0, dtype=torch.float16)]}
    figures = loss_figures([1.5, nan, 1.2, inf, 1.0], terms, 65536.0, 16384.0)
    assert figures == {'loss_first': 1.5, 'loss_last': 1.0, 'nonfinite_steps': 2, 'nonfinite_terms': ['kl', 'mi'],
                       'amp_skipped_steps': 2}
    # no gradient scaler (CPU, or no autocast): no overflow count; a single-loss trainer has no terms
    assert loss_figures([2.0, 1.0], {}, None, None) == {'loss_first': 2.0, 'loss_last': 1.0, 'nonfinite_steps': 0,
                                                        'nonfinite_terms': [], 'amp_skipped_steps': None}


def test_loss_figures_are_shown_but_have_no_ratio():
    base = {'parameters': 1e6, 'gflops_per_patch': 1.0, 'step_s': 1.0, 'peak_memory_mb': 10.0, 'predict_s': 1.0}
    results = {'nnUNetTrainer': {**base, 'loss_first': 1.0, 'loss_last': 0.5, 'nonfinite_steps': 0,
                                 'nonfinite_terms': [], 'amp_skipped_steps': 1},
               'B': {**base, 'loss_first': 2.0, 'loss_last': 0.25, 'nonfinite_steps': 1, 'nonfinite_terms': ['kl'],
                     'amp_skipped_steps': 0}}
    assert not set(LOSS_FIGURES) & set(ratios(results)['B'])
    rows = markdown_table(results, 'h').splitlines()
    assert rows[4].endswith('| 1 → 0.5 | 1 |')
    assert rows[5].endswith('| 2 → 0.25 (1 non-finite step(s)) (non-finite: kl) | 0 |')
