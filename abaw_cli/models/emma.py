"""EMMA: an MAE-pretrained ViT for expressions and AUs, plus a frozen expression CNN prior for VA.

    model = build_emma(model_config)     # or registry.build_model("mtl", model_config)
    out = model(x)                       # x: (N, 3, S, S) float RGB in [0, 1] -> (N, 22)

Output layout (the paper's, and what `abaw predict` decodes):

    out[:, 0]      valence   raw linear (no tanh), like the authors' model
    out[:, 1]      arousal   raw linear
    out[:, 2:10]   8 expression logits, labels.EXPRESSIONS order     (softmax / cross-entropy)
    out[:, 10:22]  12 AU logits, labels.AUS order                    (sigmoid / BCE)

Shape of the model:
    encoder                timm ViT (models/vit.create_vit), pooled by its global_pool (CLS after `norm`, the paper), drop-path
    expression_au_head     Linear(D -> H), ReLU, Linear(H -> 20)    (768 -> 512 -> 20 for ViT-B;
                           H defaults to 2/3 of D for other widths)
    prior                  frozen expression CNN (models/priors), always in eval mode, fed the same
                           [0, 1] image and doing its own preprocessing; None for `--cnn none`
    valence_arousal_head   Linear(P + 20 -> 256), ReLU, Linear(256 -> 2) on concat[prior logits
                           (P), ViT expression+AU logits (20)]. With va_input="features" (the
                           ablation) it reads concat[prior logits, ViT CLS features (D)] instead.
The VA loss flows back into the ViT through its logits (or features); never into the prior.

model_config (plain dict in every checkpoint; the registry rebuilds the model from it alone, no
encoder or prior file needed: the weights come from the checkpoint's state dict):
    vit           {"size", "input_size", "patch_size", "embed_dim", "depth", "num_heads", "drop_path",
                   "global_pool" (token: CLS after norm, the paper; avg: mean patch token + fc_norm)}
    head_hidden   H
    va_hidden     256
    va_input      "logits" | "features"
    feature_norm  "none" (the paper) | "batch" (BatchNorm without affine on the pooled features)
    prior         the prior's `config` dict (priors.prior_from_config), or None
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from abaw_cli.labels import NUM_AUS, NUM_EXPRESSIONS
from abaw_cli.models.priors import ExpressionPrior, prior_from_config
from abaw_cli.models.registry import register
from abaw_cli.models.vit import ImageNormalize, vit_from_config

VA_SLICE = slice(0, 2)
EXPRESSION_SLICE = slice(2, 2 + NUM_EXPRESSIONS)
AU_SLICE = slice(2 + NUM_EXPRESSIONS, 2 + NUM_EXPRESSIONS + NUM_AUS)
NUM_OUTPUTS = 2 + NUM_EXPRESSIONS + NUM_AUS
VA_INPUTS = ("logits", "features")
FEATURE_NORMS = ("none", "batch")


def default_head_hidden(embed_dim: int) -> int:
    """The paper's 768 -> 512, i.e. 2/3 of the encoder width, for any width."""
    return max(8, round(embed_dim * 2 / 3))


def split_outputs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 22) -> (VA (N, 2), expression logits (N, 8), AU logits (N, 12))."""
    return out[:, VA_SLICE], out[:, EXPRESSION_SLICE], out[:, AU_SLICE]


class EMMA(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        prior: ExpressionPrior | None,
        head_hidden: int | None = None,
        va_hidden: int = 256,
        va_input: str = "logits",
        feature_norm: str = "none",
    ):
        super().__init__()
        if va_input not in VA_INPUTS:
            raise ValueError(f"va_input must be one of {VA_INPUTS} (got {va_input!r})")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS} (got {feature_norm!r})")
        self.normalize = ImageNormalize()
        self.encoder = encoder
        embed_dim = int(encoder.embed_dim)
        head_hidden = head_hidden or default_head_hidden(embed_dim)
        # "batch": standardise the pooled features over the batch (BatchNorm without affine, as MAE's
        # linear probe does) before the heads; "none" (the paper) feeds them as they come.
        self.feature_norm = nn.BatchNorm1d(embed_dim, affine=False) if feature_norm == "batch" else nn.Identity()
        self.expression_au_head = nn.Sequential(
            nn.Linear(embed_dim, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, NUM_EXPRESSIONS + NUM_AUS)
        )
        self.prior = prior.freeze() if prior is not None else None
        self.va_input = va_input
        prior_width = prior.num_outputs if prior is not None else 0
        vit_width = NUM_EXPRESSIONS + NUM_AUS if va_input == "logits" else embed_dim
        self.valence_arousal_head = nn.Sequential(
            nn.Linear(prior_width + vit_width, va_hidden), nn.ReLU(inplace=True), nn.Linear(va_hidden, 2)
        )
        grid = encoder.patch_embed.grid_size
        self.input_size = int(grid[0] * encoder.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] -> (N, 22) = [V, A, 8 expression logits, 12 AU logits]."""
        return self.forward_with_prior(x)[0]

    def forward_with_prior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (N, 22) output and the prior's own (N, P) expression logits in its native class
        order (prior.class_names; None without a prior). Predict reports the prior's reading
        beside the model's: the prior learned real faces even when the ViT heads did not."""
        encoder = self.encoder
        features = encoder.forward_head(encoder.forward_features(self.normalize(x)), pre_logits=True)  # pooled, (N, D)
        features = self.feature_norm(features)
        vit_logits = self.expression_au_head(features)
        va_inputs = [vit_logits if self.va_input == "logits" else features]
        prior_logits = self.prior(x) if self.prior is not None else None
        if prior_logits is not None:
            va_inputs.insert(0, prior_logits.to(vit_logits.dtype))
        va = self.valence_arousal_head(torch.cat(va_inputs, dim=1))
        return torch.cat([va, vit_logits], dim=1), prior_logits

    # ---- optimiser support (engine.default_param_groups)
    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Layer ids for layer-wise lr decay, as MAE's fine-tuning assigns them (param_groups_lrd):
        patch/pos/cls embedding 0, block i -> i + 1, and everything after the blocks (the final
        norm and all heads) depth + 1, so the last block gets decay^1 and the heads the full lr.
        (The prior is frozen, so it never reaches an optimiser group.)"""
        depth = len(self.encoder.blocks)
        block = re.compile(r"^encoder\.blocks\.(\d+)\.")

        def layer_id(name: str) -> int:
            if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
                return 0
            match = block.match(name)
            return int(match.group(1)) + 1 if match else depth + 1

        return layer_id

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed"}


def emma_model_config(
    vit: dict[str, Any], prior: ExpressionPrior | None, head_hidden: int | None, va_hidden: int, va_input: str,
    feature_norm: str = "none",
) -> dict[str, Any]:
    """The plain-dict config that `build_emma` rebuilds the same architecture from."""
    embed_dim = int(vit["embed_dim"])
    return {
        "vit": dict(vit),
        "head_hidden": int(head_hidden or default_head_hidden(embed_dim)),
        "va_hidden": int(va_hidden),
        "va_input": va_input,
        "feature_norm": feature_norm,
        "prior": None if prior is None else prior.config,
    }


@register("mtl")
def build_emma(model_config: dict[str, Any]) -> EMMA:
    """EMMA from its model_config, weights at their init (the checkpoint's state dict fills them)."""
    return EMMA(
        encoder=vit_from_config(model_config["vit"]),
        prior=prior_from_config(model_config.get("prior")),
        head_hidden=model_config.get("head_hidden"),
        va_hidden=int(model_config.get("va_hidden", 256)),
        va_input=model_config.get("va_input", "logits"),
        feature_norm=model_config.get("feature_norm", "none"),
    )
