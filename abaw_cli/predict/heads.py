"""What a checkpoint predicts, read from its meta alone: the OutputSpace.

Every face's predictions become one flat float vector, so the rest of predict (smoothing, tables,
overlay, plot, submissions) never needs to know which model produced it:

    kind "mtl"     [valence, arousal, p(expression) x len(classes), p(AU) x len(aus)]
    kind "cotrain" [p(class) x len(classes)]

Probabilities, not logits: expression/class probabilities are a softmax, AU probabilities a
sigmoid, and an AU is "on" when its probability reaches the checkpoint's own threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from abaw_cli.labels import AUS, EXPRESSIONS, LSD_CLASSES, NUM_LSD_CLASSES, lsd_class_index

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
        else:
            classes = tuple(meta.get("classes") or LSD_CLASSES)
            aus, thresholds = (), np.zeros((0,), np.float32)
        return cls(kind, classes, aus, thresholds, input_size)

    # ---- layout of the value vector
    @property
    def has_va(self) -> bool:
        return self.kind == "mtl"

    @property
    def width(self) -> int:
        return (2 if self.has_va else 0) + len(self.classes) + len(self.aus)

    @property
    def class_slice(self) -> slice:
        start = 2 if self.has_va else 0
        return slice(start, start + len(self.classes))

    @property
    def au_slice(self) -> slice:
        start = self.class_slice.stop
        return slice(start, start + len(self.aus))

    @property
    def table_task(self) -> str:
        """The prediction-table flavour: "mtl" (VA, 8 expressions, AUs) or "lsd" (6 classes)."""
        return "mtl" if self.kind == "mtl" else "lsd"

    # ---- model output -> values
    def decode(self, output) -> np.ndarray:
        """(N, width) float32 probabilities/VA from a model's raw output (a tensor or a dict)."""
        if isinstance(output, dict):
            output = self._from_dict(output)
        if isinstance(output, (tuple, list)):
            output = torch.cat([o.reshape(o.shape[0], -1) for o in output], dim=1)
        logits = output.float()
        n_raw = (2 if self.has_va else 0) + len(self.classes) + len(self.aus)
        if logits.ndim != 2 or logits.shape[1] != n_raw:
            raise OutputSpaceError(f"model output has shape {tuple(logits.shape)}; expected (N, {n_raw}) for a {self.kind} checkpoint")
        parts = []
        if self.has_va:
            parts.append(logits[:, :2])
        parts.append(torch.softmax(logits[:, self.class_slice], dim=1))
        if self.aus:
            parts.append(torch.sigmoid(logits[:, self.au_slice]))
        return torch.cat(parts, dim=1).cpu().numpy().astype(np.float32)

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
