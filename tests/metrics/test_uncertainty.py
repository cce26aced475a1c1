"""Uncertainty maps from probability stacks and error-estimation AUC / Dice, on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from monai_genaug.metrics.uncertainty import (
    error_estimation_auc,
    error_estimation_dice,
    error_map,
    expected_entropy,
    mean_probability,
    mutual_information,
    predictive_entropy,
    predictive_variance,
    roc_auc,
    uncertainty_maps,
)


def test_binary_entropy_max_at_half_and_zero_at_certainty():
    # stack of S=2 sigmoid maps, one channel, 3 pixels: p = 0.5, 1.0, 0.0
    probs = torch.tensor([[[0.5, 1.0, 0.0]], [[0.5, 1.0, 0.0]]])  # (S, C=1, N)
    h = predictive_entropy(probs)
    assert h.shape == (1, 3)
    assert torch.allclose(h[0], torch.tensor([math.log(2.0), 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(predictive_entropy(probs, normalize=True)[0, 0], torch.tensor(1.0))
    # entropy is maximal at 0.5 among a range of probabilities
    p = torch.linspace(0.05, 0.95, 19).view(1, 1, -1).expand(3, 1, -1)
    assert int(predictive_entropy(p)[0].argmax()) == 9


def test_categorical_entropy_uniform_is_log_c():
    c = 4
    probs = torch.full((5, c, 2, 2), 1.0 / c)
    assert torch.allclose(predictive_entropy(probs), torch.full((1, 2, 2), math.log(c)), atol=1e-6)
    assert torch.allclose(predictive_entropy(probs, normalize=True), torch.ones(1, 2, 2), atol=1e-6)
    onehot = torch.zeros(5, c, 2, 2)
    onehot[:, 2] = 1
    assert torch.allclose(predictive_entropy(onehot), torch.zeros(1, 2, 2), atol=1e-6)


def test_mutual_information_zero_when_members_agree_positive_when_they_disagree():
    agree = torch.tensor([0.3, 0.7]).view(1, 2, 1).expand(4, 2, 1)  # all members say (0.3, 0.7)
    assert torch.allclose(mutual_information(agree), torch.zeros(1, 1), atol=1e-6)
    assert torch.allclose(expected_entropy(agree), predictive_entropy(agree), atol=1e-6)
    # two confident members that disagree: total entropy log 2, expected entropy 0 -> MI log 2
    disagree = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])  # (S=2, C=2, N=1)
    assert torch.allclose(mutual_information(disagree), torch.tensor([[math.log(2.0)]]), atol=1e-6)
    assert torch.allclose(expected_entropy(disagree), torch.zeros(1, 1), atol=1e-6)
    # binary layout of the same disagreement
    binary = torch.tensor([[[1.0]], [[0.0]]])
    assert torch.allclose(mutual_information(binary), torch.tensor([[math.log(2.0)]]), atol=1e-6)


def test_variance_mean_and_all_maps_consistent():
    probs = torch.tensor([[[0.0, 0.2]], [[1.0, 0.2]]])  # (S=2, C=1, N=2)
    assert torch.allclose(predictive_variance(probs), torch.tensor([[0.25, 0.0]]))
    assert torch.allclose(mean_probability(probs), torch.tensor([[0.5, 0.2]]))
    maps = uncertainty_maps(probs)
    assert set(maps) == {"mean", "entropy", "expected_entropy", "mutual_information", "variance"}
    assert torch.allclose(maps["entropy"], predictive_entropy(probs))
    assert torch.allclose(maps["mutual_information"], mutual_information(probs))
    # batch layout (S, B, C, N) with channel_dim=2
    batched = torch.stack([probs, probs], dim=1)
    assert torch.allclose(predictive_entropy(batched, channel_dim=2)[1], predictive_entropy(probs))
    assert predictive_variance(torch.rand(3, 4, 2, 5), reduce_channels=True).shape == (1, 2, 5)


def test_bad_probabilities_raise():
    with pytest.raises(ValueError, match="softmax or sigmoid"):
        predictive_entropy(torch.tensor([[[2.0]], [[-1.0]]]))
    with pytest.raises(ValueError, match="NaN"):
        predictive_entropy(torch.tensor([[[float("nan")]]]))
    with pytest.raises(ValueError, match="differ"):
        predictive_entropy(torch.rand(2, 2), sample_dim=0, channel_dim=0)


def test_roc_auc_simple_cases():
    labels = torch.tensor([0, 0, 1, 1])
    assert float(roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels)) == 1.0
    assert float(roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels)) == 0.0
    assert float(roc_auc(torch.ones(4), labels)) == 0.5  # all tied
    # hand-computed: pairs (pos, neg) = (0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes) -> 3/4
    assert float(roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels)) == pytest.approx(0.75)
    # one tie between a positive and a negative counts one half: (0.4=0.4 -> 0.5, 0.4>0.1, 0.8 > both) -> 3.5/4
    assert float(roc_auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), labels)) == pytest.approx(0.875)
    assert math.isnan(float(roc_auc(torch.rand(4), torch.zeros(4))))
    with pytest.raises(ValueError, match="same number"):
        roc_auc(torch.rand(3), torch.zeros(4))


def test_roc_auc_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) > 0.6
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    ref = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
    assert float(roc_auc(scores, labels)) == pytest.approx(float(ref), abs=1e-12)


def test_roc_auc_is_monais_and_equals_the_rank_formula():
    """The package's former hand-written ROC AUC (Mann-Whitney rank sums, ties averaged) and MONAI's
    ``compute_roc_auc`` agree to the last digit, on tied and untied scores; ``roc_auc`` now returns MONAI's value."""
    from monai.metrics import compute_roc_auc

    g = torch.Generator().manual_seed(1)
    for scores in (torch.randint(0, 7, (500,), generator=g).double(), torch.rand(500, generator=g).double()):
        labels = torch.rand(500, generator=g) > 0.7
        _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
        avg_rank = torch.cumsum(counts, 0).double() - (counts.double() - 1.0) / 2.0
        n_pos, n_neg = int(labels.sum()), int((~labels).sum())
        rank_formula = (avg_rank[inverse][labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
        monai_value = compute_roc_auc(scores, labels.long())
        assert monai_value == pytest.approx(float(rank_formula), abs=1e-12)
        assert float(roc_auc(scores, labels)) == monai_value


def test_error_estimation_auc_and_dice():
    target = torch.tensor([[0, 0, 1, 1, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 0, 1, 0]])  # wrong at positions 1 and 3
    assert error_map(pred, target).tolist() == [[False, True, False, True, False, False]]
    perfect = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.0, 0.1]])
    assert float(error_estimation_auc(perfect, pred, target)) == 1.0
    assert float(error_estimation_dice(perfect, pred, target, threshold=0.5)) == 1.0
    # flags one error and one right pixel: dice = 2*1 / (2 + 2)
    half = torch.tensor([[0.9, 0.9, 0.1, 0.1, 0.1, 0.1]])
    assert float(error_estimation_dice(half, pred, target, threshold=0.5)) == pytest.approx(0.5)
    # per-item along the batch axis
    both = error_estimation_auc(torch.cat([perfect, 1 - perfect]), pred.repeat(2, 1), target.repeat(2, 1), batch_dim=0)
    assert both.tolist() == [1.0, 0.0]
    # nothing wrong and nothing flagged: dice 1 by convention
    assert float(error_estimation_dice(torch.zeros(1, 6), target, target)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        error_map(pred, target[:, :3])
    with pytest.raises(ValueError, match="one uncertainty value per predicted pixel"):
        error_estimation_auc(torch.rand(1, 5), pred, target)
