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
"""The import direction of the package: nothing below ``methods/`` imports ``methods/``.

The core packages (engines, networks, generative, transforms, filters, metrics, data, utils, handlers, inferers,
evaluation) are read as source (``ast``), so a function-local import, an import under ``TYPE_CHECKING`` or an
``importlib.import_module("monai_genaug.methods...")`` counts as well as a module-level one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monai_genaug"
CORE = (
    "engines",
    "networks",
    "generative",
    "transforms",
    "filters",
    "metrics",
    "data",
    "utils",
    "handlers",
    "inferers",
    "evaluation",
)
UPPER = "monai_genaug.methods"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (any depth, relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


#: the packages below the engines: the building blocks the trainers wire (handlers are attached by the engines)
BELOW_ENGINES = tuple(sub for sub in CORE if sub not in ("engines", "evaluation"))


def upward_imports(path: Path, upper: str = UPPER) -> list[str]:
    """The imports of ``upper`` (default ``monai_genaug.methods``) in one file, as ``file:line -> module``."""
    module = _module_name(path)
    hits = imported_modules(path.read_text(), module, is_package=path.name == "__init__.py")
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} -> {name}"
        for line, name in hits
        if name == upper or name.startswith(upper + ".")
    ]


def core_files(packages: tuple[str, ...] = CORE) -> list[Path]:
    return sorted(p for sub in packages if (PACKAGE / sub).is_dir() for p in (PACKAGE / sub).rglob("*.py"))


def test_core_packages_exist():
    missing = [sub for sub in ("engines", "networks", "generative", "transforms", "handlers") if not (PACKAGE / sub).is_dir()]
    assert not missing, missing
    assert len(core_files()) > 40


def test_no_core_module_imports_methods():
    bad = [hit for path in core_files() for hit in upward_imports(path)]
    assert not bad, "core modules must not import monai_genaug.methods (move the code up or down):\n" + "\n".join(bad)


def test_building_blocks_do_not_import_engines():
    """handlers, transforms, networks, generative, data ... sit below the engines (no import cycle through them)."""
    bad = [hit for path in core_files(BELOW_ENGINES) for hit in upward_imports(path, "monai_genaug.engines")]
    assert not bad, "building blocks must not import monai_genaug.engines:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source",
    [
        "from monai_genaug.methods.ttga import TTGAAugmenter\n",
        "def f():\n    from monai_genaug.methods import gms\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import monai_genaug.methods.gms\n",
        "import importlib\nm = importlib.import_module('monai_genaug.methods.adaptdiff')\n",
        "from ...methods import ctrl_genaug\n",
        "from ... import methods\n",
    ],
)
def test_checker_catches_every_form(tmp_path, source):
    """The checker itself: each form of an upward import is reported (so the test above can fail)."""
    fake = PACKAGE / "engines" / "_layering_probe.py"
    hits = imported_modules(source, _module_name(fake).replace("_layering_probe", "sub._probe"))
    assert any(name == UPPER or name.startswith(UPPER + ".") for _, name in hits), hits


def test_clean_source_is_not_reported():
    hits = imported_modules(
        "from monai_genaug.generative.sampler import DiffusionSampler\nfrom .ema import EMAHandler\n",
        "monai_genaug.engines.workflow",
    )
    assert [name for _, name in hits if name.startswith(UPPER)] == []
    assert ("monai_genaug.engines.ema") in [name for _, name in hits]


def test_importing_core_does_not_load_methods():
    """At run time too: importing every core package leaves ``monai_genaug.methods`` unloaded."""
    packages = [sub for sub in CORE if (PACKAGE / sub).is_dir()]
    code = (
        "import sys, importlib\n"
        f"for p in {packages!r}: importlib.import_module('monai_genaug.' + p)\n"
        "print(sorted(m for m in sys.modules if m.startswith('monai_genaug.methods')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
