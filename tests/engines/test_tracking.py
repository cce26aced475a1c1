"""MLflow defaults: SQLite URI, reachability checks, parameter flattening, loss extraction, unreachable URIs."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.handlers.tracking import (
    TrackingUnavailableWarning,
    check_tracking_uri,
    create_mlflow_handler,
    default_tracking_uri,
    flatten_params,
    loss_from_output,
)


def test_default_tracking_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("out")
    assert uri == f"sqlite:///{tmp_path / 'out' / 'mlruns.db'}"
    assert check_tracking_uri(uri) is None
    assert (tmp_path / "out").is_dir()  # the folder is created by the check


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("http://127.0.0.1:9", "no MLflow server"),
        ("https://127.0.0.1:9/", "no MLflow server"),
        ("notascheme://x", "cannot open"),
        ("/tmp/mlruns", "file-store"),
        ("file:///tmp/mlruns", "file-store"),
        ("", "non-empty"),
    ],
)
def test_unusable_uris_are_explained(uri, reason):
    problem = check_tracking_uri(uri, timeout=0.5)
    assert problem is not None and reason in problem


def test_sqlite_in_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    problem = check_tracking_uri(f"sqlite:///{blocker}/sub/mlruns.db")
    assert problem is not None and "SQLite folder" in problem


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "notascheme://x"])
def test_unreachable_uri_gives_warning_and_no_handler(uri, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.warns(TrackingUnavailableWarning, match="Training goes on"):
        handler = create_mlflow_handler(output_dir=tmp_path, tracking_uri=uri, timeout=0.5)
    assert handler is None


def test_env_uri_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(TrackingUnavailableWarning, match="127.0.0.1:9"):
        assert create_mlflow_handler(output_dir=tmp_path, timeout=0.5) is None


def test_needs_a_location(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="output_dir"):
        create_mlflow_handler()


def test_flatten_params():
    flat = flatten_params({"lr": 0.1, "unet": {"channels": (8, 16), "type": "X"}, "t": torch.tensor([1, 2]), "n": None})
    assert flat == {"lr": "0.1", "unet.channels": "[8, 16]", "unet.type": "X", "t": "[1, 2]", "n": "null"}
    assert len(flatten_params({"long": "a" * 1000}, max_length=50)["long"]) == 50


def test_loss_from_output():
    assert loss_from_output({"loss": torch.tensor(2.5)}) == 2.5
    assert loss_from_output([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(1.0)}]) == 1.0
    assert loss_from_output(torch.tensor([1.0, 3.0])) == 2.0
    assert loss_from_output({"pred": torch.ones(1)}) is None
    assert loss_from_output(None) is None
