"""Tiny generators, autoencoders, images and loaders for the engine tests, offered by the ``tiny`` fixture.

The suite runs with ``--import-mode=importlib``, so helpers are shared through a fixture, not an import.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from monai_genaug.generative.latent_generator import LatentGenerator, generator_config


def make_generator(
    spatial_dims: int = 2,
    latent: bool = True,
    prediction_type: str = "epsilon",
    num_classes: int | None = None,
    seg_channels: int | None = None,
    concat_channels: int = 0,
    num_prompts: int | None = None,
    num_train_timesteps: int = 50,
    seed: int = 0,
) -> LatentGenerator:
    """A LatentGenerator with UNet channels (8, 16) and autoencoder channels (8, 8), latent 2."""
    cfg = generator_config(
        "tiny",
        spatial_dims=spatial_dims,
        latent=latent,
        num_classes=num_classes,
        seg_channels=seg_channels,
        concat_channels=concat_channels,
        num_prompts=num_prompts,
        prediction_type=prediction_type,
        num_train_timesteps=num_train_timesteps,
    )
    cfg["unet"].update(
        channels=[8, 16], attention_levels=[False, bool(num_prompts)], norm_num_groups=8, num_head_channels=8
    )
    if seg_channels:
        cfg["unet"]["spade_intermediate_channels"] = 8
    if latent:
        cfg["autoencoder"].update(channels=[8, 8], norm_num_groups=4, latent_channels=2)
    torch.manual_seed(seed)
    return LatentGenerator.from_config(cfg)


def make_autoencoder(spatial_dims: int = 2, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        num_res_blocks=(1, 1),
        attention_levels=(False, False),
        latent_channels=2,
        norm_num_groups=4,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


def make_images(n: int = 4, size: int = 16, spatial_dims: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth blob images in [0, 1], (n, 1, size, size[, size])."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    images = []
    for _ in range(n):
        centre = torch.rand(spatial_dims, generator=g) - 0.5
        r2 = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True))
        images.append(torch.exp(-r2 / 0.15)[None])
    return torch.stack(images)


def make_loader(items: list[dict], batch_size: int = 2, seed: int = 0, shuffle: bool = True):
    return torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )


class LossLog:
    """``LossLog().attach(trainer)`` records the per-iteration ``loss`` in ``values``."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.values.append(float(e.state.output["loss"].detach()))
        )

    def falls(self, n: int = 10, factor: float = 0.8) -> bool:
        """Mean of the last n losses below factor x mean of the first n."""
        first, last = self.values[:n], self.values[-n:]
        return sum(last) / len(last) < factor * sum(first) / len(first)


@pytest.fixture
def tiny():
    """The helpers above: ``tiny.make_generator``, ``make_autoencoder``, ``make_images``, ``make_loader``."""
    return SimpleNamespace(
        make_generator=make_generator,
        make_autoencoder=make_autoencoder,
        make_images=make_images,
        make_loader=make_loader,
        LossLog=LossLog,
    )
