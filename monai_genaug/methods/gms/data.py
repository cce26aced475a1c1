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
"""GMS bundle data: the transforms of the GMS bundles (load, scale, resize, check labels, augment) and the data folder
helpers they share with the other bundles (:func:`~monai_genaug.data.bundle.gms_data_dir`,
:func:`~monai_genaug.data.bundle.gms_datalist`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import CacheDataset
from monai.transforms import Compose, Orientationd, RandFlipd, RandRotate90d, Resized

from monai_genaug.data.bundle import gms_data_dir, gms_datalist
from monai_genaug.networks.gms import masks_to_images
from monai_genaug.data.pipelines import check_spatial_multiple, segmentation_2d_transforms, volume_3d_transforms
from monai_genaug.transforms.validation import ValidateLabeld

__all__ = [
    "GMSTokenizerDataset",
    "TOKENIZER_IMAGES",
    "gms_data_dir",
    "gms_datalist",
    "gms_tokenizer_dataset",
    "gms_tokenizer_loader",
    "gms_transforms",
]

#: what a GMS tokenizer trains on (bundle option ``tokenizer_images``)
TOKENIZER_IMAGES = ("training", "all")

#: the fix a GMS label error suggests: the model file decides the class count
GMS_LABEL_HINT = (
    "The GMS model file decides num_classes: for BRATS labels 0..4 use a model trained with --num_classes 4 "
    "(configs/train.json + configs/train_3d.json), or one trained with --num_classes 1 (whole tumour)."
)


def gms_transforms(
    spatial_dims: int = 2,
    spatial_size: Sequence[int] = (64, 64),
    num_classes: int = 1,
    image_channels: int = 3,
    resize_label: bool = True,
    augment: bool = False,
    modality_keys: Sequence[str] = ("flair", "t1c"),
    image_key: str = "image",
    label_key: str = "label",
    spatial_multiple: int = 1,
) -> Compose:
    """Loading pipeline of the GMS bundle for 2D ``images/ + masks/`` pairs or 3D NIfTI cases.

    2D (:func:`~monai_genaug.data.pipelines.segmentation_2d_transforms`): RGB (``image_channels=3``) or grey image in
    [0, 1]; the mask binarised (``num_classes == 1``: "auto" threshold, so 0/255 PNG and Kvasir's JPEG masks work) or
    kept as label values (multi-class). 3D (:func:`~monai_genaug.data.pipelines.volume_3d_transforms`): one channel
    per modality, z-scored inside the non-zero region, label ``"whole_tumour"`` (binary) or ``"multiclass"``, then
    RAS orientation. The label values are then checked against ``0..num_classes`` (a ``ValueError`` names the file,
    e.g. BRATS labels 0..4 given to a 3-class model). Both end with ``Resized`` to ``spatial_size`` (bilinear /
    trilinear images, nearest labels), which ``Invertd`` undoes for native-resolution outputs.

    Args:
        spatial_dims: 2 or 3.
        spatial_size: network input size (a multiple of the autoencoder factor).
        num_classes: foreground classes K (1: binarise the labels).
        image_channels: 3 (RGB) or 1 (grey) in 2D; the number of ``modality_keys`` in 3D.
        resize_label: resize the label too (training, validation); False keeps it at native resolution
            (evaluation at native resolution after ``Invertd``).
        augment: random flips and 90-degree rotations (image and label together).
        modality_keys: 3D modality keys of the datalist, one image channel each.
        image_key: image key.
        label_key: label key.
        spatial_multiple: ``spatial_size`` must be a multiple of it (the model's autoencoder factor,
            ``GMSSegmenter.factor``); checked here so a bad size fails before any image is read.

    Raises:
        ValueError: ``spatial_size`` of the wrong length or not a multiple of ``spatial_multiple``; wrong channels.
    """
    size = [int(s) for s in spatial_size]
    if len(size) != spatial_dims:
        raise ValueError(f"spatial_size {tuple(size)} must have {spatial_dims} values for spatial_dims={spatial_dims}.")
    check_spatial_multiple(size, spatial_multiple, "the model's autoencoder down-sampling factor")
    if spatial_dims == 2:
        if image_channels not in (1, 3):
            raise ValueError(f"2D GMS images are RGB (image_channels=3) or grey (1), got {image_channels}.")
        xforms = list(
            segmentation_2d_transforms(
                image_key=image_key,
                label_key=label_key,
                spatial_size=None,
                rgb=image_channels == 3,
                mask_threshold="auto" if num_classes == 1 else None,
            ).transforms
        )
    elif spatial_dims == 3:
        keys = list(modality_keys)
        if len(keys) != image_channels:
            raise ValueError(f"image_channels={image_channels} but modality_keys={keys}; give one key per channel.")
        xforms = list(
            volume_3d_transforms(
                keys=keys,
                label_key=label_key,
                image_key=image_key,
                spatial_size=None,
                axcodes=None,
                normalise="zscore",
                nonzero=True,
                label_mode="whole_tumour" if num_classes == 1 else "multiclass",
            ).transforms
        )
        xforms.append(Orientationd(keys=[image_key, label_key], axcodes="RAS", labels=None))
    else:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    xforms.append(ValidateLabeld(label_key, num_classes, spatial_dims=spatial_dims, hint=GMS_LABEL_HINT))
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    xforms.append(Resized(keys=image_key, spatial_size=size, mode=mode, anti_aliasing=spatial_dims == 2))
    if resize_label:
        xforms.append(Resized(keys=label_key, spatial_size=size, mode="nearest"))
    if augment:
        xforms += [
            RandFlipd(keys=[image_key, label_key], prob=0.5, spatial_axis=0),
            RandFlipd(keys=[image_key, label_key], prob=0.5, spatial_axis=1),
            RandRotate90d(keys=[image_key, label_key], prob=0.5, max_k=3, spatial_axes=(0, 1)),
        ]
    return Compose(xforms)


class GMSTokenizerDataset(torch.utils.data.Dataset):
    """Image-only items ``{"image": x}`` for a GMS tokenizer: every image of ``images`` (labels, if loaded, unused)
    followed by the per-class mask images of ``masks`` (each label map gives ``num_classes`` items, see
    :func:`~monai_genaug.methods.gms.masks_to_images`). Train it with
    ``create_gms_autoencoder_trainer(..., use_masks=False)``.

    Args:
        images: a dataset of ``{image_key: image}`` dicts (e.g. a ``CacheDataset`` of every image available).
        masks: a dataset of ``{label_key: label map}`` dicts (the training split), or None for images only.
        num_classes: foreground classes K.
        image_channels: channels of the tokenizer (the masks are repeated over them).
        mask_value_range: the (outside, inside) values of an encoded mask.
        image_key: image key.
        label_key: label key.
    """

    def __init__(
        self,
        images: torch.utils.data.Dataset,
        masks: torch.utils.data.Dataset | None,
        num_classes: int,
        image_channels: int,
        mask_value_range: Sequence[float] = (0.0, 1.0),
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.images, self.masks = images, masks
        self.num_classes, self.image_channels = int(num_classes), int(image_channels)
        self.mask_value_range = tuple(float(v) for v in mask_value_range)
        self.image_key, self.label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self.images) + (len(self.masks) * self.num_classes if self.masks is not None else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0 or index >= len(self):
            raise IndexError(f"index {index} out of range for {len(self)} tokenizer items.")
        if index < len(self.images):
            image = self.images[index][self.image_key]
            return {"image": image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)}
        item, k = divmod(index - len(self.images), self.num_classes)
        label = torch.as_tensor(self.masks[item][self.label_key])
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        mask = masks_to_images(label[None].round().long(), self.num_classes, self.image_channels, self.mask_value_range)
        return {"image": mask[k]}


def gms_tokenizer_dataset(
    data_dir: str,
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    num_classes: int,
    image_channels: int,
    images: str = "all",
    include_masks: bool = True,
    mask_value_range: Sequence[float] = (0.0, 1.0),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_items: int | None = None,
) -> GMSTokenizerDataset:
    """The tokenizer's training data of the GMS bundle (``tokenizer_images: "all"``): every image of the data folder
    (all splits, no label used) plus the masks of the training split only.

    Args:
        data_dir: the data folder (see :func:`gms_datalist`).
        transform: the loading pipeline (:func:`gms_transforms`, which also loads the labels).
        num_classes: foreground classes K.
        image_channels: tokenizer channels.
        images: ``"all"`` (every split's images, the test images included but never their labels) or
            ``"training"``.
        include_masks: add the training split's masks as mask images (a tokenizer must reconstruct masks).
        mask_value_range: the (outside, inside) values of an encoded mask.
        val_fraction: validation fraction of the split.
        test_fraction: test fraction of the split.
        seed: split seed (the same as the segmenter's, so "training" means the same images).
        max_items: cap each list (quick runs).
    """
    if images not in TOKENIZER_IMAGES:
        raise ValueError(f"tokenizer images must be one of {TOKENIZER_IMAGES}, got {images!r}.")
    split = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, max_items=max_items)
    all_items = gms_datalist(data_dir, images, **split)
    train_items = gms_datalist(data_dir, "training", **split) if include_masks else None
    return GMSTokenizerDataset(
        CacheDataset(all_items, transform, progress=False),
        CacheDataset(train_items, transform, progress=False) if train_items is not None else None,
        num_classes,
        image_channels,
        mask_value_range,
    )


def gms_tokenizer_loader(
    train_loader: Any,
    tokenizer_images: str,
    data_dir: str,
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    num_classes: int,
    image_channels: int,
    batch_size: int,
    seed: int = 0,
    mask_value_range: Sequence[float] = (0.0, 1.0),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_items: int | None = None,
    num_workers: int = 0,
) -> Any:
    """The loader the GMS bundle's tokenizer stage trains on (a bundle-config helper, option ``tokenizer_images``).

    ``"training"``: ``train_loader`` itself (the task's training images and their masks; train with
    ``use_masks=True``). ``"all"``: a shuffled loader of :func:`gms_tokenizer_dataset` (every image of the data folder
    without labels, plus the training masks; train with ``use_masks=False``).

    Args:
        train_loader: the segmenter's training loader.
        tokenizer_images: ``"training"`` or ``"all"``.
        data_dir: the data folder.
        transform: the loading pipeline (:func:`gms_transforms`).
        num_classes: foreground classes K.
        image_channels: tokenizer channels.
        batch_size: batch size of the ``"all"`` loader.
        seed: split seed and seed of the shuffling.
        mask_value_range: the (outside, inside) values of an encoded mask.
        val_fraction: validation fraction of the split.
        test_fraction: test fraction of the split.
        max_items: cap each list (quick runs).
        num_workers: loader workers.
    """
    if tokenizer_images not in TOKENIZER_IMAGES:
        raise ValueError(f"tokenizer_images must be one of {TOKENIZER_IMAGES}, got {tokenizer_images!r}.")
    if tokenizer_images == "training":
        return train_loader
    dataset = gms_tokenizer_dataset(
        data_dir, transform, num_classes, image_channels, "all", True, mask_value_range, val_fraction,
        test_fraction, seed, max_items,
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
        generator=torch.Generator().manual_seed(int(seed)),
    )
