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
"""A progress bar for any Ignite engine (evaluators: one tick per case; trainers: one per iteration), on stderr."""

from __future__ import annotations

import sys

from ignite.handlers import ProgressBar

from monai_genaug.utils.options import tqdm_disable

__all__ = ["progress_bar"]


def progress_bar(progress: bool | str | None = None, desc: str = "cases") -> ProgressBar:
    """An Ignite ``ProgressBar`` on stderr, shown only when stderr is a terminal (tqdm's ``disable=None``).

    Use as a bundle handler: ``{"_target_": "monai_genaug.handlers.progress_bar", "progress": "@progress"}``.

    Args:
        progress: true: show on a terminal; false: never; None: the process-wide setting
            (:func:`monai_genaug.utils.options.set_progress`).
        desc: the bar's label.
    """
    return ProgressBar(persist=False, desc=desc, file=sys.stderr, disable=tqdm_disable(progress))
