"""GMS: segmenter shapes (2D/3D), one label per pixel, loss falls on a tiny overfit, bad input, latent cache."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.methods.gms import GMSAutoencoderPrepareBatch, GMSPrepareBatch
from monai_genaug.methods.gms import (
    GMSLoss,
    GMSSegmenter,
    LatentCache,
    MaskReconstructor,
    class_probabilities,
    gms_config,
    labels_to_onehot,
    load_autoencoder,
    masks_to_images,
    save_autoencoder,
)
from monai_genaug.utils.labels import check_label_map


def _seg(spatial_dims=2, channels=3, num_classes=1, seed=0):
    torch.manual_seed(seed)
    return GMSSegmenter.from_config(gms_config("tiny", spatial_dims, channels, num_classes))


@pytest.mark.parametrize("spatial_dims,channels,num_classes,size", [(2, 3, 1, 16), (2, 1, 3, 8), (3, 2, 2, 8)])
def test_forward_probabilities(spatial_dims, channels, num_classes, size):
    seg = _seg(spatial_dims, channels, num_classes)
    x = torch.rand(2, channels, *([size] * spatial_dims))
    probs = seg(x)
    assert probs.shape == (2, num_classes + 1, *x.shape[2:])
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *x.shape[2:]))
    assert probs.min() >= 0
    labels = seg.predict_labels(x)
    assert labels.shape == (2, 1, *x.shape[2:]) and labels.dtype == torch.long
    assert labels.min() >= 0 and labels.max() <= num_classes
    # frozen autoencoder, trainable mapping only
    assert all(not p.requires_grad for p in seg.autoencoder.parameters())
    assert {id(p) for p in seg.trainable_parameters()} == {id(p) for p in seg.mapping.parameters()}
    seg.train()
    assert not seg.autoencoder.training and seg.mapping.training
    raw = GMSSegmenter.from_config(seg.config, include_background=False)(x)
    assert raw.shape == (2, num_classes, *x.shape[2:])


def test_multiclass_decode_one_label_per_pixel():
    # p_k per class: overlapping soft masks must still give exactly one label per pixel
    soft = torch.tensor([[[0.9, 0.2, 0.6, 0.1]], [[0.8, 0.7, 0.55, 0.3]], [[0.1, 0.1, 0.7, 0.45]]]).reshape(1, 3, 1, 4)
    probs = class_probabilities(soft)
    assert probs.shape == (1, 4, 1, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 1, 4))
    labels = probs.argmax(1)
    # pixel 0: class 1 (0.9), pixel 1: class 2 (0.7), pixel 2: class 3 (0.7 largest), pixel 3: all < 0.5 -> background
    assert labels.tolist() == [[[1, 2, 3, 0]]]
    onehot = torch.nn.functional.one_hot(labels, 4)
    assert (onehot.sum(-1) == 1).all()
    # binary: [1 - p, p] is the original's threshold at 0.5
    p = torch.tensor([0.2, 0.5001, 0.8]).view(1, 1, 3)
    assert class_probabilities(p).argmax(1).tolist() == [[0, 1, 1]]


def test_masks_encoding_layout():
    labels = torch.tensor([[[0, 1], [2, 2]]]).unsqueeze(1).repeat(2, 1, 1, 1)  # (2, 1, 2, 2)
    labels[1] = 0
    onehot = labels_to_onehot(labels, 2)
    assert onehot.shape == (2, 2, 2, 2)
    assert onehot[0, 0].tolist() == [[0, 1], [0, 0]] and onehot[0, 1].tolist() == [[0, 0], [1, 1]]
    imgs = masks_to_images(labels, 2, 3, (-1.0, 1.0))
    assert imgs.shape == (4, 3, 2, 2)  # sample-major, class-minor
    assert imgs[1, 2].tolist() == [[-1, -1], [1, 1]] and (imgs[2:] == -1).all()


def test_loss_falls_on_tiny_overfit():
    seg = _seg(2, 3, 2, seed=1)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 16, 16)
    labels = torch.zeros(2, 1, 16, 16)
    labels[0, :, 2:9, 3:11] = 1
    labels[1, :, 8:14, 6:15] = 2
    seg.estimate_scale_factor(images)
    loss_fn = GMSLoss()
    prepare = GMSPrepareBatch(seg, noise_prob=0.0, decode_levels=loss_fn.decode_levels)
    opt = torch.optim.AdamW(seg.trainable_parameters(), lr=5e-3)
    losses = []
    for _ in range(25):
        z, target, args, kwargs = prepare({"image": images, "label": labels})
        loss = loss_fn(seg(z, *args, **kwargs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    assert set(loss_fn.last_terms) == {"latent_mse", "dice"}
    assert all(p.grad is None for p in seg.autoencoder.parameters())


def test_loss_levels_and_weights():
    z = {k: torch.zeros(1, 2, 4, 4) for k in ("level1", "out")}
    masks = {k: torch.zeros(1, 1, 8, 8) for k in ("level1", "out")}
    target = {"latent": torch.ones(1, 2, 4, 4), "mask": torch.zeros(1, 1, 8, 8)}
    mse_only = GMSLoss(w_dice=0.0)
    assert mse_only.decode_levels == ()
    assert float(mse_only({"latents": z, "masks": {}}, target)) == pytest.approx(2.0)  # two heads x MSE 1
    weighted = GMSLoss(w_dice=0.0, level_weights={"level1": 0.5})
    assert float(weighted({"latents": z}, target)) == pytest.approx(1.5)
    out_only = GMSLoss(ds_levels=("out",), dice_levels=("out",))
    assert float(out_only({"latents": z, "masks": masks}, target)) == pytest.approx(1.0, abs=1e-3)  # empty Dice ~0
    with pytest.raises(ValueError, match="needs the heads"):
        GMSLoss(ds_levels=("level2", "out"))({"latents": z, "masks": masks}, target)
    with pytest.raises(TypeError, match="return_heads"):
        GMSLoss()(torch.zeros(1), target)
    with pytest.raises(ValueError, match="w_rec and w_dice"):
        GMSLoss(w_rec=0, w_dice=0)


def test_bad_inputs():
    seg = _seg(2, 3, 1)  # tiny autoencoder: factor 2
    with pytest.raises(ValueError, match="multiple of its down-sampling factor 2"):
        seg(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match="channels but the autoencoder takes 3"):
        seg(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="2D GMS model"):
        seg(torch.rand(1, 3, 8, 8, 8))
    with pytest.raises(TypeError):
        seg([1, 2, 3])
    prepare = GMSPrepareBatch(seg)
    img = torch.rand(1, 3, 8, 8)
    multi = torch.zeros(1, 1, 8, 8)
    multi[..., :2, :2] = 2
    with pytest.raises(ValueError, match="binary"):
        prepare({"image": img, "label": multi})
    with pytest.raises(ValueError, match="outside the declared labels 0..2"):
        check_label_map(multi * 2, 2, 2)
    with pytest.raises(ValueError, match="non-integer"):
        check_label_map(torch.full((1, 1, 4, 4), 0.5), 1, 2)
    with pytest.raises(ValueError, match="no 'label'"):
        prepare({"image": img})
    with pytest.raises(ValueError, match="same spatial size"):
        prepare({"image": img, "label": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) label map"):
        prepare({"image": img, "label": torch.zeros(1, 2, 8, 8)})
    with pytest.raises(ValueError, match="mapping network maps"):
        GMSSegmenter(seg.autoencoder, seg.mapping, num_classes=2)


def test_latent_cache_is_exact_and_augmentation_safe():
    seg = _seg(2, 3, 1)
    images = torch.rand(3, 3, 8, 8)
    labels = (torch.rand(3, 1, 8, 8) > 0.5).float()
    cached = GMSPrepareBatch(seg, noise_prob=0.5, cache=LatentCache(), seed=3)
    plain = GMSPrepareBatch(seg, noise_prob=0.5, cache=None, seed=3)
    for _ in range(3):  # first call fills the cache, later calls hit it; the noise stream is the same
        z_c, t_c, _, kw = cached({"image": images, "label": labels})
        z_p, t_p, _, _ = plain({"image": images, "label": labels})
        torch.testing.assert_close(z_c, z_p)
        torch.testing.assert_close(t_c["latent"], t_p["latent"])
    assert cached.cache.hits == 2 * 2 * 3 and len(cached.cache) == 6  # (image + mask) x 3 samples
    assert kw == {"latent_input": True, "return_heads": True, "decode_levels": None}
    # an augmented (flipped) image is a different input: a miss, encoded afresh, never the stale latent
    flipped = images.flip(-1)
    nonoise = GMSPrepareBatch(seg, noise_prob=0.0, cache=cached.cache)
    z_f, t_f, _, _ = nonoise({"image": flipped, "label": labels.flip(-1)})
    torch.testing.assert_close(z_f, seg.encode_images(flipped))
    torch.testing.assert_close(t_f["latent"], seg.encode_masks(labels.flip(-1)))
    assert len(cached.cache) == 12


def test_latent_cache_lru_budget():
    cache = LatentCache(max_bytes=3 * 16)  # three entries of four float32
    keys = [LatentCache.key(torch.full((4,), float(i))) for i in range(4)]
    assert len(set(keys)) == 4 and LatentCache.key(torch.zeros(4), "a") != LatentCache.key(torch.zeros(4), "b")
    for i, k in enumerate(keys[:3]):
        cache.put(k, (torch.full((4,), float(i)),))
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    cache.put(keys[3], (torch.zeros(4),))
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and len(cache) == 3
    assert cache.nbytes == 48
    with pytest.raises(ValueError):
        LatentCache(max_bytes=0)


def test_noise_augmentation():
    seg = _seg(2, 3, 1)
    images = torch.rand(2, 3, 8, 8)
    labels = torch.zeros(2, 1, 8, 8)
    mean = seg.encode_images(images)
    z0, *_ = GMSPrepareBatch(seg, noise_prob=0.0)({"image": images, "label": labels})
    torch.testing.assert_close(z0, mean)
    prep = GMSPrepareBatch(seg, noise_prob=1.0, seed=5)
    z1, *_ = prep({"image": images, "label": labels})
    g = torch.Generator().manual_seed(5)
    torch.rand(1, generator=g)
    mu, sigma = seg.image_posterior(images)
    expected = (mu + sigma * torch.randn(mu.shape, generator=g)) * seg.scale_factor  # sigma scaled like mu
    torch.testing.assert_close(z1, expected)
    # resuming restores the noise stream
    state = prep.state_dict()
    a, *_ = prep({"image": images, "label": labels})
    prep.load_state_dict(state)
    b, *_ = prep({"image": images, "label": labels})
    torch.testing.assert_close(a, b)


def test_save_load_and_scale(tmp_path):
    seg = _seg(3, 2, 2)
    x = torch.randn(2, 2, 8, 8, 8)
    value = seg.estimate_scale_factor(x)
    mu, _ = seg.image_posterior(x)
    assert value == pytest.approx(1.0 / float(mu.double().std()), rel=1e-6)  # the one estimate: sample std (N - 1)
    assert float(seg.mask_scale_factor) == pytest.approx(value)
    seg.save(tmp_path / "gms.pt")
    back = GMSSegmenter.load(tmp_path / "gms.pt")
    torch.testing.assert_close(back(x), seg(x))
    assert float(back.scale_factor) == pytest.approx(value)
    save_autoencoder(seg.autoencoder, tmp_path / "ae.pt", seg.config)
    ae, cfg = load_autoencoder(tmp_path / "ae.pt")
    assert cfg["spatial_dims"] == 3 and cfg["autoencoder"] == seg.config["autoencoder"]
    torch.testing.assert_close(ae.encode(x)[0], seg.autoencoder.encode(x)[0])
    with pytest.raises(ValueError, match="not a GMS checkpoint"):
        GMSSegmenter.load(tmp_path / "ae.pt")
    with pytest.raises(FileNotFoundError):
        GMSSegmenter.load(tmp_path / "missing.pt")


def test_mask_reconstructor_and_autoencoder_batches():
    seg = _seg(2, 1, 2)
    labels = torch.randint(0, 3, (2, 1, 8, 8)).float()
    probs = MaskReconstructor(seg.autoencoder, 2)(labels)
    assert probs.shape == (2, 3, 8, 8)
    images = torch.rand(2, 1, 8, 8)
    x, y = GMSAutoencoderPrepareBatch(2, 1)({"image": images, "label": labels})
    assert x.shape == (2 + 2 * 2, 1, 8, 8) and x is y
    torch.testing.assert_close(x[:2], images)
    assert set(x[2:].unique().tolist()) <= {0.0, 1.0}


def test_mask_foreground_weighted_l1():
    from monai_genaug.methods.gms import MaskForegroundWeightedL1Loss

    loss = MaskForegroundWeightedL1Loss((0.0, 1.0), foreground_weight=10.0)
    target = torch.zeros(2, 1, 4, 4)
    target[0] = 0.3  # an image sample: never up-weighted
    target[1, 0, :2, :2] = 1.0  # a mask sample with 4 foreground pixels
    recon = torch.zeros_like(target)
    # image: 16 px x 0.3 at weight 1; mask: 4 px x 1 at weight 10, 12 px x 0; normaliser 16 + 4 * 10 + 12
    assert float(loss(recon, target)) == pytest.approx((16 * 0.3 + 40) / 68)
    plain = MaskForegroundWeightedL1Loss((0.0, 1.0), foreground_weight=1.0)
    assert float(plain(recon, target)) == pytest.approx(float((recon - target).abs().mean()))
