"""create_sequence_diffusion_trainer (Ctrl-GenAug on MONAI's SupervisedTrainer): loss falls, conditions and dropout
in the prepare-batch, clip-stage freezing, exact resume after a kill, final / EMA files and sample sheet, MLflow into
SQLite, and CtrlGenAug.fit on top of it."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events

from monai_genaug.engines import TrainingOptions
from monai_genaug.engines.sequence_diffusion import (
    SequenceDiffusionPrepareBatch,
    create_sequence_diffusion_trainer,
)
from monai_genaug.methods.ctrl_genaug import (
    CtrlGenAug,
    SequenceGenerator,
    prepare_sequence_data,
)
from monai_genaug.utils.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


@pytest.fixture(scope="module")
def data():
    return prepare_sequence_data(8, num_frames=4, spatial_size=(16, 16), num_classes=2, seed=0)


def _pipeline(seed: int = 0) -> CtrlGenAug:
    torch.manual_seed(seed)
    return CtrlGenAug.from_preset("tiny", num_frames=4, num_classes=2, prior_channels=2)


def _loader(pipe, data, batch_size=2, seed=0):
    items = pipe.training_items(data["train"]["clips"], data["train"]["labels"], stage="clips")
    return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_prepare_batch_builds_conditions_and_drops_on_a_copy(data):
    pipe = _pipeline()
    clips, labels = data["train"]["clips"][:4], data["train"]["labels"][:4]
    # conditions computed on the fly (prior of frame 0 by the encoder, estimated motion) equal the precomputed ones
    on_the_fly = SequenceDiffusionPrepareBatch(pipe.generator, pipe.prior_encoder, keep_all_p=1.0, drop_all_p=0.0)
    cond = on_the_fly.get_condition({"image": clips, "label": labels})
    ref = pipe.conditions_from_clips(clips, labels)
    assert set(cond) == {"class_labels", "prior", "motion"}
    assert all(torch.allclose(cond[k].float(), ref[k].float()) for k in ref)
    x_t, target, (t,), kwargs = on_the_fly({"image": clips, "label": labels})
    assert x_t.shape == target.shape == clips.shape and t.shape == (4,) and set(kwargs) == {"condition"}
    batch = {"image": clips, "label": labels, "prior": ref["prior"].clone(), "motion": ref["motion"].clone()}
    drop_all = SequenceDiffusionPrepareBatch(pipe.generator, keep_all_p=0.0, drop_all_p=1.0)
    dropped = drop_all.get_condition(batch)
    assert dropped["prior"].abs().sum() == 0 and dropped["motion"].abs().sum() == 0
    assert torch.equal(dropped["class_labels"], labels)  # the class is never dropped
    assert torch.equal(batch["prior"], ref["prior"])  # the batch is not mutated
    with pytest.raises(KeyError, match="'label'"):
        drop_all.get_condition({"image": clips})
    with pytest.raises(ValueError, match="6 frames"):
        drop_all({"image": torch.rand(2, 1, 6, 16, 16), "label": labels[:2]})


def test_loss_falls_and_clip_stage_freezes(data, tmp_path):
    pipe = _pipeline()
    items = pipe.training_items(data["train"]["clips"], data["train"]["labels"], stage="frames")
    loader = torch.utils.data.DataLoader(items, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = create_sequence_diffusion_trainer(pipe.generator, loader, 6, tmp_path / "frames", stage="frames",
                                                lr=5e-3, ema_decay=0.9)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert len(losses) == 6 * len(loader)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    final = SequenceGenerator.load(tmp_path / "frames" / "generator_final.pt")
    assert all(torch.equal(v, pipe.generator.state_dict()[k]) for k, v in final.state_dict().items())
    ema = SequenceGenerator.load(tmp_path / "frames" / "generator_final_ema.pt")
    assert any(not torch.equal(v, pipe.generator.state_dict()[k]) for k, v in ema.state_dict().items())
    # clip stage: only the selected modules move
    before = _params(pipe.generator)
    clips_trainer = create_sequence_diffusion_trainer(
        pipe.generator, _loader(pipe, data), 1, tmp_path / "clips", trainable=("temporal", "motion_encoder"), lr=1e-2,
        sample_every=1, num_grid_samples=2, num_inference_steps=2, final_path=tmp_path / "generator.pt",
    )
    clips_trainer.run()
    after = pipe.generator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("temporal" in k or "motion_encoder" in k for k in changed)
    assert (tmp_path / "generator.pt").is_file() and (tmp_path / "clips" / "samples_epoch0001.png").is_file()


def _resume_setup(data, out, seed_init=0, kill_at=None):
    pipe = _pipeline(seed_init)
    trainer = create_sequence_diffusion_trainer(pipe.generator, _loader(pipe, data), 3, out, lr=2e-3, ema_decay=0.8,
                                                options=TrainingOptions(seed=11))
    if kill_at is not None:

        def kill(engine):
            raise KeyboardInterrupt("simulated kill")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), kill)
    return trainer, pipe.generator


def test_killed_then_resumed_equals_uninterrupted(data, tmp_path):
    reference, ref_gen = _resume_setup(data, tmp_path / "ref")
    reference.run()
    killed, _ = _resume_setup(data, tmp_path / "run", kill_at=3)  # iteration 1 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["engine"]["epoch"] == 1
    assert not (tmp_path / "run" / "generator_final.pt").exists()
    resumed, gen = _resume_setup(data, tmp_path / "run", seed_init=123)  # other initial weights: must be loaded
    resumed.run()
    assert resumed.handles.checkpoint.resumed_from == {"epoch": 1, "iteration": 2}
    assert resumed.state.iteration == reference.state.iteration == 6
    ref_state, state = ref_gen.state_dict(), gen.state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    ref_ema, ema = reference.handles.ema.ema_model.state_dict(), resumed.handles.ema.ema_model.state_dict()
    assert all(torch.equal(ref_ema[k], ema[k]) for k in ref_ema)
    assert (tmp_path / "run" / "generator_final.pt").is_file()


def test_fit_uses_the_trainer_and_logs_to_mlflow_sqlite(data, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pipe = _pipeline()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    losses = pipe.fit(data["train"]["clips"], data["train"]["labels"], stage="clips", num_steps=4, batch_size=2,
                      lr=2e-3, output_dir=tmp_path / "run", tracking_uri=uri, experiment_name="ctrl_test")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file() and (tmp_path / "run" / "generator_final.pt").is_file()
    assert all(p.requires_grad for p in pipe.generator.parameters())  # fit leaves everything trainable
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ctrl_test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["stage"] == "clips" and run.data.params["trainer"] == "sequence_diffusion"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    with pytest.raises(ValueError, match="divide num_steps"):
        pipe.create_trainer(data["train"]["clips"], data["train"]["labels"], num_steps=5, steps_per_epoch=2,
                            output_dir=tmp_path / "bad")
