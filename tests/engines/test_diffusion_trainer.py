"""create_diffusion_trainer: loss falls (2D/3D, pixel/latent, epsilon/v), conditioning, exact resume, NaN stop,
LoRA fine-tuning, MLflow logging into SQLite, unreachable tracking URIs."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import IterationEvents

from monai_genaug.engines import TrainingOptions
from monai_genaug.engines.diffusion import create_diffusion_trainer
from monai_genaug.handlers.nan_guard import NonFiniteLossError
from monai_genaug.handlers.tracking import (
    TrackingUnavailableWarning,
    default_tracking_uri,
)
from monai_genaug.generative.latent_generator import LatentGenerator
from monai_genaug.utils.checkpoint import load_checkpoint


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "spatial_dims, latent, prediction_type",
    [(2, True, "epsilon"), (2, False, "v_prediction"), (3, True, "epsilon")],
)
def test_loss_falls(spatial_dims, latent, prediction_type, tiny, tmp_path):
    size = 16 if spatial_dims == 2 else 8
    gen = tiny.make_generator(spatial_dims=spatial_dims, latent=latent, prediction_type=prediction_type)
    images = tiny.make_images(4, size, spatial_dims)
    if latent:
        gen.estimate_scale_factor(images)
    autoencoder_before = _params(gen.autoencoder) if latent else None
    loader = tiny.make_loader([{"image": images[i % 4]} for i in range(40)], batch_size=4)
    trainer = create_diffusion_trainer(
        gen, loader, max_epochs=4, output_dir=tmp_path, lr=5e-3, ema_decay=0.9, sample_posterior=False
    )
    log = tiny.LossLog()
    log.attach(trainer)
    trainer.run()
    assert len(log.values) == 40
    assert log.falls(n=8, factor=0.8), log.values
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in gen.trainable_parameters()}
    if latent:  # frozen autoencoder
        assert all(torch.equal(v, gen.autoencoder.state_dict()[k]) for k, v in autoencoder_before.items())
        assert not any(p.requires_grad for p in gen.autoencoder.parameters())
    assert (tmp_path / "checkpoint_last.pt").is_file()
    final = LatentGenerator.load(str(tmp_path / "generator_final.pt"))
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in final.state_dict().items())
    ema = LatentGenerator.load(str(tmp_path / "generator_ema.pt"))
    assert not torch.equal(_params(ema.unet)["out.2.conv.weight"], _params(gen.unet)["out.2.conv.weight"])


@pytest.mark.parametrize("kind", ["seg", "concat"])
def test_structural_conditions_train(kind, tiny, tmp_path):
    images = tiny.make_images(4, 16)
    if kind == "seg":
        gen = tiny.make_generator(latent=True, seg_channels=2)
        cond = torch.cat([(images > 0.5).float(), (images <= 0.5).float()], dim=1)
    else:
        gen = tiny.make_generator(latent=False, concat_channels=1)
        cond = images.flip(-1)
    loader = tiny.make_loader([{"image": images[i], "mask": cond[i]} for i in range(4)], batch_size=2)
    trainer = create_diffusion_trainer(
        gen,
        loader,
        max_epochs=1,
        output_dir=tmp_path,
        condition_keys={kind: "mask"},
        sample_size=(16, 16),
        num_grid_samples=2,
        num_inference_steps=2,
        sample_condition={kind: cond[:2]},
    )
    seen = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: seen.append(e.state.output["pred"].shape))
    trainer.run()
    assert len(seen) == 2 and torch.isfinite(torch.tensor(trainer.state.metrics["epoch_loss"]))
    assert (tmp_path / "samples_epoch0001.png").is_file()


def _resume_setup(tiny, tmp_path, seed_init=0, kill_at=None):
    gen = tiny.make_generator(latent=True, num_classes=2, seed=seed_init)
    images = tiny.make_images(4, 16)
    loader = tiny.make_loader([{"image": images[i], "label": i % 2} for i in range(4)], batch_size=2, seed=0)
    optimizer = torch.optim.AdamW(list(gen.trainable_parameters()), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = create_diffusion_trainer(
        gen,
        loader,
        max_epochs=3,
        output_dir=tmp_path,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        condition_keys={"class_labels": "label"},
        condition_dropout=0.5,
        ema_decay=0.8,
        options=TrainingOptions(seed=11),
        sample_size=(16, 16),
        num_grid_samples=2,
        num_inference_steps=2,
    )
    if kill_at is not None:

        def kill(engine):
            raise KeyboardInterrupt("simulated kill")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), kill)
    return trainer, gen


def test_killed_then_resumed_equals_uninterrupted(tiny, tmp_path):
    reference, ref_gen = _resume_setup(tiny, tmp_path / "ref")
    reference.run()

    killed, _ = _resume_setup(tiny, tmp_path / "run", kill_at=3)  # iteration 1 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["engine"]["epoch"] == 1
    assert not (tmp_path / "run" / "generator_final.pt").exists()

    resumed, gen = _resume_setup(tiny, tmp_path / "run", seed_init=123)  # other initial weights: must be loaded
    resumed.run()
    assert resumed.handles.checkpoint.resumed_from == {"epoch": 1, "iteration": 2}
    assert resumed.state.iteration == reference.state.iteration == 6
    ref_state, state = ref_gen.state_dict(), gen.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    ref_ema, ema = reference.handles.ema.ema_model.state_dict(), resumed.handles.ema.ema_model.state_dict()
    assert all(torch.equal(ref_ema[k], ema[k]) for k in ref_ema)
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"] == 1e-3 / 8


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tiny, tmp_path):
    gen = tiny.make_generator(latent=False)
    images = tiny.make_images(4, 16)
    loader = tiny.make_loader([{"image": images[i]} for i in range(4)], batch_size=2)

    def poison(engine):
        if engine.state.iteration == 3:
            engine.state.output["pred"].data.fill_(float("nan"))

    trainer = create_diffusion_trainer(gen, loader, max_epochs=3, output_dir=tmp_path)
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, poison)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 3 .*checkpoint_last\.pt") as err:
        trainer.run()
    assert "kept" in str(err.value)
    assert all(torch.isfinite(p).all() for p in gen.parameters())
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ckpt["engine"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["objects"]["generator"].values() if v.is_floating_point())
    assert not (tmp_path / "generator_final.pt").exists()
    # the kept checkpoint resumes
    again = create_diffusion_trainer(
        tiny.make_generator(latent=False, seed=5), loader, max_epochs=3, output_dir=tmp_path
    )
    again.run()
    assert again.handles.checkpoint.resumed_from["epoch"] == 1 and again.state.epoch == 3


def test_lora_fine_tuning_changes_only_adapters(tiny, tmp_path):
    from monai_genaug.networks.lora import apply_lora, lora_state_dict

    gen = tiny.make_generator(latent=False, num_prompts=2)
    apply_lora(gen.unet, rank=2, generator=torch.Generator().manual_seed(0))
    before = _params(gen.unet)
    images = tiny.make_images(4, 16)
    loader = tiny.make_loader([{"image": images[i], "p": i % 2} for i in range(4)], batch_size=2)
    trainer = create_diffusion_trainer(
        gen, loader, max_epochs=2, output_dir=tmp_path, lr=1e-2, condition_keys={"prompt": "p"}, condition_dropout=0.2
    )
    trainer.run()
    after = gen.unet.state_dict()
    lora_keys = {k for k in before if "lora_" in k}
    assert lora_keys and any(not torch.equal(before[k], after[k]) for k in lora_keys)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in lora_keys)
    assert set(lora_state_dict(gen.unet))
    assert (tmp_path / "lora_final.pt").is_file() and (tmp_path / "lora_ema.pt").is_file()


def test_mlflow_logs_params_metrics_and_grid(tiny, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gen = tiny.make_generator(latent=False, num_classes=2)
    images = tiny.make_images(4, 16)
    items = [{"image": images[i], "label": i % 2} for i in range(4)]
    trainer = create_diffusion_trainer(
        gen,
        tiny.make_loader(items),
        max_epochs=2,
        output_dir=tmp_path,
        lr=2e-3,
        options=TrainingOptions(tracking=True, experiment_name="engines_test", params={"note": "tiny"}),
        condition_keys={"class_labels": "label"},
        condition_dropout=0.1,
        val_loader=tiny.make_loader(items, shuffle=False),
        sample_size=(16, 16),
        num_grid_samples=2,
        num_inference_steps=2,
    )
    trainer.run()
    client = MlflowClient(default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("engines_test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "0.002" and params["condition_dropout"] == "0.1" and params["note"] == "tiny"
    assert params["generator.unet.channels"] == "[8, 16]" and params["max_epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert grids == ["samples/samples_epoch0001.png", "samples/samples_epoch0002.png"]
    # validation uses fixed noise: the same weights give the same validation loss
    trainer.handles.evaluator.run(3)
    first = trainer.handles.evaluator.state.metrics["val_loss"]
    trainer.handles.evaluator.run(4)
    assert trainer.handles.evaluator.state.metrics["val_loss"] == first


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "badscheme://nowhere"])
def test_unreachable_tracking_uri_warns_and_trains(uri, tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gen = tiny.make_generator(latent=False)
    loader = tiny.make_loader([{"image": x} for x in tiny.make_images(4, 16)])
    with pytest.warns(TrackingUnavailableWarning, match="Training goes on"):
        trainer = create_diffusion_trainer(
            gen, loader, max_epochs=1, output_dir=tmp_path, options=TrainingOptions(tracking_uri=uri)
        )
    assert trainer.handles.mlflow_handler is None
    trainer.run()
    assert trainer.state.iteration == 2 and (tmp_path / "generator_final.pt").is_file()


def test_bad_arguments(tiny, tmp_path):
    gen = tiny.make_generator(latent=False)
    loader = tiny.make_loader([{"image": x} for x in tiny.make_images(2, 16)])
    with pytest.raises(ValueError, match="max_epochs"):
        create_diffusion_trainer(gen, loader, max_epochs=0, output_dir=tmp_path)
    with pytest.raises(ValueError, match="needs condition"):
        create_diffusion_trainer(
            tiny.make_generator(latent=False, concat_channels=1),
            loader,
            max_epochs=1,
            output_dir=tmp_path,
            sample_size=(16, 16),
        )
    with pytest.raises(ValueError, match="differ from num_samples"):
        create_diffusion_trainer(
            tiny.make_generator(latent=False, concat_channels=1),
            loader,
            max_epochs=1,
            output_dir=tmp_path,
            sample_size=(16, 16),
            num_grid_samples=2,
            sample_condition={"concat": torch.zeros(3, 1, 16, 16)},
        )
    gen.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_diffusion_trainer(gen, loader, max_epochs=1, output_dir=tmp_path)


def test_custom_loss_function_is_used(tiny, tmp_path):
    """An L1 denoising loss (AdaptDiff's release) replaces the default MSE: the logged loss is the mean |pred - target|."""
    gen = tiny.make_generator(latent=False)
    images = tiny.make_images(4, 16)
    loader = tiny.make_loader([{"image": images[i]} for i in range(4)], batch_size=4)
    trainer = create_diffusion_trainer(gen, loader, max_epochs=1, output_dir=tmp_path, loss_function=torch.nn.L1Loss())
    seen = []

    def check(engine):
        out = engine.state.output
        seen.append((out["loss"].item(), (out["pred"] - out["label"]).abs().mean().item()))

    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, check)
    trainer.run()
    assert len(seen) == 1 and seen[0][0] == pytest.approx(seen[0][1], rel=1e-5)
