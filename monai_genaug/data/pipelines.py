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
"""Loading pipelines (``monai.transforms.Compose``) for the datalists of :mod:`monai_genaug.data.folders`.

Each factory only wires MONAI transforms (plus the label transforms of :mod:`monai_genaug.transforms.io`),
so the result can be extended, inspected and written in a bundle config like any MONAI pipeline.

Axis convention for 2D files: PIL-readable images (PNG, JPEG, TIFF, BMP) are read with MONAI's
``PILReader(reverse_indexing=False)`` by default, so a loaded item is ``(C, H, W)``: rows first, exactly like
``numpy.asarray(PIL.Image.open(path))`` and the arrays the phantom generators write. MONAI's own default
(``reverse_indexing=True``) gives ``(C, W, H)``; pass ``reverse_indexing=True`` to get that instead. Images and
masks always use the same convention. 2D items carry a ``MetaTensor`` with an identity affine (PNG/JPEG store
none); 3D NIfTI items keep the file's affine, updated by orientation, spacing and resizing.

Example::

    from monai.data import Dataset
    from monai_genaug.data.folders import paired_image_mask_datalist
    items = paired_image_mask_datalist("/data/kvasir_seg")
    ds = Dataset(items, transform=segmentation_2d_transforms(spatial_size=(64, 64)))
    ds[0]["image"].shape, ds[0]["label"].unique()  # (3, 64, 64), tensor([0., 1.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.data import PILReader
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    LoadImaged,
    MaskIntensityd,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from monai_genaug.transforms.io import (
    BRATS2013_REGIONS,
    BinarizeLabeld,
    LabelToRegionsd,
    ScaleIntensityByDtyped,
)

__all__ = [
    "check_spatial_multiple",
    "PILConvert",
    "segmentation_2d_transforms",
    "classification_2d_transforms",
    "volume_3d_transforms",
]

_PIL_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class PILConvert:
    """Picklable PIL image converter for ``PILReader(converter=...)`` (works with multi-process data loaders).

    Args:
        mode: ``"RGB"`` (3 channels from grey, palette, RGBA...; 16-bit and float grey images are kept as they are,
            since PIL's conversion clips them to 255: :class:`~monai_genaug.transforms.io.ScaleIntensityByDtype`
            scales them and repeats the channel), ``"L"`` (one grey channel; 16-bit and float
            images are kept as they are), or ``"mask"`` (drop an alpha channel, keep everything else, so that
            palette indices and 16-bit labels survive).
    """

    def __init__(self, mode: str = "RGB") -> None:
        if mode not in ("RGB", "L", "mask"):
            raise ValueError(f"mode must be 'RGB', 'L' or 'mask', got {mode!r}.")
        self.mode = mode

    def __call__(self, img):
        if self.mode == "RGB":
            if img.mode in _PIL_HIGH_DEPTH:  # PIL's convert clips 16-bit / float to 255: scale later, by bit depth
                return img
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img if img.mode == "RGB" else img.convert("RGB")
        if self.mode == "L":
            return img if img.mode in ("L", *_PIL_HIGH_DEPTH) else img.convert("L")
        if img.mode == "RGBA":
            return img.convert("RGB")
        if img.mode == "LA":
            return img.convert("L")
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _check_size(spatial_size: Sequence[int] | int | None, dims: int, name: str = "spatial_size") -> None:
    if spatial_size is None or isinstance(spatial_size, int):
        return
    if len(spatial_size) != dims:
        raise ValueError(f"{name} must have {dims} values for {dims}D data, got {tuple(spatial_size)}.")


def check_spatial_multiple(
    spatial_size: Sequence[int], multiple: int, reason: str = "the network's down-sampling factor"
) -> None:
    """Refuse a ``spatial_size`` that is not a multiple of ``multiple``, naming the rule and a valid size.

    Args:
        spatial_size: the network input size.
        multiple: every entry must be a multiple of it (e.g. the product of a UNet's strides).
        reason: the factor's name in the message (e.g. "the segmenter's down-sampling factor").

    Raises:
        ValueError: ``spatial_size (97, 101) is not a multiple of the ... factor 8 ...; Use e.g. --spatial_size
            "[96, 104]"``.
    """
    size = [int(s) for s in spatial_size]
    multiple = int(multiple)
    if multiple > 1 and any(s % multiple for s in size):
        good = [max(multiple, round(s / multiple) * multiple) for s in size]
        raise ValueError(
            f"spatial_size {tuple(size)} is not a multiple of {reason} {multiple}; the network cannot take it. "
            f"Use e.g. --spatial_size \"{good}\"."
        )


def _intensity_2d(image_key: str, intensity_range: tuple[float, float] | str | None, channels: int) -> list:
    if intensity_range == "dtype":
        return [ScaleIntensityByDtyped(keys=image_key, channels=channels)]
    if intensity_range is None:
        return [ScaleIntensityd(keys=image_key, minv=0.0, maxv=1.0)]
    a_min, a_max = (float(v) for v in intensity_range)
    if not a_max > a_min:
        raise ValueError(f"intensity_range must be (low, high) with high > low, got {intensity_range}.")
    return [ScaleIntensityRanged(keys=image_key, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]


def segmentation_2d_transforms(
    image_key: str = "image",
    label_key: str | None = "label",
    spatial_size: Sequence[int] | int | None = (64, 64),
    rgb: bool = True,
    mask_threshold: float | str | None = "auto",
    intensity_range: tuple[float, float] | str | None = "dtype",
    reverse_indexing: bool = False,
    channel_reduction: str = "max",
    image_mode: str = "area",
    anti_aliasing: bool = False,
) -> Compose:
    """Load a 2D image/mask pair: ``(C, H, W)`` image in [0, 1] and a ``(1, H, W)`` binary mask.

    Steps: ``LoadImaged`` (``PILReader``; other formats such as NIfTI fall back to MONAI's readers) ->
    ``EnsureChannelFirstd`` -> :class:`~monai_genaug.transforms.io.BinarizeLabeld` on the mask ->
    intensity to [0, 1] -> ``Resized`` (image ``image_mode``, default area averaging; mask nearest).

    Args:
        image_key: key of the image path.
        label_key: key of the mask path, or None for images only (inference).
        spatial_size: output (H, W) (or one int for both), or None to keep the file's size.
        rgb: load the image as 3-channel RGB (True) or 1-channel grey (False).
        mask_threshold: foreground is ``mask > threshold`` (127 for 8-bit or JPEG masks such as Kvasir-SEG, 0.5
            for 0/1 masks, 0 for "any label"), ``"auto"`` (127 when the mask's maximum exceeds 127, else 0.5), or
            None to keep the mask's values (multi-class masks; channels are then not merged).
        intensity_range: ``"dtype"`` (default) scales by the file's storage range (8-bit / 255, 16-bit PNG or TIFF
            / 65535, see :class:`~monai_genaug.transforms.io.ScaleIntensityByDtype`, the scaling is logged); (low, high)
            maps those intensities linearly to [0, 1] with clipping; None scales each image by its min and max.
        reverse_indexing: False gives ``(C, H, W)`` like numpy/PIL; True gives MONAI's default ``(C, W, H)``.
        channel_reduction: how an RGB mask becomes one channel before thresholding (see ``BinarizeLabel``).
        image_mode: interpolation of the image for ``Resized``: ``"area"`` (default) averages the source pixels
            under each output pixel, the right anti-aliasing when shrinking photos (Kvasir-SEG frames are 332 to
            1920 px wide) but blocky when enlarging; use ``"bilinear"`` (or ``"bicubic"``) to enlarge.
        anti_aliasing: MONAI's Gaussian pre-smoothing before downsampling; off by default because it pads with
            zeros and so darkens the image border (a constant image comes out about 12 % darker at the edge).

    Returns:
        a ``monai.transforms.Compose`` applied to datalist entries.
    """
    _check_size(spatial_size, 2)
    load = [
        LoadImaged(
            keys=image_key,
            reader=PILReader(converter=PILConvert("RGB" if rgb else "L"), reverse_indexing=reverse_indexing),
            image_only=True,
        )
    ]
    keys = [image_key]
    if label_key is not None:
        load.append(
            LoadImaged(
                keys=label_key,
                reader=PILReader(converter=PILConvert("mask"), reverse_indexing=reverse_indexing),
                image_only=True,
            )
        )
        keys.append(label_key)
    xforms = [*load, EnsureChannelFirstd(keys=keys)]
    if label_key is not None and mask_threshold is not None:
        xforms.append(BinarizeLabeld(keys=label_key, threshold=mask_threshold, channel_reduction=channel_reduction))
    xforms += _intensity_2d(image_key, intensity_range, 3 if rgb else 1)
    if spatial_size is not None:
        xforms.append(Resized(keys=image_key, spatial_size=spatial_size, mode=image_mode, anti_aliasing=anti_aliasing))
        if label_key is not None:
            xforms.append(Resized(keys=label_key, spatial_size=spatial_size, mode="nearest"))
    return Compose(xforms)


def classification_2d_transforms(
    image_key: str = "image",
    spatial_size: Sequence[int] | int | None = (64, 64),
    rgb: bool = True,
    intensity_range: tuple[float, float] | str | None = "dtype",
    reverse_indexing: bool = False,
    image_mode: str = "area",
    anti_aliasing: bool = False,
) -> Compose:
    """Load a 2D image for classification: ``(C, H, W)`` in [0, 1]; other keys (the class index) pass through.

    Args:
        image_key: key of the image path.
        spatial_size: output (H, W) (or one int for both), or None to keep the file's size.
        rgb: load as 3-channel RGB (True) or 1-channel grey (False).
        intensity_range: ``"dtype"`` (default: by the file's storage range, 8-bit / 255, 16-bit / 65535), (low, high)
            mapped linearly to [0, 1] with clipping, or None for min-max scaling.
        reverse_indexing: False gives ``(C, H, W)`` like numpy/PIL; True gives MONAI's default ``(C, W, H)``.
        image_mode: interpolation for ``Resized`` (see :func:`segmentation_2d_transforms`).
        anti_aliasing: MONAI's Gaussian pre-smoothing before downsampling (zero-padded: darkens the border).

    Returns:
        a ``monai.transforms.Compose`` applied to datalist entries such as those of ``class_folder_datalist``.
    """
    _check_size(spatial_size, 2)
    xforms = [
        LoadImaged(
            keys=image_key,
            reader=PILReader(converter=PILConvert("RGB" if rgb else "L"), reverse_indexing=reverse_indexing),
            image_only=True,
        ),
        EnsureChannelFirstd(keys=image_key),
        *_intensity_2d(image_key, intensity_range, 3 if rgb else 1),
    ]
    if spatial_size is not None:
        xforms.append(Resized(keys=image_key, spatial_size=spatial_size, mode=image_mode, anti_aliasing=anti_aliasing))
    return Compose(xforms)


def volume_3d_transforms(
    keys: Sequence[str] = ("flair", "t1c"),
    label_key: str | None = "label",
    image_key: str | None = "image",
    spatial_size: Sequence[int] | int | None = None,
    pixdim: Sequence[float] | None = None,
    axcodes: str | None = "RAS",
    normalise: str | None = "zscore",
    label_mode: str = "multiclass",
    regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
    mask_key: str | None = None,
    nonzero: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
    image_mode: str = "area",
) -> Compose:
    """Load a multi-modal 3D case (e.g. BRATS) as a channel-first ``MetaTensor`` that keeps the affine.

    Steps: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``ConcatItemsd`` of the modalities into ``image_key``
    (one channel per modality, in ``keys`` order) -> ``Orientationd`` -> ``Spacingd`` -> intensity
    normalisation per channel -> label conversion -> ``Resized``.

    Args:
        keys: keys of the modality paths (one file each).
        label_key: key of the label path, or None for unlabelled cases.
        image_key: key of the concatenated multi-channel image (the modality keys are removed), or None to keep
            each modality under its own key.
        spatial_size: output (x, y, z) size after resampling (or one int), or None.
        pixdim: output voxel spacing in mm for ``Spacingd``, or None to keep the file's grid.
        axcodes: orientation for ``Orientationd`` (e.g. ``"RAS"``), or None to keep the file's orientation.
        normalise: ``"zscore"`` (``NormalizeIntensityd``, channel-wise), ``"percentile"``
            (``ScaleIntensityRangePercentilesd`` to [0, 1] between ``percentiles``, clipped), or None.
        label_mode: ``"multiclass"`` (label values kept), ``"whole_tumour"`` (one channel, label > 0) or
            ``"regions"`` (one binary channel per region of ``regions``).
        regions: label-value sets for ``label_mode="regions"``; default: BRATS 2013 whole tumour, tumour core,
            enhancing tumour.
        mask_key: key of a brain mask path; when given the mask is loaded, binarised at 0.5, used to zero the
            image outside it before normalising, kept in the output and resized like the label. Combine with
            ``nonzero=True`` to compute z-score statistics inside the mask only.
        nonzero: z-score only over non-zero voxels (``NormalizeIntensityd(nonzero=True)``).
        percentiles: (lower, upper) percentiles for ``normalise="percentile"``.
        image_mode: interpolation of the image for ``Resized``: ``"area"`` (averaging, right for shrinking, e.g.
            240^3 -> 32^3) or ``"trilinear"`` (to enlarge). Labels and masks always use nearest neighbour.

    Returns:
        a ``monai.transforms.Compose`` applied to datalist entries such as those of ``nifti_case_datalist``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("keys is empty; give the keys of the modality paths, e.g. ('flair', 't1c').")
    if normalise not in ("zscore", "percentile", None):
        raise ValueError(f"normalise must be 'zscore', 'percentile' or None, got {normalise!r}.")
    if label_mode not in ("multiclass", "whole_tumour", "regions"):
        raise ValueError(f"label_mode must be 'multiclass', 'whole_tumour' or 'regions', got {label_mode!r}.")
    _check_size(spatial_size, 3)
    _check_size(pixdim, 3, "pixdim")

    if image_key is not None and image_key in keys:
        raise ValueError(f"image_key {image_key!r} is also a modality key {keys}; choose another name or None.")
    img_keys = [image_key] if image_key is not None else keys
    seg_keys = [k for k in (label_key, mask_key) if k is not None]
    all_keys = keys + seg_keys
    xforms: list = [LoadImaged(keys=all_keys, image_only=True), EnsureChannelFirstd(keys=all_keys)]
    if image_key is not None:
        xforms += [ConcatItemsd(keys=keys, name=image_key, dim=0), DeleteItemsd(keys=keys)]
    if axcodes is not None:
        xforms.append(Orientationd(keys=img_keys + seg_keys, axcodes=axcodes, labels=None))
    if pixdim is not None:
        xforms.append(
            Spacingd(
                keys=img_keys + seg_keys,
                pixdim=pixdim,
                mode=["bilinear"] * len(img_keys) + ["nearest"] * len(seg_keys),
            )
        )
    if mask_key is not None:
        xforms += [BinarizeLabeld(keys=mask_key, threshold=0.5), MaskIntensityd(keys=img_keys, mask_key=mask_key)]
    if normalise == "zscore":
        xforms.append(NormalizeIntensityd(keys=img_keys, nonzero=nonzero, channel_wise=True))
    elif normalise == "percentile":
        lower, upper = percentiles
        xforms.append(
            ScaleIntensityRangePercentilesd(
                keys=img_keys, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            )
        )
    if label_key is not None:
        if label_mode == "whole_tumour":
            xforms.append(BinarizeLabeld(keys=label_key, threshold=0))
        elif label_mode == "regions":
            regions = regions if regions is not None else BRATS2013_REGIONS
            xforms.append(LabelToRegionsd(keys=label_key, regions=regions))
    if spatial_size is not None:
        xforms.append(Resized(keys=img_keys, spatial_size=spatial_size, mode=image_mode))
        if seg_keys:
            xforms.append(Resized(keys=seg_keys, spatial_size=spatial_size, mode="nearest"))
    return Compose(xforms)
