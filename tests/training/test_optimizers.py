"""OptimizerPair and PolyLRSchedulerPerGroup: each parameter set moves by its own optimizer's rule, the state
survives a checkpoint, torch's GradScaler drives the pair, each group decays from its own learning rate."""
import io

import pytest
import torch

from nnunet_missingmod.training.optimizers import OptimizerPair, PolyLRSchedulerPerGroup


def _pair(sgd_lr=0.1, adam_lr=0.01):
    a, b = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([3.0, 0.5]))
    return a, b, OptimizerPair(torch.optim.SGD([a], sgd_lr), torch.optim.Adam([b], adam_lr))


def test_each_parameter_set_moves_by_its_own_optimizer():
    a, b, pair = _pair()
    pair.zero_grad()
    (a.square().sum() + 10 * b.sum()).backward()          # grad a = 2a = (2, -4), grad b = (10, 10)
    pair.step()
    assert torch.allclose(a.detach(), torch.tensor([1.0 - 0.1 * 2.0, -2.0 + 0.1 * 4.0]))       # SGD: p - lr g
    # Adam's first step is lr * g / (|g| + eps) = lr * sign(g), whatever the gradient's size
    assert torch.allclose(b.detach(), torch.tensor([3.0 - 0.01, 0.5 - 0.01]), atol=1e-7)
    pair.zero_grad()
    assert a.grad is None and b.grad is None
    assert [g['lr'] for g in pair.param_groups] == [0.1, 0.01]                # main's group first


def test_a_parameter_in_both_optimizers_is_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match='share 1 parameter'):
        OptimizerPair(torch.optim.SGD([p], 0.1), torch.optim.Adam([p, torch.nn.Parameter(torch.zeros(1))]))


def test_state_round_trip_continues_the_same_trajectory():
    def run(pair, a, b, steps):
        for _ in range(steps):
            pair.zero_grad()
            (a.square().sum() + (b - 1).square().sum()).backward()
            pair.step()

    a, b, pair = _pair()
    pair.main = torch.optim.SGD([a], 0.1, momentum=0.9)                       # momentum: a state to carry over
    run(pair, a, b, 3)
    buffer = io.BytesIO()
    torch.save(pair.state_dict(), buffer)                                     # as nnU-Net's checkpoint does
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    a2, b2, resumed = _pair()
    resumed.main = torch.optim.SGD([a2], 0.1, momentum=0.9)
    with torch.no_grad():
        a2.copy_(a), b2.copy_(b)
    resumed.load_state_dict(state)
    run(pair, a, b, 2)
    run(resumed, a2, b2, 2)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    with pytest.raises(ValueError, match='not the state of an OptimizerPair'):
        resumed.load_state_dict(torch.optim.SGD([a2], 0.1).state_dict())


def test_grad_scaler_unscales_and_steps_the_pair():
    a, b, pair = _pair()
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    pair.zero_grad()
    scaler.scale(a.square().sum() + 10 * b.sum()).backward()
    scaler.unscale_(pair)
    assert torch.allclose(a.grad, torch.tensor([2.0, -4.0])) and torch.allclose(b.grad, torch.tensor([10.0, 10.0]))
    scaler.step(pair)
    scaler.update()
    assert torch.allclose(a.detach(), torch.tensor([0.8, -1.6]))
    before = b.detach().clone()
    pair.zero_grad()
    scaler.scale(b.sum() * float('inf')).backward()                            # overflow: the step is skipped
    scaler.step(pair)
    assert torch.equal(b.detach(), before)


def test_poly_schedule_decays_each_group_from_its_own_learning_rate():
    _, _, pair = _pair(sgd_lr=1e-2, adam_lr=1e-3)
    scheduler = PolyLRSchedulerPerGroup(pair, max_steps=10)
    scheduler.step(0)
    assert scheduler.get_last_lr() == [1e-2, 1e-3]
    scheduler.step(5)                                                          # (1 - 5/10) ** 0.9 = 0.535887
    assert scheduler.get_last_lr() == pytest.approx([1e-2 * 0.535887, 1e-3 * 0.535887], rel=1e-5)
    scheduler.step(9)
    assert pair.main.param_groups[0]['lr'] == pytest.approx(1e-2 * 0.1 ** 0.9)
    assert pair.auxiliary.param_groups[0]['lr'] == pytest.approx(1e-3 * 0.1 ** 0.9)
