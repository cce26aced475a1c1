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
"""Ctrl-GenAug from Python (arXiv:2409.17091): phantom clips -> frame pre-training -> clip fine-tuning -> guided
generation from real clips' conditions -> semantic / temporal / duplicate filtering -> downstream classification.

    python tutorials/ctrl_genaug_tutorial.py --quick --output_dir /tmp/ctrl_genaug   # < 2 min on CPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from monai_genaug.filters.temporal import temporal_consistency
from monai_genaug.methods.ctrl_genaug import (
    CtrlGenAug,
    evaluate_sequence_augmentation,
    filter_generated,
    prepare_sequence_data,
    train_sequence_classifier,
)
from monai_genaug.utils.options import add_runtime_arguments, apply_runtime_arguments


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny settings (< 2 min on CPU)")
    p.add_argument("--output_dir", default="ctrl_genaug_tutorial")
    p.add_argument("--device", default="cpu")
    args = add_runtime_arguments(p).parse_args(argv)
    apply_runtime_arguments(args)
    torch.set_num_threads(1)
    out = Path(args.output_dir)
    n, steps_f, steps_c, steps_s = (24, 200, 80, 6) if args.quick else (96, 1500, 600, 20)

    # 1. data: 2D + t phantoms (class = object shape), 8 frames of 16 x 16, split train / test
    data = prepare_sequence_data(n, num_frames=8, spatial_size=(16, 16), num_classes=2, seed=0)
    train, test = data["train"], data["test"]

    # 2. a sequence generator: class label + image prior (pooled first frame; MedSAM embeddings plug in the same way)
    #    + motion (optical flow of the clip, ControlNet-style encoder)
    torch.manual_seed(0)
    pipe = CtrlGenAug.from_preset("tiny", num_frames=8, num_classes=2, prior_channels=2, device=args.device)
    frame_loss = pipe.fit(train["clips"], train["labels"], stage="frames", num_steps=steps_f, batch_size=16)
    clip_loss = pipe.fit(train["clips"], train["labels"], stage="clips", num_steps=steps_c, batch_size=8)
    pipe.generator.save(out / "generator.pt")

    # 3. generate two clips per real training clip (seeds 66, 67), CFG with null prior and motion
    generated = pipe.generate(train["clips"], train["labels"], num_per_clip=2, guidance_scale=2.0,
                              num_inference_steps=steps_s)
    CtrlGenAug.write(generated, out / "synthetic")

    # 4. filter: real-data classifier loss per source group >> temporal consistency >> near-duplicates
    clf = train_sequence_classifier(train["clips"], train["labels"], 2, num_steps=100)
    filtered = filter_generated(generated, clf)
    keep = filtered["keep"]

    # 5. downstream: real only vs real + synthetic vs real + filtered
    labels = torch.tensor(generated["labels"])
    results = evaluate_sequence_augmentation(
        train["clips"], train["labels"], test["clips"], test["labels"],
        {"real_only": None, "real+synthetic": (generated["clips"], labels),
         "real+filtered": (generated["clips"][keep], labels[keep])},
        2, num_steps=100 if args.quick else 300, seeds=(0,),
    )
    summary = {
        "quick": args.quick,
        "loss": {"frames": [frame_loss[0], sum(frame_loss[-20:]) / 20], "clips": [clip_loss[0], sum(clip_loss[-20:]) / 20]},
        "num_synthetic": int(generated["clips"].shape[0]),
        "kept": int(keep.sum()),
        "temporal_consistency": {"real": float(temporal_consistency(train["clips"]).mean()),
                                 "generated": float(temporal_consistency(generated["clips"]).mean())},
        "downstream_accuracy": {k: v["accuracy"] for k, v in results.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
