"""Classifier engines: the noisy-latent prepare-batch (noised / t = 0), the noisy-latent trainer's checks and resume,
the plain image-classifier trainer and its metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader

from monai_genaug.engines.classifier import (
    NoisyLatentPrepareBatch,
    _confusion_metrics,
    create_classifier_trainer,
    create_noisy_classifier_trainer,
    evaluate_classifier,
)
from monai_genaug.generative.latent_generator import LatentGenerator, generator_config
from monai_genaug.networks.noisy_classifier import NoisyLatentClassifier


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this file on one torch thread."""


def _generator() -> LatentGenerator:
    torch.manual_seed(0)
    return LatentGenerator.from_config(generator_config("tiny", 2, 1, num_train_timesteps=100)).eval()


def _batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, 8, 8, generator=g), "label": torch.arange(n) % 2}


def test_prepare_batch_noised_and_clean():
    gen = _generator()
    batch = _batch()
    z, y, (t,), kwargs = NoisyLatentPrepareBatch(gen, noised=False)(batch)
    assert torch.equal(t, torch.zeros(4, dtype=torch.long)) and kwargs == {}
    assert torch.allclose(z, gen.encode(batch["image"])) and y.tolist() == [0, 1, 0, 1]
    pb = NoisyLatentPrepareBatch(gen, noised=True, seed=3, max_timestep=10)
    z1, _, (t1,), _ = pb(batch)
    assert t1.max() <= 10 and not torch.allclose(z1, z)
    pb.reset()
    z2, _, (t2,), _ = pb(batch)
    assert torch.equal(t1, t2) and torch.equal(z1, z2)  # seeded
    with pytest.raises(KeyError, match="label"):
        pb({"image": batch["image"]})
    with pytest.raises(ValueError, match="max_timestep"):
        NoisyLatentPrepareBatch(gen, max_timestep=100)
    with pytest.raises(ValueError, match="integer class"):
        pb({"image": batch["image"], "label": torch.tensor([0.5, 1.0, 0.0, 1.0])})


def test_noisy_trainer_checks_and_resume(tmp_path):
    gen = _generator()
    items = [{"image": _batch(8)["image"][i], "label": i % 2} for i in range(8)]
    loader = DataLoader(items, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    clf = NoisyLatentClassifier.from_preset("tiny", spatial_dims=2, in_channels=2, num_classes=2, input_shape=(4, 4))
    wrong = NoisyLatentClassifier.from_preset("tiny", spatial_dims=2, in_channels=3, num_classes=2)
    with pytest.raises(ValueError, match="input channels"):
        create_noisy_classifier_trainer(wrong, gen, loader, 1, tmp_path)
    with pytest.raises(ValueError, match="class_names has 3"):
        create_noisy_classifier_trainer(clf, gen, loader, 1, tmp_path, class_names=["a", "b", "c"])
    trainer = create_noisy_classifier_trainer(clf, gen, loader, 2, tmp_path / "a", lr=1e-3)
    trainer.run()
    lr_end = trainer.optimizer.param_groups[0]["lr"]
    assert lr_end < 1e-3 * 0.1  # linear annealing to 0 over the run
    assert (tmp_path / "a" / "classifier_final.pt").is_file() and (tmp_path / "a" / "checkpoint_last.pt").is_file()
    # a run killed during epoch 2 and resumed from its checkpoint ends with the weights of an uninterrupted run
    def fresh():
        torch.manual_seed(1)
        c = NoisyLatentClassifier.from_preset("tiny", spatial_dims=2, in_channels=2, num_classes=2, input_shape=(4, 4))
        ld = DataLoader(items, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
        return c, ld

    class Killed(RuntimeError):
        pass

    def kill(engine):
        if engine.state.iteration == 3:
            raise Killed

    clf_b, loader_b = fresh()
    killed = create_noisy_classifier_trainer(clf_b, gen, loader_b, 2, tmp_path / "b")
    killed.add_event_handler(Events.ITERATION_STARTED, kill)
    with pytest.raises(Killed):
        killed.run()
    clf_b, loader_b = fresh()
    resumed = create_noisy_classifier_trainer(clf_b, gen, loader_b, 2, tmp_path / "b")
    resumed.run()
    assert resumed.handles.checkpoint.resumed_from is not None
    clf_c, loader_c = fresh()
    create_noisy_classifier_trainer(clf_c, gen, loader_c, 2, tmp_path / "c").run()
    for k, v in clf_c.state_dict().items():
        assert torch.allclose(v, clf_b.state_dict()[k], atol=1e-6), k


def test_image_classifier_trainer_and_metrics():
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.full((1, 8, 8), float(i % 2)) + 0.1 * torch.randn(1, 8, 8, generator=g), "label": i % 2}
             for i in range(16)]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loader = DataLoader(items, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = create_classifier_trainer(net, loader, max_epochs=1, epoch_length=40, lr=5e-2)
    trainer.run()
    metrics = evaluate_classifier(net, DataLoader(items, batch_size=8), num_classes=2)
    assert metrics["accuracy"] == 1.0 and metrics["confusion"] == [[8, 0], [0, 8]]
    with pytest.raises(ValueError, match="outside"):
        evaluate_classifier(net, DataLoader(items, batch_size=8), num_classes=1)


def test_confusion_metrics_values():
    m = _confusion_metrics(np.array([[3, 1], [0, 0]]))
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.75  # class 1 absent: mean over present classes
    m = _confusion_metrics(np.array([[2, 2], [0, 4]]))
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    with pytest.raises(ValueError, match="no samples"):
        _confusion_metrics(np.zeros((2, 2), dtype=int))
