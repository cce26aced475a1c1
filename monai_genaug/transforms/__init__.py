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

"""MONAI transforms (array and dictionary variants) of monai_genaug."""

from __future__ import annotations

from .generative_tta import (
    RandGenerativeTTA,
    RandGenerativeTTAD,
    RandGenerativeTTAd,
    RandGenerativeTTADict,
)
from .io import (
    BRATS2013_REGIONS,
    BinarizeLabel,
    BinarizeLabelD,
    BinarizeLabeld,
    BinarizeLabelDict,
    LabelToRegions,
    LabelToRegionsD,
    LabelToRegionsd,
    LabelToRegionsDict,
    ScaleIntensityByDtype,
    ScaleIntensityByDtypeD,
    ScaleIntensityByDtyped,
    ScaleIntensityByDtypeDict,
    intensity_range_of,
)

__all__ = [
    "BRATS2013_REGIONS",
    "BinarizeLabel",
    "BinarizeLabeld",
    "BinarizeLabelD",
    "BinarizeLabelDict",
    "LabelToRegions",
    "LabelToRegionsd",
    "LabelToRegionsD",
    "LabelToRegionsDict",
    "RandGenerativeTTA",
    "RandGenerativeTTAd",
    "RandGenerativeTTAD",
    "RandGenerativeTTADict",
    "ScaleIntensityByDtype",
    "ScaleIntensityByDtyped",
    "ScaleIntensityByDtypeD",
    "ScaleIntensityByDtypeDict",
    "intensity_range_of",
]
