"""AutoencoderKLTrainer / create_autoencoder_trainer: losses, adversarial warm-up, perceptual term, exact resume,
NaN stop, reconstruction grids, final file."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.utils import AdversarialIterationEvents
from PIL import Image

from monai_genaug.engines import TrainingOptions
from monai_genaug.engines.autoencoder import create_autoencoder_trainer, kl_divergence
from monai_genaug.handlers.nan_guard import NonFiniteLossError
from monai_genaug.utils.checkpoint import load_checkpoint


class _Record:
    def __init__(self, trainer, keys):
        self.rows = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.rows.append({k: float(e.state.output[k]) for k in keys})
        )

    def mean(self, key, rows):
        return sum(r[key] for r in rows) / len(rows)


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_losses_fall_and_adversarial_warmup(spatial_dims, tiny, tmp_path):
    size = 16 if spatial_dims == 2 else 8
    images = tiny.make_images(4, size, spatial_dims)
    ae = tiny.make_autoencoder(spatial_dims)
    loader = tiny.make_loader([{"image": images[i % 4]} for i in range(16)], batch_size=4)
    trainer = create_autoencoder_trainer(
        ae,
        loader,
        max_epochs=5,
        output_dir=tmp_path,
        lr=3e-3,
        adv_start_iteration=6,
        discriminator_layers=2 if spatial_dims == 2 else 1,
        grid_images=images[:2],
        kl_weight=1e-4,
    )
    disc = trainer.state.d_network
    disc_init = _flat(disc).clone()
    disc_at_5 = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: disc_at_5.append(_flat(disc).clone()))
    rec = _Record(trainer, ["loss", "reconstruction_loss", "kl_loss", "generator_loss", "discriminator_loss"])
    trainer.run()
    rows = rec.rows
    assert len(rows) == 20
    assert rec.mean("reconstruction_loss", rows[-5:]) < 0.7 * rec.mean("reconstruction_loss", rows[:5])
    # warm-up: no adversarial term and a still discriminator for the first 5 iterations
    assert all(r["generator_loss"] == 0 and r["discriminator_loss"] == 0 for r in rows[:5])
    assert torch.equal(disc_at_5[0], disc_init) and not torch.equal(_flat(disc), disc_init)
    assert all(r["discriminator_loss"] > 0 for r in rows[5:])
    for r in rows:  # the logged total is the weighted sum of the terms
        expected = r["reconstruction_loss"] + 1e-4 * r["kl_loss"] + 0.01 * r["generator_loss"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    final = load_checkpoint(tmp_path / "autoencoder_final.pt")
    assert set(final) == {"format", "config", "autoencoder", "discriminator"}
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in final["autoencoder"].items())
    grid = Image.open(tmp_path / "reconstructions_epoch0005.png")
    assert grid.size == (2 * (size + 2) + 2, 2 * (size + 2) + 2)  # originals above reconstructions


def test_kl_divergence_zero_for_standard_normal():
    assert kl_divergence(torch.zeros(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_divergence(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).item() == pytest.approx(6.0)


def test_plain_vae_and_custom_perceptual_loss(tiny, tmp_path):
    images = tiny.make_images(4, 16)
    calls = []

    def perceptual(x, y):
        calls.append(x.shape)
        return (x - y).pow(2).mean() + 1.0

    trainer = create_autoencoder_trainer(
        tiny.make_autoencoder(),
        tiny.make_loader([{"image": x} for x in images]),
        max_epochs=1,
        output_dir=tmp_path,
        adv_weight=0.0,
        perceptual_loss=perceptual,
        perceptual_weight=0.5,
    )
    assert trainer.state.d_network is None
    rec = _Record(trainer, ["loss", "reconstruction_loss", "kl_loss", "perceptual_loss", "discriminator_loss"])
    trainer.run()
    assert len(calls) == 2
    for r in rec.rows:
        assert r["perceptual_loss"] > 1.0 and r["discriminator_loss"] == 0.0
        expected = r["reconstruction_loss"] + 1e-6 * r["kl_loss"] + 0.5 * r["perceptual_loss"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    assert set(load_checkpoint(tmp_path / "autoencoder_final.pt")) == {"format", "config", "autoencoder"}


def test_perceptual_weights_are_never_downloaded(tiny, tmp_path):
    loader = tiny.make_loader([{"image": x} for x in tiny.make_images(2, 16)])
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        create_autoencoder_trainer(
            tiny.make_autoencoder(),
            loader,
            max_epochs=1,
            output_dir=tmp_path,
            perceptual_weights_path=tmp_path / "x.pt",
        )
    with pytest.raises(ValueError, match="needs a discriminator"):
        from monai_genaug.engines.autoencoder import AutoencoderKLTrainer

        ae = tiny.make_autoencoder()
        AutoencoderKLTrainer("cpu", 1, loader, ae, torch.optim.Adam(ae.parameters()), adv_weight=0.1)


def _run(tiny, out, seed_init=0, kill_at=None):
    images = tiny.make_images(4, 16)
    trainer = create_autoencoder_trainer(
        tiny.make_autoencoder(seed=seed_init),
        tiny.make_loader([{"image": x} for x in images], seed=1),
        max_epochs=3,
        output_dir=out,
        lr=1e-3,
        adv_start_iteration=2,
        discriminator_layers=2,
        options=TrainingOptions(seed=4),
    )
    if kill_at:

        def kill(engine):
            raise KeyboardInterrupt("simulated kill")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), kill)
    return trainer


def test_killed_then_resumed_equals_uninterrupted(tiny, tmp_path):
    reference = _run(tiny, tmp_path / "ref")
    reference.run()
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, tmp_path / "run", kill_at=4).run()  # end of epoch 2 is never reached
    resumed = _run(tiny, tmp_path / "run", seed_init=9)
    resumed.run()
    assert resumed.handles.checkpoint.resumed_from == {"epoch": 1, "iteration": 2}
    for name in ("g_network", "d_network"):
        ref, res = getattr(reference.state, name).state_dict(), getattr(resumed.state, name).state_dict()
        assert all(torch.equal(ref[k], res[k]) for k in ref), name


def test_nan_loss_stops_autoencoder_training(tiny, tmp_path):
    images = tiny.make_images(4, 16)
    trainer = create_autoencoder_trainer(
        tiny.make_autoencoder(),
        tiny.make_loader([{"image": x} for x in images]),
        max_epochs=2,
        output_dir=tmp_path,
        discriminator_layers=2,
    )

    def poison(engine):
        if engine.state.iteration == 3:
            engine.state.output["pred"].data.fill_(float("nan"))

    trainer.add_event_handler(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED, poison)
    with pytest.raises(NonFiniteLossError, match="epoch 2, iteration 3"):
        trainer.run()
    assert all(torch.isfinite(p).all() for p in trainer.state.g_network.parameters())
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["engine"]["epoch"] == 1
    assert not (tmp_path / "autoencoder_final.pt").exists()
