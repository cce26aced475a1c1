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
"""The five methods, one package each (``pipeline.py``: the facade composing the generative core; ``training.py``;
``data.py``: splits, writers, evaluation glue). Nothing in the layers below (engines, networks, generative,
transforms, filters, metrics, data, utils, handlers, inferers, evaluation) imports this package:
``tests/test_layering.py`` enforces it. Every public name of the five packages is re-exported here."""

from __future__ import annotations

from . import adaptdiff, ctrl_genaug, gms, histodiffusion, ttga
from .adaptdiff import *  # noqa: F401,F403
from .ctrl_genaug import *  # noqa: F401,F403
from .gms import *  # noqa: F401,F403
from .histodiffusion import *  # noqa: F401,F403
from .ttga import *  # noqa: F401,F403

__all__ = list(dict.fromkeys(name for m in (ttga, gms, histodiffusion, adaptdiff, ctrl_genaug) for name in m.__all__))
