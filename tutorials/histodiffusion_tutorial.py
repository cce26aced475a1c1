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
"""HistoDiffusion from Python: class-guided synthetic augmentation for a low-label classification task.

Ye et al., "Synthetic Augmentation with Large-scale Unconditional Pre-training", MICCAI 2023, arXiv:2308.04020.
Run from the repository root::

    python tutorials/histodiffusion_tutorial.py --quick      # < 2 minutes on CPU (tiny nets, few iterations)
    python tutorials/histodiffusion_tutorial.py              # CPU demo sizes, ~10-20 minutes
    python tutorials/histodiffusion_tutorial.py --dataset_dir ../shared/data/crc_histology_samples/kather2016_texture

Steps:
  1. data: a class-per-folder data set (histology-like phantoms by default), a seeded train / validation / test split
     and a small labelled subset of the training split (the rest is used without labels);
  2. pre-training on the unlabelled images: a MONAI AutoencoderKL, then an unconditional latent diffusion model
     (both through the package's Ignite trainers);
  3. a timestep-conditioned latent classifier (attention-pooling head) trained on noisy latents of the labelled
     images, and its accuracy at several noise levels;
  4. classifier-guided DDIM synthesis, one class per batch: the guided samples' target-class probability rises with
     the guidance scale; images and a labelled datalist are written to disk;
  5. centroid filtering: keep the samples whose nearest real-class centroid is their intended class;
  6. the downstream question: a classifier trained on the labelled images alone vs with unfiltered vs with filtered
     synthetic images.

Outputs (``--output_dir``, default ``tutorials/outputs/histodiffusion``): trained files, ``synthetic/`` (images,
``synthetic_datalist.json``, ``samples_grid.png``), ``filtered/`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism

from monai_genaug.data.pipelines import classification_2d_transforms
from monai_genaug.data.synthetic import match_class_counts
from monai_genaug.engines.classifier import noisy_latent_accuracy
from monai_genaug.methods.histodiffusion import (
    HistoDiffusion,
    evaluate_synthetic_augmentation,
    filter_synthetic_datalist,
    materialize,
    prepare_histodiffusion_data,
)
from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments

#: the bundle's default architecture (bundles/histodiffusion/configs/train_diffusion.json)
DEMO_GENERATOR = {
    "autoencoder": {"channels": [16, 32], "num_res_blocks": [1, 1], "latent_channels": 3, "norm_num_groups": 8},
    "unet": {
        "channels": [32, 48, 64],
        "attention_levels": [False, True, True],
        "num_head_channels": [0, 16, 32],
        "norm_num_groups": 16,
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings, < 2 minutes on CPU")
    p.add_argument("--output_dir", default="tutorials/outputs/histodiffusion", help="where files are written")
    p.add_argument("--dataset_dir", default=None, help="a class-per-folder image data set; default: phantoms")
    p.add_argument("--image_size", type=int, default=32, help="images are resized to this size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return add_runtime_arguments(p).parse_args(argv)


def loader(items: list[dict], batch_size: int, keys: tuple[str, ...], seed: int, shuffle: bool = True) -> DataLoader:
    """A loader over in-memory items, keeping only ``keys`` (the pre-training loaders get images only)."""
    data = [{k: item[k] for k in keys} for item in items]
    g = torch.Generator().manual_seed(seed)
    return DataLoader(Dataset(data), batch_size=batch_size, shuffle=shuffle, generator=g)


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_runtime_arguments(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=args.seed)
    start = time.perf_counter()
    q = args.quick
    it = {  # iterations of every stage
        "autoencoder": 40 if q else 600,
        "diffusion": 100 if q else 3000,
        "classifier": 60 if q else 600,
        "downstream": 40 if q else 300,
    }
    size = (args.image_size, args.image_size)

    # 1. data ---------------------------------------------------------------------------------------------------
    data = prepare_histodiffusion_data(
        args.dataset_dir,
        out / "data",
        labelled_fraction=0.1,
        num_phantoms=120 if q else 400,
        phantom_classes=4,
        phantom_size=size,
        seed=args.seed,
        min_labelled_per_class=2,
    )
    names = data["class_names"]
    transform = classification_2d_transforms(spatial_size=size)
    unlabelled = materialize(data["unlabelled"], transform)
    labelled = materialize(data["labelled"], transform)
    test = materialize(data["test"], transform)
    print(f"classes {names}: {len(unlabelled)} unlabelled, {len(labelled)} labelled, {len(test)} test images")

    # 2. pre-training (unlabelled) --------------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    hd = HistoDiffusion.from_preset(
        "tiny",
        image_channels=3,
        class_names=names,
        image_size=size,
        classifier_preset="tiny",
        generator_overrides=None if q else DEMO_GENERATOR,
        device=args.device,
    )
    common = {"resume": False, "seed": args.seed}
    images = loader(unlabelled, 16, ("image",), args.seed)
    hd.autoencoder_trainer(
        images, max(1, it["autoencoder"] // len(images)), out / "autoencoder", lr=2e-3, adv_weight=0.0, **common
    ).run()
    diffusion = hd.diffusion_trainer(
        images, 10, out / "diffusion", lr=1e-3, ema_decay=0.99, epoch_length=it["diffusion"] // 10, **common
    )
    diffusion.run()
    with diffusion.handles.ema.use_ema_weights():  # sample with the EMA weights
        hd.generator.save(str(out / "generator.pt"))
    hd.generator.load_weights(str(out / "generator.pt"))

    # 3. the noisy-latent classifier (labelled) --------------------------------------------------------------------
    hd.classifier_trainer(
        loader(labelled, 16, ("image", "label"), args.seed), 10, out / "classifier", lr=2e-3,
        epoch_length=it["classifier"] // 10, **common
    ).run()
    test_loader = loader(test, 64, ("image", "label"), args.seed, shuffle=False)
    noisy_acc = noisy_latent_accuracy(hd.classifier, hd.generator, test_loader, timesteps=(0, 250, 500, 750))
    print("noisy-latent classifier test accuracy per timestep:", {t: round(a, 3) for t, a in noisy_acc.items()})

    # 4. classifier-guided synthesis -------------------------------------------------------------------------------
    steps = 10 if q else 50
    target_prob = {}
    for scale in (0.0, 10.0):
        probe = hd.synthesize(4, size, guidance_scale=scale, num_inference_steps=steps, batch_size=4, seed=100)
        p = hd.class_probabilities(probe.images)
        target_prob[scale] = float(p[torch.arange(len(probe.labels)), probe.labels].mean())
    print("mean classifier probability of the target class, guidance scale 0 vs 10:", target_prob)
    per_class = 8 if q else 48
    synthesis = hd.synthesize(
        per_class, size, guidance_scale=10.0, eta=1.0, num_inference_steps=steps, batch_size=16, seed=args.seed,
        output_dir=out / "synthetic",
    )
    print(f"synthesised {len(synthesis.labels)} images in {synthesis.seconds:.1f} s -> {synthesis.datalist_path}")

    # 5. centroid filtering -----------------------------------------------------------------------------------------
    keep = per_class // 2
    summary_filter = filter_synthetic_datalist(
        hd, data["labelled"], synthesis.datalist_path, out / "filtered", features="latent", transform=transform,
        max_per_class=keep, reference_class_names=names,
    )
    print(f"centroid filter kept {summary_filter['kept']} of {summary_filter['total']}: {summary_filter['per_class']}")

    # 6. downstream: real only vs + synthetic vs + filtered synthetic ------------------------------------------------
    from monai_genaug.data.folders import load_datalist

    filtered = load_datalist(summary_filter["datalist"], "training")
    unfiltered = match_class_counts(synthesis.datalist, filtered, seed=args.seed)
    downstream = evaluate_synthetic_augmentation(
        data["labelled"], data["test"], {"real_only": None, "real+synthetic": unfiltered, "real+filtered": filtered},
        len(names), transform=transform, num_iterations=it["downstream"], batch_size=16, lr=2e-3,
        seeds=(0,) if q else (0, 1, 2), device=args.device,
    )
    for name, r in downstream.items():
        print(f"downstream {name:15s}: accuracy {r['accuracy']:.3f} (+{r['num_synthetic']} synthetic)")

    summary = {
        "quick": q,
        "class_names": names,
        "num_unlabelled": len(unlabelled),
        "num_labelled": len(labelled),
        "num_test": len(test),
        "noisy_classifier_accuracy": {str(t): a for t, a in noisy_acc.items()},
        "target_probability": {str(s): p for s, p in target_prob.items()},
        "num_synthetic": len(synthesis.labels),
        "filter": {k: summary_filter[k] for k in ("total", "kept", "per_class")},
        "downstream_accuracy": {name: r["accuracy"] for name, r in downstream.items()},
        "seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {summary['seconds']:.0f} s; summary: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
