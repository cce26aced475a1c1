"""Shared pytest fixtures: tiny threads, real-data folder that skips cleanly when absent."""

from __future__ import annotations

import os

import pytest
import torch

from monai_genaug.utils.paths import shared_data_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
