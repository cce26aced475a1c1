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

"""Data: deterministic phantoms (the embedded default of every bundle), folder datasets as MONAI datalists, synthetic sets mixed into training."""

from __future__ import annotations

from .folders import (
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    SPLIT_NAMES,
    class_folder_datalist,
    load_datalist,
    nifti_case_datalist,
    paired_image_mask_datalist,
    read_spatial_size,
    split_datalist,
    split_name,
    write_datalist,
)
from .phantoms import (
    MANIFEST_NAME,
    MRI_FILE_NAMES,
    MRI_MODALITIES,
    PHANTOM_KINDS,
    main,
    make_class_phantoms,
    make_endoscopy_phantoms,
    make_grey_phantoms,
    make_mri_phantoms,
    make_sequence_phantoms,
    make_two_modality_phantoms,
    phantom_affine,
    write_phantom_dataset,
)
from .pipelines import (
    PILConvert,
    classification_2d_transforms,
    segmentation_2d_transforms,
    volume_3d_transforms,
)
from .synthetic import (
    SYNTHETIC_KEY,
    SyntheticMixDataset,
    match_class_counts,
    mix_synthetic_datalist,
    synthetic_name,
    write_synthetic_images,
)

__all__ = [
    "PHANTOM_KINDS",
    "MRI_MODALITIES",
    "MRI_FILE_NAMES",
    "MANIFEST_NAME",
    "phantom_affine",
    "make_endoscopy_phantoms",
    "make_grey_phantoms",
    "make_mri_phantoms",
    "make_sequence_phantoms",
    "make_two_modality_phantoms",
    "make_class_phantoms",
    "write_phantom_dataset",
    "main",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "SPLIT_NAMES",
    "read_spatial_size",
    "split_name",
    "paired_image_mask_datalist",
    "nifti_case_datalist",
    "class_folder_datalist",
    "split_datalist",
    "write_datalist",
    "load_datalist",
    "PILConvert",
    "segmentation_2d_transforms",
    "classification_2d_transforms",
    "volume_3d_transforms",
    "SYNTHETIC_KEY",
    "SyntheticMixDataset",
    "match_class_counts",
    "mix_synthetic_datalist",
    "synthetic_name",
    "write_synthetic_images",
]
