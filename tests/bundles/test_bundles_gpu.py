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
"""Every bundle's ``device`` option on CUDA, with the ``amp`` path where the config has one (tiny runs; gpu only).

The CPU runs of the same configs are in the bundles' own test files; these run the documented command with
``--device "$torch.device('cuda:0')"`` (and ``--amp True``) and check that the run wrote its outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CUDA = ["--device", "$torch.device('cuda:0')"]
AMP = ["--amp", "True"]

#: case -> (config file, arguments with {tmp} for the test's folder, files the run must write under {tmp})
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "ttga_inference_amp": (
        "bundles/ttga/configs/inference.json",
        ["--output_dir", "{tmp}/out", "--phantom_dir", "{tmp}/phantoms", "--max_items", "1", "--num_views", "2",
         "--min_iterations", "1", "--max_iterations", "2", "--inversion_stride", "100", *AMP],
        ["out/metrics.csv"],
    ),
    "ttga_train_segmenter_amp": (
        "bundles/ttga/configs/train_segmenter.json",
        ["--output_dir", "{tmp}/out", "--phantom_dir", "{tmp}/phantoms", "--model_path", "{tmp}/model.pt",
         "--epochs", "1", "--num_phantoms", "8", "--spatial_size", "[32,32]", "--segmenter_channels", "[4,8]",
         "--segmenter_strides", "[2]", "--batch_size", "2", *AMP],
        ["model.pt"],
    ),
    "gms_train_amp": (
        "bundles/gms/configs/train.json",
        ["--output_dir", "{tmp}/train", "--model_path", "{tmp}/model.pt", "--preset", "tiny", "--ae_epochs", "1",
         "--epochs", "1", "--batch_size", "4", "--spatial_size", "[16,16]", "--num_phantoms", "12", *AMP],
        ["model.pt"],
    ),
    "gms_inference_amp": (
        "bundles/gms/configs/inference.json", ["--output_dir", "{tmp}", "--max_items", "2", *AMP], ["metrics.csv"],
    ),
    "histodiffusion_train_autoencoder_amp": (
        "bundles/histodiffusion/configs/train_autoencoder.json",
        ["--output_dir", "{tmp}", "--epochs", "1", "--num_phantoms", "40", "--batch_size", "8", *AMP],
        ["autoencoder/autoencoder_final.pt"],
    ),
    "histodiffusion_inference": (
        "bundles/histodiffusion/configs/inference.json",
        ["--output_dir", "{tmp}", "--num_per_class", "1", "--num_inference_steps", "2"],
        ["synthetic/synthetic_datalist.json"],
    ),
    "adaptdiff_train_source_segmenter_amp": (
        "bundles/adaptdiff/configs/train_source_segmenter.json",
        ["--ckpt_dir", "{tmp}/models", "--save_dir", "{tmp}/models", "--output_dir", "{tmp}/out", "--phantom_dir",
         "{tmp}/phantoms", "--spatial_size", "[16,16]", "--num_phantoms", "16", "--segmenter_channels", "[4,8]",
         "--segmenter_res_units", "0", "--epochs", "1", *AMP],
        ["models/source_segmenter.pt"],
    ),
    "ctrl_genaug_inference": (
        "bundles/ctrl_genaug/configs/inference.json",
        ["--output_dir", "{tmp}", "--num_clips", "2", "--num_inference_steps", "2"],
        ["synthetic/synthetic_datalist.json"],
    ),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_bundle_runs_on_cuda(case: str, bundle_tools, tmp_path: Path) -> None:
    config, args, outputs = CASES[case]
    bundle_tools.run(config, *[a.format(tmp=tmp_path) for a in args], *CUDA, timeout=300)
    for name in outputs:
        assert (tmp_path / name).is_file(), f"{case}: {name} was not written"
