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
"""monai_genaug: generative augmentation for medical imaging, built on MONAI."""

from __future__ import annotations

from monai_genaug.bundle_errors import install_bundle_excepthook as _install_bundle_excepthook

__version__ = "0.1.0"

_install_bundle_excepthook()  # only under ``python -m monai.bundle``: the project's message ends a failing run

__all__ = ["__version__"]
