"""EMA, NaN guard, resumable checkpoint and sample-grid handlers on a toy MONAI trainer."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from PIL import Image
from torch import nn

from monai_genaug.handlers.ema import EMAHandler
from monai_genaug.handlers.nan_guard import NaNGuard, NonFiniteLossError
from monai_genaug.handlers.resume import (
    ResumableCheckpointHandler,
    get_rng_state,
    set_rng_state,
)
from monai_genaug.handlers.sample_grid import SampleGridHandler
from monai_genaug.utils.checkpoint import CheckpointMismatchError, load_checkpoint


def _toy(max_epochs=2, handlers=(), loss_function=None, n=8, batch_size=2, seed=0, device="cpu"):
    torch.manual_seed(seed)
    net = nn.Linear(4, 1).to(device)
    x = torch.randn(n, 4)
    data = [{"image": x[i], "label": x[i].sum(0, keepdim=True)} for i in range(n)]
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=loss_function or nn.MSELoss(),
        train_handlers=list(handlers),
        decollate=False,
    )
    return trainer, net, opt


class _NaNAt:
    """MSE loss that returns NaN at one call."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, pred, target):
        self.calls += 1
        loss = nn.functional.mse_loss(pred, target)
        return loss * float("nan") if self.calls == self.at else loss


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# ----------------------------------------------------------------------------------------------- EMA
def test_ema_follows_formula_and_lags(device):
    trainer, net, _ = _toy(max_epochs=1, device=device)
    ema = EMAHandler(net, decay=0.5)
    init = _flat(net).clone()
    expected = init.clone()
    history = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: history.append(_flat(net).clone()))
    ema.attach(trainer)
    trainer.run()
    for live in history:
        expected = 0.5 * expected + 0.5 * live
    ema_w, live_w = _flat(ema.ema_model), _flat(net)
    assert torch.allclose(ema_w, expected, atol=1e-6)
    assert not torch.allclose(ema_w, live_w)
    assert (ema_w - init).norm() < (live_w - init).norm()  # the average lags behind the live weights
    assert all(not p.requires_grad for p in ema.ema_model.parameters())
    assert all(p.device.type == device for p in ema.ema_model.parameters())


def test_ema_swap_state_dict_and_warmup():
    trainer, net, _ = _toy(max_epochs=1)
    ema = EMAHandler(net, decay=0.9, warmup_decay=0.0, warmup_iters=3)
    ema.attach(trainer)
    first = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: first.append(_flat(net).clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: first.append(_flat(ema.ema_model).clone()))
    trainer.run()
    assert torch.allclose(first[0], first[1])  # warm-up decay 0: the first update copies the live weights
    live = _flat(net).clone()
    with ema.use_ema_weights() as swapped:
        assert swapped is net and torch.allclose(_flat(net), _flat(ema.ema_model))
    assert torch.equal(_flat(net), live)  # restored
    state = ema.state_dict()
    assert state["momentum_scheduler"]["event_index"] == 4
    other = EMAHandler(nn.Linear(4, 1), decay=0.9, warmup_decay=0.0, warmup_iters=3)
    other.attach(_toy(max_epochs=1)[0])
    other.load_state_dict(state)
    assert torch.equal(_flat(other.ema_model), _flat(ema.ema_model))
    assert other.momentum_scheduler.event_index == 4
    with pytest.raises(ValueError, match="decay"):
        EMAHandler(net, decay=1.0)
    with pytest.raises(ValueError, match="both"):
        EMAHandler(net, warmup_iters=3)


# ------------------------------------------------------------------------------------------ NaN guard
def test_nan_guard_stops_before_the_step_and_keeps_checkpoint(tmp_path):
    trainer, net, opt = _toy(max_epochs=3, loss_function=_NaNAt(6))  # 4 iterations / epoch: epoch 2, iteration 6
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net, "opt": opt})
    guard = NaNGuard(checkpoint_path=ckpt.path)
    guard.attach(trainer)
    ckpt.attach(trainer)
    before = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: before.append(_flat(net).clone()))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.run()
    msg = str(err.value)
    assert "epoch 2" in msg and "iteration 6" in msg and "iteration 2 of the epoch" in msg and str(ckpt.path) in msg
    assert torch.equal(_flat(net), before[0])  # the NaN never reached the weights
    saved = load_checkpoint(ckpt.path)
    assert saved["engine"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["objects"]["net"].values())


def test_nan_guard_terminate_mode(tmp_path):
    trainer, net, opt = _toy(max_epochs=3, loss_function=_NaNAt(2))
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net, "opt": opt})
    guard = NaNGuard(checkpoint_path=ckpt.path, raise_error=False)
    guard.attach(trainer)
    ckpt.attach(trainer)
    trainer.run()  # returns
    assert guard.tripped and trainer.state.nan_detected and trainer.state.iteration == 2
    assert "no checkpoint had been written yet" in guard.message
    assert not ckpt.path.exists()


# ------------------------------------------------------------------------------------------ checkpoint
def test_checkpoint_roundtrip_with_generators_and_rng(tmp_path):
    trainer, net, opt = _toy(max_epochs=1)
    gen = torch.Generator().manual_seed(5)
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net, "opt": opt, "noise": gen}, seed=3)
    ckpt.attach(trainer)
    trainer.run()
    saved = load_checkpoint(ckpt.path)
    assert saved["engine"] == {"epoch": 1, "iteration": 4, "epoch_length": 4, "max_epochs": 1}
    expected_draw, expected_torch = torch.rand(3, generator=gen), torch.rand(3)

    trainer2, net2, opt2 = _toy(max_epochs=2, seed=1)
    gen2 = torch.Generator().manual_seed(99)
    ckpt2 = ResumableCheckpointHandler(tmp_path, {"net": net2, "opt": opt2, "noise": gen2})
    torch.manual_seed(1234)
    ckpt2.load(trainer2)
    assert torch.equal(_flat(net2), _flat(net))
    assert torch.equal(torch.rand(3, generator=gen2), expected_draw)
    assert torch.equal(torch.rand(3), expected_torch)  # global RNG restored
    assert trainer2.state.epoch == 1 and trainer2.state.iteration == 4


def test_rng_state_roundtrip():
    import random

    import numpy as np

    state = get_rng_state()
    a = (torch.rand(2), np.random.rand(2), random.random())
    set_rng_state(state)
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_never_saves_non_finite_weights(tmp_path):
    trainer, net, opt = _toy(max_epochs=1)
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net})
    ckpt.save(trainer)
    good = ckpt.path.read_bytes()
    with torch.no_grad():
        net.weight[0, 0] = math.nan
    with pytest.warns(UserWarning, match="non-finite weights"):
        assert ckpt.save(trainer) is None
    assert ckpt.path.read_bytes() == good


def test_checkpoint_load_errors(tmp_path):
    trainer, net, opt = _toy(max_epochs=1)
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net})
    ckpt.attach(trainer)
    trainer.run()
    other_net = nn.Linear(3, 1)
    with pytest.raises(CheckpointMismatchError, match="shape"):
        ResumableCheckpointHandler(tmp_path, {"net": other_net}).load(_toy()[0])
    with pytest.raises(CheckpointMismatchError, match="no entry 'ema'"):
        ResumableCheckpointHandler(tmp_path, {"net": net, "ema": nn.Linear(4, 1)}).load(_toy()[0])
    with pytest.raises(ValueError, match="iterations per epoch"):
        ResumableCheckpointHandler(tmp_path, {"net": net}).load(_toy(batch_size=4)[0])
    trainer_short, *_ = _toy(max_epochs=1)
    trainer_short.state.max_epochs = 0
    with pytest.raises(ValueError, match="max_epochs"):
        ResumableCheckpointHandler(tmp_path, {"net": net}).load(trainer_short)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights-only"):
        ResumableCheckpointHandler(tmp_path, {"net": net}, filename="bad.pt").load(_toy()[0])
    with pytest.raises(TypeError, match="state_dict"):
        ResumableCheckpointHandler(tmp_path, {"x": 3})


# ----------------------------------------------------------------------------------------- sample grid
def test_sample_grid_writes_png_without_touching_training_rng(tmp_path):
    trainer, net, _ = _toy(max_epochs=2)
    ema = EMAHandler(net, decay=0.9)
    seen = {}

    def sample_fn():
        seen["training"] = net.training
        seen["weight"] = net.weight.detach().clone()
        return torch.rand(3, 1, 8, 6)  # consumes the global RNG inside fork_rng

    grid = SampleGridHandler(sample_fn, tmp_path, interval=1, nrow=3, ema=ema, network=net)
    ema.attach(trainer)
    before, after = [], []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: before.append(torch.get_rng_state()))
    grid.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: after.append(torch.get_rng_state()))
    trainer.run()
    assert [p.name for p in grid.paths] == ["samples_epoch0001.png", "samples_epoch0002.png"]
    assert Image.open(grid.paths[0]).size == (3 * (6 + 2) + 2, 8 + 4)
    assert seen["training"] is False and net.training is True  # eval while sampling, restored after
    assert torch.equal(seen["weight"], ema.ema_model.weight) and not torch.equal(seen["weight"], net.weight)
    assert len(before) == 2 and all(
        torch.equal(b, a) for b, a in zip(before, after, strict=True)
    )  # global RNG untouched


def test_sample_grid_bad_input(tmp_path):
    with pytest.raises(TypeError, match="callable"):
        SampleGridHandler(3, tmp_path)
    handler = SampleGridHandler(lambda: [1, 2], tmp_path)
    with pytest.raises(TypeError, match="torch.Tensor"):
        handler.sample()


def test_checkpoint_start_removes_temporaries_of_an_interrupted_save(tmp_path):
    """Issue #21: a run killed during a save leaves ``.checkpoint_last.pt.*.tmp``; the next run removes it."""
    stale = tmp_path / ".checkpoint_last.pt.abc123.tmp"
    stale.write_bytes(b"\0" * 1024)
    other = tmp_path / ".model.pt.xyz.tmp"  # another file's temporary: not this handler's business
    other.write_bytes(b"x")
    trainer, net, opt = _toy(max_epochs=1)
    ckpt = ResumableCheckpointHandler(tmp_path, {"net": net, "opt": opt})
    ckpt.attach(trainer)
    trainer.run()
    assert not stale.exists() and other.exists()
    assert ckpt.path.is_file() and not list(tmp_path.glob(".checkpoint_last.pt.*.tmp"))
