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
"""TTGA from Python: generated test-time views of an image, a segmenter on all of them, uncertainty maps.

Ma et al., "Test-Time Generative Augmentation for Medical Image Segmentation", arXiv:2406.17608. Run from the
repository root::

    python tutorials/ttga_tutorial.py --quick      # < 2 minutes on CPU: the bundle's default weights, 2 phantoms
    python tutorials/ttga_tutorial.py              # + LoRA adaptation of the generator to a shifted domain,
                                                   #   more images and iterations (~10 minutes on CPU)

Steps:
  1. a generator (``LatentGenerator``: MONAI AutoencoderKL + DiffusionModelUNet with a learned prompt) and a segmenter
     (MONAI UNet): the bundle's default weights (``bundles/ttga/models``), or, with ``--train`` or when they are
     missing, a small generator trained here from scratch (``train_ttga_generator``);
  2. stages 1-2 of TTGA on one image: DDIM inversion to tau and the identity-embedding optimisation (loss printed);
  3. stage 3: N views in one batch with the hybrid region mask (attention + Bernoulli); the identity fraction per view;
     ``DetailPreservingTTGAAugmenter`` adds the autoencoder's reconstruction error of the image back to every view
     (the small autoencoder of the default generator blurs; the paper's Stable Diffusion VAE barely does);
  4. stage 4: ``GenerativeTTAInferer`` runs the segmenter on the image and its views, fuses the probabilities and
     returns entropy / mutual information / variance maps; Dice of the segmenter alone, of TTGA with plain views and
     of TTGA with the detail transfer; error-estimation AUC;
  5. (full mode) the paper's step 1: LoRA adaptation of the generator to a new domain (grey ultrasound-like
     phantoms) with ``prepare_lora_adaptation`` + ``train_ttga_generator``: the diffusion loss on held-out images of
     the new domain before and after, and views from both generators (``lora_views.png``);
  6. the generative view as a MONAI transform (``RandGenerativeTTAd``) inside MONAI's ``TestTimeAugmentation``.

Outputs (``--output_dir``, default ``tutorials/outputs/ttga``): ``views.png``, ``case_<i>_panel.png`` (image, views,
truth, predictions, mean probability, entropy, error map), ``identity_masks.png``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: use its monai_genaug

import torch
from monai.data import DataLoader, Dataset, MetaTensor, TestTimeAugmentation
from monai.networks.nets import UNet
from monai.transforms import Compose
from monai.utils import set_determinism

from monai_genaug.bundle.data import add_constant_keys
from monai_genaug.bundle.evaluation import case_metrics
from monai_genaug.bundle.weights import load_generator, load_network_weights
from monai_genaug.bundle.writers import TTGAPictureSaver
from monai_genaug.data.phantoms import make_endoscopy_phantoms, make_grey_phantoms
from monai_genaug.inferers.generative_tta import GenerativeTTAInferer
from monai_genaug.methods.ttga_adaptation import (
    DetailPreservingTTGAAugmenter,
    prepare_lora_adaptation,
    train_ttga_generator,
    ttga_generator_config,
)
from monai_genaug.transforms.generative_tta import RandGenerativeTTAd
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bundles" / "ttga" / "models"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="default weights, 2 phantoms, few iterations (< 2 min CPU)")
    p.add_argument("--train", action="store_true", help="train a small generator here instead of loading the bundle's")
    p.add_argument("--output_dir", default="tutorials/outputs/ttga", help="where files are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return add_runtime_arguments(p).parse_args(argv)


def small_generator(output_dir: Path, device: str, quick: bool, seed: int):
    """Train a generator from scratch on phantoms (autoencoder, then latent diffusion with condition dropout)."""
    images = [{"image": torch.as_tensor(p["image"])} for p in make_endoscopy_phantoms(32 if quick else 96, seed=seed)]
    loader = DataLoader(Dataset(add_constant_keys(images, {"prompt": 0})), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    config = ttga_generator_config(2, 3, autoencoder_channels=[16, 32, 32], latent_channels=8,
                                   autoencoder_norm_num_groups=8, unet_channels=[32, 64, 64], num_head_channels=16,
                                   unet_norm_num_groups=16, cross_attention_dim=32)
    return train_ttga_generator(loader, output_dir / "generator_training", config=config,
                                autoencoder_epochs=2 if quick else 40, diffusion_epochs=2 if quick else 60,
                                device=device, seed=seed)


@torch.no_grad()
def denoising_loss(generator, images: torch.Tensor, timesteps=(100, 300, 500), seed: int = 0) -> float:
    """Mean noise-prediction MSE of the generator (prompt 0) on ``images`` at fixed timesteps and noise."""
    z0 = generator.encode(images.to(generator.scale_factor.device))
    rng = torch.Generator().manual_seed(seed)
    losses = []
    for t in timesteps:
        noise = torch.randn(z0.shape, generator=rng).to(z0)
        tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
        eps = generator(generator.scheduler.add_noise(z0, noise, tt), tt, {"prompt": torch.zeros_like(tt)})
        losses.append(float(((eps - noise) ** 2).mean()))
    return sum(losses) / len(losses)


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_runtime_arguments(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(args.seed)
    t_start = time.time()
    summary: dict = {"quick": args.quick}

    # 1. generator and segmenter -------------------------------------------------------------------------------
    if args.train or not (MODELS / "generator.pt").is_file():
        print("training a small generator from scratch (no default weights, or --train)")
        generator = small_generator(out, args.device, args.quick, args.seed).requires_grad_(False)
    else:
        generator = load_generator(MODELS / "generator.pt", device=args.device)
    segmenter = load_network_weights(UNet(2, 3, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=1),
                                     MODELS / "model.pt", device=args.device,
                                     made_by="python -m monai.bundle run --config_file "
                                             "bundles/ttga/configs/train_segmenter.json")
    print(f"generator: {sum(p.numel() for p in generator.parameters()) / 1e6:.2f} M parameters, autoencoder factor "
          f"{generator.autoencoder_factor}, latent {generator.latent_shape((64, 64))}")

    # test images: phantoms the default weights never saw (another seed)
    phantoms = make_endoscopy_phantoms(2 if args.quick else 6, spatial_size=(64, 64), seed=1000 + args.seed)
    images = [torch.as_tensor(p["image"]) for p in phantoms]
    labels = [torch.as_tensor(p["label"]).float() for p in phantoms]

    # 2.-3. the augmenter: inversion, identity optimisation, masked dual-path generation ---------------------------
    num_views = 8
    # DetailPreservingTTGAAugmenter = TTGAAugmenter + the autoencoder's reconstruction error of the input added back to
    # every view (detail_weight=0 gives the paper's plain views; a small autoencoder needs the transfer, see step 4)
    augmenter = DetailPreservingTTGAAugmenter(
        generator, prompt=0, num_views=num_views, tau=300, inversion_stride=50 if args.quick else 25,
        mask_scheme="hybrid", drop_p=0.5, lambda_i=torch.linspace(0.5, 1.5, num_views),  # the demo's lambda_i sweep
        min_iterations=10 if args.quick else 50, max_iterations=30 if args.quick else 300,
        intensity_range=(0.0, 1.0), generator_range=(0.0, 1.0), seed=args.seed, detail_weight=1.0,
    )
    state = augmenter.prepare(images[0])
    print(f"identity embedding: {state.iterations} Adam steps, jump loss {state.initial_loss:.4f} -> "
          f"{state.final_loss:.4f}")
    result = augmenter.generate(images[0])
    print("identity fraction per view:", [round(float(f), 2) for f in result.identity_fraction])
    save_image_grid(torch.cat([images[0][None], result.views]), out / "views.png", nrow=num_views + 1,
                    normalise=False)
    save_image_grid(result.identity_mask, out / "identity_masks.png", nrow=num_views, normalise=False)
    summary["identity"] = {"iterations": state.iterations, "initial_loss": state.initial_loss,
                           "final_loss": state.final_loss,
                           "identity_fraction": [float(f) for f in result.identity_fraction]}

    # 4. segmentation on the views: fused probability + uncertainty --------------------------------------------
    inferer = GenerativeTTAInferer(augmenter, num_views=num_views, activation="softmax", output="dict",
                                   normalize_uncertainty=True, seed=args.seed)
    pictures = TTGAPictureSaver(out, tile_size=96)
    cases = []
    for i, (image, label) in enumerate(zip(images, labels)):
        with torch.no_grad():
            augmenter.detail_weight = 0.0  # the paper's plain views (the cached inversion is reused)
            plain = inferer(image[None].to(args.device), segmenter)
            augmenter.detail_weight = 1.0
            fused = inferer(image[None].to(args.device), segmenter)
            base = torch.softmax(segmenter(image[None].to(args.device)), 1)
        pred, pred_base = fused["pred"].argmax(1).cpu(), base.argmax(1).cpu()
        ttga = case_metrics(pred, label, 1, fused["entropy"][0].cpu())
        ttga_plain = case_metrics(plain["pred"].argmax(1).cpu(), label, 1)
        alone = case_metrics(pred_base, label, 1)
        cases.append({"dice_ttga": ttga["dice"], "dice_ttga_plain_views": ttga_plain["dice"],
                      "dice_alone": alone["dice"], "error_auc_ttga": ttga["error_auc"]})
        print(f"image {i}: Dice segmenter alone {alone['dice']:.3f}, with TTGA {ttga['dice']:.3f} (plain views "
              f"{ttga_plain['dice']:.3f}); entropy detects the wrong pixels with AUC {ttga['error_auc']:.3f}")
        item = {"image": image, "label": label, "prob_net": fused["pred"][0].cpu(), "prob_base_net": base[0].cpu(),
                "entropy_net": fused["entropy"][0].cpu()}
        pictures.draw(item, fused["views"][0].cpu(), f"case_{i}")
    summary["cases"] = cases

    # 5. LoRA adaptation of the generator to a new domain (full mode) -----------------------------------------
    if not args.quick:
        def grey(n: int, seed: int) -> list[torch.Tensor]:  # grey ultrasound-like frames as 3-channel images
            return [torch.as_tensor(p["image"]).expand(3, -1, -1).clone()
                    for p in make_grey_phantoms(n, spatial_size=(64, 64), seed=seed)]

        loader = DataLoader(Dataset(add_constant_keys([{"image": x} for x in grey(48, 2000)], {"prompt": 0})),
                            batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
        adapted = load_generator(MODELS / "generator.pt", device=args.device) if not args.train else generator
        prepare_lora_adaptation(adapted, rank=4, seed=args.seed)  # adapters on q/k/v/out of every attention layer
        adapted = train_ttga_generator(loader, out / "lora", generator=adapted, diffusion_epochs=20,
                                       diffusion_lr=1e-3, device=args.device, seed=args.seed,
                                       resume=False).requires_grad_(False)
        held_out = torch.stack(grey(8, 3000))
        summary["lora"] = {"denoising_loss_before": denoising_loss(generator, held_out),
                           "denoising_loss_after": denoising_loss(adapted, held_out)}
        print(f"diffusion loss on held-out images of the new domain: base generator "
              f"{summary['lora']['denoising_loss_before']:.4f}, LoRA-adapted {summary['lora']['denoising_loss_after']:.4f}")
        kw = {"num_views": 4, "intensity_range": (0, 1), "generator_range": (0, 1), "max_iterations": 100}
        before = DetailPreservingTTGAAugmenter(generator, **kw)(held_out[0])
        after = DetailPreservingTTGAAugmenter(adapted, **kw)(held_out[0])
        save_image_grid(torch.cat([held_out[0][None], before, after]), out / "lora_views.png", nrow=5, normalise=False)

    # 6. the same views as a MONAI transform inside TestTimeAugmentation ---------------------------------------
    tta_transform = Compose([RandGenerativeTTAd(keys="image", augmenter=augmenter)])
    tta = TestTimeAugmentation(tta_transform, batch_size=2, inferrer_fn=lambda x: torch.softmax(segmenter(x), 1),
                               orig_key="image", nearest_interp=False, progress=False)
    _, mean, _, vvc = tta({"image": MetaTensor(images[0])}, num_examples=2)
    summary["test_time_augmentation"] = {"mean_foreground": float(mean[1].mean()), "volume_variation": float(vvc)}
    print(f"MONAI TestTimeAugmentation with RandGenerativeTTAd: volume variation coefficient {float(vvc):.4f}")

    summary["seconds"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {sorted(p.name for p in out.glob('*.png'))} and summary.json to {out} in {summary['seconds']} s")
    return summary


if __name__ == "__main__":
    main()
