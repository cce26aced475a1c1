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
"""Old import path ``monai_genaug.bundle.monailabel``, kept for one release: import from :mod:`monai_genaug.apps.monailabel` instead.
"""

from __future__ import annotations

import monai_genaug.apps.monailabel as _m0
from monai_genaug.apps.monailabel import *  # noqa: F401,F403

__all__ = list(_m0.__all__)
