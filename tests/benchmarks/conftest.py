"""Fixtures of the benchmark-script tests: a script of ``benchmarks/`` loaded as a module in the test process (no second
start-up of torch and MONAI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """``load(name)`` imports ``benchmarks/<name>.py`` once per session and returns the module.

    The module is registered in ``sys.modules`` under its name, so dataclasses and pickling can look it up.
    """
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            path = BENCHMARKS / f"{name}.py"
            if not path.is_file():
                raise FileNotFoundError(f"no benchmark script '{path}': pass the file name without '.py'.")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
