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
import ast
from pathlib import Path

import pytest
import torch

from monai_genaug.data.phantoms import make_class_phantoms, make_two_modality_phantoms
from monai_genaug.evaluation import (
    GlobalPoolCNN,
    Oracle,
    case_scores,
    evaluate_downstream,
    label_curve,
    label_curve_rises,
)


def _classes(num, seed=0):
    items = make_class_phantoms(num, (16, 16), num_classes=2, seed=seed)
    return torch.stack([torch.as_tensor(i["image"]) for i in items]), torch.tensor([i["label"] for i in items])


def _masks(num, seed=0):
    items = make_two_modality_phantoms(num, (16, 16), seed=seed)
    x = torch.stack([torch.as_tensor(i["source"]) for i in items]).float()
    y = torch.stack([torch.as_tensor(i["label"]) for i in items]).long()
    return x, y


def test_case_scores_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert case_scores(logits, torch.tensor([0, 0, 0]), "classification").tolist() == [1.0, 0.0, 1.0]
    pred = torch.zeros(2, 2, 1, 4)
    pred[:, 1, 0, :2] = 1.0  # foreground predicted on the first two pixels
    truth = torch.tensor([[[[1, 1, 1, 1]]], [[[0, 0, 0, 0]]]])
    # case 0: 2 TP, |P| = 2, |T| = 4 -> 4 / 6; case 1: foreground predicted on an empty truth -> 0
    assert case_scores(pred, truth, "segmentation").tolist() == pytest.approx([4 / 6, 0.0])
    with pytest.raises(ValueError, match="task"):
        case_scores(logits, torch.tensor([0, 0, 0]), "detection")


def test_global_pool_cnn_shapes_and_frames():
    net = GlobalPoolCNN(2, 3, 4, channels=(8, 16))
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 4)
    clip_net = GlobalPoolCNN(2, 1, 3, channels=(8, 16), frames=True)
    assert clip_net(torch.rand(2, 1, 5, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="dimensions"):
        net(torch.rand(2, 3, 16))


def test_classification_protocol_variants_rows_and_counts():
    x, y = _classes(24)
    test = _classes(10, seed=1)
    syn = (x[:8] + 0.01, y[:8])
    keep = [True, False] * 4
    table, counts = evaluate_downstream(
        "classification", (x[:8], y[:8]), test, 2, synthetic=syn, keep=keep, upper_bound=(x[8:], y[8:]),
        iterations=3, seeds=(0, 1),
    )
    assert table.methods() == ["real_only", "real+all", "real+filtered", "real+random", "upper_bound"]
    assert len(table) == 5 * 2 * 10  # variants x seeds x cases
    assert counts["real+filtered"] == {"num_train": 12, "num_synthetic": 4}
    assert counts["real+random"] == counts["real+filtered"]
    assert counts["upper_bound"] == {"num_train": 24, "num_synthetic": 0}
    grid, seeds, cases = table.values("real_only", "accuracy")
    assert grid.shape == (2, 10) and set(grid.reshape(-1).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="keep has"):
        evaluate_downstream("classification", (x, y), test, 2, synthetic=syn, keep=[True], iterations=1, seeds=(0,))


def test_same_seed_same_scores_and_label_curve_rises():
    x, y = _classes(64)
    test = _classes(40, seed=2)
    a, _ = evaluate_downstream("classification", (x[:8], y[:8]), test, 2, iterations=5, seeds=(3,))
    b, _ = evaluate_downstream("classification", (x[:8], y[:8]), test, 2, iterations=5, seeds=(3,))
    assert a.to_rows() == b.to_rows()
    curve = label_curve("classification", (x, y), test, 2, sizes=[2, 64], iterations=60, seeds=(0, 1))
    check = label_curve_rises(curve, "accuracy", num_resamples=300)
    assert check["sizes"] == [2, 64]
    assert check["means"][1] > check["means"][0]
    assert check["rises"]
    with pytest.raises(ValueError, match="increasing"):
        label_curve("classification", (x, y), test, 2, sizes=[8, 4])


def test_segmentation_protocol_and_mask_oracle():
    x, y = _masks(12)
    test = _masks(4, seed=5)
    table, counts = evaluate_downstream(
        "segmentation", (x[:6], y[:6]), test, 1, synthetic=(x[6:], y[6:]), keep=[True] * 3 + [False] * 3,
        iterations=2, seeds=(0,), case_ids=["p1", "p2", "p3", "p4"],
    )
    assert table.metrics() == ["dice"] and counts["real+all"]["num_synthetic"] == 6
    grid, _, cases = table.values("real+filtered", "dice")
    assert cases == ["p1", "p2", "p3", "p4"] and ((grid >= 0) & (grid <= 1)).all()
    oracle = Oracle("segmentation", 1, iterations=30, lr=1e-2).fit(x, y)
    # scored against the true masks the oracle is better than against shuffled ones
    right = oracle.score(test[0], test[1]).mean()
    wrong = oracle.score(test[0], torch.roll(test[1], 1, dims=-1).flip(-2)).mean()
    assert right > wrong


def test_class_oracle_agreement():
    x, y = _classes(64)
    test = _classes(20, seed=3)
    oracle = Oracle("classification", 2, iterations=60).fit(x, y)
    assert oracle.test_score(*test) > 0.8
    agree = oracle.score(test[0], test[1])
    disagree = oracle.score(test[0], 1 - test[1])
    assert torch.allclose(agree + disagree, torch.ones_like(agree))
    table = oracle.table({"guided": (test[0], test[1])})
    assert table.metrics() == ["oracle_accuracy"] and len(table) == 20
    with pytest.raises(RuntimeError, match="fit"):
        Oracle("classification", 2).score(test[0], test[1])


def test_evaluation_does_not_import_methods():
    root = Path(__file__).resolve().parents[2] / "monai_genaug" / "evaluation"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("monai_genaug.methods") for n in names), path


def test_evaluation_imports_without_methods_or_engines():
    """The protocol sits below the methods: importing it must not pull monai_genaug.methods in (not even through
    monai_genaug.engines, whose package imports method modules)."""
    import subprocess
    import sys

    code = ("import sys, monai_genaug.evaluation; "
            "print(sorted(m for m in sys.modules if m.startswith(('monai_genaug.methods', 'monai_genaug.engines'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
