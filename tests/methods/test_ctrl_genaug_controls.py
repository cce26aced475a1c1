"""Ctrl-GenAug controls that matter: motion that steers the generated clip, a learned image prior, a clip stage with
the paper's learning rate and early stopping on a monitored score."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_genaug.data.motion_phantoms import make_motion_phantoms
from monai_genaug.methods.ctrl_genaug import (
    CLIP_STAGE_LR,
    LEARNED_FRAME_ENCODER,
    CtrlGenAug,
    FramePrior,
    SequenceGenerator,
    ctrl_genaug_config,
)
from monai_genaug.networks.frame_encoder import FrameAutoencoder, train_frame_autoencoder
from monai_genaug.networks.motion_encoder import estimate_motion


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""
    logging.getLogger("ignite.engine.engine.SupervisedTrainer").setLevel(logging.WARNING)


def _moving_blobs(n: int, size: int = 8, frames: int = 4) -> torch.Tensor:
    """A Gaussian blob crossing the frame, to the right (even clips) or to the left (odd clips)."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    clips = []
    for i in range(n):
        d = 1 if i % 2 == 0 else -1
        cy, cx0 = g.uniform(0.3 * size, 0.7 * size), size / 2 - d * size / 5 + g.uniform(-0.5, 0.5)
        clips.append([np.exp(-((yy - cy) ** 2 + (xx - cx0 - d * size / 8 * t) ** 2) / (2 * (size / 9) ** 2))
                      for t in range(frames)])
    return torch.tensor(np.array(clips), dtype=torch.float32)[:, None]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(1), b.flatten(1)).mean())


def test_motion_condition_steers_the_generated_motion():
    """A tiny generator trained on moving blobs: the measured motion (frame differences) of a clip generated from a
    motion condition is closer to that condition than to the reversed motion, and the reversed condition flips it
    (margin 0.1 in cosine, each way)."""
    clips = _moving_blobs(16)
    torch.manual_seed(0)
    cfg = ctrl_genaug_config("tiny", num_frames=4, num_classes=None, prior_channels=None, motion_injection="concat")
    pipe = CtrlGenAug(SequenceGenerator.from_config(cfg), motion_method="difference")
    assert pipe.generator.unet.insert_unit is not None
    losses = pipe.fit(clips, stage="clips", num_steps=70, batch_size=8, lr=5e-3, trainable=None, keep_all_p=0.8,
                      drop_all_p=0.2)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    src = clips[:4]
    conditions = {"own": src, "reversed": src.flip(2)}
    measured = {}
    for name, c in conditions.items():
        out = pipe.sample(pipe.conditions_from_clips(c), guidance_scale=3.0, num_inference_steps=8, seeds=[0, 1, 2, 3])
        measured[name] = estimate_motion(out, "difference")
    m_own, m_rev = (estimate_motion(c, "difference") for c in conditions.values())
    assert _cos(measured["own"], m_own) - _cos(measured["own"], m_rev) > 0.1
    assert _cos(measured["reversed"], m_rev) - _cos(measured["reversed"], m_own) > 0.1
    # the trained model uses the motion: nulling it raises the fixed-noise denoising loss
    assert pipe.denoising_loss(src) < pipe.denoising_loss(src, drop=("motion",))


def test_learned_frame_prior_carries_appearance_and_travels_with_the_generator(tmp_path):
    items = make_motion_phantoms(12, num_frames=4, spatial_size=(16, 16), seed=0)
    clips = torch.stack([torch.as_tensor(i["image"]) for i in items])
    frames = clips.transpose(1, 2).flatten(0, 1)
    train, held_out = frames[:32], frames[32:]
    torch.manual_seed(0)
    enc = FrameAutoencoder(1, **LEARNED_FRAME_ENCODER)
    losses = train_frame_autoencoder(enc, train, num_steps=200, batch_size=16, lr=3e-3)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert not any(p.requires_grad for p in enc.parameters())  # frozen after training
    with torch.no_grad():
        learned = F.mse_loss(enc.reconstruct(held_out), held_out)
        thumbnail = F.interpolate(FramePrior(4)(held_out)[:, :1], size=(16, 16), mode="bilinear")
    # the learned encoding keeps more of a frame than the pooled 4 x 4 thumbnail it replaces
    assert learned < F.mse_loss(thumbnail, held_out)
    # inside a generator: the default prior encoder, trained by the pipeline, saved and loaded with the weights
    cfg = ctrl_genaug_config("tiny", num_frames=4, num_classes=2, frame_encoder=LEARNED_FRAME_ENCODER)
    assert cfg["prior_channels"] == LEARNED_FRAME_ENCODER["channels"][-1]
    pipe = CtrlGenAug(SequenceGenerator.from_config(cfg))
    assert pipe.prior_encoder is pipe.generator.frame_encoder is pipe.frame_features
    pipe.fit_frame_encoder(clips[:8], num_steps=3)
    prior = pipe.conditions_from_clips(clips[:2], [0, 1])["prior"]
    assert prior.shape == (2, 16, 8, 8) and not torch.allclose(prior[0], prior[1])
    pipe.generator.save(tmp_path / "g.pt")
    loaded = CtrlGenAug.load(tmp_path / "g.pt")
    assert torch.allclose(loaded.conditions_from_clips(clips[:2], [0, 1])["prior"], prior)
    with pytest.raises(ValueError, match="no learned frame encoder"):
        CtrlGenAug.from_preset("tiny", num_frames=4).fit_frame_encoder(clips[:2])
    with pytest.raises(ValueError, match="frames must be"):
        enc(clips[:2])


def test_clip_stage_paper_lr_and_early_stopping_restore_the_best_weights(tmp_path):
    clips = _moving_blobs(8, size=8)
    torch.manual_seed(0)
    pipe = CtrlGenAug(SequenceGenerator.from_config(ctrl_genaug_config("tiny", num_frames=4, num_classes=None,
                                                                       prior_channels=None)))
    trainer = pipe.create_trainer(clips, stage="clips", num_steps=2, batch_size=4, output_dir=tmp_path / "t")
    assert trainer.optimizer.param_groups[0]["lr"] == CLIP_STAGE_LR == 1e-4
    start = {k: v.clone() for k, v in pipe.generator.state_dict().items()}
    loss_before = pipe.denoising_loss(clips)
    assert loss_before == pipe.denoising_loss(clips)  # fixed noise and timesteps
    # the insert unit starts as an identity on the UNet's features: the untrained motion path changes nothing yet
    assert pipe.generator.config["motion_injection"] == "concat"
    assert loss_before == pytest.approx(pipe.denoising_loss(clips, drop=("motion",)), abs=1e-7)
    scores = iter([1.0, 0.5, 0.4, 0.3, 0.2])
    pipe.fit(clips, stage="clips", num_steps=8, batch_size=4, lr=1e-2, monitor=lambda: {"score": next(scores)},
             monitor_every=2, patience=2)
    mon = pipe.monitoring
    assert [h["step"] for h in mon["history"]] == [0, 2, 4] and mon["best_step"] == 0 and mon["stopped_at"] == 4
    # the start scored best: its weights are back
    assert all(torch.equal(v, start[k]) for k, v in pipe.generator.state_dict().items())
    improving = iter([0.1, 0.2, 0.3, 0.4, 0.5])
    pipe.fit(clips, stage="clips", num_steps=4, batch_size=4, lr=1e-2, monitor=lambda: {"score": next(improving)},
             monitor_every=2)
    assert pipe.monitoring["best_step"] == 4 and pipe.monitoring["stopped_at"] is None
    assert any(not torch.equal(v, start[k]) for k, v in pipe.generator.state_dict().items())
    with pytest.raises(ValueError, match="monitor_every"):
        pipe.fit(clips, stage="clips", num_steps=2, monitor=lambda: {"score": 0.0})


def test_motion_phantom_split_keeps_pairs_together_and_classifier_choice():
    from monai_genaug.methods.ctrl_genaug import classifier_network, prepare_sequence_data

    data = prepare_sequence_data(12, num_frames=4, spatial_size=(16, 16), phantoms="motion", seed=1)
    train, test = data["train"]["clips"], data["test"]["clips"]
    assert data["class_names"] == ["expanding", "contracting"] and len(train) + len(test) == 12
    # no test clip is the time reversal of a training clip
    rev = test.flip(2)
    assert not any(torch.equal(r, t) for r in rev for t in train)
    assert float(data["train"]["labels"].float().mean()) == 0.5
    assert classifier_network("temporal", 2, (1, 4, 16, 16))(train[:2]).shape == (2, 2)
    with pytest.raises(ValueError, match="'frames'"):
        classifier_network("lstm", 2, (1, 4, 16, 16))
    with pytest.raises(ValueError, match="2 classes"):
        prepare_sequence_data(12, num_classes=3, phantoms="motion")
