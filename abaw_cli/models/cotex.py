"""Masked CoTEX: two ViT "views" of a face, each seeing a different random subset of its patches.

    model = build_masked_cotex(model_config)   # or registry.build_model("cotrain", model_config)
    model.eval(); logits = model(x)            # x: (N, 3, S, S) RGB in [0, 1] -> (N, 6) = sum of views
    model.train(); per_view = model(x, return_views=True)   # (2, N, 6), each view token-dropped

Each view is a plain timm VisionTransformer (models/vit.create_vit) with a 6-class head on the cls
token. In training every view drops a fraction `mask_ratio` of its patch tokens, with its own noise
for every sample (vit.encode_tokens: position embeddings are added BEFORE the drop, the cls token
and its position embedding are prepended AFTER it), so the two views look at different parts of
the face and make more independent errors. Inference keeps every token and predicts the argmax of
the SUM of both views' logits. The ImageNet normalisation lives inside the model.

model_config (plain dict, stored in the checkpoint; the registry rebuilds the model from it):
    vit         {"size", "input_size", "patch_size", "embed_dim", "depth", "num_heads", "drop_path"}
    num_views   2
    classes     class names in logit order (labels.LSD_CLASSES)
    mask_ratio   the training-time token drop rate r
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from abaw_cli.labels import LSD_CLASSES
from abaw_cli.models.registry import register
from abaw_cli.models.vit import ImageNormalize, encode_tokens, vit_from_config, vit_group_matcher


class ViewOutputs(NamedTuple):
    logits: torch.Tensor  # (V, N, C)
    masks: torch.Tensor | None  # (V, N, L) 1 = dropped patch token, None when nothing was dropped


class MaskedCoTEX(nn.Module):
    def __init__(self, views: list[nn.Module], classes: tuple[str, ...] = LSD_CLASSES, mask_ratio: float = 0.5):
        super().__init__()
        if len(views) < 1:
            raise ValueError("Masked CoTEX needs at least one view (two for co-training)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.views = nn.ModuleList(views)
        self.classes = tuple(classes)
        self.mask_ratio = float(mask_ratio)
        self.normalize = ImageNormalize()
        grid = views[0].patch_embed.grid_size
        self.input_size = int(grid[0] * views[0].patch_embed.patch_size[0])

    @property
    def num_views(self) -> int:
        return len(self.views)

    def forward_views(self, x: torch.Tensor, mask_ratio: float | None = None) -> ViewOutputs:
        """Logits of every view. `mask_ratio` None = the model's rate in training, 0 in eval.

        Each view draws its own noise (vit.random_masking), so masks differ between views and
        between the samples of a batch.
        """
        rate = (self.mask_ratio if self.training else 0.0) if mask_ratio is None else float(mask_ratio)
        x = self.normalize(x)
        logits, masks = [], []
        for view in self.views:
            features, mask, _ = encode_tokens(view, x, mask_ratio=rate)
            logits.append(view.forward_head(features))
            masks.append(mask)
        return ViewOutputs(torch.stack(logits), torch.stack(masks) if rate > 0 else None)

    def forward(self, x: torch.Tensor, return_views: bool = False, mask_ratio: float | None = None) -> torch.Tensor:
        """(N, C) summed logits (the prediction), or (V, N, C) per-view logits with return_views."""
        logits = self.forward_views(x, mask_ratio).logits
        return logits if return_views else logits.sum(dim=0)

    # ---- optimiser support: both views share layer ids for layer-wise lr decay
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return vit_group_matcher(r"views\.\d+\.")

    def no_weight_decay(self) -> set[str]:
        return {f"views.{i}.{name}" for i in range(self.num_views) for name in ("cls_token", "pos_embed")}


@register("cotrain")
def build_masked_cotex(model_config: dict) -> MaskedCoTEX:
    """Two (or `num_views`) freshly initialised views; encoder weights are loaded by the caller."""
    classes = tuple(model_config.get("classes", LSD_CLASSES))
    views = [vit_from_config(model_config["vit"], num_classes=len(classes)) for _ in range(int(model_config.get("num_views", 2)))]
    return MaskedCoTEX(views, classes=classes, mask_ratio=float(model_config.get("mask_ratio", 0.5)))
