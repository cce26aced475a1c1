"""TTGA views from the bundle's shipped weights (models/generator.pt + models/model.pt) on a phantom with a polyp,
with the bundle's generation settings: the views differ from each other and from the input, the identity region of
the mask stays closer to the input than the re-sampled region, and the lesion is kept (the shipped segmenter finds it
in every view about as well as in the input)."""

from __future__ import annotations

import torch
from monai.metrics import compute_dice
from monai.networks.nets import UNet

from monai_genaug.generative.weights import load_generator, load_network_weights
from monai_genaug.data.phantoms import make_endoscopy_phantoms
from monai_genaug.methods.ttga import DetailPreservingTTGAAugmenter


def test_shipped_generator_views_differ_yet_keep_the_lesion(bundle_tools):
    models = bundle_tools.root / "bundles" / "ttga" / "models"
    gen = load_generator(models / "generator.pt")
    net = load_network_weights(UNet(2, 3, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1),
                               models / "model.pt")
    item = make_endoscopy_phantoms(1, spatial_size=(64, 64), seed=11)[0]  # not one of the training phantoms (seed 0)
    image, lesion = torch.as_tensor(item["image"]).float(), torch.as_tensor(item["label"]).float()
    assert 0.01 < float(lesion.mean()) < 0.3
    # inference.json's generation settings, fewer views and identity iterations
    aug = DetailPreservingTTGAAugmenter(gen, num_views=4, tau=300, guidance_scale=2.0, lambda_c=1.0, lambda_i=1.2,
                                        mask_scheme="hybrid", drop_p=0.5, eta=1.0, min_iterations=5,
                                        max_iterations=20, inversion_stride=50, seed=0)
    out = aug.generate(image)
    views = out.views
    assert views.shape == (4, 3, 64, 64)
    assert all(float((v - image).abs().mean()) > 2e-3 for v in views)
    assert all(float((views[i] - views[j]).abs().mean()) > 2e-3 for i in range(4) for j in range(i))
    identity = torch.nn.functional.interpolate(out.identity_mask, size=(64, 64), mode="nearest")[:, 0] > 0.5
    assert 0.1 < float(identity.float().mean()) < 0.9
    diff = (views - image).abs().mean(1)
    assert float(diff[identity].mean()) < float(diff[~identity].mean())
    with torch.no_grad():
        pred = net(torch.cat([image[None], views])).argmax(1, keepdim=True).float()
    dice = compute_dice(pred, lesion[None].expand(5, -1, -1, -1), include_background=True).flatten()
    assert float(dice[0]) > 0.8, dice  # the shipped segmenter finds the polyp in the input
    assert float(dice[1:].min()) > 0.8 and float(dice[1:].mean()) > float(dice[0]) - 0.1, dice
