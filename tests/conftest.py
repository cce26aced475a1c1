"""Shared pytest fixtures: tiny threads, real-data folder that skips cleanly when absent, CUDA tests.

Tests marked ``gpu`` skip cleanly without CUDA (``pytest -m gpu`` runs them on a GPU machine, see
``benchmarks/device_check.py``). A test that takes a ``device`` argument runs once per device: ``cpu`` always and
``cuda`` (marked ``gpu``) when CUDA is present.
"""

from __future__ import annotations

import os

import pytest
import torch

from monai_genaug.utils.paths import shared_data_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: the devices a ``device``-taking test runs on; the CUDA case is marked ``gpu`` (selected by ``pytest -m gpu``)
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test taking a ``device`` argument (not parametrised by the test itself) over DEVICES."""
    if "device" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "device" in names:
            return
    metafunc.parametrize("device", DEVICES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` when CUDA is absent (with the reason, so ``-ra`` says why)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (a gpu test); run `pytest -m gpu` on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data():
    """The real-data folder (``$MONAI_GENAUG_DATA`` or ``../shared/data``); skip the test when absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MONAI_GENAUG_DATA to run this test)")
    return path


@pytest.fixture(scope="session")
def kvasir_dir(shared_data):
    path = shared_data / "kvasir_seg"
    if not (path / "images").is_dir():
        pytest.skip(f"Kvasir-SEG not found under {path}")
    return path


@pytest.fixture(scope="session")
def brats_dir(shared_data):
    path = shared_data / "brats2013_deepmedic"
    if not path.is_dir():
        pytest.skip(f"BRATS 2013 cases not found under {path}")
    return path


@pytest.fixture(scope="session")
def histology_dir(shared_data):
    path = shared_data / "crc_histology_samples"
    if not path.is_dir():
        pytest.skip(f"histology patches not found under {path}")
    return path


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (tests whose numbers must not depend on the thread count), then restore."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
