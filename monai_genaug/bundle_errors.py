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
"""The project's own message as the last line of a failing ``python -m monai.bundle run``.

MONAI wraps every error raised while a config component is built in ``RuntimeError("Failed to instantiate
component ...")`` (twice, with the component's whole keyword dump), so the message that names the bad option or file
ends up 10-60 lines above the end of the traceback. :func:`install_bundle_excepthook` keeps Python's full traceback
and then repeats the error below MONAI's wrappers (:func:`bundle_cause`) as the last line::

    monai_genaug: the bundle run failed: FileNotFoundError: dataset_dir '/data/x' does not exist; pass ...

It is installed when ``monai_genaug`` is imported by the ``monai.bundle`` command line (``python -m monai.bundle``)
and changes nothing else: an error without a wrapped cause prints exactly as before.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType

__all__ = ["bundle_cause", "install_bundle_excepthook", "is_bundle_command", "is_config_wrapper"]

_PREFIX = "monai_genaug: the bundle run failed:"


#: the messages of MONAI's config wrappers (``monai.utils.module.instantiate``, ``ConfigExpression.evaluate``)
_WRAPPERS = ("Failed to instantiate component", "Failed to instantiate", "Failed to evaluate")


def is_config_wrapper(exc: BaseException) -> bool:
    """True for the ``RuntimeError`` MONAI's config parser raises around the real error of a component."""
    return type(exc) is RuntimeError and str(exc).startswith(_WRAPPERS)


def bundle_cause(exc: BaseException) -> BaseException:
    """The error that names the problem: the first one of the chain (from the outermost, following ``__cause__``
    then ``__context__``) that is not a MONAI config wrapper. The project's own message wins over a library error
    it wraps (``raise ValueError(...) from e``)."""
    seen = set()
    while is_config_wrapper(exc) and id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None:
            return exc
        exc = nxt
    return exc


def _bundle_excepthook(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        previous(exc_type, exc, tb)
        try:
            root = bundle_cause(exc)
            if root is not exc and not isinstance(root, KeyboardInterrupt):
                message = " ".join(str(root).split()) or "(no message)"
                sys.stderr.write(f"\n{_PREFIX} {type(root).__name__}: {message}\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - never hide the original traceback
            traceback.print_exc()

    hook._monai_genaug = True  # type: ignore[attr-defined]
    return hook


def is_bundle_command(argv: list[str] | None = None) -> bool:
    """True when this process is MONAI's bundle command line (``python -m monai.bundle ...``)."""
    argv = sys.argv if argv is None else argv
    first = str(argv[0]).replace("\\", "/") if argv else ""
    return first.endswith("monai/bundle/__main__.py") or first.endswith("monai/bundle")


def install_bundle_excepthook(force: bool = False) -> bool:
    """Make the innermost error the last line of an uncaught exception's report in a bundle run.

    Args:
        force: install even when this process is not ``python -m monai.bundle`` (tests, custom launchers).

    Returns:
        True when the hook is (now) installed.
    """
    if getattr(sys.excepthook, "_monai_genaug", False):
        return True
    if not (force or is_bundle_command()):
        return False
    sys.excepthook = _bundle_excepthook(sys.excepthook)
    return True
