r"""The project's one ViT: timm's VisionTransformer with fixed 2-D sin-cos position embeddings.

Used by MAE pretraining (`models/mae.py`), EMMA (`models/emma.py`) and Masked CoTEX
(`models/cotex.py`). Everything here works on a plain `timm.models.vision_transformer.VisionTransformer`,
so the state-dict keys are timm's, which are also the official MAE encoder keys (cls_token,
pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*):
no rename is ever needed between our encoder.pt, the public mae_pretrain_vit_*.pth and timm.

API
- VIT_SIZES: size presets {"micro" (tests), "tiny", "small", "base", "large"} -> (embed_dim, depth, heads).
- create_vit(size, input_size, patch_size, drop_path, num_classes=0, global_pool="token", ...)
    -> VisionTransformer whose `pos_embed` is the MAE sin-cos table, frozen (requires_grad=False).
    The ViT itself expects ImageNet-normalised input: wrap it with `ImageNormalize` (models take
    float RGB in [0, 1], see CONTRACTS), e.g. `vit(normalize(x))`.
- mae_sincos_pos_embed(dim, (gh, gw), cls_token=True) -> (1, [1+] gh*gw, dim) tensor, MAE layout.
- patch_tokens(vit, x) -> (N, L, D) patch tokens with their position embedding added (no cls yet).
- random_masking(tokens, mask_ratio, noise=None, generator=None) -> MaskedTokens(kept, mask, ids_restore, ids_keep)
    MAE's per-sample masking: keep the int(L*(1-ratio)) tokens with the smallest noise; mask is 1 = removed.
- encode_tokens(vit, x, mask_ratio=0.0, noise=None, generator=None) -> (features, mask, ids_restore)
    pos-embed added BEFORE dropping, cls (+ its pos) prepended AFTER, then blocks + norm. With
    mask_ratio 0 and no noise this equals vit.forward_features(x). `vit.forward_head(features)` then
    pools (cls token or mean of the visible tokens) and applies the head: that is Masked CoTEX's view.
- load_encoder_weights(vit, path_or_state) -> EncoderLoadReport: loads our encoder.pt, an MAE
    checkpoint-last.pt, the public mae_pretrain_vit_*.pth ({"model": ...}) or a bare state dict;
    drops head/fc_norm/decoder/mask_token keys, resizes pos_embed when the grid differs (bicubic,
    like MAE's interpolate_pos_embed) and raises EncoderLoadError if an encoder key is missing or
    has the wrong shape.
- encoder_spec(path_or_state) -> {"embed_dim", "depth", "num_heads", "patch_size", "input_size", "size"}
    read from encoder.pt meta, or inferred from the tensor shapes of a public file.
- vit_group_matcher(prefix_regex) -> group_matcher dict for `timm.optim.param_groups_layer_decay` when
    the ViT sits inside a wrapper module under `prefix_regex` (e.g. r"vit\.").
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from abaw_cli.config import ConfigError

log = logging.getLogger(__name__)

# (embed_dim, depth, num_heads); mlp_ratio 4 everywhere. "micro" exists for fast tests only.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys of a checkpoint that never belong to the encoder (classifier heads, MAE decoder).
_NON_ENCODER_PREFIXES = ("head.", "fc_norm.", "decoder_", "mask_token")
GLOBAL_POOLS = ("token", "avg")
_HEADS_BY_DIM = {64: 2, 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class EncoderLoadError(ValueError):
    """An encoder checkpoint that does not fit the ViT it is loaded into."""


@dataclass
class ViTConfig:
    """The ViT fields of every stage's model config (defaults: ViT-B/16 at 224); None = the
    size's value."""

    size: str = "base"
    input_size: int = 224
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None


@dataclass
class FineTuneViTConfig(ViTConfig):
    """A ViT that is fine-tuned (train-mtl, cotrain): the paper's drop-path 0.1 and CLS pooling."""

    drop_path: float = 0.1
    # token: the CLS token after `norm` (the paper); avg: the mean patch token through a fresh
    # `fc_norm`, as MAE fine-tunes (MAE trains the CLS token only as a passenger).
    global_pool: str = "token"


class ImageNormalize(nn.Module):
    """[0, 1] RGB -> ImageNet-normalised; buffers are not persistent so they never enter state dicts."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def mae_sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """The MAE 2-D sin-cos table, shape (1, [1+] gh*gw, dim), tokens in row-major order.

    MAE layout: channels [sin(w), cos(w), sin(h), cos(h)], each dim/4 wide with
    omega_k = 1/10000^(k/(dim/4)); the cls row is zeros. timm's build_sincos2d_pos_embed uses the
    same frequencies but orders channels [sin(h), sin(w), cos(h), cos(w)], so only a channel
    permutation is needed (checked against a direct NumPy transcription of the formula in tests).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4 (got {dim})")
    q = dim // 4
    emb = build_sincos2d_pos_embed(list(grid), dim=dim, temperature=10000.0)  # (gh*gw, dim)
    sin_h, sin_w, cos_h, cos_w = emb.split(q, dim=1)
    emb = torch.cat([sin_w, cos_w, sin_h, cos_h], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def create_vit(
    size: str = "base",
    input_size: int = 224,
    patch_size: int = 16,
    drop_path: float = 0.0,
    num_classes: int = 0,
    global_pool: str = "token",
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
) -> VisionTransformer:
    """A timm ViT (qkv bias, LayerNorm eps 1e-6, mlp 4x) with the frozen MAE sin-cos pos embed.

    `embed_dim`/`depth`/`num_heads` override the size preset. global_pool="token" keeps `norm`
    (what MAE pretrain files carry); "avg" uses fc_norm over the patch tokens.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose from {', '.join(VIT_SIZES)}")
    if input_size % patch_size:
        raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
    d, n, h = VIT_SIZES[size]
    vit = VisionTransformer(
        img_size=input_size,  # timm's name
        patch_size=patch_size,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=embed_dim or d,
        depth=depth or n,
        num_heads=num_heads or h,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=drop_path,
    )
    with torch.no_grad():
        vit.pos_embed.copy_(mae_sincos_pos_embed(vit.embed_dim, vit.patch_embed.grid_size))
    vit.pos_embed.requires_grad_(False)
    return vit


def patch_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) normalised images -> (N, L, D) patch tokens + their position embeddings."""
    return vit.patch_embed(x) + vit.pos_embed[:, vit.num_prefix_tokens :, :]


class MaskedTokens(NamedTuple):
    kept: torch.Tensor  # (N, K, D) visible tokens, in noise order
    mask: torch.Tensor  # (N, L) 0 = kept, 1 = removed, in the original token order
    ids_restore: torch.Tensor  # (N, L) gather index that undoes the shuffle
    ids_keep: torch.Tensor  # (N, K) original positions of the kept tokens


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """Per-sample random masking (MAE): keep int(L * (1 - mask_ratio)) tokens, smallest noise first.

    `noise` (N, L) in [0, 1) makes the mask reproducible (the MAE data pipeline draws it per sample,
    so a mask does not depend on batch composition or rank); otherwise it is drawn here.
    """
    n, length, dim = tokens.shape
    len_keep = int(length * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no token out of {length}")
    if noise is None:
        noise = torch.rand(n, length, device=tokens.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return MaskedTokens(kept, mask, ids_restore, ids_keep)


def encode_tokens(
    vit: VisionTransformer,
    x: torch.Tensor,
    mask_ratio: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run the encoder on the visible tokens only: (features (N, 1+K, D) after norm, mask, ids_restore).

    `x` is ImageNet-normalised. mask/ids_restore are None when nothing is dropped.
    """
    tokens = patch_tokens(vit, x)
    mask = ids_restore = None
    if mask_ratio > 0 or noise is not None:
        tokens, mask, ids_restore, _ = random_masking(tokens, mask_ratio, noise, generator)
    cls = (vit.cls_token + vit.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
    h = vit.pos_drop(torch.cat([cls, tokens], dim=1))
    h = vit.norm_pre(h)
    h = vit.blocks(h)
    return vit.norm(h), mask, ids_restore


def vit_group_matcher(prefix: str = "") -> dict[str, Any]:
    r"""Layer groups for layer-wise lr decay when the ViT lives under `prefix` in a wrapper module.

    `prefix` is a regular expression for the ViT's attribute path, e.g. r"vit\." or r"views\.\d+\."
    (two ViTs share layer ids). Return it from the wrapper's `group_matcher(self, coarse=False)`.
    Parameters outside the ViT (heads, other branches) match no group and get the top-layer lr.
    """
    p = prefix
    return {
        "stem": rf"^{p}(?:cls_token|pos_embed|patch_embed)",
        "blocks": [(rf"^{p}blocks\.(\d+)", None), (rf"^{p}norm\.", (99999,))],
    }


def vit_meta(vit: VisionTransformer, size: str | None = None) -> dict[str, Any]:
    """The facts needed to rebuild `vit` (stored as encoder.pt "meta")."""
    gh, gw = vit.patch_embed.grid_size
    ph, _ = vit.patch_embed.patch_size
    return {
        "arch": "vit",
        "size": size,
        "input_size": int(gh * ph),
        "patch_size": int(ph),
        "embed_dim": int(vit.embed_dim),
        "depth": len(vit.blocks),
        "num_heads": int(vit.blocks[0].attn.num_heads),
        "pos_embed": "sincos2d-mae",
        "input": "float RGB in [0,1], ImageNet mean/std applied by the wrapping model",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


@dataclass
class EncoderLoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # decoder/head keys dropped, or keys the target lacks
    missing: list[str] = field(default_factory=list)  # target keys left at their init (only heads allowed)
    resized_pos_embed: tuple[tuple[int, int], tuple[int, int]] | None = None

    def summary(self) -> str:
        s = f"{self.source}: loaded {len(self.loaded)} encoder tensors"
        if self.resized_pos_embed:
            s += f"; pos_embed grid {self.resized_pos_embed[0]} -> {self.resized_pos_embed[1]}"
        if self.ignored:
            s += f"; ignored {len(self.ignored)} ({', '.join(self.ignored[:4])}{', ...' if len(self.ignored) > 4 else ''})"
        if self.missing:
            s += f"; left at init: {', '.join(self.missing)}"
        return s


def _read_state(source: str | os.PathLike | dict) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(state dict, meta, description) from any of the accepted encoder sources."""
    if isinstance(source, dict):
        obj, name = source, "state dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise EncoderLoadError(f"{path}: no such encoder file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderLoadError(f"{path}: not a readable torch file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
        name = str(path)
    if not isinstance(obj, dict):
        raise EncoderLoadError(f"{name}: expected a dict holding a state dict, got {type(obj).__name__}")
    meta = obj.get("meta", {}) if isinstance(obj.get("meta"), dict) else {}
    if obj.get("format") == "abaw-checkpoint":
        if obj.get("kind") != "mae":
            raise EncoderLoadError(f"{name}: is a {obj.get('kind')!r} checkpoint, not an MAE encoder")
        state = {k[len("encoder.") :]: v for k, v in obj["model"].items() if k.startswith("encoder.")}
        meta = obj.get("model_config", {})
    elif isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    else:
        state = obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderLoadError(f"{name}: does not hold a state dict of tensors")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta, name


def load_encoder_weights(vit: VisionTransformer, source: str | os.PathLike | dict | InitEncoder) -> EncoderLoadReport:
    """Load MAE encoder weights into `vit` (see module docstring); raise if an encoder key is missing."""
    if isinstance(source, InitEncoder):
        state, name = source.state, source.source
    else:
        state, _, name = _read_state(source)
    report = EncoderLoadReport(source=name)
    state = dict(state)
    for k in list(state):
        if k.startswith(_NON_ENCODER_PREFIXES):
            report.ignored.append(k)
            del state[k]
    target = vit.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != target["pos_embed"].shape:
        old = state["pos_embed"]
        n_old = old.shape[1] - vit.num_prefix_tokens
        s_old = int(math.isqrt(n_old))
        if s_old * s_old != n_old or old.shape[2] != target["pos_embed"].shape[2]:
            raise EncoderLoadError(f"{name}: pos_embed {tuple(old.shape)} cannot be resized to {tuple(target['pos_embed'].shape)}")
        new_grid = tuple(vit.patch_embed.grid_size)
        state["pos_embed"] = resample_abs_pos_embed(
            old, new_size=list(new_grid), old_size=[s_old, s_old], num_prefix_tokens=vit.num_prefix_tokens, antialias=False
        )
        report.resized_pos_embed = ((s_old, s_old), new_grid)
    head_like = tuple(p for p in _NON_ENCODER_PREFIXES[:2])
    missing = [k for k in target if k not in state]
    bad_missing = [k for k in missing if not k.startswith(head_like)]
    if bad_missing:
        raise EncoderLoadError(
            f"{name}: encoder key(s) missing: {', '.join(bad_missing[:8])}{' ...' if len(bad_missing) > 8 else ''} "
            f"({len(bad_missing)} of {len(target)}); is this a ViT of the same depth?"
        )
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target if k in state and state[k].shape != target[k].shape]
    if mismatched:
        raise EncoderLoadError(f"{name}: shape mismatch (checkpoint vs model): {'; '.join(mismatched[:6])}")
    for k in list(state):
        if k not in target:  # e.g. norm.* when the target pools with fc_norm ("avg"), like MAE fine-tuning
            report.ignored.append(k)
            del state[k]
    vit.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    report.missing = missing
    log.info("encoder weights: %s", report.summary())
    return report


@dataclass
class InitEncoder:
    """An `--init` encoder file, read once: its weights and the ViT architecture they fit."""

    source: str
    state: dict[str, torch.Tensor]
    architecture: dict[str, Any]  # size, input_size, patch_size, embed_dim, depth, num_heads
    records_heads: bool  # the head count comes from the file's meta, not from the standard sizes


def read_init_encoder(path: str | os.PathLike) -> InitEncoder:
    """Read our encoder.pt, an MAE checkpoint-last.pt or a public mae_pretrain_vit_*.pth once."""
    state, meta, name = _read_state(path)
    return InitEncoder(name, state, *_architecture(state, meta, name))


def _architecture(state: dict[str, torch.Tensor], meta: dict, name: str) -> tuple[dict[str, Any], bool]:
    """(architecture, whether the file records its head count). Width, depth and patch size come
    from the tensors; input size and heads from the meta when it records them, else from the grid
    of pos_embed and the standard ViT of that width (heads None when there is none)."""
    try:
        proj = state["patch_embed.proj.weight"]
        n_tokens = state["pos_embed"].shape[1] - 1
    except KeyError as exc:
        raise EncoderLoadError(f"{name}: no {exc.args[0]} key: not a ViT encoder state dict") from exc
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    size = meta.get("size") or next((s for s, (d, n, _) in VIT_SIZES.items() if d == dim and n == depth), None)
    recorded = meta.get("num_heads") or (VIT_SIZES[meta["size"]][2] if meta.get("size") in VIT_SIZES else None)
    heads = recorded or _HEADS_BY_DIM.get(dim)
    architecture = {"size": size, "input_size": int(meta.get("input_size") or math.isqrt(n_tokens) * patch),
                    "patch_size": patch, "embed_dim": dim, "depth": depth, "num_heads": None if heads is None else int(heads)}
    return architecture, recorded is not None


def encoder_spec(source: str | os.PathLike | dict) -> dict[str, Any]:
    """Architecture of an encoder file or state dict (see `_architecture`)."""
    state, meta, name = _read_state(source)
    return _architecture(state, meta, name)[0]


def resolve_vit_config(model: FineTuneViTConfig, init: InitEncoder | None, preset: str = "") -> dict[str, Any]:
    """The ViT architecture of train-mtl and cotrain, every number explicit (a model_config "vit").

    The one rule for `--init`: the encoder file decides the
    width, depth and patch size (its weights only fit that shape) and the preset's are replaced,
    with a log line when they differ. Its head count is the one the file records (our encoder.pt);
    a file that records none (the public MAE files) takes the configured count when the configured
    width is the file's, else that of the standard ViT of its width (ViT-Ti 3, S 6, B 12, L 16),
    and a width of no standard ViT is refused. The input size always stays the configured one
    (pos_embed is resampled on load).
    """
    if model.size not in VIT_SIZES:
        raise ConfigError(f"unknown ViT size {model.size!r}; choose from {', '.join(VIT_SIZES)}")
    dim, depth, heads = VIT_SIZES[model.size]
    vit = {
        "size": model.size, "input_size": int(model.input_size), "patch_size": int(model.patch_size),
        "embed_dim": int(model.embed_dim or dim), "depth": int(model.depth or depth),
        "num_heads": int(model.num_heads or heads), "drop_path": float(model.drop_path),
        "global_pool": model.global_pool,
    }
    if model.global_pool not in GLOBAL_POOLS:
        raise ConfigError(f"model.global_pool must be one of {', '.join(GLOBAL_POOLS)} (got {model.global_pool!r})")
    if model.input_size % model.patch_size:
        raise ConfigError(f"input size {model.input_size} is not a multiple of the patch size {model.patch_size}")
    if init is None:
        return vit
    found = {k: init.architecture[k] for k in ("embed_dim", "depth", "patch_size", "num_heads")}
    if not init.records_heads and found["embed_dim"] == vit["embed_dim"]:
        found["num_heads"] = vit["num_heads"]
    if found["num_heads"] is None:
        raise EncoderLoadError(
            f"--init {init.source}: a ViT of width {found['embed_dim']} matches no standard ViT and the file does "
            f"not record its head count; set model.embed_dim {found['embed_dim']} and model.num_heads in the config"
        )
    configured = {k: vit[k] for k in found}
    if found != configured:
        log.info("ViT architecture taken from %s: %s (preset %s configured %s)", init.source, found, preset or "-", configured)
    vit.update(found, size=init.architecture["size"] or vit["size"])
    return vit


def vit_from_config(vit: dict[str, Any], num_classes: int = 0) -> VisionTransformer:
    """A fresh ViT from a model_config "vit" dict (`resolve_vit_config`; CLS pooling unless it says avg)."""
    return create_vit(
        size=vit.get("size") or "base", input_size=int(vit["input_size"]), patch_size=int(vit["patch_size"]),
        drop_path=float(vit.get("drop_path", 0.0)), num_classes=num_classes, global_pool=vit.get("global_pool", "token"),
        embed_dim=vit.get("embed_dim"), depth=vit.get("depth"), num_heads=vit.get("num_heads"),
    )
