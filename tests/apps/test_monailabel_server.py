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
"""A real ``monailabel start_server`` with apps/monailabel_genaug on 127.0.0.1, queried over HTTP for TTGA and GMS.

Needs MONAI Label (``bash .ci/install_label_env`` makes ``.venv-label``; ``MONAI_GENAUG_LABEL_VENV`` points
elsewhere); skipped when it is absent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MONAI_GENAUG_LABEL_VENV", REPO / ".venv-label"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.iter_parts()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = VENV / "bin" / "monailabel"
    if not exe.is_file():
        pytest.skip(f"MONAI Label is not installed ({exe} missing; run bash .ci/install_label_env)")
    from monai_genaug.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("label")
    data = write_phantom_dataset("endoscopy", root / "phantoms", num=2, seed=5, spatial_size=(80, 72))
    studies = root / "studies"
    studies.mkdir()
    for f in sorted((Path(data) / "images").glob("*.png")):
        (studies / f.name).write_bytes(f.read_bytes())
    port = _free_port()
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    cmd = [str(exe), "start_server", "--app", str(REPO / "apps" / "monailabel_genaug"), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "models", "ttga,gms",
           # max_iterations below the config's min_iterations (20): lowered with it, not an HTTP 500 (issue #21)
           "--conf", "ttga_overrides", '{"num_views":2,"max_iterations":2}',
           "--conf", "uncertainty_dir", str(root / "uncertainty")]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail("monailabel start_server exited:\n" + (root / "server.log").read_text()[-4000:])
            try:
                with urllib.request.urlopen(url + "/info/", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("server did not answer in 120 s:\n" + (root / "server.log").read_text()[-4000:])
        yield {"url": url, "info": info, "studies": studies, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _infer(server, model: str, image: str, params: dict | None = None) -> tuple[np.ndarray, dict]:
    data = urllib.parse.urlencode({"params": json.dumps(params)}).encode() if params else b""
    req = urllib.request.Request(f"{server['url']}/infer/{model}?image={image}&output=all", method="POST", data=data)
    with urllib.request.urlopen(req, timeout=120) as r:
        parts = _multipart(r.read(), r.headers["Content-Type"])
    label = np.asarray(Image.open(io.BytesIO(parts["image"])))
    return label, json.loads(parts["params"])


def test_info_lists_both_bundles(server) -> None:
    models = server["info"]["models"]
    assert set(models) == {"ttga", "gms"}
    for m in models.values():
        assert m["type"] == "segmentation" and m["dimension"] == 2 and m["labels"] == {"polyp": 1}
    assert models["ttga"]["config"]["num_views"] == 2


@pytest.mark.parametrize("model", ["ttga", "gms"])
def test_infer_returns_label_map_on_image_grid(server, model: str) -> None:
    label, params = _infer(server, model, "phantom_0001")
    assert label.shape == (80, 72)  # the input file's grid, not the network's 64 x 64
    assert set(np.unique(label)) <= {0, 1}
    assert params["model"] == model and params["shape"] == [80, 72]
    assert set(params["label_values"]) == set(np.unique(label).tolist())
    if model == "gms":
        assert params["uncertainty"] == {}


def test_ttga_returns_entropy_map(server) -> None:
    _, params = _infer(server, "ttga", "phantom_0000")
    entropy = params["uncertainty"]["entropy"]
    assert Path(entropy["file"]).is_file() and Path(entropy["file"]).parent == server["root"] / "uncertainty"
    emb = np.asarray(Image.open(io.BytesIO(base64.b64decode(entropy["data"]))))
    on_disk = np.asarray(Image.open(entropy["file"]))
    assert emb.shape == (80, 72) and np.array_equal(emb, on_disk)
    assert 0.0 <= entropy["mean"] <= entropy["max"] <= 1.0 and entropy["max"] > 0.0
    # the map is the fused ensemble's normalised entropy, scaled to 0-255
    assert abs(emb.mean() / 255.0 - entropy["mean"]) < 0.01


def test_request_with_max_iterations_below_min_iterations_is_served(server) -> None:
    """Issue #21 item 11: a request lowering max_iterations under the config's min_iterations gets a label map."""
    label, params = _infer(server, "ttga", "phantom_0001", {"max_iterations": 1})
    assert label.shape == (80, 72) and params["model"] == "ttga"
