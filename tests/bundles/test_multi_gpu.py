# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Real ``torchrun --nproc_per_node=2`` (Gloo, CPU) runs of the bundles' ``multi_gpu_train*.json``: one tiny epoch;
on a GPU machine also one NCCL process on CUDA (marked ``gpu``).

Every rank writes the weights it ended with to a rank-specific file (a test-only ``finalize`` overlay); the model
path is rank-specific too (``$... % torch.distributed.get_rank()``), so a file written by rank 1 would show up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
RANK_PATH = "$'{}' % torch.distributed.get_rank()"

CASES = {
    # the MONAI model-zoo pattern: DDP network, DistributedSampler, rank-0 handlers (config-built SupervisedTrainer)
    "ttga_segmenter": {
        "configs": ["bundles/ttga/configs/train_segmenter.json", "bundles/ttga/configs/multi_gpu_train_segmenter.json"],
        "weights": "@network.module",
        "args": {
            "bundle_root": "bundles/ttga", "epochs": 1, "num_phantoms": 24, "spatial_size": "[32,32]",
            "segmenter_channels": "[4,8]", "segmenter_strides": "[2]", "batch_size": 2, "val_interval": 1,
        },
        "paths": {"phantom_dir": "phantoms", "output_dir": "out"},
        "checkpoints": [],
    },
    # package trainer factories made data-parallel by distributed_trainer (two stages, best-model savers)
    "gms": {
        "configs": ["bundles/gms/configs/train.json", "bundles/gms/configs/multi_gpu_train.json"],
        "weights": "@network_def",
        "args": {
            "bundle_root": "bundles/gms", "preset": "tiny", "ae_epochs": 1, "epochs": 1, "warmup_epochs": 0,
            "num_phantoms": 24, "spatial_size": "[32,32]", "batch_size": 4,
        },
        "paths": {"output_dir": "out"},
        "checkpoints": ["out/autoencoder/checkpoint_last.pt", "out/gms/checkpoint_last.pt"],
    },
}


@pytest.fixture(scope="module")
def torchrun() -> str:
    exe = shutil.which("torchrun")
    if exe is None or not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torchrun / torch.distributed with Gloo is not available")
    return exe


#: (processes, device): two Gloo processes on the CPU (CUDA hidden, also on a GPU machine); one NCCL process on CUDA
LAUNCHES = [pytest.param(2, "cpu", id="gloo-2cpu"), pytest.param(1, "cuda", id="nccl-1gpu", marks=pytest.mark.gpu)]


@pytest.mark.slow
@pytest.mark.parametrize("nproc, device", LAUNCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_training(case: str, nproc: int, device: str, torchrun: str, tmp_path: Path) -> None:
    spec = CASES[case]
    overlay = tmp_path / "dump.json"
    overlay.write_text(json.dumps({
        "dump_dir": str(tmp_path),
        "finalize": [
            "$torch.save({k: v.detach().cpu() for k, v in " + spec["weights"] + ".state_dict().items()}, "
            "@dump_dir + '/weights_rank%d.pt' % torch.distributed.get_rank())",
            "$open(@dump_dir + '/backend_rank%d.txt' % torch.distributed.get_rank(), 'w').write("
            "str(torch.distributed.get_backend()))",
            "$torch.distributed.destroy_process_group()",
        ],
    }))
    configs = [str(REPO / c) for c in spec["configs"]] + [str(overlay)]
    cmd = [torchrun, "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run",
           "--config_file", repr(configs)]
    for key, value in spec["args"].items():
        cmd += [f"--{key}", str(value)]
    for key, value in spec["paths"].items():
        cmd += [f"--{key}", str(tmp_path / value)]
    cmd += ["--model_path", RANK_PATH.format(str(tmp_path / "model_rank%d.pt"))]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # Gloo on the CPU even where one GPU cannot hold two ranks
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    assert (tmp_path / "backend_rank0.txt").read_text() == ("nccl" if device == "cuda" else "gloo")
    # only rank 0 wrote the model (and the training checkpoints)
    assert (tmp_path / "model_rank0.pt").is_file()
    assert not (tmp_path / "model_rank1.pt").exists()
    for ckpt in spec["checkpoints"]:
        assert (tmp_path / ckpt).is_file(), ckpt
    # both ranks ended with the same weights, and they are the ones rank 0 trained (not the initial ones)
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    assert len(w0) > 0
    if nproc == 2:
        w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
        assert w0.keys() == w1.keys()
        for k in w0:
            assert torch.equal(w0[k], w1[k]), f"rank 0 and rank 1 differ in {k}"
    if case == "ttga_segmenter":
        saved = torch.load(tmp_path / "model_rank0.pt", weights_only=True)
        assert all(torch.equal(saved[k], w0[k]) for k in saved)


def test_distributed_trainer_is_a_no_op_without_process_group() -> None:
    from monai.engines import SupervisedTrainer

    from monai_genaug.engines.distributed import (
        distributed_trainer,
        is_main_process,
        rank0_writers,
        unwrap,
    )

    net = torch.nn.Linear(2, 2)
    loader = torch.utils.data.DataLoader([{"image": torch.zeros(2), "label": torch.zeros(2)}] * 2, batch_size=1)
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss())
    assert distributed_trainer(trainer) is trainer and trainer.network is net and trainer.data_loader is loader
    assert is_main_process() and rank0_writers(trainer) == [] and unwrap(net) is net


def test_init_distributed_outside_torchrun_names_the_launcher(monkeypatch) -> None:
    from monai_genaug.engines.distributed import init_distributed

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()


