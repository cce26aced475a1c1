"""Ctrl-GenAug pipeline: conditions, dropout, two-stage training, guided generation, bad-input errors."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.methods.ctrl_genaug import (
    CtrlGenAug,
    SequenceGenerator,
    drop_conditions,
    load_clips,
    prepare_sequence_data,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


@pytest.fixture(scope="module")
def data():
    return prepare_sequence_data(8, num_frames=4, spatial_size=(16, 16), num_classes=2, seed=0)


def _pipeline():
    torch.manual_seed(0)
    pipe = CtrlGenAug.from_preset("tiny", num_frames=4, num_classes=2, prior_channels=2)
    with torch.no_grad():  # as after training: the zero-initialised layers carry signal
        for name, p in pipe.generator.named_parameters():
            if float(p.abs().sum()) == 0 and "temporal" not in name:
                p.normal_(std=0.2)
            elif name.endswith("insert_unit.weight"):  # its motion half starts at zero (the UNet unchanged)
                p[:, p.shape[1] // 2 :].normal_(std=0.2)
    return pipe


def test_generated_clips_change_with_class_and_motion(data, tmp_path):
    pipe = _pipeline()
    clips, labels = data["train"]["clips"][:1], data["train"]["labels"][:1]
    cond = pipe.conditions_from_clips(clips, labels)
    assert set(cond) == {"class_labels", "prior", "motion"} and cond["motion"].shape == (1, 2, 3, 16, 16)
    kw = dict(num_inference_steps=2, seeds=[7], guidance_scale=2.0)
    base = pipe.sample(cond, **kw)
    assert base.shape == (1, 1, 4, 16, 16) and 0 <= base.min() and base.max() <= 1
    assert torch.equal(base, pipe.sample(cond, **kw))  # reproducible from the seed
    other_class = pipe.sample({**cond, "class_labels": 1 - cond["class_labels"]}, **kw)
    other_motion = pipe.sample({**cond, "motion": cond["motion"].flip(-1) * 3 + 1}, **kw)
    assert (other_class - base).abs().mean() > 1e-3
    assert (other_motion - base).abs().mean() > 1e-3
    # per-condition guidance scales and guiding the class too
    assert pipe.sample(cond, num_inference_steps=2, seeds=[7], guidance_scale={"prior": 2.0, "motion": 1.5}).shape == base.shape
    gen = pipe.generate(data["train"]["clips"][:2], data["train"]["labels"][:2], num_per_clip=2, num_inference_steps=2)
    assert gen["clips"].shape == (4, 1, 4, 16, 16) and gen["seeds"] == [66, 67, 66, 67]
    entries = CtrlGenAug.write(gen, tmp_path)
    assert len(entries) == 4 and (tmp_path / "samples_sheet.png").is_file()
    assert torch.allclose(load_clips(entries), gen["clips"], atol=1e-6)


def test_condition_dropout_copies_and_nulls():
    cond = {"class_labels": torch.tensor([0, 1] * 50), "prior": torch.ones(100, 2, 4, 4),
            "motion": torch.ones(100, 2, 3, 8, 8)}
    out = drop_conditions(cond, rng=torch.Generator().manual_seed(0))
    assert cond["prior"].min() == 1 and cond["motion"].min() == 1  # input untouched (the original's bug)
    assert torch.equal(out["class_labels"], cond["class_labels"])  # class never dropped by default
    kept_p = out["prior"].flatten(1).amax(1) > 0
    kept_m = out["motion"].flatten(1).amax(1) > 0
    assert 0 < int(kept_p.sum()) < 100 and 0 < int(kept_m.sum()) < 100
    assert torch.equal(drop_conditions(cond, 1.0, 0.0)["prior"], cond["prior"])  # keep-all
    all_dropped = drop_conditions(cond, 0.0, 1.0)
    assert all_dropped["prior"].abs().sum() == 0 and all_dropped["motion"].abs().sum() == 0  # drop-all
    cls = drop_conditions(cond, 0.0, 1.0, keys=("class_labels",), null_class=2)
    assert (cls["class_labels"] == 2).all()
    with pytest.raises(ValueError, match="null_class"):
        drop_conditions(cond, keys=("class_labels",))


def test_two_stage_training_and_checkpoint(data, tmp_path):
    torch.manual_seed(0)
    pipe = CtrlGenAug.from_preset("tiny", num_frames=4, num_classes=2, prior_channels=2)
    clips, labels = data["train"]["clips"], data["train"]["labels"]
    frame_losses = pipe.fit(clips, labels, stage="frames", num_steps=3, batch_size=4, lr=2e-3)
    before = {n: p.detach().clone() for n, p in pipe.generator.named_parameters()}
    clip_losses = pipe.fit(clips, labels, stage="clips", num_steps=3, batch_size=2, lr=2e-3)
    assert len(frame_losses) == len(clip_losses) == 3 and all(l == l for l in frame_losses + clip_losses)
    changed = {n for n, p in pipe.generator.named_parameters() if not torch.equal(p, before[n])}
    assert any("temporal" in n for n in changed) and not any("resnets" in n for n in changed)
    path = tmp_path / "gen.pt"
    pipe.generator.save(path)
    again = SequenceGenerator.load(path)
    x = torch.randn(1, 1, 4, 16, 16)
    cond = pipe.conditions_from_clips(clips[:1], labels[:1])
    with torch.no_grad():
        assert torch.allclose(again(x, 10, cond), pipe.generator(x, 10, cond), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="train_frames.json"):
        SequenceGenerator.load(tmp_path / "missing.pt")


def test_bad_inputs_name_the_problem_and_fix(data):
    pipe = _pipeline()
    gen = pipe.generator
    clips, labels = data["train"]["clips"][:2], data["train"]["labels"][:2]
    with pytest.raises(ValueError, match=r"6 frames.*4 frames"):
        pipe.conditions_from_clips(torch.rand(2, 1, 6, 16, 16), labels)
    cond = pipe.conditions_from_clips(clips, labels)
    x = torch.randn(2, 1, 4, 16, 16)
    with pytest.raises(ValueError, match=r"motion field must have shape.*estimate_motion"):
        gen(x, 5, {**cond, "motion": torch.zeros(2, 2, 4, 16, 16)})
    with pytest.raises(ValueError, match=r"condition\['prior'\] is missing.*frozen encoder"):
        gen(x, 5, {"class_labels": cond["class_labels"], "motion": cond["motion"]})
    with pytest.raises(ValueError, match=r"condition\['motion'\] is missing"):
        gen(x, 5, {"class_labels": cond["class_labels"], "prior": cond["prior"]})
    with pytest.raises(ValueError, match="class labels must be in"):
        gen(x, 5, {**cond, "class_labels": torch.tensor([0, 5])})
    with pytest.raises(ValueError, match="unknown condition keys"):
        gen(x, 5, {**cond, "text": torch.zeros(2)})
    with pytest.raises(ValueError, match="class-conditional"):
        pipe.conditions_from_clips(clips)
    no_prior = CtrlGenAug(gen, prior_encoder=None)
    no_prior.prior_encoder = None
    with pytest.raises(ValueError, match="precomputed prior"):
        no_prior.conditions_from_clips(clips, labels)
    # precomputed priors (e.g. MedSAM embeddings) are used as given
    pre = torch.randn(2, 2, 4, 4)
    assert torch.equal(no_prior.conditions_from_clips(clips, labels, priors=pre)["prior"], pre)


def test_sequence_classifier_shapes_and_bad_input():
    from monai_genaug.methods.ctrl_genaug import sequence_classifier

    net = sequence_classifier(3, (1, 4, 16, 16))
    assert net(torch.rand(2, 1, 4, 16, 16)).shape == (2, 3)
    assert net(torch.rand(2, 1, 4, 24, 24)).shape == (2, 3)  # global pooling: any frame size
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        net(torch.rand(2, 1, 16, 16))


def test_brats_slice_clips(brats_dir, tmp_path):
    from monai_genaug.methods.ctrl_genaug import brats_slice_clips

    d = brats_slice_clips(brats_dir, num_frames=8, size=16, window_step=8, cases=["brats_2013_pat0002_1"])
    clips, labels = d["clips"], d["labels"]
    assert clips.shape[1:] == (1, 8, 16, 16) and len(labels) == len(d["cases"]) == clips.shape[0]
    assert 0 <= clips.min() and clips.max() <= 1 and clips.flatten(1).amax(1).min() > 0  # every clip shows brain
    assert set(labels.tolist()) == {0, 1}
    assert torch.equal(labels, (d["tumour_fraction"] >= 0.01).long())
    with pytest.raises(FileNotFoundError, match="lacks"):
        (tmp_path / "case").mkdir()
        brats_slice_clips(tmp_path)
