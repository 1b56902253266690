"""What a checkpoint predicts, read from its meta alone: the OutputSpace.

Every face's predictions become one flat float vector, so the rest of predict (smoothing, tables,
overlay, plot, submissions) never needs to know which model produced it:

    kind "mtl"     [valence, arousal, p(expression) x len(classes), p(AU) x len(aus),
                    prior p(expression) x 8]
    kind "cotrain" [p(class) x len(classes)]

Probabilities, not logits: expression/class probabilities are a softmax, AU probabilities a
sigmoid, and an AU is "on" when its probability reaches the checkpoint's own threshold.

The prior part is EMMA's frozen expression CNN read on its own: the softmax over its native
classes, put in ABAW expression order (labels.EXPRESSIONS) through its label order's map
(models/priors/label_orders.py). An ABAW class the prior lacks (FER2013 has no Other) is NaN; a
prior class ABAW lacks (AffectNet's contempt) has no column, so the 8 values then sum to less
than 1. A model trained with `--cnn none` has NaN there throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from abaw_cli.labels import AUS, EXPRESSIONS, LSD_CLASSES, NUM_EXPRESSIONS, NUM_LSD_CLASSES, lsd_class_index
from abaw_cli.models.priors.label_orders import LABEL_ORDERS

PREDICTING_KINDS = ("mtl", "cotrain")


class OutputSpaceError(ValueError):
    """A checkpoint whose meta does not say what its outputs mean."""


@dataclass(frozen=True)
class OutputSpace:
    kind: str  # "mtl" (EMMA: VA + expressions + AUs) or "cotrain" (Masked CoTEX: LSD classes)
    classes: tuple[str, ...]  # expression / class names, in logit order
    aus: tuple[str, ...]  # AU names in logit order (empty for cotrain)
    au_thresholds: np.ndarray  # (len(aus),) probability thresholds
    input_size: int  # the model's square input side, in pixels
    # EMMA's prior: native class i -> ABAW expression index (None: no ABAW class); None: no prior.
    prior_to_abaw: tuple[int | None, ...] | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "OutputSpace":
        kind = ckpt.get("kind")
        if kind not in PREDICTING_KINDS:
            raise OutputSpaceError(f"a {kind!r} checkpoint does not predict affect; predict needs {' or '.join(PREDICTING_KINDS)}")
        meta = ckpt.get("meta") or {}
        try:
            input_size = int(meta["input_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputSpaceError("checkpoint meta has no integer 'input_size'") from exc
        if kind == "mtl":
            classes = tuple(meta.get("expressions") or EXPRESSIONS)
            aus = tuple(meta.get("aus") or AUS)
            thresholds = np.asarray(meta.get("au_thresholds", [0.5] * len(aus)), dtype=np.float32)
            if thresholds.shape != (len(aus),):
                raise OutputSpaceError(f"checkpoint meta has {thresholds.size} AU thresholds for {len(aus)} AUs")
            # Tables and submissions use the ABAW label spaces; a model in another order would be misread.
            if classes != EXPRESSIONS or aus != AUS:
                raise OutputSpaceError(f"checkpoint labels {list(classes)} / {list(aus)} differ from ABAW's {list(EXPRESSIONS)} / {list(AUS)}")
            return cls(kind, classes, aus, thresholds, input_size, _prior_map(ckpt))
        classes = tuple(meta.get("classes") or LSD_CLASSES)
        return cls(kind, classes, (), np.zeros((0,), np.float32), input_size)

    # ---- layout of the value vector
    @property
    def has_va(self) -> bool:
        return self.kind == "mtl"

    @property
    def has_prior(self) -> bool:
        """An EMMA model with a prior: its reading fills the prior columns."""
        return self.prior_to_abaw is not None

    @property
    def raw_width(self) -> int:
        """Width of the model's own output (logits and VA)."""
        return (2 if self.has_va else 0) + len(self.classes) + len(self.aus)

    @property
    def width(self) -> int:
        """Width of the value vector: the decoded output, plus the 8 prior columns for mtl."""
        return self.raw_width + self.prior_slice.stop - self.prior_slice.start

    @property
    def class_slice(self) -> slice:
        start = 2 if self.has_va else 0
        return slice(start, start + len(self.classes))

    @property
    def au_slice(self) -> slice:
        start = self.class_slice.stop
        return slice(start, start + len(self.aus))

    @property
    def prior_slice(self) -> slice:
        """The prior's 8 ABAW-ordered probabilities (mtl only; empty for cotrain)."""
        start = self.au_slice.stop
        return slice(start, start + (NUM_EXPRESSIONS if self.kind == "mtl" else 0))

    @property
    def table_task(self) -> str:
        """The prediction-table flavour: "mtl" (VA, 8 expressions, AUs) or "lsd" (6 classes)."""
        return "mtl" if self.kind == "mtl" else "lsd"

    # ---- model output -> values
    def decode(self, output, prior_logits: torch.Tensor | None = None) -> np.ndarray:
        """(N, width) float32 probabilities/VA from a model's raw output (a tensor or a dict) and,
        for an EMMA model with a prior, the prior's native (N, P) logits."""
        if isinstance(output, dict):
            output = self._from_dict(output)
        if isinstance(output, (tuple, list)):
            output = torch.cat([o.reshape(o.shape[0], -1) for o in output], dim=1)
        logits = output.float()
        if logits.ndim != 2 or logits.shape[1] != self.raw_width:
            raise OutputSpaceError(f"model output has shape {tuple(logits.shape)}; expected (N, {self.raw_width}) for a {self.kind} checkpoint")
        parts = []
        if self.has_va:
            parts.append(logits[:, :2])
        parts.append(torch.softmax(logits[:, self.class_slice], dim=1))
        if self.aus:
            parts.append(torch.sigmoid(logits[:, self.au_slice]))
        if self.kind == "mtl":
            parts.append(self._prior_probabilities(prior_logits, len(logits)).to(logits.device))
        return torch.cat(parts, dim=1).cpu().numpy().astype(np.float32)

    def _prior_probabilities(self, prior_logits: torch.Tensor | None, n: int) -> torch.Tensor:
        """(n, 8) prior probabilities in ABAW order, NaN where the prior has no such class."""
        out = torch.full((n, NUM_EXPRESSIONS), float("nan"))
        if prior_logits is None or self.prior_to_abaw is None:
            return out
        if prior_logits.shape != (n, len(self.prior_to_abaw)):
            raise OutputSpaceError(f"prior output has shape {tuple(prior_logits.shape)}; expected ({n}, {len(self.prior_to_abaw)})")
        probs = torch.softmax(prior_logits.float(), dim=1).cpu()
        native = [i for i, j in enumerate(self.prior_to_abaw) if j is not None]
        out[:, [self.prior_to_abaw[i] for i in native]] = probs[:, native]
        return out

    def _from_dict(self, output: dict) -> torch.Tensor:
        def first(*names):
            for n in names:
                if n in output:
                    return output[n]
            raise OutputSpaceError(f"model output dict has keys {sorted(output)}; expected one of {names}")

        parts = []
        if self.has_va:
            parts.append(first("va", "valence_arousal"))
        parts.append(first("expression", "expr", "logits", "classes"))
        if self.aus:
            parts.append(first("au", "aus"))
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    # ---- values -> what users read
    def class_index(self, values: np.ndarray) -> np.ndarray:
        """Argmax class per row of (N, width) values (or a single (width,) vector)."""
        return np.argmax(values[..., self.class_slice], axis=-1)

    def prior_index(self, values: np.ndarray) -> np.ndarray:
        """ABAW expression index the prior finds most likely, per row; -1 where it has no reading."""
        probs = values[..., self.prior_slice]
        known = np.isfinite(probs)
        if probs.shape[-1] == 0:
            return np.full(probs.shape[:-1], -1)
        return np.where(known.any(axis=-1), np.argmax(np.where(known, probs, -np.inf), axis=-1), -1)

    def au_decisions(self, values: np.ndarray) -> np.ndarray:
        return (values[..., self.au_slice] >= self.au_thresholds).astype(np.int8)

    def lsd_scores(self, values: np.ndarray) -> np.ndarray:
        """(N, 6) scores of labels.LSD_CLASSES (in that order) from (N, width) values.

        A cotrain model's classes are matched by name (folder aliases accepted); an mtl model's
        expression probabilities give the six classes LSD shares with it (no Neutral, no Other)."""
        probs = values[..., self.class_slice]
        if self.kind == "cotrain":
            order = [lsd_class_index(c) for c in self.classes]
            if sorted(order) != list(range(NUM_LSD_CLASSES)):
                raise OutputSpaceError(f"checkpoint classes {list(self.classes)} are not the {NUM_LSD_CLASSES} LSD classes")
            scores = np.empty_like(probs)
            scores[..., order] = probs
            return scores
        names = [c.lower() for c in self.classes]
        try:
            columns = [names.index(LSD_CLASSES[i].lower()) for i in range(NUM_LSD_CLASSES)]
        except ValueError as exc:
            raise OutputSpaceError(f"checkpoint expressions {list(self.classes)} do not cover the LSD classes") from exc
        return probs[..., columns]


def _prior_map(ckpt: dict) -> tuple[int | None, ...] | None:
    """The ABAW map of an EMMA checkpoint's prior (from its model_config), None without a prior."""
    prior = (ckpt.get("model_config") or {}).get("prior")
    if not prior:
        return None
    order = prior.get("label_order")
    if order not in LABEL_ORDERS:
        raise OutputSpaceError(f"checkpoint prior has label order {order!r}; known: {', '.join(LABEL_ORDERS)}")
    return LABEL_ORDERS[order][1]
