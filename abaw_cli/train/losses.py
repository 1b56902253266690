"""Training losses. Every loss masks missing labels with the codes of `abaw_cli.labels`.

A batch can hold no label at all for a task (s-Aff-Wild2 frames often carry VA but no expression).
Such a task then contributes exactly zero, built from the predictions (`pred.sum() * 0`), so the
autograd graph stays intact (DDP sees every parameter used) and nothing turns into NaN.

Shapes: VA `(N, 2)`; expression logits `(N, 8)` and targets `(N,)` (int, -1 = missing);
AU logits `(N, 12)` and targets `(N, 12)` (-1 = missing; a row counts only when all 12 are >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from abaw_cli.labels import MISSING_EXPRESSION, MISSING_VA, NUM_AUS

# Denominator guard of the CCC: only matters when predictions and targets are both constant.
_CCC_EPS = 1e-8


def _zero_like_graph(pred: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that depends on `pred`: zero gradient, but the graph (and DDP's view of it) is kept."""
    return pred.sum() * 0.0


def va_mask(targets_va: torch.Tensor) -> torch.Tensor:
    """True where a valence/arousal value is labelled (not the -5 missing code)."""
    return targets_va != MISSING_VA


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient of two 1-D tensors (population moments, as the metric)."""
    pred_mean, target_mean = pred.mean(), target.mean()
    pred_c, target_c = pred - pred_mean, target - target_mean
    covariance = (pred_c * target_c).mean()
    denominator = pred_c.pow(2).mean() + target_c.pow(2).mean() + (pred_mean - target_mean).pow(2)
    return 2.0 * covariance / (denominator + _CCC_EPS)


def masked_ccc_loss(pred_va: torch.Tensor, target_va: torch.Tensor) -> torch.Tensor:
    """(1 - CCC_V) + (1 - CCC_A) over the labelled frames of each dimension.

    A dimension with fewer than 2 labelled frames has no defined CCC and contributes zero.
    """
    mask = va_mask(target_va)
    loss = _zero_like_graph(pred_va)
    for dim in range(2):
        keep = mask[:, dim]
        if int(keep.sum()) >= 2:
            loss = loss + (1.0 - ccc(pred_va[keep, dim].float(), target_va[keep, dim].float()))
    return loss


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the frames whose expression label is not -1."""
    keep = target != MISSING_EXPRESSION
    if not bool(keep.any()):
        return _zero_like_graph(logits)
    return F.cross_entropy(logits[keep].float(), target[keep].long(), label_smoothing=label_smoothing)


def au_rows_labelled(target_aus: torch.Tensor) -> torch.Tensor:
    """True for rows whose 12 AUs are all labelled (a row with any negative AU counts as missing)."""
    return (target_aus >= 0).all(dim=1)


def masked_au_bce(logits: torch.Tensor, target_aus: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """BCE-with-logits with a per-AU pos_weight over the fully labelled rows.

    Reduction as in the authors' code: the 12 per-AU terms are summed per frame and the sums are
    averaged over frames; that is 12x a per-element mean, which keeps the AU task from being
    drowned by the two other losses at the paper's weights 1/1/1.
    """
    keep = au_rows_labelled(target_aus)
    if not bool(keep.any()):
        return _zero_like_graph(logits)
    per_element = F.binary_cross_entropy_with_logits(
        logits[keep].float(), target_aus[keep].float(), pos_weight=pos_weight, reduction="none"
    )
    return per_element.sum(dim=1).mean()


def au_pos_weight(train_aus: np.ndarray) -> torch.Tensor:
    """pos_weight = negatives / positives per AU, from the TRAINING labels (fully labelled rows only).

    An AU with no positive frame gets weight neg/1 rather than infinity.
    """
    aus = np.asarray(train_aus)
    if aus.ndim != 2 or aus.shape[1] != NUM_AUS:
        raise ValueError(f"AU labels must have shape (N, {NUM_AUS}); got {aus.shape}")
    rows = aus[(aus >= 0).all(axis=1)]
    positives = (rows > 0).sum(axis=0).astype(np.float64)
    negatives = (rows == 0).sum(axis=0).astype(np.float64)
    return torch.tensor(negatives / np.maximum(positives, 1.0), dtype=torch.float32)


@dataclass
class MTLLossWeights:
    valence_arousal: float = 1.0
    expression: float = 1.0
    action_units: float = 1.0


class MTLLoss(nn.Module):
    """EMMA's loss: CCC (V and A) + cross-entropy (expression) + pos-weighted BCE (AUs), each masked.

    forward(va, expression_logits, au_logits, targets) with targets `(N, 15)` = [V, A, expr, 12 AUs]
    returns (total, {"loss_va": ..., "loss_expr": ..., "loss_au": ...}) with detached parts.
    """

    def __init__(self, pos_weight: torch.Tensor | None, label_smoothing: float = 0.0, weights: MTLLossWeights | None = None):
        super().__init__()
        # A buffer follows the module to the training device; None means plain BCE.
        self.register_buffer("pos_weight", None if pos_weight is None else pos_weight.float().clone(), persistent=False)
        self.label_smoothing = float(label_smoothing)
        self.weights = weights or MTLLossWeights()

    def forward(self, va: torch.Tensor, expression_logits: torch.Tensor, au_logits: torch.Tensor, targets: torch.Tensor):
        target_va, target_expr, target_aus = targets[:, 0:2], targets[:, 2].round().long(), targets[:, 3:]
        loss_va = masked_ccc_loss(va, target_va)
        loss_expr = masked_cross_entropy(expression_logits, target_expr, self.label_smoothing)
        loss_au = masked_au_bce(au_logits, target_aus, self.pos_weight)
        w = self.weights
        total = w.valence_arousal * loss_va + w.expression * loss_expr + w.action_units * loss_au
        parts = {"loss_va": loss_va.detach(), "loss_expr": loss_expr.detach(), "loss_au": loss_au.detach()}
        return total, parts


def js_divergence(probs_list: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence of k distributions, averaged over the batch.

    JS(p_1..p_k) = mean_i KL(p_i || m), m = mean_i p_i (Masked CoTEX's consistency term between
    its views). Each p_i is `(N, C)` probabilities. `xlogy` makes 0 * log 0 = 0, so one-hot inputs
    are fine, and m >= p_i / k > 0 wherever p_i > 0, so no epsilon is needed. Identical inputs give
    exactly zero (their mean is exact in floating point); the value is at most log(k).
    """
    if len(probs_list) < 2:
        raise ValueError(f"js_divergence needs at least two distributions, got {len(probs_list)}")
    probs = torch.stack([p.float() for p in probs_list])  # (k, N, C)
    mixture = probs.mean(dim=0, keepdim=True)
    kl_each = (torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, mixture)).sum(dim=-1)  # (k, N)
    return kl_each.mean()
