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
"""MONAI transforms (array and dictionary variants) of monai_genaug.
"""

from __future__ import annotations

from .generative_tta import (
    RandGenerativeTTA,
    RandGenerativeTTAd,
    RandGenerativeTTAD,
    RandGenerativeTTADict,
)
from .io import (
    BRATS2013_REGIONS,
    BinarizeLabel,
    BinarizeLabeld,
    BinarizeLabelD,
    BinarizeLabelDict,
    LabelToRegions,
    LabelToRegionsd,
    LabelToRegionsD,
    LabelToRegionsDict,
    ScaleIntensityByDtype,
    ScaleIntensityByDtyped,
    ScaleIntensityByDtypeD,
    ScaleIntensityByDtypeDict,
    intensity_range_of,
)
from .validation import (
    ForegroundProbabilityd,
    SplitChannelsd,
    ValidateImaged,
    ValidateLabeld,
    source_name,
    CheckLabelMapd,
)
from .pseudo_label import (
    area_matched_threshold,
    PseudoLabeler,
    PseudoLabeld,
)
from .label_corruption import (
    RandLabelCorruption,
    RandLabelCorruptiond,
)
from .intensity import (
    RandIntensityInversion,
    RandIntensityInversiond,
)
from .conditioning import (
    MaskConditionedInput,
    MaskConditionedInputd,
)

__all__ = [
    "RandGenerativeTTA",
    "RandGenerativeTTAd",
    "RandGenerativeTTAD",
    "RandGenerativeTTADict",
    "BRATS2013_REGIONS",
    "BinarizeLabel",
    "BinarizeLabeld",
    "BinarizeLabelD",
    "BinarizeLabelDict",
    "LabelToRegions",
    "LabelToRegionsd",
    "LabelToRegionsD",
    "LabelToRegionsDict",
    "ScaleIntensityByDtype",
    "ScaleIntensityByDtyped",
    "ScaleIntensityByDtypeD",
    "ScaleIntensityByDtypeDict",
    "intensity_range_of",
    "ForegroundProbabilityd",
    "SplitChannelsd",
    "ValidateImaged",
    "ValidateLabeld",
    "source_name",
    "CheckLabelMapd",
    "PseudoLabeler",
    "area_matched_threshold",
    "PseudoLabeld",
    "RandLabelCorruption",
    "RandLabelCorruptiond",
    "RandIntensityInversion",
    "RandIntensityInversiond",
    "MaskConditionedInput",
    "MaskConditionedInputd",
]
