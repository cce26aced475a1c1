"""Every bundle has the MONAI bundle layout, metadata that passes the offline schema, and a multi-GPU overlay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_genaug.utils.bundle_schema import verify_bundle_metadata

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = ["ttga", "gms", "histodiffusion", "adaptdiff", "ctrl_genaug"]


@pytest.mark.parametrize("name", NAMES)
def test_layout_metadata_and_overlay(name):
    root = BUNDLES / name
    for rel in ("LICENSE", "docs/README.md", "configs/metadata.json", "configs/logging.conf", "configs/inference.json"):
        assert (root / rel).is_file(), f"{name}: {rel} is missing"
    weights = sorted((root / "models").glob("*.pt"))
    assert weights and all(0 < w.stat().st_size < 8 * 2**20 for w in weights), f"{name}: small weights expected"
    verify_bundle_metadata(root / "configs" / "metadata.json")  # raises on a schema violation
    overlays = sorted((root / "configs").glob("multi_gpu_train*.json"))
    assert overlays, f"{name}: no multi_gpu_train*.json"
    for overlay in overlays:
        config = json.loads(overlay.read_text())
        assert {"device", "initialize", "run", "finalize"} <= set(config), f"{overlay.name}: incomplete overlay"
    assert "Multi-GPU" in (root / "docs" / "README.md").read_text(), f"{name}: docs lack a Multi-GPU section"


def test_bad_metadata_is_refused(tmp_path):
    meta = json.loads((BUNDLES / "gms" / "configs" / "metadata.json").read_text())
    meta.pop("version")
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'version' is a required property"):
        verify_bundle_metadata(bad)
