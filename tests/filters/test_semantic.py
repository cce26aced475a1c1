"""SemanticLossFilter: keeps samples whose classifier loss is <= alpha x their group's mean loss."""

from __future__ import annotations

import pytest
import torch

from monai_genaug.filters.semantic import SemanticLossFilter


def _classifier(x):
    """A fixed 'real-data classifier': logit of class 1 = 10 x mean intensity - 5."""
    m = x.float().flatten(1).mean(1)
    return torch.stack([torch.zeros_like(m), 10 * m - 5], dim=1)


def test_planted_misaligned_samples_are_rejected_per_group():
    # group a: three bright clips meant as class 1 (good) and one dark clip meant as class 1 (misaligned)
    # group b: clips meant as class 0, one of them bright (misaligned)
    levels = [0.9, 0.85, 0.95, 0.1, 0.1, 0.15, 0.05, 0.9]
    clips = torch.stack([torch.full((1, 4, 8, 8), v) for v in levels])
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    groups = ["a"] * 4 + ["b"] * 4
    flt = SemanticLossFilter(_classifier, alpha=1.0, groups=groups)
    result = flt(clips, labels)
    assert result.keep.tolist() == [True, True, True, False, True, True, True, False]
    assert result.scores[3] > result.scores[0] and result.scores[7] > result.scores[4]
    # the threshold is per group: alpha x group mean
    thr = result.details["thresholds"]
    assert torch.isclose(thr[0], result.scores[:4].mean()) and torch.isclose(thr[4], result.scores[4:].mean())
    # candidates from an earlier filter: the mean is over survivors only, the others are never kept
    cand = torch.tensor([True, True, True, False, True, True, True, True])
    r2 = flt(clips, labels, candidates=cand)
    assert not r2.keep[3] and r2.keep[:3].sum() >= 1
    # a larger alpha keeps more
    assert SemanticLossFilter(_classifier, alpha=100.0, groups=groups)(clips, labels).keep.all()


def test_groups_from_datalist_and_errors():
    items = [{"image": torch.full((1, 2, 4, 4), v), "label": 1, "source": s} for v, s in
             ((0.9, "x"), (0.2, "x"), (0.8, "y"), (0.85, "y"))]
    result = SemanticLossFilter(_classifier)(items)
    assert result.keep.tolist() == [True, False, True, False] or result.keep.tolist() == [True, False, False, True]
    assert result.details["groups"] == ["x", "x", "y", "y"]
    with pytest.raises(ValueError, match="group ids"):
        SemanticLossFilter(_classifier, groups=["a"])(torch.zeros(2, 1, 2, 4, 4), [0, 1])
    with pytest.raises(ValueError, match="alpha"):
        SemanticLossFilter(_classifier, alpha=0)
    with pytest.raises(ValueError, match="labels"):
        SemanticLossFilter(_classifier)(torch.zeros(2, 1, 2, 4, 4))


def test_confidence_floor_rejects_a_wholly_misaligned_group():
    # every clip of group "a" looks like class 0 but was meant as class 1: the group-relative rule keeps its better
    # half, the absolute floor (probability of the intended class >= 0.5) keeps none of it
    levels = [0.3, 0.35, 0.4, 0.45, 0.9, 0.95]
    clips = torch.stack([torch.full((1, 4, 8, 8), v) for v in levels])
    labels, groups = [1] * 6, ["a"] * 4 + ["b"] * 2
    relative = SemanticLossFilter(_classifier, groups=groups)(clips, labels)
    assert relative.keep[:4].sum() >= 1
    floored = SemanticLossFilter(_classifier, groups=groups, min_confidence=0.5)(clips, labels)
    assert floored.keep.tolist() == [False, False, False, False, floored.keep[4].item(), floored.keep[5].item()]
    assert floored.keep[4:].any()
    assert floored.details["loss_floor"] == pytest.approx(-torch.log(torch.tensor(0.5)).item())
    with pytest.raises(ValueError, match="probability in"):
        SemanticLossFilter(_classifier, min_confidence=1.5)
