"""Masked multi-task losses: hand-computed values, and batches with missing labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from abaw_cli.train.losses import (
    MTLLoss,
    au_pos_weight,
    masked_au_bce,
    masked_ccc_loss,
    masked_cross_entropy,
)


def _hand_ccc(x: list[float], y: list[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cov = ((x - x.mean()) * (y - y.mean())).mean()
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_loss_masks_missing_va_per_dimension():
    pred = torch.tensor([[0.1, 0.5], [0.4, -0.2], [9.0, 9.0], [-0.3, 0.3]], requires_grad=True)
    # Row 2 has no VA at all; row 3 has valence but no arousal: only labelled values count.
    target = torch.tensor([[0.0, 0.6], [0.5, -0.1], [-5.0, -5.0], [-0.2, -5.0]])
    loss = masked_ccc_loss(pred, target)
    expected = (1 - _hand_ccc([0.1, 0.4, -0.3], [0.0, 0.5, -0.2])) + (1 - _hand_ccc([0.5, -0.2], [0.6, -0.1]))
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    # The masked row gets no gradient at all: its huge prediction does not leak into the loss.
    assert torch.all(pred.grad[2] == 0)
    assert pred.grad[3, 1] == 0
    assert torch.isfinite(pred.grad).all()


def test_ccc_loss_with_one_labelled_frame_contributes_zero():
    pred = torch.tensor([[0.1, 0.5], [0.3, 0.2]], requires_grad=True)
    target = torch.tensor([[0.2, -5.0], [-5.0, -5.0]])  # one valence label, no arousal label
    loss = masked_ccc_loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_cross_entropy_masks_and_smooths():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([0, -1, 2])
    loss = masked_cross_entropy(logits, target)
    lp = torch.log_softmax(logits.detach(), dim=1)
    expected = -(lp[0, 0] + lp[2, 2]) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    smooth = masked_cross_entropy(logits, target, label_smoothing=0.3)
    # Smoothed CE = (1 - eps) * CE + eps * mean over classes of -log p.
    smooth_expected = (0.7 * -(lp[0, 0] + lp[2, 2]) + 0.3 * -(lp[0].mean() + lp[2].mean())) / 2
    assert smooth.item() == pytest.approx(smooth_expected.item(), abs=1e-6)
    loss.backward()
    assert torch.all(logits.grad[1] == 0)


def test_au_bce_uses_pos_weight_on_fully_labelled_rows():
    logits = torch.tensor([[0.5] * 12, [-1.0] * 12, [3.0] * 12], requires_grad=True)
    target = torch.zeros(3, 12)
    target[0, :6] = 1
    target[1, 0] = -1  # one missing AU: the whole row is left out
    target[2, 11] = 1
    pos_weight = torch.arange(1.0, 13.0)
    loss = masked_au_bce(logits, target, pos_weight)

    def term(z: float, y: float, w: float) -> float:
        sig = 1 / (1 + math.exp(-z))
        return -(w * y * math.log(sig) + (1 - y) * math.log(1 - sig))

    rows = [0, 2]
    per_row = [sum(term(logits[r, j].item(), target[r, j].item(), pos_weight[j].item()) for j in range(12)) for r in rows]
    assert loss.item() == pytest.approx(sum(per_row) / 2, rel=1e-5)
    loss.backward()
    assert torch.all(logits.grad[1] == 0)


def test_pos_weight_is_negatives_over_positives_from_training_counts():
    aus = np.zeros((6, 12), dtype=np.int64)
    aus[:2, 0] = 1  # AU1: 2 positives, 3 negatives among the 5 labelled rows
    aus[:5, 10] = 1  # AU25: 5 positives, 0 negatives
    aus[5, :] = -1  # unlabeled row: ignored
    w = au_pos_weight(aus)
    assert w.shape == (12,)
    assert w[0].item() == pytest.approx(3 / 2)
    assert w[10].item() == 0.0
    assert w[1].item() == 5.0  # no positive: neg / 1, finite
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        au_pos_weight(np.zeros((3, 11)))


def test_batch_without_any_label_is_exactly_zero_with_finite_gradients():
    n = 4
    va = torch.randn(n, 2, requires_grad=True)
    expr = torch.randn(n, 8, requires_grad=True)
    au = torch.randn(n, 12, requires_grad=True)
    targets = torch.cat([torch.full((n, 2), -5.0), torch.full((n, 1), -1.0), torch.full((n, 12), -1.0)], dim=1)
    loss_fn = MTLLoss(pos_weight=torch.ones(12), label_smoothing=0.1)
    total, parts = loss_fn(va, expr, au, targets)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())
    total.backward()
    for t in (va, expr, au):
        assert t.grad is not None and torch.isfinite(t.grad).all() and torch.all(t.grad == 0)


def test_mtl_loss_sums_the_three_masked_parts():
    torch.manual_seed(0)
    n = 6
    va, expr, au = torch.randn(n, 2), torch.randn(n, 8), torch.randn(n, 12)
    targets = torch.zeros(n, 15)
    targets[:, 0:2] = torch.rand(n, 2) * 2 - 1
    targets[:, 2] = torch.tensor([0, 3, -1, 7, -1, 4], dtype=torch.float32)
    targets[:, 3:] = (torch.rand(n, 12) > 0.5).float()
    targets[1, 3:] = -1
    pw = torch.full((12,), 2.0)
    total, parts = MTLLoss(pw)(va, expr, au, targets)
    expected = (
        masked_ccc_loss(va, targets[:, :2])
        + masked_cross_entropy(expr, targets[:, 2].long())
        + masked_au_bce(au, targets[:, 3:], pw)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"loss_va", "loss_expr", "loss_au"}
