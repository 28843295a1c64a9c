"""``nnUNetv2_mm_perf``: parameters, FLOPs, step time, peak memory and prediction time of trainers, side by side.

Every trainer is measured in a fresh subprocess (so peak-memory figures do not leak from one to the next) on the
same plans, configuration, device and real training batch from nnU-Net's own data loader (fold ``all``: no
cross-validation split is needed, so data sets with fewer than five training cases work; the trainers' logs go to a
temporary ``nnUNet_results``, never to the real one):

* parameters: ``sum(p.numel())`` of the network nnU-Net builds for the trainer;
* FLOPs: ``torch.utils.flop_counter`` for one forward pass of one patch (eval mode, all modalities present), and
  for one training step (:func:`training_step_gflops`: forward and backward of the batch as the trainer runs them,
  its subsets, segmentors and auxiliary losses included), the work a step's time is compared with ("step/FLOP ×":
  the step-time ratio over the step-FLOP ratio, 1.0 where a network costs what its FLOPs say);
* training step: median wall time of ``trainer.train_step`` (forward, backward, SGD step, with the trainer's own
  modality dropout and auxiliary losses) over ``--steps`` steps after ``--warmup`` steps, and the median CPU time
  of the process over the same steps (all its threads; on a CPU shared with other jobs it grows too, as OpenMP
  threads that wait for a core spin: measure on a quiet machine, :func:`busy_cpu_note` warns otherwise);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the increase of the process's peak resident
  set size over the training steps (includes allocator caching, so treat small differences with care);
* kept for backward: the tensors that autograd keeps from the forward pass for the backward pass of one training
  step (:func:`kept_for_backward_mb`), the activation memory of a step: a count of bytes that neither the
  allocator nor other jobs change (under a GPU's mixed precision, half-precision tensors count half);
* training loss: the first and last loss of those steps, non-finite steps and loss terms, and on a GPU the steps
  float16 autocast overflowed (skipped by the gradient scaler; :func:`loss_figures`), so a measurement also shows
  that a trainer trains under the device's precision;
* prediction: median wall time of :data:`PREDICTIONS` sliding-window predictions of one preprocessed case by
  nnU-Net's predictor (no mirroring), after one untimed prediction of the same case, which sets up the kernels for
  the prediction's shapes (cuDNN autotuning on a GPU, oneDNN primitives on a CPU) and, for a compiled network,
  compiles its inference graph. On a CPU a case that fits in one window also depends on the state of the C
  library's allocator (whether large buffers come from fresh pages or reused heap), which no repetition within one
  process removes (how much: docs/results/2026-11-26-compute-cpu.md);
* compiled: whether the trainer wrapped its network in ``torch.compile`` (nnU-Net does on a GPU unless
  ``nnUNet_compile`` says otherwise; this package's networks only when ``nnUNet_compile`` is true), since a compiled
  and an eager network are not compared like for like: set ``nnUNet_compile`` to measure all alike.

Results are printed and written as Markdown and JSON with the ratio of each figure to ``nnUNetTrainer``; both files
are rewritten after every trainer (atomically), so an interrupted run keeps what it measured, marked partial. Trainer
names are checked before anything is measured, with ``nnUNetv2_train``'s lookup. By default
``nnUNetTrainer`` and every method trainer of this package are measured: the subclasses of
``nnUNetTrainerMissingModality`` found in ``nnunet_missingmod.training`` (see :func:`default_trainers`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from nnunet_missingmod.cli import ArgumentParser, CommandError, check_device, command, dataset_name, require_env_path


def default_trainers() -> list[str]:
    """``nnUNetTrainer`` and the method trainers of this package, found (not listed): every subclass of
    ``nnUNetTrainerMissingModality`` defined in ``nnunet_missingmod.training`` whose name is a method
    (``nnUNetTrainer<Method>``) or a method's ``_budget`` configuration; the ablation variants
    (``nnUNetTrainer<Method>_<variant>``) are left to ``-tr``."""
    from nnunet_missingmod.training.missing_modality_trainer import nnUNetTrainerMissingModality
    from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers
    found = [name for name, cls in discover_trainers().items() if cls is not nnUNetTrainerMissingModality
             and ('_' not in name or name.endswith('_budget'))]
    return ['nnUNetTrainer'] + found


#: timed predictions per trainer (their median is reported)
PREDICTIONS = 3
#: the project's compute budget: the largest allowed ratio to ``nnUNetTrainer`` of each figure
BUDGET = {'step_s': 1.3, 'peak_memory_mb': 1.5, 'predict_s': 1.3}


def _current_rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def saved_for_backward_bytes(run: Callable[[], object], exclude: Iterable = ()) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``run()`` executes, those of the
    tensors in ``exclude`` (e.g. parameters) excepted (``torch.autograd.graph.saved_tensors_hooks``; nothing is
    copied)."""
    import torch
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(saved.values())


@contextlib.contextmanager
def eager_network(trainer):
    """``trainer`` with a compiled network swapped for the eager module inside it (counting needs no compiled graph,
    and a compiled graph may keep or fuse differently), restored on exit; yields the eager module."""
    network = trainer.network
    trainer.network = getattr(network, '_orig_mod', network)
    try:
        yield trainer.network
    finally:
        trainer.network = network


def kept_for_backward_mb(trainer, batch) -> float:
    """MB that autograd saves for backward during ``trainer.train_step(batch)``, the network's parameters excepted
    (:func:`saved_for_backward_bytes`). A compiled network is measured eager: its graph may keep less where the
    compiler recomputes or fuses."""
    with eager_network(trainer) as eager:
        return saved_for_backward_bytes(lambda: trainer.train_step(batch), eager.parameters()) / 2 ** 20


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward convolution's FLOPs once for the input gradient and once
    for the weight gradient, each where ``output_mask`` asks for it (bias gradients are sums and count nothing).

    Replaces torch's own formula (``torch.utils.flop_counter``, torch 2.x), which counts a grouped convolution's
    weight gradient as if the convolution were dense: ``groups`` times too much, 5 instead of 3 forward passes for a
    forward and backward at ``groups = 4`` (the per-modality branches' grouped layers counted 5/3 of their FLOPs)."""
    from torch.utils.flop_counter import conv_flop_count
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def training_step_gflops(trainer, batch) -> float:
    """GFLOPs of ``trainer.train_step(batch)``, forward and backward, counted by ``torch.utils.flop_counter`` (the
    operations it has formulas for: convolutions, matrix products, attention; element-wise work and the optimiser
    count nothing), with :func:`convolution_backward_flops` for convolution gradients. A compiled network is
    counted eager."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    formulas = {torch.ops.aten.convolution_backward: convolution_backward_flops}
    with eager_network(trainer), FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        trainer.train_step(batch)
    return counter.get_total_flops() / 1e9


def measure(dataset: str, configuration: str, trainer_name: str, plans: str, device: str, steps: int,
            warmup: int) -> dict:
    """All figures for one trainer (call in a fresh process for meaningful CPU memory figures)."""
    import numpy as np
    import torch
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.utils.flop_counter import FlopCounterMode
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_missingmod.env import enable_ext_trainers

    enable_ext_trainers()
    os.environ['nnUNet_n_proc_DA'] = '0'
    torch.manual_seed(0)
    dev = torch.device(device)
    # fold 'all': nnU-Net's 5-fold split needs at least five training cases, a measurement needs no split
    trainer = get_trainer_from_args(dataset, configuration, 'all', trainer_name, plans, device=dev)
    # the training log's one-off diagnostic (one extra backward pass per loss term at the first step of a run) is
    # not part of a training step
    trainer.gradient_share_steps = 0
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    network = trainer.network
    figures = {'parameters': sum(p.numel() for p in network.parameters()),
               'compiled': isinstance(network, OptimizedModule)}

    patch = torch.zeros((1, trainer.num_input_channels, *trainer.configuration_manager.patch_size), device=dev)
    patch.normal_()
    network.eval()
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad(), eager_network(trainer) as eager, FlopCounterMode(display=False) as counter:
        eager(patch)
    figures['gflops_per_patch'] = counter.get_total_flops() / 1e9

    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    network.train()
    if dev.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _current_rss_mb()
    scale_before = trainer.grad_scaler.get_scale() if trainer.grad_scaler is not None else None
    times, cpu_times, losses = [], [], []
    for _ in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(float(trainer.train_step(batch)['loss']))
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    figures.update(loss_figures(losses, getattr(trainer, 'epoch_loss_terms', {}), scale_before,
                                trainer.grad_scaler.get_scale() if trainer.grad_scaler is not None else None))
    figures['step_s'] = statistics.median(times[warmup:])
    figures['step_cpu_s'] = statistics.median(cpu_times[warmup:])
    figures['peak_memory_mb'] = (torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == 'cuda'
                                 else max(0.0, _peak_rss_mb() - rss_before))
    figures['kept_for_backward_mb'] = kept_for_backward_mb(trainer, batch)
    figures['gflops_per_step'] = training_step_gflops(trainer, batch)

    network.eval()
    trainer.set_deep_supervision_enabled(False)
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=dev.type == 'cuda', device=dev,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer_name, None)
    key = batch['keys'][0]
    data = trainer.dataset_class(trainer.preprocessed_dataset_folder, [key]).load_case(key)[0]
    data = torch.from_numpy(np.asarray(data[:]))
    times = []
    for _ in range(1 + PREDICTIONS):  # the first one sets up kernels (and compiles): a one-off cost
        start = time.perf_counter()
        predictor.predict_sliding_window_return_logits(data)
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    figures['predict_s'] = statistics.median(times[1:])
    return figures


#: figures of :func:`loss_figures`: a check of the steps, not a cost, so they have no ratio to ``nnUNetTrainer``
LOSS_FIGURES = ('loss_first', 'loss_last', 'nonfinite_steps', 'nonfinite_terms', 'amp_skipped_steps')


def loss_figures(losses: list, terms: dict, scale_before: float | None, scale_after: float | None) -> dict:
    """The training losses of the warm-up and timed steps (the same batch every step): the first and the last,
    the number of steps whose loss was not finite, the names of the loss terms (``{name: [per-step values]}``, a
    multi-term trainer's) with a non-finite value in any step, and, under a GPU's float16 autocast, the steps whose
    gradients overflowed: the gradient scaler halves its scale and skips the update for each (its scale never
    grows within a measurement's few steps); None without a scaler."""
    import math

    import torch
    skipped = None
    if scale_before is not None and scale_after:
        skipped = round(math.log2(scale_before / scale_after))
    return {'loss_first': losses[0], 'loss_last': losses[-1],
            'nonfinite_steps': sum(not math.isfinite(v) for v in losses),
            'nonfinite_terms': sorted(k for k, v in terms.items()
                                      if not bool(torch.isfinite(torch.stack(list(v)).float()).all())),
            'amp_skipped_steps': skipped}


def ratios(results: dict, reference: str = 'nnUNetTrainer') -> dict:
    """Each numeric figure divided by the reference trainer's figure (None where the reference is 0 or missing)."""
    ref = results.get(reference)
    return {t: {k: (v / ref[k] if ref and ref.get(k) else None) for k, v in r.items()
                if not isinstance(v, bool) and k not in LOSS_FIGURES}
            for t, r in results.items()}


def within_budget(ratio: dict) -> bool | None:
    """Whether every budgeted ratio is within :data:`BUDGET` (None when a ratio is unknown)."""
    if any(ratio.get(k) is None for k in BUDGET):
        return None
    return all(ratio[k] <= limit for k, limit in BUDGET.items())


def device_description(device: str) -> str:
    """The GPU's name, or the CPU model and the number of threads torch uses."""
    import platform

    import torch
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{model}, {torch.get_num_threads()} threads'


def read_proc_stat() -> str:
    """The text of ``/proc/stat`` (the kernel's CPU time counters since boot, in ticks)."""
    with open('/proc/stat') as f:
        return f.read()


def cpu_ticks(stat: str) -> tuple[int, int, int]:
    """``(total, idle, cpus)`` of one ``/proc/stat`` snapshot: the ticks of the aggregate ``cpu`` line (user nice
    system idle iowait irq softirq steal; guest time is already counted in user), the idle ones among them (idle +
    iowait), and the number of CPUs that line sums over (its ``cpuN`` lines)."""
    lines = stat.splitlines()
    ticks = [int(v) for v in lines[0].split()[1:9]] if lines and lines[0].split()[0] == 'cpu' else []
    if len(ticks) < 5:
        raise ValueError(f'not a /proc/stat snapshot: {lines[:1]}')
    cpus = sum(1 for line in lines[1:] if line.startswith('cpu') and line[3:4].isdigit())
    return sum(ticks), ticks[3] + ticks[4], cpus


def busy_cpus(interval: float = 1.0, read: Callable[[], str] = read_proc_stat) -> float:
    """How many CPUs other work keeps busy now: the non-idle share of the machine's CPU time between two snapshots
    of ``/proc/stat`` taken ``interval`` seconds apart (``read`` returns one; a test passes recorded ones) times
    the number of CPUs; where there is no ``/proc/stat``, the 1-minute load average. Unlike the load average it
    forgets a job that ended before the measurement (e.g. the previous measurement)."""
    try:
        total0, idle0, _ = cpu_ticks(read())
        time.sleep(interval)
        total1, idle1, cpus = cpu_ticks(read())
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total = total1 - total0
    return 0.0 if total <= 0 else (1 - (idle1 - idle0) / total) * (cpus or os.cpu_count() or 1)


def busy_cpu_note(busy: float | None = None, cpus: int | None = None) -> str | None:
    """A note when other work is running (:func:`busy_cpus` at least half the number of CPUs), else None.

    nnU-Net's CPU processes each run one torch thread per core, so a measurement beside another job oversubscribes
    the CPU: waiting OpenMP threads spin, and wall *and* CPU times grow (how much:
    docs/results/2026-11-26-compute-cpu.md)."""
    busy = busy_cpus() if busy is None else busy
    cpus = cpus or os.cpu_count() or 1
    if busy < 0.5 * cpus:
        return None
    return f'{busy:.1f} of {cpus} CPUs busy at the start: other jobs were running, the timings are unreliable'


def step_per_flop(ratio: dict) -> float | None:
    """The step-time ratio over the training-step FLOP ratio: how much longer (> 1) or shorter a step takes than its
    FLOPs say, against ``nnUNetTrainer`` (None when either ratio is unknown)."""
    step, flops = ratio.get('step_s'), ratio.get('gflops_per_step')
    return None if step is None or not flops else step / flops


def markdown_table(results: dict, header: str) -> str:
    rel = ratios(results)
    lines = [header, '',
             '| trainer | compiled | params (M) | GFLOPs/patch | GFLOPs/step | step (s) | step CPU (s) | peak mem (MB) '
             '| kept (MB) | predict (s) | step × | step FLOPs × | step/FLOP × | step CPU × | mem × | kept × '
             '| predict × | budget | loss first → last | AMP skipped |',
             '|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|']
    for trainer, r in results.items():
        q = rel[trainer]
        fmt = lambda v, digits=2: '–' if v is None else f'{v:.{digits}f}'  # noqa: E731
        verdict = {True: 'yes', False: 'NO', None: '–'}[within_budget(q)]
        compiled = {True: 'yes', False: 'no'}.get(r.get('compiled'), '–')
        lines.append(f"| {trainer} | {compiled} | {r['parameters'] / 1e6:.2f} | {r['gflops_per_patch']:.1f} "
                     f"| {fmt(r.get('gflops_per_step'), 1)} | {r['step_s']:.3f} | {fmt(r.get('step_cpu_s'))} "
                     f"| {r['peak_memory_mb']:.0f} | {fmt(r.get('kept_for_backward_mb'), 0)} | {r['predict_s']:.2f} "
                     f"| {fmt(q['step_s'])} | {fmt(q.get('gflops_per_step'))} | {fmt(step_per_flop(q))} "
                     f"| {fmt(q.get('step_cpu_s'))} | {fmt(q['peak_memory_mb'])} "
                     f"| {fmt(q.get('kept_for_backward_mb'))} | {fmt(q['predict_s'])} | {verdict} "
                     f"| {loss_cell(r)} | {fmt(r.get('amp_skipped_steps'), 0)} |")
    limits = ', '.join(f'{k} ≤ {v}×' for k, v in BUDGET.items())
    return '\n'.join(lines) + f'\n\nbudget: {limits} of nnUNetTrainer\n'


def loss_cell(figures: dict) -> str:
    """``first → last`` training loss, with the non-finite steps and terms named; a dash for an older perf.json."""
    if 'loss_first' not in figures:
        return '–'
    cell = f"{figures['loss_first']:.3g} → {figures['loss_last']:.3g}"
    if figures.get('nonfinite_steps'):
        cell += f" ({figures['nonfinite_steps']} non-finite step(s))"
    if figures.get('nonfinite_terms'):
        cell += f" (non-finite: {', '.join(figures['nonfinite_terms'])})"
    return cell


@command('nnUNetv2_mm_perf')
def main(argv=None) -> int:
    from nnunet_missingmod.inference.predict import add_nnunet_predict_arguments
    parser = ArgumentParser(prog='nnUNetv2_mm_perf', description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_nnunet_predict_arguments(parser, only=('-d', '-p', '-tr', '-c', '-device'), several_trainers=True)
    parser.add_argument('--steps', type=int, default=5, help='timed training steps per trainer')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('-o', default='perf', help='output folder for perf.md and perf.json')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.d, args.c, args.tr[0], args.p, args.device, args.steps, args.warmup)))
        return 0
    check_device(args.device)
    preprocessed = require_env_path('nnUNet_preprocessed', 'the plans and the preprocessed data are read there')
    plans_file = os.path.join(preprocessed, dataset_name(args.d), args.p + '.json')
    if not os.path.isfile(plans_file):
        raise CommandError(f'{plans_file} does not exist: run nnUNetv2_plan_and_preprocess -d {args.d} first')
    configurations = json.loads(Path(plans_file).read_text())['configurations']
    if args.c not in configurations:
        raise CommandError(f'{plans_file} has no configuration {args.c!r} (it has {", ".join(configurations)})')

    trainers = ['nnUNetTrainer'] + [t for t in (args.tr or default_trainers()) if t != 'nnUNetTrainer']
    unknown = [t for t in trainers if not trainer_exists(t)]
    if unknown:
        raise CommandError(f'unknown trainer {", ".join(unknown)}: nnUNetv2_train finds no such class in nnunetv2 '
                           f'or nnUNet_extTrainer')
    busy = busy_cpu_note() if args.device == 'cpu' else None
    if busy:
        print(f'nnUNetv2_mm_perf: warning: {busy}', file=sys.stderr, flush=True)
    header = (f'Dataset {args.d}, configuration {args.c}, device {args.device} ({device_description(args.device)}), '
              f'median of {args.steps} steps after {args.warmup} warm-up steps, {time.strftime("%Y-%m-%d")}'
              + (f'; {busy}' if busy else ''))
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix='mm_perf_results_') as scratch:
        env = {**os.environ, 'nnUNet_results': scratch}  # the trainers' logs (fold_all) stay out of nnUNet_results
        for trainer in trainers:
            print(f'measuring {trainer} ...', flush=True)
            cmd = [sys.executable, '-m', 'nnunet_missingmod.profiling.perf', '--worker', '-d', args.d, '-c', args.c,
                   '-p', args.p, '-tr', trainer, '-device', args.device, '--steps', str(args.steps),
                   '--warmup', str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
                raise CommandError(f'measuring {trainer} failed: {lines[-1] if lines else "no message"}')
            results[trainer] = json.loads(proc.stdout.strip().splitlines()[-1])
            write_report(out, results, header, vars(args), len(trainers))
    print((out / 'perf.md').read_text())
    return 0


def trainer_exists(name: str) -> bool:
    """Whether ``nnUNetv2_train -tr name`` finds a trainer class (nnU-Net's own lookup; its search log and the
    deprecation warnings of the modules it imports silenced)."""
    import contextlib
    import io
    import warnings

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_missingmod.env import enable_ext_trainers
    enable_ext_trainers()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        return False
    return True


def write_report(out: Path, results: dict, header: str, settings: dict, planned: int) -> None:
    """(Re)write ``perf.md`` and ``perf.json`` atomically; the header says so while trainers are still to come."""
    if len(results) < planned:
        header += f' (partial: {len(results)} of {planned} trainers measured)'
    files = {'perf.md': markdown_table(results, header),
             'perf.json': json.dumps({'settings': settings, 'complete': len(results) >= planned, 'results': results,
                                      'ratios': ratios(results)}, indent=2)}
    for name, text in files.items():
        tmp = out / f'.{name}.tmp'
        tmp.write_text(text)
        os.replace(tmp, out / name)


if __name__ == '__main__':
    sys.exit(main())
