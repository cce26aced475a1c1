"""MONAI-ecosystem fit of every bundle (issue #22): model-zoo checks, portable bundle_root, CPU threads, progress bars,
one ``--tracking mlflow`` switch read back from the SQLite store."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import create_workflow, verify_metadata, verify_net_in_out

from monai_genaug.bundle.runtime import (
    bundle_root,
    progress_bar,
    resolve_num_threads,
    set_num_threads,
    tqdm_disable,
)
from monai_genaug.utils.bundle_schema import META_SCHEMA_PATH
from monai_genaug.bundle.tracking import config_settings, executed_config_path, skip_tracking, tracking_requested
from monai_genaug.handlers.tracking import TrackingUnavailableWarning

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ["ttga", "gms", "histodiffusion", "adaptdiff", "ctrl_genaug"]
# the diffusion networks of the synthesis bundles take the timestep as a second input
EXTRA_FORWARD = {"histodiffusion": {"timesteps": torch.tensor([0])},
                 "ctrl_genaug": {"timesteps": 0, "class_labels": 0}}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", BUNDLES)
def test_model_zoo_checks(name):
    """verify_metadata (offline schema), verify_net_in_out at the metadata's defaults (n = 1), check_properties,
    models/model.pt and the documented commands, for every bundle."""
    configs = ROOT / "bundles" / name / "configs"
    meta, infer = str(configs / "metadata.json"), str(configs / "inference.json")
    verify_metadata(meta_file=meta, filepath=str(META_SCHEMA_PATH))
    verify_net_in_out("network_def", meta_file=meta, config_file=infer, device="cpu",
                      extra_forward_args=EXTRA_FORWARD.get(name, {}))
    workflow = create_workflow(config_file=infer, meta_file=meta, workflow_type="infer",
                               bundle_root=str(ROOT / "bundles" / name))
    assert workflow.check_properties() == []
    assert (ROOT / "bundles" / name / "models" / "model.pt").is_file()
    config = json.loads((configs / "inference.json").read_text())
    assert config["bundle_root"]["_target_"] == "monai_genaug.bundle.runtime.bundle_root"
    assert config["num_threads"] is None and config["progress"] is True
    readme = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    for text in ("verify_metadata", "meta_schema.json", "verify_net_in_out", "check_properties", "--tracking mlflow",
                 "--num_threads", "--progress false"):
        assert text in readme, (name, text)


def test_bundle_root_follows_a_copied_bundle(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere" / "my_gms"
    shutil.copytree(ROOT / "bundles" / "gms", copy, ignore=shutil.ignore_patterns("eval", "outputs"))
    monkeypatch.chdir(tmp_path)  # neither the repository root nor the bundle folder
    workflow = create_workflow(config_file=str(copy / "configs" / "inference.json"), workflow_type="infer")
    assert Path(workflow.bundle_root).resolve() == copy  # resolved by the workflow, as in initialize() / run()
    assert Path(workflow.parser.get_parsed_content("model_path")).resolve() == copy / "models" / "model.pt"
    monkeypatch.chdir(copy)  # the zoo's way: run from the bundle folder
    assert bundle_root("bundles/gms") == "."
    monkeypatch.chdir(ROOT)
    assert bundle_root("bundles/gms") == "bundles/gms"
    # an overlay merged after another bundle's config finds its own folder by name
    monkeypatch.setattr(sys, "argv", ["x", "--config_file", f"['{copy}/configs/inference.json','bundles/ttga/configs/"
                                                          "overlay.json']"])
    assert bundle_root("bundles/ttga", config_name="overlay.json") == "bundles/ttga"
    assert Path(bundle_root("bundles/gms")) == copy


def test_num_threads_default_is_one_per_process_on_cpu():
    torch.set_num_threads(2)
    workflow = create_workflow(config_file=str(ROOT / "bundles" / "gms" / "configs" / "inference.json"),
                               workflow_type="infer", bundle_root=str(ROOT / "bundles" / "gms"), device="$torch.device('cpu')")
    workflow.initialize()
    assert torch.get_num_threads() == 1
    workflow = create_workflow(config_file=str(ROOT / "bundles" / "gms" / "configs" / "inference.json"),
                               workflow_type="infer", bundle_root=str(ROOT / "bundles" / "gms"),
                               device="$torch.device('cpu')", num_threads=2)
    workflow.initialize()
    assert torch.get_num_threads() == 2
    assert resolve_num_threads(None, "cuda:0") is None and set_num_threads(None, "cpu") == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads must be a positive integer"):
            resolve_num_threads(bad, "cpu")


def test_every_runnable_config_sets_threads_before_running():
    for path in sorted((ROOT / "bundles").glob("*/configs/*.json")):
        config = json.loads(path.read_text())
        if "device" not in config:
            continue  # an overlay of a config that has it
        targets = [i.get("_target_") for i in config.get("initialize", []) if isinstance(i, dict)]
        assert "monai_genaug.bundle.runtime.set_num_threads" in targets, path
        if "multi_gpu" not in path.name:
            assert config["num_threads"] is None and config["progress"] is True, path


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal_only(monkeypatch):
    from monai_genaug.generative.latent_generator import LatentGenerator
    from monai_genaug.generative.sampler import DiffusionSampler

    assert tqdm_disable(True) is None and tqdm_disable(None) is None and tqdm_disable(False) is True
    assert tqdm_disable("false") is True and tqdm_disable("True") is None  # the command line passes text
    with pytest.raises(ValueError, match="progress must be true or false"):
        tqdm_disable("maybe")
    gen = LatentGenerator.from_preset("tiny", spatial_dims=2).eval()

    def sample(progress, stream):
        monkeypatch.setattr(sys, "stderr", stream)
        DiffusionSampler(num_inference_steps=2, progress=progress)(gen, shape=(1, *gen.latent_shape((8, 8))))
        return stream.getvalue()

    assert "sampling" in sample(True, _Terminal())  # a terminal: a bar
    assert sample(True, io.StringIO()) == ""  # a log file: nothing
    assert sample(False, _Terminal()) == ""  # --progress false: nothing

    from ignite.engine import Engine

    for stream, expected in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        engine = Engine(lambda e, b: b)
        progress_bar(True, "cases").attach(engine)
        engine.run([1, 2, 3])
        assert ("cases" in stream.getvalue()) == expected



def test_trainer_progress_bar_follows_the_process_wide_switch(monkeypatch, tmp_path):
    """Every trainer built on ``standard_training_handlers`` ticks a bar per iteration on a terminal; a bundle's or
    command line's ``--progress false`` (``set_num_threads(..., progress=False)``) silences it and the samplers."""
    from ignite.engine import Engine

    from monai_genaug.engines.workflow import standard_training_handlers
    from monai_genaug.generative.latent_generator import LatentGenerator
    from monai_genaug.generative.sampler import DiffusionSampler
    from monai_genaug.utils.options import set_num_threads, set_progress

    def train(stream):
        monkeypatch.setattr(sys, "stderr", stream)
        engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
        for handler in standard_training_handlers(tmp_path, "toy", params={}).handlers:
            handler.attach(engine)
        engine.run([1, 2, 3], max_epochs=1)
        return stream.getvalue()

    gen = LatentGenerator.from_preset("tiny", spatial_dims=2).eval()

    def sample(stream):
        monkeypatch.setattr(sys, "stderr", stream)
        DiffusionSampler(num_inference_steps=2)(gen, shape=(1, *gen.latent_shape((8, 8))))
        return stream.getvalue()

    threads = torch.get_num_threads()
    try:
        assert "toy" in train(_Terminal()) and "sampling" in sample(_Terminal())
        assert train(io.StringIO()) == ""  # a log file: nothing
        set_num_threads(threads, "cpu", progress="false")  # what every bundle's initialize does with --progress false
        assert train(_Terminal()) == "" and sample(_Terminal()) == ""
        assert tqdm_disable() is True and tqdm_disable(True) is None  # an explicit option still wins
    finally:
        set_progress(True)
        torch.set_num_threads(threads)

def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.mark.slow
def test_tracking_mlflow_read_back_and_unwritable_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "gms"
    proc = _run("--config_file", "bundles/gms/configs/inference.json", "--output_dir", str(out), "--max_items", "2",
                "--tracking", "mlflow", "--progress", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlruns.db'}")  # what mlflow.set_tracking_uri sets
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.max_items"] == "2" and run["params.split"] == "test" and run["params.num_threads"] == "null"
    assert 0.0 <= float(run["metrics.mean_dice"]) <= 1.0
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])]
    assert len(artifacts) == 1 and artifacts[0].startswith("config_") and artifacts[0].endswith(".json")
    # a store that cannot be written: a warning naming it, the run goes on and writes its results
    (tmp_path / "afile").write_text("")
    bad = f"sqlite:///{tmp_path / 'afile' / 'sub' / 'mlruns.db'}"
    out2 = tmp_path / "gms2"
    proc = _run("--config_file", "bundles/gms/configs/inference.json", "--output_dir", str(out2), "--max_items", "1",
                "--tracking", "mlflow", "--tracking_uri", bad)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "MLflow tracking is off for this run" in log and str(tmp_path / "afile" / "sub") in log
    assert (out2 / "metrics.csv").is_file()


def test_tracking_helpers(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "config_20260101_000000.json"
    config.write_text(json.dumps({"a": 1, "b": "$x", "c": [1, 2], "d": {"e": 1}, "f": "@a", "_meta_": {}}))
    assert config_settings(config) == {"a": 1, "c": [1, 2]}
    mangled = f"{tmp_path} + '/{config.name}'"  # MONAI's save_execute_config after --output_dir <folder>
    assert executed_config_path(mangled) == str(config) and executed_config_path(True) is None
    assert tracking_requested(mangled) and tracking_requested(True, alias=True) and not tracking_requested(True)
    assert not skip_tracking(f"sqlite:///{tmp_path / 'db' / 'mlruns.db'}")
    (tmp_path / "f").write_text("")
    with pytest.warns(TrackingUnavailableWarning, match=str(tmp_path / "f")):
        assert skip_tracking(f"sqlite:///{tmp_path / 'f' / 'x' / 'mlruns.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert skip_tracking(None, trainer_tracks=True)


def test_same_options_same_meaning(tmp_path):
    """GMS takes ``--split all`` and ``--max_items null`` like TTGA; AdaptDiff inference writes where its docs say."""
    import numpy as np
    from PIL import Image

    from monai_genaug.data.bundle import bundle_datalist
    from monai_genaug.methods.gms import gms_datalist
    from monai_genaug.utils.options import optional_count

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "images" / f"c{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"c{i}.png")
    every = gms_datalist(tmp_path, "all", max_items="null")
    assert sorted(Path(e["image"]).name for e in every) == sorted(f"c{i}.png" for i in range(10))
    parts = [gms_datalist(tmp_path, s) for s in ("training", "validation", "test")]
    assert [e["image"] for e in every] == [e["image"] for p in parts for e in p]
    assert len(gms_datalist(tmp_path, "all", max_items="3")) == 3
    assert [e["image"] for e in bundle_datalist(tmp_path, "all", max_items="null")] == [e["image"] for e in every]
    with pytest.raises(ValueError, match="split must be one of .*'all'"):
        gms_datalist(tmp_path, "everything")
    assert optional_count(None) is None and optional_count("None") is None and optional_count("4") == 4
    for bad in ("-1", "2.5", "many", True):
        with pytest.raises(ValueError, match="max_items must be a whole number >= 0 or null"):
            optional_count(bad)
    config = json.loads((ROOT / "bundles" / "adaptdiff" / "configs" / "inference.json").read_text())
    assert config["output_dir"] == "$@bundle_root + '/eval/inference'"
    assert "`eval/inference/labels/*_seg.png`" in (ROOT / "bundles" / "adaptdiff" / "docs" / "README.md").read_text()
    for name in BUNDLES:  # every inference config: the same switches, the same defaults
        config = json.loads((ROOT / "bundles" / name / "configs" / "inference.json").read_text())
        assert {"num_threads", "progress", "save_execute_config", "is_not_rank0", "tracking_uri", "dataset_dir",
                "output_dir", "device", "seed"} <= set(config), name
        assert "/eval" in config["output_dir"], name


def test_ctrl_genaug_docs_have_outputs_and_options():
    import re

    readme = (ROOT / "bundles" / "ctrl_genaug" / "docs" / "README.md").read_text()
    assert "## Outputs" in readme and "## Options" in readme
    options = readme.split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = {i for row in options.splitlines() if row.startswith("| `")
                  for i in re.findall(r"`(\w+)`", row.split("|")[1])}
    keys = set()
    for path in (ROOT / "bundles" / "ctrl_genaug" / "configs").glob("*.json"):
        keys |= set(json.loads(path.read_text()))
    assert documented and documented <= keys, documented - keys


def test_command_lines_take_num_threads_and_progress(tmp_path):
    from monai_genaug.data.phantoms import main as phantoms_main
    from monai_genaug.sd_import import build_parser

    torch.set_num_threads(2)
    phantoms_main(["--kind", "endoscopy", "--out", str(tmp_path / "a"), "--num", "1"])
    assert torch.get_num_threads() == 1  # the default: one thread per process on CPU
    phantoms_main(["--kind", "endoscopy", "--out", str(tmp_path / "b"), "--num", "1", "--num_threads", "2",
                   "--progress", "false"])
    assert torch.get_num_threads() == 2
    with pytest.raises(SystemExit):
        phantoms_main(["--kind", "endoscopy", "--out", str(tmp_path / "c"), "--progress", "maybe"])
    args = build_parser().parse_args(["--source", "x", "--out", "y", "--num_threads", "3", "--progress", "false"])
    assert args.num_threads == 3 and args.progress is False
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        assert "add_runtime_arguments" in script.read_text(), script.name
