"""Two optimizers over disjoint parameter sets, stepped as one by nnU-Net's training loop.

For a module whose only losses are small per-voxel means (SMSN's Gaussian heads and reconstruction decoders):
SGD's step is proportional to the gradient and does not move such a module within nnU-Net's schedules, Adam's
step is not (measured: docs/results/2026-12-05-smsn-bottleneck-optimizer.md). The rest of the network keeps
nnU-Net's SGD.
"""
from __future__ import annotations

from typing import List

import torch


class OptimizerPair:
    """``main`` and ``auxiliary`` (torch optimizers over disjoint parameters) behind the part of the
    ``torch.optim.Optimizer`` interface that nnU-Net's trainer and ``torch.amp.GradScaler`` use: ``param_groups``
    (``main``'s first, so nnU-Net logs ``main``'s learning rate), ``zero_grad``, ``step``, ``state_dict`` and
    ``load_state_dict``."""

    def __init__(self, main: torch.optim.Optimizer, auxiliary: torch.optim.Optimizer):
        shared = {id(p) for g in main.param_groups for p in g['params']} & \
                 {id(p) for g in auxiliary.param_groups for p in g['params']}
        if shared:
            raise ValueError(f"the two optimizers share {len(shared)} parameter tensor(s); each parameter may have "
                             f"one optimizer only")
        self.main, self.auxiliary = main, auxiliary

    @property
    def param_groups(self) -> List[dict]:
        return self.main.param_groups + self.auxiliary.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.main.zero_grad(set_to_none=set_to_none)
        self.auxiliary.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.main.step()
        self.auxiliary.step()

    def state_dict(self) -> dict:
        return {'main': self.main.state_dict(), 'auxiliary': self.auxiliary.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {'main', 'auxiliary'}:
            raise ValueError(f"not the state of an OptimizerPair (keys {sorted(state)}): was the checkpoint written "
                             f"by a trainer with a single optimizer?")
        self.main.load_state_dict(state['main'])
        self.auxiliary.load_state_dict(state['auxiliary'])


class PolyLRSchedulerPerGroup:
    """nnU-Net's poly schedule (``PolyLRScheduler``: ``lr = initial_lr * (1 - step / max_steps) ** 0.9``, stepped
    per epoch) with each parameter group decaying from its own initial learning rate, the one it has when the
    scheduler is built."""

    def __init__(self, optimizer, max_steps: int, exponent: float = 0.9):
        self.optimizer, self.max_steps, self.exponent = optimizer, max_steps, exponent
        self.initial_lrs = [group['lr'] for group in optimizer.param_groups]

    def step(self, current_step: int) -> None:
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group, initial in zip(self.optimizer.param_groups, self.initial_lrs):
            group['lr'] = initial * factor

    def get_last_lr(self) -> List[float]:
        return [group['lr'] for group in self.optimizer.param_groups]
