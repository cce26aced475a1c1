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
"""End-to-end test of ``python -m monai_genaug.sd_import`` on a tiny random diffusers pipeline (no download)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from monai_genaug.networks.sd.loading import load_converted_network  # noqa: E402
from monai_genaug.networks.sd.text import load_prompt_embeddings, save_prompt_embeddings  # noqa: E402
from monai_genaug.sd_import import main  # noqa: E402
from monai_genaug.utils.checkpoint import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_genaug.sd_import", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny SD-like diffusers folder: vae/, unet/ (16-d context), scheduler/, model_index.json."""
    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=8,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing that matters here, but make the output non-trivial
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vae.save_pretrained(str(root / "vae"))
    unet.save_pretrained(str(root / "unet"))
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        str(root / "scheduler")
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root, vae, unet


def test_cli_converts_a_pipeline(pipeline, tmp_path):
    root, vae, unet = pipeline
    emb_file = save_prompt_embeddings(
        tmp_path / "prompts.safetensors", torch.randn(2, 5, 16), torch.zeros(5, 16), ["a", "b"]
    )
    out = tmp_path / "converted"
    res = _run("--source", str(root), "--out", str(out), "--embeddings", str(emb_file))
    assert res.returncode == 0, res.stderr
    written = json.loads(res.stdout)
    assert set(written) == {"generator", "autoencoder", "unet", "embeddings", "report"}
    report = json.loads((out / "conversion.json").read_text())
    assert report["source_format"] == "diffusers" and report["scheduler"]["schedule"] == "scaled_linear_beta"
    gen_ckpt = load_checkpoint(out / "generator.pt")
    assert gen_ckpt["format"] == "monai_genaug.LatentGenerator"
    assert gen_ckpt["config"]["conditioning"]["cross_attention_dim"] == 16
    assert gen_ckpt["config"]["scale_factor"] == pytest.approx(0.18215)
    emb = load_prompt_embeddings(out / "embeddings.pt", cross_attention_dim=16)
    assert emb["prompts"] == ["a", "b"] and emb["null_embeds"].abs().max() == 0
    g = torch.Generator().manual_seed(1)
    x, noisy, ctx = (
        torch.randn(1, 3, 16, 16, generator=g),
        torch.randn(1, 4, 8, 8, generator=g),
        torch.randn(1, 5, 16, generator=g),
    )
    ae, _ = load_converted_network(out / "autoencoder.pt")
    monai_unet, _ = load_converted_network(out / "unet.pt")
    with torch.no_grad():
        torch.testing.assert_close(ae.encode(x)[0], vae.encode(x).latent_dist.mean, atol=1e-4, rtol=0)
        expected = unet(noisy, torch.tensor([500]), encoder_hidden_states=ctx).sample
        torch.testing.assert_close(monai_unet(noisy, torch.tensor([500]), context=ctx), expected, atol=1e-4, rtol=0)


def test_cli_vae_only_and_bad_input(pipeline, tmp_path, capsys):
    """The same entry point in-process (a subprocess costs a MONAI import): component choice and error exits."""
    root, _, _ = pipeline
    assert main(["--source", str(root), "--out", str(tmp_path / "vae"), "--components", "vae"]) == 0
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["autoencoder.pt", "conversion.json"]
    assert "no generator.pt" in (tmp_path / "vae" / "conversion.json").read_text()
    assert main(["--source", str(root), "--out", str(tmp_path / "gen"), "--outputs", "generator"]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["conversion.json", "generator.pt"]
    (tmp_path / "empty").mkdir()
    assert main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a Stable Diffusion checkpoint folder" in err and "found []" in err
    assert main(["--source", str(root), "--out", str(tmp_path / "y"), "--prompt", "a polyp"]) == 2
    assert "no text_encoder/ folder" in capsys.readouterr().err
    assert not (tmp_path / "y" / "generator.pt").exists()
    with pytest.raises(SystemExit):  # argparse: --source is required
        main(["--out", str(tmp_path / "z")])
