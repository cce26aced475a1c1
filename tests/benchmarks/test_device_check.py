"""benchmarks/device_check.py: the CPU smoke run (``--quick``) of every part, the JSON it writes, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def device_check(benchmark_script):
    """The script as a module (run in this process: no second start-up of torch and MONAI)."""
    return benchmark_script("device_check")


@pytest.fixture(scope="module")
def quick(device_check, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("device_check")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and fair to a shared machine
    try:
        result = device_check.main(["--quick", "--output", str(out), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    path = out / "device_check_quick.json"
    assert path.is_file() and not (out / "device_check.json").exists()  # a smoke run never poses as the real one
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary left
    written = json.loads(path.read_text())
    assert written["parts"].keys() == result["parts"].keys()
    return written


def test_quick_run_writes_every_part(quick):
    assert quick["benchmark"] == "device_check" and quick["quick"] is True
    env = quick["environment"]
    for key in ("device_name", "device_type", "torch", "cuda", "monai", "commit"):
        assert key in env, key
    assert set(quick["parts"]) == {"gpu_tests", "ttga_sd15", "gms_sd2", "sampler_overhead", "volumes_3d"}
    for name, part in quick["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
        assert part["description"] and part["config"] and part["wall_s"] >= 0


def test_quick_figures_are_consistent(quick):
    parts = quick["parts"]
    tests = parts["gpu_tests"]["figures"]
    if env_has_no_cuda(quick):  # pytest -m gpu on the CPU: everything selected skips, nothing fails
        assert tests["skipped"] == tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    ttga = parts["ttga_sd15"]["figures"]
    stages = ttga["encode_s"] + ttga["inversion_s"] + ttga["identity_optimisation_s"]
    assert stages == pytest.approx(ttga["prepare_s"], abs=2e-3)
    assert ttga["seconds_per_image"] == pytest.approx(ttga["prepare_s"] + ttga["views_s"] + ttga["segmentation_s"],
                                                      abs=2e-3)
    cap = parts["ttga_sd15"]["config"]["max_iterations"]
    assert ttga["identity_iterations"] <= ttga["identity_iterations_cap"] <= cap
    assert ttga["context_shape"] == [77, 768] and ttga["views_finite"] and ttga["batched_speedup_ratio"] > 0
    assert ttga["batched_vs_loop_max_abs_view_difference"] < 0.05  # the loop does the same maths
    assert ttga["identity_optimisations_run"] == 2  # probe + image: the views and the loop reuse the cached state
    gms = parts["gms_sd2"]["figures"]
    assert gms["train_original_recipe_iterations_per_s"] > 0 and gms["inference_images_per_s"] > 0
    assert parts["sampler_overhead"]["figures"]["ratio_full_over_raw"] > 0
    vol = parts["volumes_3d"]["figures"]
    assert "errors" not in vol and vol["ttga"]["volume_shape"][1:] == [16, 16, 16]
    assert vol["gms"]["train_seconds_per_iteration_s"] > 0


def env_has_no_cuda(result: dict) -> bool:
    return result["environment"]["device_type"] == "cpu"


def test_a_failing_part_is_recorded_and_the_others_run(device_check, tmp_path, one_thread):
    device_check.run_check(["sampler_overhead", "gms_sd2"], quick=True, output=tmp_path, device="cpu",
                           overrides=["gms_sd2.architecture=sd-9"])
    parts = json.loads((tmp_path / "device_check_quick.json").read_text())["parts"]
    assert parts["gms_sd2"]["status"] == "error" and "sd-9" in parts["gms_sd2"]["error"]
    assert parts["sampler_overhead"]["status"] == "ok"
    assert parts["ttga_sd15"]["status"] == "skipped"  # not picked


@pytest.mark.parametrize(
    "args, message",
    [(["--only", "nothing"], "invalid choice"), (["--set", "ttga_sd15.no_such_key=1"], "known part and key"),
     (["--set", "ttga_sd15"], "part.key=value")],
)
def test_bad_arguments_name_the_problem(device_check, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        device_check.main(["--quick", "--output", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "device_check_quick.json").exists()


def test_quick_run_without_output_stays_out_of_the_results(device_check, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    result = device_check.run_check(["sampler_overhead"], quick=True, device="cpu")
    assert Path(result["output"]) == tmp_path / "monai_genaug_device_check" / "device_check_quick.json"
    assert Path(result["output"]).is_file()
    assert not (ROOT / "benchmarks" / "results" / "device_check_quick.json").exists()
