"""Bundle runs never lose an earlier result and always end with the project's message (issue #21).

Item 2: a rerun into the ``output_dir`` of a finished run of the same config is refused (the earlier results stay)
unless ``--overwrite true``. Item 12: the last line of a failing ``python -m monai.bundle run`` is the project's own
message, not MONAI's "Failed to instantiate component"; the failures themselves cover items 4 (``--max_items 0``),
6 (a 2D ``spatial_size`` the segmenter cannot take), 9 (``--classes`` with a name) and 10 (``output_dir`` that is a
file). All through real subprocess runs of the documented command.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monai_genaug.utils.outputs import check_output_dir, mark_output_dir, run_record_path

PREFIX = "monai_genaug: the bundle run failed:"


def _bundle(root, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=root, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


CASES = {
    "missing_dataset_dir": (["--config_file", "bundles/ttga/configs/inference.json", "--dataset_dir", "{tmp}/none"],
                            "FileNotFoundError: dataset_dir '{tmp}/none' does not exist"),
    "spatial_size_not_divisible": (["--config_file", "bundles/ttga/configs/inference.json", "--spatial_size",
                                    "[97,101]", "--output_dir", "{tmp}/out"],
                                   "spatial_size (97, 101) is not a multiple of configs/inference.json's segmenter "
                                   "down-sampling factor 8; the network cannot take it. Use e.g. --spatial_size "
                                   "\"[96, 104]\""),
    "max_items_zero": (["--config_file", "bundles/gms/configs/inference.json", "--max_items", "0", "--output_dir",
                        "{tmp}/out"], "max_items=0 selects no items"),
    "class_name": (["--config_file", "bundles/histodiffusion/configs/inference.json", "--classes", "['NOPE']",
                    "--output_dir", "{tmp}/out", "--num_per_class", "1", "--num_inference_steps", "1"],
                   "unknown class 'NOPE'; give class names or indices: 0 = 'class_0'"),
    "output_dir_is_a_file": (["--config_file", "bundles/gms/configs/inference.json", "--output_dir", "{tmp}/file"],
                             "NotADirectoryError: output_dir '{tmp}/file' cannot be a results folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failing_bundle_run_ends_with_the_project_message(case, tmp_path, bundle_tools):
    (tmp_path / "file").write_text("not a folder")
    args, expected = CASES[case]
    proc = _bundle(bundle_tools.root, *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode != 0
    last = _last_line(proc)
    assert last.startswith(PREFIX), proc.stderr[-2000:]
    assert expected.format(tmp=tmp_path) in last, last
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.slow
def test_rerun_into_the_same_output_dir_is_refused_unless_overwrite(tmp_path, bundle_tools):
    out = tmp_path / "inference"
    args = ["--config_file", "bundles/gms/configs/inference.json", "--output_dir", str(out), "--max_items", "1"]
    first = _bundle(bundle_tools.root, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(metrics + "# the first run's results\n")
    again = _bundle(bundle_tools.root, *args)
    assert again.returncode != 0
    last = _last_line(again)
    assert last.startswith(PREFIX) and f"output_dir '{out}' holds the results of an earlier run of " \
        "configs/inference.json" in last and "--overwrite true" in last, last
    assert (out / "metrics.csv").read_text().endswith("# the first run's results\n")  # nothing lost
    forced = _bundle(bundle_tools.root, *args, "--overwrite", "true")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (out / "metrics.csv").read_text() == metrics


def test_output_dir_guard_api(tmp_path):
    out = tmp_path / "res"
    assert check_output_dir(out, config="configs/x.json") == str(out) and out.is_dir()
    check_output_dir(out, config="configs/x.json")  # a started but unfinished run leaves no record
    mark_output_dir(out, "configs/x.json")
    assert run_record_path(out, "configs/x.json").is_file()
    with pytest.raises(FileExistsError, match="earlier run of configs/x.json .*Pass --overwrite true"):
        check_output_dir(out, False, "configs/x.json")
    check_output_dir(out, "true", "configs/x.json")
    check_output_dir(out, False, "configs/other.json")  # another config may share the folder
    with pytest.raises(ValueError, match="overwrite must be true or false, got 'maybe'"):
        check_output_dir(out, "maybe", "configs/x.json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        check_output_dir(tmp_path / "f" / "sub", config="configs/x.json")


TRAINING_OUTPUTS = [
    ("ttga", ["train_segmenter.json"], "model_path", "model.pt"),
    ("ttga", ["train_segmenter.json", "train_3d.json"], "model_path", "model_3d.pt"),
    ("ttga", ["train_generator.json"], "generator_path", "generator.pt"),
    ("ttga", ["train_generator.json", "train_3d.json"], "generator_path", "generator_3d.pt"),
    ("gms", ["train.json"], "model_path", "model.pt"),
    ("gms", ["train.json", "train_3d.json"], "model_path", "model_3d.pt"),
    ("adaptdiff", ["train_source_segmenter.json"], "source_segmenter_path", "source_segmenter.pt"),
    ("adaptdiff", ["train_diffusion.json"], "generator_path", "diffusion.pt"),
    ("adaptdiff", ["finetune.json"], "model_path", "model.pt"),
]


@pytest.mark.parametrize("bundle, configs, key, name", TRAINING_OUTPUTS)
def test_training_writes_to_outputs_not_the_shipped_models(bundle, configs, key, name, bundle_tools):
    """Issue #21: training configs no longer overwrite the shipped weights in models/ by default."""
    root = bundle_tools.root / "bundles" / bundle
    parser = bundle_tools.parser(bundle, *configs)
    written = parser.get_parsed_content(key)
    assert written == str(root / "outputs" / "models" / name)
    assert parser.get_parsed_content("ckpt_dir") == str(root / "models")  # the shipped weights are still read there
    chosen = bundle_tools.parser(bundle, *configs, save_dir=str(root / "models"))  # an explicit choice
    assert chosen.get_parsed_content(key) == str(root / "models" / name)


def test_ttga_lora_still_adapts_the_shipped_generator(bundle_tools):
    root = bundle_tools.root / "bundles" / "ttga"
    assert bundle_tools.parser("ttga", "train_lora.json").get_parsed_content("generator_path") == str(
        root / "models" / "generator.pt")
    assert bundle_tools.parser("ttga", "train_lora.json", "train_3d.json").get_parsed_content(
        "generator_path") == str(root / "models" / "generator_3d.pt")


@pytest.mark.slow
def test_train_segmenter_resumes_exactly(tmp_path, bundle_tools):
    """Issue #21: configs/train_segmenter.json resumed (1 epoch, then 2) ends like an uninterrupted 2-epoch run."""
    import torch

    common = ["--config_file", "bundles/ttga/configs/train_segmenter.json", "--phantom_dir", str(tmp_path / "ph"),
              "--num_phantoms", "10", "--spatial_size", "[16,16]", "--batch_size", "4", "--val_interval", "5",
              "--num_workers", "1", "--intensity_augment", "False", *bundle_tools.ttga_segmenter]
    straight = _bundle(bundle_tools.root, *common, "--output_dir", str(tmp_path / "a"), "--model_path",
                       str(tmp_path / "a.pt"), "--epochs", "2")
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = _bundle(bundle_tools.root, *common, "--output_dir", str(tmp_path / "b"), "--model_path",
                    str(tmp_path / "b.pt"), "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    one_epoch = torch.load(tmp_path / "b.pt", weights_only=True)
    (tmp_path / "b" / ".checkpoint_last.pt.x1y2.tmp").write_bytes(b"left by a killed save")
    resumed = _bundle(bundle_tools.root, *common, "--output_dir", str(tmp_path / "b"), "--model_path",
                      str(tmp_path / "b.pt"), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed training from" in resumed.stdout + resumed.stderr
    assert not (tmp_path / "b" / ".checkpoint_last.pt.x1y2.tmp").exists()
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], one_epoch[k]) for k in a)  # the second epoch did train
