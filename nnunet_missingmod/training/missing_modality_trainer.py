"""Base trainer of every missing-modality method, and the early-fusion modality-dropout baseline."""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import autocast
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from nnunet_missingmod.modalities import case_availability, draw_availability, modality_names, subset_name, \
    mask_to_subset, zero_missing
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.networks.outputs import NetworkOutput

#: keys of the ``mm_schedule`` block a plans configuration may carry (see ``nnUNetv2_mm_small_config``)
SCHEDULE_KEYS = ('num_epochs', 'num_iterations_per_epoch', 'num_val_iterations_per_epoch')


class nnUNetTrainerMissingModality(nnUNetTrainer):
    """nnU-Net's training loop plus modality dropout and the availability-mask / auxiliary-loss protocol.

    Per training sample an availability mask is drawn (:func:`~nnunet_missingmod.modalities.draw_availability`),
    ANDed with the channels really present in that case (zero-filled channel files of clinical data sets), the
    missing channels are zeroed *after* nnU-Net's augmentation, and the mask is passed to networks that follow the
    :class:`~nnunet_missingmod.networks.base.MissingModalityNetwork` protocol.

    **One rule for the loss.** ``total = sum_k w_k * s_k * L_k`` over the terms of :meth:`segmentation_terms` (the hook a
    method overrides for its target-dependent terms, which may read the network's ``extras``; default
    ``{'seg': nnU-Net's loss}``) and the network's ``losses``
    (:class:`~nnunet_missingmod.networks.outputs.NetworkOutput`). ``w_k`` is ``aux_loss_weights[k]``; segmentation
    terms not listed there weigh 1, a network loss not listed there is an error. Every term is logged per epoch,
    unweighted, with its weight and unit (:attr:`loss_term_units`), and at the start of a run the share of each
    weighted term in the gradient norm (over :meth:`shared_parameters`) and, every epoch, the fraction of steps whose
    gradient norm was clipped.

    **One scaling rule for information terms** (``s_k``). nnU-Net's segmentation loss is a mean per voxel (and per
    region, for region-based training); a paper's KL or variational NLL is a sum per sample. A term named in
    :attr:`per_sample_terms` enters the total divided by the output elements the segmentation loss averages over
    (:meth:`per_sample_scale`: patch voxels x regions, or x 1 for softmax labels), so that a paper's weight keeps its
    meaning next to the per-voxel mean: a per-sample IB objective ``CE_sample + beta * KL_sample`` becomes
    ``CE_mean + beta * KL_sample / N``. Every other term has ``s_k = 1``.

    **Logged figures.** A network may return ``extras['log']``, ``{name: scalar tensor}``: figures that are no loss
    (a KL per stage, active latent channels, a feature scale). They are averaged per epoch and logged beside the
    loss terms.

    **One generator.** Every random draw of training that is not a tensor op (the subset per sample here, the SMSN
    fusion order, the Hölder-MI subsets per step) comes from :attr:`rng`, seeded from NumPy's global generator and
    handed to every network module that has an ``rng`` attribute: ``np.random.seed`` + ``torch.manual_seed``
    before building the trainer make a run repeat (on one machine, with ``nnUNet_n_proc_DA=0``).

    Validation (nnU-Net's pseudo Dice) and the final validation use all present modalities.

    A plans configuration may carry an ``mm_schedule`` block (``num_epochs``, ``num_iterations_per_epoch``,
    ``num_val_iterations_per_epoch``): the small CPU configuration uses it so that demos and tests train briefly
    without trainer variants.
    """

    #: draw a modality subset per sample during training
    modality_dropout: bool = True
    #: extra probability of keeping every present modality (on top of the uniform draw over subsets)
    full_set_probability: float = 0.0
    #: weight of each loss term; segmentation terms default to 1, a network term without a weight is an error
    aux_loss_weights: Dict[str, float] = {}
    #: unit of a logged loss term (terms without an entry are dimensionless)
    loss_term_units: Dict[str, str] = {}
    #: terms defined per sample (a KL or an NLL summed over a latent code) that enter the total scaled by
    #: :meth:`per_sample_scale` (the one scaling rule of the class docstring)
    per_sample_terms: Tuple[str, ...] = ()
    #: nnU-Net's gradient-norm clipping threshold (``nnUNetTrainer.train_step`` clips at 12)
    gradient_clip_norm: float = 12.0
    #: training steps at the start of a run whose per-term gradient-norm shares go into the log (each such step costs
    #: one extra backward pass per loss term; 0 switches the diagnostic off)
    gradient_share_steps: int = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        schedule = self.configuration_manager.configuration.get('mm_schedule', {})
        unknown = set(schedule) - set(SCHEDULE_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in mm_schedule of configuration {configuration!r}; "
                             f"allowed are {SCHEDULE_KEYS}")
        for key, value in schedule.items():
            setattr(self, key, int(value))
        self.modality_names = modality_names(dataset_json)
        self.rng = np.random.default_rng(np.random.randint(0, 2 ** 32, dtype=np.uint64))
        self._present_channels: Dict[str, np.ndarray] = {}
        self._epoch_terms: Dict[str, List[torch.Tensor]] = defaultdict(list)   # detached: no host sync per step
        self._epoch_log: Dict[str, List[torch.Tensor]] = defaultdict(list)
        self._epoch_clipped: List[torch.Tensor] = []
        self._epoch_subsets: Counter = Counter()
        self._gradient_shares: Dict[str, List[float]] = defaultdict(list)
        self._gradient_share_steps_done = 0
        self._gradient_shares_logged = False

    def initialize(self):
        super().initialize()
        self.share_rng(self.bare_network)

    def share_rng(self, network: torch.nn.Module) -> None:
        """Give every module of ``network`` that draws with an ``rng`` attribute the trainer's generator."""
        for module in network.modules():
            if isinstance(getattr(module, 'rng', None), np.random.Generator):
                module.rng = self.rng

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's loading, plus a log line naming the file: ``nnUNetv2_train --c`` silently falls back from
        ``checkpoint_final``/``checkpoint_latest`` to ``checkpoint_best``, which resumes from an older epoch."""
        super().load_checkpoint(filename_or_checkpoint)
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            name = os.path.basename(os.fspath(filename_or_checkpoint))
            note = ' (no checkpoint_final/checkpoint_latest: the best epoch, not the last one)' \
                if name == 'checkpoint_best.pth' else ''
            self.print_to_log_file(f"resumed from {os.fspath(filename_or_checkpoint)}, epoch {self.current_epoch}"
                                   f"{note}")

    # ----------------------------------------------------------------- network access
    @property
    def bare_network(self) -> torch.nn.Module:
        """The network without DDP / torch.compile wrappers."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def _do_i_compile(self) -> bool:
        """nnU-Net's torch.compile rule, except that networks of the availability protocol are not compiled unless
        ``nnUNet_compile`` is set to true explicitly.

        Their training forwards are one dynamo graph (the masks enter as tensor operations,
        ``tests/networks/test_compile.py``) except where a draw comes from the trainer's seeded NumPy generator
        (SMSN's fusion order, Hölder-MI's random subsets: one graph break per draw); in eval mode the host check of
        the mask is one graph break. The default stays eager, said once in the training log, until a measurement
        shows a gain: nnU-Net never compiles on a CPU, where compiling gave no faster steps
        (docs/results/2026-11-26-compute-cpu.md), and on a GPU the gain has not been measured (docs/compute.md).
        """
        if isinstance(self.bare_network, MissingModalityNetwork) and \
                os.environ.get('nnUNet_compile', '').lower() not in ('true', '1', 't'):
            if not getattr(self, '_compile_note_logged', False):
                self._compile_note_logged = True
                self.print_to_log_file(f"torch.compile is off for {type(self.bare_network).__name__}: its gain "
                                       f"has not been measured on a GPU (docs/compute.md). Set nnUNet_compile=t to "
                                       f"compile it.")
            return False
        return super()._do_i_compile()

    def set_deep_supervision_enabled(self, enabled: bool):
        mod = self.bare_network
        if isinstance(mod, MissingModalityNetwork):
            mod.set_deep_supervision_enabled(enabled)
        else:
            super().set_deep_supervision_enabled(enabled)

    # ----------------------------------------------------------------- availability
    def present_channels(self, key: str) -> np.ndarray:
        """(M,) mask of the channels of training case ``key`` that are not all zero (cached per case)."""
        if key not in self._present_channels:
            data = self.dataset_class(self.preprocessed_dataset_folder, [key]).load_case(key)[0]
            self._present_channels[key] = case_availability(np.stack([np.asarray(data[c])
                                                                      for c in range(data.shape[0])]))
        return self._present_channels[key]

    def draw_batch_availability(self, keys) -> torch.Tensor:
        """(B, M) training mask: modality dropout ANDed with the channels present in each case."""
        masks = []
        for key in keys:
            present = self.present_channels(key)
            if not present.any():
                raise RuntimeError(f"training case {key} has no modality with non-zero voxels")
            mask = draw_availability(present, self.rng, self.full_set_probability) if self.modality_dropout \
                else present
            self._epoch_subsets[subset_name(mask_to_subset(mask), self.modality_names)] += 1
            masks.append(mask)
        return torch.from_numpy(np.stack(masks))

    # ----------------------------------------------------------------- losses
    def segmentation_terms(self, output: NetworkOutput, target, availability: torch.Tensor
                           ) -> Dict[str, torch.Tensor]:
        """The unweighted terms that need the target (from ``output.segmentation`` and ``output.extras``); methods
        override this hook. Default: nnU-Net's loss of the segmentation."""
        return {'seg': self.loss(output.segmentation, target)}

    def term_weight(self, name: str) -> float:
        """Weight of a loss term in the total (:attr:`aux_loss_weights`, 1 for unlisted segmentation terms), times
        :meth:`per_sample_scale` for the terms of :attr:`per_sample_terms`."""
        weight = float(self.aux_loss_weights.get(name, 1.0))
        return weight * self.per_sample_scale() if name in self.per_sample_terms else weight

    def per_sample_scale(self) -> float:
        """``1 / N``: N the output elements nnU-Net's segmentation loss averages over per sample, the patch's voxels
        times the sigmoid regions (region-based training) or times 1 (softmax labels: the cross-entropy sums the
        classes of a voxel)."""
        voxels = int(np.prod(self.configuration_manager.patch_size))
        regions = len(self.label_manager.foreground_regions) if self.label_manager.has_regions else 1
        return 1.0 / (voxels * regions)

    def shared_parameters(self) -> List[torch.nn.Parameter]:
        """The parameters over which gradient shares are measured: the network's, less the auxiliary heads that only
        one term trains (a network lists them in ``auxiliary_head_parameters()``), whose gradient would count
        towards that term's share without reaching the segmentation."""
        network = self.bare_network
        heads = {id(p) for p in network.auxiliary_head_parameters()} \
            if hasattr(network, 'auxiliary_head_parameters') else set()
        return [p for p in self.network.parameters() if p.requires_grad and id(p) not in heads]

    def compute_loss(self, output: NetworkOutput, target, availability: torch.Tensor
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Total loss and its unweighted terms: ``sum_k w_k L_k`` over the segmentation terms and the network's
        ``output.losses`` (its ``extras`` are not losses)."""
        terms = dict(self.segmentation_terms(output, target, availability))
        unweighted = [k for k in output.losses if k not in self.aux_loss_weights]
        if unweighted:
            raise KeyError(f"{type(self).__name__}.aux_loss_weights has no weight for {unweighted}")
        terms.update(output.losses)
        total = sum(self.term_weight(k) * v for k, v in terms.items())
        return total, terms

    def forward_loss(self, data: torch.Tensor, target, availability: torch.Tensor
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Network forward and :meth:`compute_loss` under nnU-Net's autocast (the training step's one path); the
        network's ``extras['log']`` figures are kept for the epoch's log."""
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            if isinstance(self.bare_network, MissingModalityNetwork):
                output = self.network(data, availability, full_output=True)
            else:
                output = NetworkOutput(self.network(data), {}, {})
            for name, value in output.extras.get('log', {}).items():
                self._epoch_log[name].append(value.detach().float())
            return self.compute_loss(output, target, availability)

    def _gradient_norm(self, value: torch.Tensor) -> float:
        """``||grad(value)||`` over the network's parameters; the graph is retained for the step's backward."""
        grads = torch.autograd.grad(value.float(), self.shared_parameters(), retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum(g.float().square().sum() for g in grads if g is not None)))

    def term_gradient_norms(self, terms: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """``||grad(w_k L_k)||`` over :meth:`shared_parameters`, per weighted term (one backward pass each)."""
        return {k: self._gradient_norm(self.term_weight(k) * v) for k, v in terms.items()
                if self.term_weight(k) != 0 and v.requires_grad}

    def gradient_shares(self, terms: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """``||grad(w_k L_k)|| / ||grad(sum_k w_k L_k)||`` over :meth:`shared_parameters`, per weighted term.

        Shows a term that dominates the gradient or vanishes from it. The training step computes the same shares,
        paying one extra backward pass per term plus one for the total, only for the first
        :attr:`gradient_share_steps` steps.
        """
        norms = self.term_gradient_norms(terms)
        total = max(self._gradient_norm(sum(self.term_weight(k) * terms[k] for k in norms)), 1e-12)
        return {k: v / total for k, v in norms.items()}

    # ----------------------------------------------------------------- training loop
    @property
    def epoch_loss_terms(self) -> Dict[str, List[torch.Tensor]]:
        """This epoch's unweighted loss terms so far: ``{name: [one detached value per training step]}`` (a copy;
        cleared when an epoch starts)."""
        return {name: list(values) for name, values in self._epoch_terms.items()}

    def on_train_epoch_start(self):
        self._epoch_terms.clear()
        self._epoch_log.clear()
        self._epoch_clipped.clear()
        self._epoch_subsets.clear()
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        data = batch['data']
        target = batch['target']
        availability = self.draw_batch_availability(batch['keys'])
        data = zero_missing(data, availability).to(self.device, non_blocking=True)
        availability = availability.to(self.device, non_blocking=True)
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = self.forward_loss(data, target, availability)
        diagnose = self._gradient_share_steps_done < self.gradient_share_steps and not self.is_ddp
        shares = self.gradient_shares(terms) if diagnose else {}

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            total_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.gradient_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            total_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.gradient_clip_norm)
            self.optimizer.step()
        self._epoch_clipped.append(total_norm.detach() > self.gradient_clip_norm)
        if diagnose:
            self._gradient_share_steps_done += 1
            for name, share in shares.items():
                self._gradient_shares[name].append(share)
        for name, value in terms.items():
            self._epoch_terms[name].append(value.detach())
        return {'loss': loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if len(self._epoch_terms) > 1:
            self.print_to_log_file('train loss terms (unweighted): ' + ', '.join(
                f'{k} {torch.stack(v).float().mean().item():.4f}'
                f'{" " + self.loss_term_units[k] if k in self.loss_term_units else ""}'
                f' x{self.term_weight(k):g}' for k, v in self._epoch_terms.items()))
        if self._epoch_log:
            self.print_to_log_file('train figures: ' + ', '.join(
                f'{k} {torch.stack(v).mean().item():.4g}' for k, v in self._epoch_log.items()))
        if self._epoch_clipped:
            self.print_to_log_file(f'gradient norm clipped at {self.gradient_clip_norm:g} in '
                                   f'{torch.stack(self._epoch_clipped).float().mean().item():.1%} of the steps')
        if self._gradient_shares and not self._gradient_shares_logged:
            self._gradient_shares_logged = True
            self.print_to_log_file(f'share of the gradient norm per weighted term (first '
                                   f'{self._gradient_share_steps_done} step(s) of this '
                                   f'run): ' + ', '.join(f'{k} {np.mean(v):.3f}'
                                                         for k, v in self._gradient_shares.items()))
        self.print_to_log_file('modality subsets drawn: ' + ', '.join(
            f'{name} {count}' for name, count in sorted(self._epoch_subsets.items())))


class nnUNetTrainerModalityDropout(nnUNetTrainerMissingModality):
    """Early fusion (nnU-Net's own network, all modalities stacked as channels) trained with modality dropout.

    The strong simple baseline of the missing-modality literature: the network is unchanged, so it runs with the
    stock ``nnUNetv2_predict`` on zero-filled modalities. Subsets are uniform over the non-empty subsets of the
    present modalities.
    """
