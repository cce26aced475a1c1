"""TrainingOptions: value checks, the deprecated keywords, the typed trainer handles, and one options object that
drives two different trainers the same way."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from monai_genaug.engines import (
    TRAINING_OPTION_NAMES,
    TrainerHandles,
    TrainingOptions,
    create_diffusion_trainer,
    create_segmentation_trainer,
    pop_training_options,
    resolve_training_options,
)
from monai_genaug.engines.segmentation import build_segmenter, segmenter_config


class _EpochCounter:
    """An extra handler: counts the epochs it saw."""

    def __init__(self) -> None:
        self.epochs = 0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._tick)

    def _tick(self, _engine) -> None:
        self.epochs += 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"seed": -1}, ValueError, r"seed must be >= 0, got -1"),
        ({"seed": 1.5}, TypeError, r"seed must be an integer"),
        ({"seed": True}, TypeError, r"seed must be an integer"),
        ({"save_interval": 0}, ValueError, r"save_interval must be >= 1"),
        ({"val_interval": 0}, ValueError, r"val_interval must be >= 1"),
        ({"amp": "maybe"}, ValueError, r"amp must be true or false, got 'maybe'"),
        ({"resume": 2}, ValueError, r"resume must be true or false"),
        ({"nan_raise": None}, TypeError, r"nan_raise must be True or False"),
        ({"tracking_uri": 3}, TypeError, r"tracking_uri must be a string or None"),
        ({"experiment_name": " "}, ValueError, r"experiment_name must not be empty"),
        ({"params": [("lr", 1)]}, TypeError, r"params must be a mapping"),
        ({"extra_handlers": object()}, TypeError, r"extra_handlers must be a list of handlers"),
        ({"extra_handlers": [object()]}, TypeError, r"has no attach\(engine\) method"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        TrainingOptions(**kwargs)


def test_values_are_normalised_and_replace_checks_again(tmp_path):
    handler = _EpochCounter()
    options = TrainingOptions(tracking_uri=tmp_path, params=None, extra_handlers=[handler])
    assert TrainingOptions(resume="false", amp="True").resume is False  # the command line passes texts
    assert TrainingOptions(resume="false", amp="True").amp is True
    assert options.tracking_uri == str(tmp_path) and options.params == {} and options.extra_handlers == (handler,)
    assert options.replace(seed=4).seed == 4 and options.seed == 0  # frozen: replace returns a copy
    with pytest.raises(ValueError, match="save_interval"):
        options.replace(save_interval=-2)
    assert options.tracking_kwargs("gms")["experiment_name"] == "gms"
    assert TrainingOptions(experiment_name="mine").tracking_kwargs("gms")["experiment_name"] == "mine"
    assert options.logged_params({"lr": 1.0}) == {"lr": 1.0, "amp": False, "seed": 0}
    assert TrainingOptions(params={"seed": "x"}).logged_params({})["seed"] == "x"  # the user's params win


def test_old_keywords_warn_with_the_new_spelling_and_mean_the_same():
    with pytest.warns(DeprecationWarning, match=r"options=TrainingOptions\(amp=False, seed=3\)"):
        old = resolve_training_options("create_x_trainer", None, {"amp": False, "seed": 3})
    assert old == TrainingOptions(seed=3)
    assert resolve_training_options("f", {"seed": 3}, {}) == old  # a plain mapping (a bundle config) also works
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['lrr'\]"):
        resolve_training_options("create_x_trainer", None, {"lrr": 1})
    with pytest.warns(DeprecationWarning):  # old keywords next to options override its fields
        assert resolve_training_options("f", TrainingOptions(seed=1), {"nan_raise": False}) == TrainingOptions(
            seed=1, nan_raise=False
        )
    with pytest.raises(TypeError, match="options must be a TrainingOptions"):
        resolve_training_options("create_x_trainer", 3, {})
    assert set(TRAINING_OPTION_NAMES) >= {"seed", "amp", "resume", "tracking", "extra_handlers", "val_interval"}


def test_forwarding_helpers_pop_the_options_and_fill_their_defaults():
    kwargs = {"lr": 1.0, "options": TrainingOptions(seed=2)}
    options = pop_training_options(kwargs, "helper", experiment_name="method_x", seed=9)
    assert kwargs == {"lr": 1.0} and options == TrainingOptions(seed=2, experiment_name="method_x")  # seed was set
    kwargs = {"resume": False, "experiment_name": "mine"}
    with pytest.warns(DeprecationWarning, match="experiment_name='mine'"):
        options = pop_training_options(kwargs, "helper", experiment_name="method_x")
    assert kwargs == {} and options == TrainingOptions(resume=False, experiment_name="mine")


def _segmentation_parts():
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        lab = torch.zeros(1, 16, 16, dtype=torch.long)
        lab[:, 4:10, 5:11] = 1
        items.append({"image": lab.float() + 0.05 * torch.randn(1, 16, 16, generator=g), "label": lab})
    loader = torch.utils.data.DataLoader(items, batch_size=2)
    return build_segmenter(segmenter_config(2, 1, 1, channels=(4, 8), num_res_units=0)), loader


def test_one_options_object_drives_two_trainers_identically(tiny, tmp_path):
    counters = [_EpochCounter(), _EpochCounter()]
    gen = tiny.make_generator(latent=False)
    dm_loader = tiny.make_loader([{"image": x} for x in tiny.make_images(4, 16)], batch_size=2)
    net, seg_loader = _segmentation_parts()
    base = TrainingOptions(seed=5, resume=False, save_interval=2, val_interval=2, nan_raise=False, params={"s": 1})
    trainers = [
        create_diffusion_trainer(
            gen, dm_loader, 3, tmp_path / "dm", ema_decay=None, val_loader=dm_loader,
            options=base.replace(extra_handlers=[counters[0]]),
        ),
        create_segmentation_trainer(
            net, seg_loader, 3, tmp_path / "seg", val_loader=seg_loader,
            options=base.replace(extra_handlers=[counters[1]]),
        ),
    ]
    validations = []
    for trainer in trainers:
        handles = trainer.handles
        assert isinstance(handles, TrainerHandles) and handles.options.seed == 5
        assert handles.nan_guard.raise_error is False
        assert handles.checkpoint.save_interval == 2 and handles.checkpoint.resume is False
        assert handles.checkpoint.seed == 5
        runs = []
        handles.evaluator.add_event_handler(Events.COMPLETED, lambda e, runs=runs: runs.append(1))
        validations.append(runs)
        trainer.run()
    # the same cadence in both: validation at epoch 2 only, checkpoint at epoch 2 (interval) and at the end (3)
    assert [len(v) for v in validations] == [1, 1]
    assert [c.epochs for c in counters] == [3, 3]
    for trainer, name in zip(trainers, ("dm", "seg")):
        assert (tmp_path / name / "checkpoint_last.pt").is_file()
        assert trainer.state.epoch == 3


def test_old_trainer_attributes_read_the_handles_with_a_warning(tiny, tmp_path):
    gen = tiny.make_generator(latent=False)
    loader = tiny.make_loader([{"image": x} for x in tiny.make_images(2, 16)], batch_size=2)
    with pytest.warns(DeprecationWarning, match=r"options=TrainingOptions\(seed=2\)"):
        trainer = create_diffusion_trainer(gen, loader, 1, tmp_path, seed=2)
    assert trainer.handles.options == TrainingOptions(seed=2)
    with pytest.warns(DeprecationWarning, match=r"use trainer.handles.ema"):
        assert trainer.ema is trainer.handles.ema is not None
    with pytest.raises(AttributeError, match="no attribute 'not_a_handle'"):
        trainer.not_a_handle  # noqa: B018
