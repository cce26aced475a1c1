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
"""Tests of the phantom generators and writers in monai_genaug.data.phantoms."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_genaug.data.phantoms import (
    MANIFEST_NAME,
    main,
    make_class_phantoms,
    make_endoscopy_phantoms,
    make_grey_phantoms,
    make_mri_phantoms,
    make_sequence_phantoms,
    make_two_modality_phantoms,
    phantom_affine,
    write_phantom_dataset,
)

# (generator, keyword arguments) of a small call of every generator
SMALL = {
    "endoscopy": (make_endoscopy_phantoms, {"spatial_size": (32, 32)}),
    "grey": (make_grey_phantoms, {"spatial_size": (32, 32)}),
    "mri": (make_mri_phantoms, {"spatial_size": (16, 16, 16)}),
    "sequence": (make_sequence_phantoms, {"num_frames": 4, "spatial_size": (16, 16)}),
    "two_modality_2d": (make_two_modality_phantoms, {"spatial_size": (32, 32)}),
    "two_modality_3d": (make_two_modality_phantoms, {"spatial_size": (16, 16, 16)}),
    "classes": (make_class_phantoms, {"spatial_size": (32, 32)}),
}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _inside_minus_outside(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean inside the mask minus mean outside it."""
    m = mask[0] > 0
    return np.array([c[m].mean() - c[~m].mean() for c in image])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_determinism_by_seed(name):
    fn, kwargs = SMALL[name]
    a, b = fn(3, seed=7, **kwargs), fn(3, seed=7, **kwargs)
    c = fn(3, seed=8, **kwargs)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not _equal(a[0], c[0])
    assert not _equal(a[0], a[1])  # samples of one call differ
    # sample i depends only on (seed, i): a shorter call is a prefix of a longer one
    assert all(_equal(x, y) for x, y in zip(fn(2, seed=7, **kwargs), a))


@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_endoscopy(size):
    data = make_endoscopy_phantoms(6, spatial_size=size, seed=1)
    assert len(data) == 6
    for s in data:
        assert set(s) == {"image", "label"}
        assert s["image"].shape == (3, *size) and s["image"].dtype == np.float32
        assert s["label"].shape == (1, *size) and s["label"].dtype == np.uint8
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert set(np.unique(s["label"])) == {0, 1}
        # the polyp is paler than the mucosa (green/blue channels brighter inside the mask)
        diff = _inside_minus_outside(s["image"], s["label"])
        assert diff[1:].min() > 0.03, diff
    areas = [s["label"].mean() for s in data]
    centres = [np.argwhere(s["label"][0]).mean(0) for s in data]
    assert np.std(areas) > 0 and np.std(centres, axis=0).min() > 1.0  # size and position vary


def test_grey():
    data = make_grey_phantoms(6, spatial_size=(48, 64), seed=2)
    for s in data:
        assert s["image"].shape == (1, 48, 64) and s["image"].dtype == np.float32
        assert s["label"].shape == (1, 48, 64) and s["label"].dtype == np.uint8
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert set(np.unique(s["label"])) == {0, 1}
        assert _inside_minus_outside(s["image"], s["label"])[0] < -0.1  # hypo-echoic lesion


def test_generation_is_fast():
    make_endoscopy_phantoms(2)  # warm-up
    start = time.perf_counter()
    data = make_endoscopy_phantoms(100, spatial_size=(64, 64))
    assert len(data) == 100
    assert time.perf_counter() - start < 3.0


def test_mri():
    data = make_mri_phantoms(3, spatial_size=(32, 32, 32), seed=0)
    for s in data:
        assert set(s) == {"flair", "t1c", "image", "label", "brain", "affine"}
        for k in ("flair", "t1c", "image"):
            assert s[k].shape == (1, 32, 32, 32) and s[k].dtype == np.float32
            assert 0.0 <= s[k].min() and s[k].max() <= 1.0
        np.testing.assert_array_equal(s["image"], s["flair"])
        assert s["label"].dtype == np.uint8 and s["brain"].dtype == np.uint8
        assert set(np.unique(s["label"])) == {0, 1, 2, 3}
        assert np.all(s["brain"][s["label"] > 0] == 1)  # the tumour lies inside the brain
        np.testing.assert_allclose(s["affine"], np.eye(4))
        lab, brain = s["label"][0], s["brain"][0] > 0
        flair, t1c = s["flair"][0], s["t1c"][0]
        healthy = brain & (lab == 0)
        assert flair[lab == 1].mean() > flair[healthy].mean() + 0.1  # FLAIR: bright oedema
        assert t1c[lab == 2].mean() > t1c[lab == 1].mean() + 0.1  # T1c: bright enhancing tumour
        assert t1c[lab == 2].mean() > t1c[lab == 3].mean() + 0.1  # ... and a dark necrotic core
        assert not np.allclose(flair, t1c)
        # a head: the background (corners) is dark, the brain is not
        assert flair[0, 0, 0] < 0.1 and flair[brain].mean() > 0.3


@pytest.mark.parametrize("num_classes, size", [(1, (32, 24, 28)), (2, (32, 24, 28)), (5, (40, 40, 40))])
def test_mri_num_classes_and_modalities(num_classes, size):
    data = make_mri_phantoms(2, size, num_classes=num_classes, modalities=("t2", "t1"), spacing=(1.0, 2.0, 0.5))
    for s in data:
        assert s["t2"].shape == (1, *size) and "flair" not in s
        np.testing.assert_array_equal(s["image"], s["t2"])
        assert set(np.unique(s["label"])) == set(range(num_classes + 1))
        np.testing.assert_allclose(np.diag(s["affine"]), [1.0, 2.0, 0.5, 1.0])


def test_sequences():
    t_frames, size = 8, (32, 32)
    data = make_sequence_phantoms(12, num_frames=t_frames, spatial_size=size, num_classes=2, seed=3)
    assert [s["label"] for s in data] == [0, 1] * 6
    for s in data:
        assert s["image"].shape == (1, t_frames, *size) and s["image"].dtype == np.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["motion"].shape == (2, t_frames, *size) and s["motion"].dtype == np.float32
        assert s["mask"].shape == (1, t_frames, *size) and s["centers"].shape == (t_frames, 2)
        assert isinstance(s["label"], int)
        frames = s["image"][0]
        # smooth: every step is smaller than the change over the whole clip
        steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
        assert steps.max() < np.abs(frames[-1] - frames[0]).mean()
        # the object is brighter than the background in every frame
        for t in range(t_frames):
            assert _inside_minus_outside(frames[t][None], s["mask"][:, t])[0] > 0.2
        # motion: zero at t = 0, and it carries the frame-0 object onto the object of frame t
        assert np.all(s["motion"][:, 0] == 0)
        m0 = s["mask"][0, 0].astype(bool)
        interior = m0 & np.roll(m0, 1, 0) & np.roll(m0, -1, 0) & np.roll(m0, 1, 1) & np.roll(m0, -1, 1)
        ys, xs = np.nonzero(interior)  # away from the edge, so rounding to a pixel cannot leave the object
        for t in (t_frames // 2, t_frames - 1):
            ty = np.clip(np.round(ys + s["motion"][0, t, ys, xs]).astype(int), 0, size[0] - 1)
            tx = np.clip(np.round(xs + s["motion"][1, t, ys, xs]).astype(int), 0, size[1] - 1)
            assert s["mask"][0, t, ty, tx].mean() > 0.98
        centre_shift = s["centers"][-1] - s["centers"][0]
        assert np.linalg.norm(centre_shift) > 2.0  # the object does move (pixels)
        c0 = np.round(s["centers"][0]).astype(int)  # the pixel at the centre travels with the centre
        np.testing.assert_allclose(s["motion"][:, -1, c0[0], c0[1]], centre_shift, atol=1.5)
        assert np.all(s["motion"][:, :, s["mask"][0, 0] == 0] == 0)  # static background

    # the class is visible: class 0 is round, class 1 elongated (second-moment anisotropy of the object)
    def anisotropy(mask: np.ndarray) -> float:
        ev = np.linalg.eigvalsh(np.cov(np.stack(np.nonzero(mask)).astype(float)))
        return float(ev[1] / ev[0])

    aniso = {c: np.mean([anisotropy(s["mask"][0, 0]) for s in data if s["label"] == c]) for c in (0, 1)}
    assert aniso[1] > aniso[0] + 0.8, aniso


@pytest.mark.parametrize("size", [(48, 48), (24, 20, 28)])
def test_two_modality(size):
    data = make_two_modality_phantoms(4, spatial_size=size, seed=4)
    for s in data:
        assert set(s) == ({"source", "target", "label"} | ({"affine"} if len(size) == 3 else set()))
        for k in ("source", "target"):
            assert s[k].shape == (1, *size) and s[k].dtype == np.float32
            assert 0.0 <= s[k].min() and s[k].max() <= 1.0
        assert s["label"].shape == (1, *size) and s["label"].dtype == np.uint8
        assert set(np.unique(s["label"])) == {0, 1}
        assert 0.002 < s["label"].mean() < 0.3  # thin structures, not a blob
        # same anatomy, opposite contrast: bright vessels in the source, dark ones in the target
        assert _inside_minus_outside(s["source"], s["label"])[0] > 0.2
        assert _inside_minus_outside(s["target"], s["label"])[0] < -0.05
        assert np.abs(s["source"] - s["target"]).mean() > 0.1


def test_class_phantoms():
    data = make_class_phantoms(12, spatial_size=(32, 40), num_classes=3, seed=5)
    assert [s["label"] for s in data] == [0, 1, 2] * 4
    for s in data:
        assert s["image"].shape == (3, 32, 40) and s["image"].dtype == np.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    # denser, larger nuclei make higher classes darker
    means = [np.mean([s["image"].mean() for s in data if s["label"] == c]) for c in range(3)]
    assert means[0] > means[1] + 0.02 > means[2] + 0.04, means
    grey = make_class_phantoms(2, spatial_size=(16, 16), channels=1)
    assert grey[0]["image"].shape == (1, 16, 16)


@pytest.mark.parametrize(
    "fn, kwargs, exc, words",
    [
        (make_endoscopy_phantoms, {"num": 0}, ValueError, "num"),
        (make_endoscopy_phantoms, {"num": 2.0}, TypeError, "num"),
        (make_endoscopy_phantoms, {"num": 1, "spatial_size": (64, 64, 64)}, ValueError, "spatial_size"),
        (make_grey_phantoms, {"num": 1, "spatial_size": (64, 0)}, ValueError, "spatial_size"),
        (make_grey_phantoms, {"num": 1, "spatial_size": 64}, TypeError, "spatial_size"),
        (make_grey_phantoms, {"num": 1, "seed": -1}, ValueError, "seed"),
        (make_mri_phantoms, {"num": 1, "spatial_size": (32, 32)}, ValueError, "spatial_size"),
        (make_mri_phantoms, {"num": 1, "num_classes": 0}, ValueError, "num_classes"),
        (make_mri_phantoms, {"num": 1, "modalities": ("flair", "pd")}, ValueError, "pd"),
        (make_mri_phantoms, {"num": 1, "modalities": ()}, ValueError, "modalities"),
        (make_mri_phantoms, {"num": 1, "spacing": (1.0, -1.0, 1.0)}, ValueError, "spacing"),
        (make_sequence_phantoms, {"num": 1, "num_frames": 1}, ValueError, "num_frames"),
        (make_sequence_phantoms, {"num": 1, "num_classes": 0}, ValueError, "num_classes"),
        (make_sequence_phantoms, {"num": 1, "spatial_size": (8, 8, 8)}, ValueError, "spatial_size"),
        (make_two_modality_phantoms, {"num": 1, "spatial_size": (32,)}, ValueError, "spatial_size"),
        (make_class_phantoms, {"num": 1, "channels": 2}, ValueError, "channels"),
        (write_phantom_dataset, {"kind": "ct", "out_dir": "unused", "num": 1}, ValueError, "kind"),
        (write_phantom_dataset, {"kind": "grey", "out_dir": "unused", "num": 0}, ValueError, "num"),
        (write_phantom_dataset, dict(kind="grey", out_dir="unused", num=1, class_names=["a"]), ValueError, "only"),
        (write_phantom_dataset, dict(kind="classes", out_dir="unused", num=1, class_names=["a"]), ValueError, "per"),
        (write_phantom_dataset, dict(kind="sequence", out_dir="unused", num=2, num_classes=3), ValueError, "empty"),
    ],
)
def test_bad_arguments(fn, kwargs, exc, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=words):
        fn(**kwargs)
    assert not (tmp_path / "unused").exists()  # validation happens before anything is written


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_write_endoscopy_and_grey(tmp_path):
    out = write_phantom_dataset("endoscopy", tmp_path / "endo", 3, seed=1, spatial_size=(24, 32))
    stems = [f"phantom_{i:04d}" for i in range(3)]
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems
    ref = make_endoscopy_phantoms(3, spatial_size=(24, 32), seed=1)
    img, mask = _png(out / "images/phantom_0002.png"), _png(out / "masks/phantom_0002.png")
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    assert mask.shape == (24, 32) and set(np.unique(mask)) == {0, 255}
    np.testing.assert_allclose(img.transpose(2, 0, 1) / 255.0, ref[2]["image"], atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(mask[None] // 255, ref[2]["label"])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "endoscopy" and len(manifest["files"]) == 6
    assert not [p for p in out.rglob("*.tmp")]

    grey = write_phantom_dataset("grey", tmp_path / "grey", 2, spatial_size=(16, 20))
    assert _png(grey / "images/phantom_0001.png").shape == (16, 20)


def test_write_refuses_non_empty_and_overwrites(tmp_path):
    out = write_phantom_dataset("grey", tmp_path / "d", 3, spatial_size=(16, 16))
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_dataset("grey", out, 2, spatial_size=(16, 16))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="1 file\\(s\\) this phantom writer did not write \\(e.g. 'notes.txt'\\)"):
        write_phantom_dataset("grey", out, 2, seed=9, spatial_size=(16, 16), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and len(list((out / "images").iterdir())) == 3  # untouched
    (out / "notes.txt").unlink()
    write_phantom_dataset("grey", out, 2, seed=9, spatial_size=(16, 16), overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["phantom_0000.png", "phantom_0001.png"]
    ref = make_grey_phantoms(1, spatial_size=(16, 16), seed=9)[0]
    np.testing.assert_allclose(_png(out / "images/phantom_0000.png") / 255.0, ref["image"][0], atol=1 / 255 + 1e-6)
    # an overwrite removes the folders that only held files of the earlier data set
    mri = write_phantom_dataset("mri", tmp_path / "mri", 3, spatial_size=(8, 8, 8))
    write_phantom_dataset("mri", mri, 1, spatial_size=(8, 8, 8), overwrite=True)
    assert sorted(p.name for p in mri.iterdir()) == [MANIFEST_NAME, "case_0000"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_phantom_dataset("grey", tmp_path / "file", 1, spatial_size=(16, 16))


def test_write_mri(tmp_path):
    out = write_phantom_dataset("mri", tmp_path / "mri", 2, spatial_size=(16, 20, 12), spacing=(1.0, 1.0, 2.0))
    case = out / "case_0001"
    expected = ["Flair.nii.gz", "OTMultiClass.nii.gz", "T1c.nii.gz", "brainmask.nii.gz"]
    assert sorted(p.name for p in case.iterdir()) == expected
    ref = make_mri_phantoms(2, spatial_size=(16, 20, 12), spacing=(1.0, 1.0, 2.0))[1]
    flair, label = nib.load(case / "Flair.nii.gz"), nib.load(case / "OTMultiClass.nii.gz")
    assert flair.shape == (16, 20, 12) and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(flair.affine, ref["affine"])
    np.testing.assert_allclose(flair.header.get_zooms(), (1.0, 1.0, 2.0))
    np.testing.assert_array_equal(flair.get_fdata(dtype=np.float32), ref["flair"][0])
    np.testing.assert_array_equal(np.asarray(label.dataobj), ref["label"][0])


def test_write_sequence_and_classes(tmp_path):
    out = write_phantom_dataset(
        "sequence", tmp_path / "seq", 4, num_frames=5, spatial_size=(16, 12), class_names=["round", "long"]
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["long", "round"]
    assert sorted(p.name for p in (out / "long").iterdir()) == ["phantom_0001.nii.gz", "phantom_0003.nii.gz"]
    clip = nib.load(out / "round/phantom_0002.nii.gz")
    assert clip.shape == (16, 12, 5)  # (H, W, T)
    ref = make_sequence_phantoms(4, num_frames=5, spatial_size=(16, 12))[2]
    np.testing.assert_array_equal(np.moveaxis(clip.get_fdata(dtype=np.float32), -1, 0), ref["image"][0])

    out = write_phantom_dataset("classes", tmp_path / "cls", 6, num_classes=3, spatial_size=(16, 16))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["class_0", "class_1", "class_2"]
    assert len(list((out / "class_2").glob("*.png"))) == 2
    assert _png(out / "class_0/phantom_0000.png").shape == (16, 16, 3)
    # zero-padded default names sort in class order
    out = write_phantom_dataset("classes", tmp_path / "many", 11, num_classes=11, spatial_size=(8, 8), channels=1)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [f"class_{c:02d}" for c in range(11)]
    assert json.loads((out / MANIFEST_NAME).read_text())["class_names"] == folders
    assert _png(out / "class_10/phantom_0010.png").shape == (8, 8)


@pytest.mark.parametrize("size, ext", [((24, 24), ".png"), ((12, 16, 8), ".nii.gz")])
def test_write_two_modality(tmp_path, size, ext):
    out = write_phantom_dataset("two_modality", tmp_path / "tm", 2, spatial_size=size)
    for side in ("source", "target"):
        for sub in ("images", "masks"):
            assert sorted(p.name for p in (out / side / sub).iterdir()) == [f"phantom_000{i}{ext}" for i in range(2)]
    read = _png if ext == ".png" else (lambda p: np.asarray(nib.load(p).dataobj))
    src_m, tgt_m = read(out / f"source/masks/phantom_0001{ext}"), read(out / f"target/masks/phantom_0001{ext}")
    np.testing.assert_array_equal(src_m, tgt_m)  # same anatomy
    src, tgt = read(out / f"source/images/phantom_0001{ext}"), read(out / f"target/images/phantom_0001{ext}")
    assert src.shape == tuple(size) and not np.array_equal(src, tgt)
    if ext == ".nii.gz":
        np.testing.assert_allclose(nib.load(out / f"target/images/phantom_0000{ext}").affine, phantom_affine())


def test_cli(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "monai_genaug.data.phantoms", "--kind", "endoscopy", "--out", str(out), "--num", "3"]
        + ["--size", "20", "24"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"phantom_000{i}.png" for i in range(3)]
    assert _png(out / "images/phantom_0000.png").shape == (20, 24, 3)
    # in-process: bad arguments end with argparse's exit code 2 and a message naming the problem
    with pytest.raises(SystemExit) as err:
        main(["--kind", "grey", "--out", str(tmp_path / "bad"), "--num", "0"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["--kind", "endoscopy", "--out", str(out), "--num", "1"])  # not empty, no --overwrite


@pytest.mark.parametrize("layout", ["images_masks", "flat", "nested_nifti"])
def test_cli_overwrite_refuses_a_folder_of_user_data(tmp_path, layout, capsys):
    """Issue #21 item 5: ``--overwrite`` never adds phantom pairs into a folder it did not write."""
    user = tmp_path / "user"
    files = {
        "images_masks": ["images/patient1.png", "masks/patient1.png"],
        "flat": ["scan.png"],
        "nested_nifti": ["case_a/flair.nii.gz"],
    }[layout]
    for rel in files:
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_bytes(b"user data")
    before = sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))
    with pytest.raises(SystemExit) as err:
        main(["--kind", "endoscopy", "--out", str(user), "--num", "2", "--overwrite"])
    assert err.value.code == 2
    err_text = capsys.readouterr().err
    assert "did not write" in err_text and files[0] in err_text
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == before  # nothing added or removed


def test_overwrite_finishes_a_data_set_an_interrupted_or_concurrent_call_left(tmp_path):
    """Files of the same call without a manifest (a crash, or a second DDP rank writing at the same time) are not a
    user's data: the writer completes the set; another file in the folder is still refused."""
    out = write_phantom_dataset("grey", tmp_path / "d", 3, spatial_size=(16, 16))
    (out / MANIFEST_NAME).unlink()
    (out / "images" / "phantom_0002.png").unlink()  # as if killed before the last files and the manifest
    write_phantom_dataset("grey", out, 3, spatial_size=(16, 16), overwrite=True)
    assert (out / MANIFEST_NAME).is_file() and len(list((out / "images").iterdir())) == 3
    (out / MANIFEST_NAME).unlink()
    (out / "images" / "mine.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="'images/mine.png'"):
        write_phantom_dataset("grey", out, 3, spatial_size=(16, 16), overwrite=True)
