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
"""``bash .ci/install_label_env`` when the main environment is a virtual environment (issue #22).

The main environment here is a venv made by the test on top of this interpreter, holding a module that only it has
(as torch / monai_genaug live only in a user's venv). The label venv must see that module: before the fix its
``--system-site-packages`` pointed at the base interpreter and the server failed with "No module named 'torch'".
Installs MONAI Label from PyPI (about a minute; skipped when PyPI cannot be reached).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_install_label_env_from_a_venv(tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable")
    main = tmp_path / "main_venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(main)], check=True)
    site = subprocess.run([str(main / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "only_in_main_venv.py").write_text("VALUE = 22\n")
    label = tmp_path / "label_venv"
    env = {**os.environ, "PATH": f"{main / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(main)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(REPO / ".ci" / "install_label_env"), str(label)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "installed" in proc.stdout
    check = subprocess.run(
        [str(label / "bin" / "python"), "-c",
         "import only_in_main_venv, monailabel, monai_genaug, torch; print(only_in_main_venv.VALUE, monailabel.__version__)"],
        env=env, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.split() == ["22", "0.8.5"]
    again = subprocess.run(["bash", str(REPO / ".ci" / "install_label_env"), str(label)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and "is ready" in again.stdout  # idempotent: the second run only checks
