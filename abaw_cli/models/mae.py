"""Masked autoencoder (He et al. 2022) around the project's timm ViT.

- Encoder: `models.vit.create_vit` run on the visible tokens only (`vit.encode_tokens`); position
  embeddings are the fixed MAE 2-D sin-cos table.
- Decoder: Linear(D -> decoder_dim), learned mask token, fixed sin-cos decoder pos embed, timm
  Blocks (qkv bias, LayerNorm eps 1e-6), LayerNorm, Linear(decoder_dim -> p*p*3).
- Loss: mean squared error on the MASKED patches only; with norm_pix_loss the target patch is
  normalised by its own mean and (unbiased) variance (+1e-6), like the released MAE models.
- Input: float RGB in [0, 1]; ImageNet normalisation happens inside (the target is the normalised
  image, as in MAE, where the data loader normalises).

Key names. The full model's state dict is `encoder.<timm ViT keys>` + the official MAE decoder names
(mask_token, decoder_embed.*, decoder_pos_embed, decoder_blocks.N.*, decoder_norm.*, decoder_pred.*).
`encoder_state_dict()` returns the encoder's own state dict, whose keys are exactly the official MAE
encoder keys (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}.*, norm.*): MAE built its encoder from timm's VisionTransformer modules, and timm
1.0's names for them are unchanged, so no rename is needed in either direction. `encoder.pt` =
{"model": encoder_state_dict(), "meta": vit_meta(...) + MAE settings} therefore loads with
`load_encoder_weights`, with the fine-tuning code of the MAE repository, and with a plain
`timm.models.vision_transformer.VisionTransformer(...).load_state_dict(..., strict=False)` reporting
no missing key other than head.* (when num_classes > 0) and no unexpected key.

Registry: kind "mae", builder(model_config) with the keys of `MAE_DEFAULTS`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from abaw_cli.models.registry import register
from abaw_cli.models.vit import ImageNormalize, create_vit, encode_tokens, mae_sincos_pos_embed, vit_meta

# model_config keys and their defaults (ViT-B/16 at 224 with the paper's decoder).
MAE_DEFAULTS: dict[str, Any] = {
    "size": "base",
    "input_size": 224,
    "patch_size": 16,
    "embed_dim": None,
    "depth": None,
    "num_heads": None,
    "mask_ratio": 0.75,
    "decoder_dim": 512,
    "decoder_depth": 8,
    "decoder_heads": 16,
    "norm_pix_loss": True,
}


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        size: str = "base",
        input_size: int = 224,
        patch_size: int = 16,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        self.size = size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.normalize = ImageNormalize()
        self.encoder = create_vit(size, input_size, patch_size, drop_path=0.0, num_classes=0, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        self.patch_size = patch_size
        self.grid = tuple(self.encoder.patch_embed.grid_size)
        dim = self.encoder.embed_dim
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(mae_sincos_pos_embed(decoder_dim, self.grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's initialisation: xavier-uniform linears (and patch projection), N(0, .02) tokens."""
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token", "decoder_pos_embed"}

    # ---- patches (MAE order: row-major patches, each (row-in-patch, col-in-patch, channel))
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.patch_size, self.grid
        x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.patch_size, self.grid
        x = x.reshape(x.shape[0], h, w, p, p, 3)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], 3, h * p, w * p)

    # ---- forward
    def forward_encoder(self, imgs_norm: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        return encode_tokens(self.encoder, imgs_norm, mask_ratio, noise)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs_norm: torch.Tensor) -> torch.Tensor:
        t = self.patchify(imgs_norm)
        if self.norm_pix_loss:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        return t

    def forward_loss(self, imgs_norm: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = ((pred.float() - self.target(imgs_norm).float()) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """imgs in [0, 1] -> (loss, pred (N, L, p*p*3), mask (N, L), 1 = masked)."""
        x = self.normalize(imgs)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if ratio <= 0:
            raise ValueError("MAE needs a mask ratio > 0")
        latent, mask, ids_restore = self.forward_encoder(x, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(x, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction with the visible patches pasted back), both in [0, 1].

        With norm_pix_loss the prediction is in per-patch normalised units; it is mapped back with
        each patch's own mean/std (the usual way MAE reconstructions of such models are shown).
        """
        x = self.normalize(imgs)
        _, pred, mask = self(imgs, noise=noise)
        pred = pred.float()
        if self.norm_pix_loss:
            t = self.patchify(x)
            pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1)
        masked = self.patchify(x) * (1 - m)
        recon = self.patchify(x) * (1 - m) + pred * m
        to01 = lambda t: self.normalize.inverse(self.unpatchify(t)).clamp(0, 1)  # noqa: E731
        masked01 = to01(masked) * (1 - self.unpatchify(m.expand(-1, -1, pred.shape[-1])))  # masked area black
        return masked01, to01(recon)

    # ---- encoder export
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().cpu() for k, v in self.encoder.state_dict().items()}

    def encoder_meta(self) -> dict[str, Any]:
        return {**vit_meta(self.encoder, self.size), "source": "abaw pretrain-mae", "mask_ratio": self.mask_ratio, "norm_pix_loss": self.norm_pix_loss}


@register("mae")
def build(model_config: dict) -> MaskedAutoencoder:
    unknown = set(model_config) - set(MAE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown MAE model_config key(s): {sorted(unknown)}")
    return MaskedAutoencoder(**{**MAE_DEFAULTS, **model_config})
