"""Helpers of the bundle tests, offered by the ``bundle_tools`` fixture (the suite imports with
``--import-mode=importlib``, so helpers are shared through a fixture, not an import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[2]


def run_bundle(config: str | list[str], *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <config> <args>`` from the repository root, one thread; asserts
    success and returns the finished process."""
    config_file = config if isinstance(config, str) else "[" + ",".join(f"'{c}'" for c in config) + "]"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def bundle_parser(bundle: str, *names: str, **overrides) -> ConfigParser:
    """A parser of ``bundles/<bundle>/configs/<names...>`` with its metadata, ``bundle_root`` absolute, overrides set."""
    configs = ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / n) for n in names])
    parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(ROOT / "bundles" / bundle), **overrides})
    return parser


def error_messages(fn) -> str:
    """Run ``fn`` and return the messages of the raised exception and its causes (MONAI wraps config errors)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        messages, err = [], e
        while err is not None:
            messages.append(str(err))
            err = err.__cause__ or err.__context__
        return " | ".join(messages)
    raise AssertionError("no exception was raised")


@pytest.fixture(scope="session")
def bundle_tools() -> SimpleNamespace:
    return SimpleNamespace(
        root=ROOT,
        run=run_bundle,
        parser=bundle_parser,
        errors=error_messages,
        # tiny TTGA segmenter and few-view, few-iteration TTGA settings
        ttga_segmenter=["--segmenter_channels", "[4,8]", "--segmenter_strides", "[2]"],
        ttga_views=dict(num_views=2, min_iterations=1, max_iterations=2, inversion_stride=100),
        ttga_views_cli=["--num_views", "2", "--min_iterations", "1", "--max_iterations", "2", "--inversion_stride",
                        "100"],
    )
