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
"""AdaptDiff from Python: adapt a segmenter to an unlabelled modality with synthetic paired data.

Hu et al., "AdaptDiff: Cross-Modality Domain Adaptation via Weak Conditional Semantic Diffusion for Retinal Vessel
Segmentation", arXiv:2410.04648. Run from the repository root::

    python tutorials/adaptdiff_tutorial.py --quick     # < 2 minutes on CPU (32 px, tiny nets, few epochs)
    python tutorials/adaptdiff_tutorial.py             # CPU demo sizes (48 px), ~15-30 minutes

The data are two-modality vessel phantoms (``monai_genaug.data.phantoms.make_two_modality_phantoms``): the labelled
**source** shows bright vessels on a dark background, the unlabelled **target** dark, blurred vessels on a bright,
vignetted background (the intensity relation is inverted, as between fundus photographs and OCT-A). Each anatomy is
used once: source, target and test images never show the same vessel tree.

Steps (each is one call of :class:`monai_genaug.methods.adaptdiff.AdaptDiff`):
  (a) a MONAI UNet trained on the source with Dice + CE; the source augmentation includes random contrast inversion,
      without which a bright-vessel segmenter finds nothing useful on dark-vessel images;
  (b) pseudo-labels of the target images from that segmenter (noisy: that is the "weak" supervision), and how a
      label corruption for robustness studies is applied;
  (c) a mask-conditioned diffusion model (MONAI's SPADEDiffusionModelUNet, T = 300 linear betas) trained on target
      images + pseudo-labels with the package's diffusion trainer;
  (d) target-style images drawn for the real source masks (DDPM-like ancestral steps, every x_t clamped to [-1, 1]);
  (e) the source segmenter fine-tuned on those synthetic pairs (soft Dice + CE, the release's augmentation);
  then source-only vs adapted Dice on the target test images.

Outputs (``--output_dir``, default ``tutorials/outputs/adaptdiff``): trained files, ``synthetic_grid.png`` (rows:
synthetic target images, their source masks, real target images) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.utils import set_determinism

from monai_genaug.engines import TrainingOptions
from monai_genaug.data.phantoms import make_two_modality_phantoms
from monai_genaug.engines.segmentation import save_segmenter
from monai_genaug.methods.adaptdiff import (
    AdaptDiff,
    RandLabelCorruption,
    finetune_augmentation,
    make_loader,
    source_augmentation,
    write_synthetic_pairs,
)
from monai_genaug.utils.images import save_image_grid
from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings, < 2 minutes on CPU")
    p.add_argument("--output_dir", default="tutorials/outputs/adaptdiff", help="where files are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return add_runtime_arguments(p).parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_runtime_arguments(args)
    quick = args.quick
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(args.seed)
    t0 = time.time()
    size = 32 if quick else 48
    n = 56 if quick else 120
    s = {
        "seg_epochs": 20 if quick else 40,
        "diff_epochs": 40 if quick else 80,
        "steps": 15 if quick else 300,  # 300 with eta = 1: the paper's ancestral DDPM
        "ft_epochs": 10 if quick else 30,
    }
    summary: dict = {"quick": quick, "spatial_size": [size, size], **s}

    # ---- data: one anatomy per image, rendered in the source or the target modality
    data = make_two_modality_phantoms(n, (size, size), seed=args.seed)
    k1, k2 = int(0.4 * n), int(0.8 * n)

    def items(idx, modality, labelled=True):
        return [
            {
                "image": torch.from_numpy(data[i][modality]).float(),
                "id": f"phantom_{i:04d}",
                **({"label": torch.from_numpy(data[i]["label"]).long()} if labelled else {}),
            }
            for i in idx
        ]

    source = items(range(k1), "source")  # labelled source modality
    target = items(range(k1, k2), "target", labelled=False)  # unlabelled target modality
    test = items(range(k2, n), "target")  # target test images (labels only for scoring)
    summary["num_images"] = {"source": len(source), "target": len(target), "test": len(test)}

    # ---- the pipeline: a MONAI UNet segmenter and a SPADE diffusion generator (pixel space, the paper's schedule)
    unet = (
        {"channels": [8, 16], "norm_num_groups": 4, "spade_intermediate_channels": 8}
        if quick
        else {"channels": [16, 32, 64], "norm_num_groups": 8}
    )
    ad = AdaptDiff.from_preset(
        "tiny",
        spatial_dims=2,
        image_channels=1,
        num_classes=1,
        segmenter_channels=(8, 16, 32) if quick else (16, 32, 64, 128),
        segmenter_kwargs={"num_res_units": 1},
        generator_kwargs={"unet": unet},
        device=args.device,
    )
    test_loader = make_loader(test, None, 16, shuffle=False)

    # (a) source segmenter with contrast-agnostic intensity augmentation
    ad.source_trainer(
        make_loader(source, source_augmentation(invert_prob=0.5), 8, seed=args.seed),
        s["seg_epochs"],
        out / "source",
        lr=1e-2 if quick else 3e-3,
        options=TrainingOptions(seed=args.seed),
    ).run()
    scores = ad.evaluate(test_loader)
    print(f"(a) source-only Dice on the target test images: {scores['source_only']['mean_dice']:.3f}")

    # (b) pseudo-labels of the unlabelled target (cached); the hidden truth only measures how noisy they are
    pseudo = ad.pseudo_label(target, threshold=0.5)
    truth = torch.stack([torch.from_numpy(data[i]["label"]).long() for i in range(k1, k2)])
    pl = torch.stack([p["label"] for p in pseudo])
    summary["pseudo_label_dice"] = float(2 * ((pl > 0) & (truth > 0)).sum() / ((pl > 0).sum() + (truth > 0).sum()))
    corrupt = RandLabelCorruption(erosion=1, dropout=0.2, block_size=4).set_random_state(args.seed)
    summary["corrupted_foreground_fraction"] = float((corrupt(pl[0]) > 0).float().mean() / (pl[0] > 0).float().mean())
    print(f"(b) pseudo-label Dice vs the hidden target labels: {summary['pseudo_label_dice']:.3f}")

    # (c) mask-conditioned diffusion on target images + pseudo-labels
    ad.diffusion_trainer(
        ad.diffusion_loader(pseudo, batch_size=8, seed=args.seed),
        s["diff_epochs"],
        out / "diffusion",
        lr=2e-3 if quick else 1e-3,
        ema_decay=None if quick else 0.995,
        options=TrainingOptions(seed=args.seed),
    ).run()

    # (d) target-style images for the real source masks
    synth = ad.synthesize(source, num_inference_steps=s["steps"], eta=1.0, batch_size=64, seed=args.seed)
    write_synthetic_pairs(synth, out / "synthetic")
    m = synth.labels.float()
    summary["synthetic_contrast_inside_minus_outside"] = float(
        (synth.images * m).sum() / m.sum() - (synth.images * (1 - m)).sum() / (1 - m).sum()
    )
    real_t = torch.stack([t["image"] for t in test])
    mt = torch.stack([t["label"] for t in test]).float()
    summary["real_target_contrast_inside_minus_outside"] = float(
        (real_t * mt).sum() / mt.sum() - (real_t * (1 - mt)).sum() / (1 - mt).sum()
    )
    save_image_grid(torch.cat([synth.images[:8], m[:8], real_t[:8]]), out / "synthetic_grid.png", nrow=8)
    print(
        f"(d) contrast inside - outside the mask: synthetic {summary['synthetic_contrast_inside_minus_outside']:+.3f},"
        f" real target {summary['real_target_contrast_inside_minus_outside']:+.3f}"
    )

    # (e) fine-tune the source segmenter on the synthetic pairs
    ad.finetune_trainer(
        make_loader(synth.items(), finetune_augmentation(), 8, seed=args.seed),
        s["ft_epochs"],
        out / "finetune",
        lr_step_size=None if quick else 3,
        options=TrainingOptions(seed=args.seed),
    ).run()
    scores = ad.evaluate(test_loader)
    summary["source_only_dice"] = scores["source_only"]["mean_dice"]
    summary["adaptdiff_dice"] = scores["adaptdiff"]["mean_dice"]
    save_segmenter(ad.adapted, out / "adapted_segmenter.pt", extra={"tutorial": "adaptdiff"})
    ad.generator.save(str(out / "generator.pt"))
    print(
        f"(e) target Dice: source-only {summary['source_only_dice']:.3f} -> AdaptDiff {summary['adaptdiff_dice']:.3f}"
    )

    summary["seconds"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
