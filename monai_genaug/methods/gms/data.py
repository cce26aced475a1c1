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

from collections.abc import Sequence

from monai.transforms import Compose, Orientationd, RandFlipd, RandRotate90d, Resized

from monai_genaug.data.bundle import gms_data_dir, gms_datalist
from monai_genaug.data.pipelines import check_spatial_multiple, segmentation_2d_transforms, volume_3d_transforms
from monai_genaug.transforms.validation import ValidateLabeld

__all__ = [
    "gms_data_dir",
    "gms_datalist",
    "gms_transforms",
]

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
