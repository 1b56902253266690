"""The ViT factory: MAE sin-cos table, token dropping, encoder loading and layer-decay groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from abaw_cli.models.vit import (
    EncoderLoadError,
    create_vit,
    encode_tokens,
    encoder_spec,
    load_encoder_weights,
    mae_sincos_pos_embed,
    patch_tokens,
    random_masking,
    vit_group_matcher,
)


def mae_table_numpy(dim: int, grid: int) -> np.ndarray:
    """Direct transcription of MAE's util/pos_embed.py formula (meshgrid w first, cls row of zeros)."""

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    coords = np.arange(grid, dtype=np.float64)
    mesh = np.stack(np.meshgrid(coords, coords), axis=0)  # mesh[0] = column (w), mesh[1] = row (h)
    emb = np.concatenate([one_axis(dim // 2, mesh[0]), one_axis(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_sincos_table_is_the_mae_layout():
    ours = mae_sincos_pos_embed(64, (7, 7))[0].double().numpy()
    np.testing.assert_allclose(ours, mae_table_numpy(64, 7), atol=1e-6)
    # first quarter is sin of the COLUMN: tokens 1 and 2 (same row, next column) differ there
    assert not np.allclose(ours[1, :16], ours[2, :16]) and np.allclose(ours[1, 32:48], ours[2, 32:48])


def test_vit_pos_embed_is_fixed_and_outside_the_optimiser():
    vit = create_vit("micro", input_size=32, patch_size=8)
    assert not vit.pos_embed.requires_grad
    assert torch.equal(vit.pos_embed, mae_sincos_pos_embed(64, (4, 4)))
    opt_params = {id(p) for g in param_groups_layer_decay(vit, 0.05, layer_decay=0.75) for p in g["params"]}
    assert id(vit.pos_embed) not in opt_params and id(vit.cls_token) in opt_params


def test_encode_tokens_without_masking_equals_timm_forward_features():
    torch.manual_seed(0)
    vit = create_vit("micro", input_size=32, patch_size=8).eval()
    x = torch.randn(3, 3, 32, 32)
    feats, mask, ids = encode_tokens(vit, x)
    assert mask is None and ids is None
    torch.testing.assert_close(feats, vit.forward_features(x))


def test_random_masking_keeps_a_quarter_and_restores_order():
    torch.manual_seed(0)
    vit = create_vit("micro", input_size=32, patch_size=8)
    tokens = patch_tokens(vit, torch.randn(2, 3, 32, 32))
    kept, mask, ids_restore, ids_keep = random_masking(tokens, 0.75)
    assert kept.shape == (2, 4, 64)
    assert mask.sum(1).tolist() == [12.0, 12.0]
    for n in range(2):  # the kept tokens are the originals at the positions the mask marks 0
        assert torch.equal(kept[n], tokens[n, ids_keep[n]])
        assert set(ids_keep[n].tolist()) == set(torch.nonzero(mask[n] == 0).flatten().tolist())
    # given noise, the mask is reproducible
    noise = torch.rand(2, 16)
    assert torch.equal(random_masking(tokens, 0.75, noise).mask, random_masking(tokens, 0.75, noise).mask)
    feats, _, _ = encode_tokens(vit, torch.randn(2, 3, 32, 32), mask_ratio=0.75)
    assert feats.shape == (2, 1 + 4, 64)
    # pooled head on dropped tokens works (Masked CoTEX's view)
    head_vit = create_vit("micro", input_size=32, patch_size=8, num_classes=6)
    assert head_vit.forward_head(encode_tokens(head_vit, torch.randn(2, 3, 32, 32), 0.5)[0]).shape == (2, 6)


def _public_style_file(vit: nn.Module) -> dict:
    """An MAE *_full-style checkpoint: encoder keys + decoder keys + mask_token under 'model'."""
    state = dict(vit.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 32)
    state["decoder_embed.weight"] = torch.zeros(32, 64)
    state["decoder_pos_embed"] = torch.zeros(1, 17, 32)
    return {"model": state}


def test_load_encoder_weights_drops_decoder_and_resizes_pos_embed(tmp_path):
    torch.manual_seed(1)
    src = create_vit("micro", input_size=32, patch_size=8)
    path = tmp_path / "mae_full.pth"
    torch.save(_public_style_file(src), path)

    same = create_vit("micro", input_size=32, patch_size=8, num_classes=6)
    report = load_encoder_weights(same, path)
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed"} <= set(report.ignored)
    assert report.missing == ["head.weight", "head.bias"]
    assert torch.equal(same.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)

    bigger = create_vit("micro", input_size=64, patch_size=8)  # 4x4 grid -> 8x8
    report = load_encoder_weights(bigger, path)
    assert report.resized_pos_embed == ((4, 4), (8, 8))
    assert bigger.pos_embed.shape == (1, 65, 64) and torch.equal(bigger.cls_token, src.cls_token)

    avg = create_vit("micro", input_size=32, patch_size=8, global_pool="avg")  # norm -> fc_norm, like MAE fine-tuning
    report = load_encoder_weights(avg, path)
    assert {"norm.weight", "norm.bias"} <= set(report.ignored)


def test_load_encoder_weights_refuses_missing_or_misshaped_keys(tmp_path):
    src = create_vit("micro", input_size=32, patch_size=8)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(EncoderLoadError, match="missing: blocks.1"):
        load_encoder_weights(create_vit("micro", input_size=32, patch_size=8), {"model": state})
    with pytest.raises(EncoderLoadError, match="shape mismatch"):
        load_encoder_weights(create_vit("micro", input_size=32, patch_size=16), {"model": src.state_dict()})
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(EncoderLoadError, match="junk.pth"):
        load_encoder_weights(src, tmp_path / "junk.pth")


def test_encoder_spec_from_shapes():
    vit = create_vit("micro", input_size=48, patch_size=16)
    assert encoder_spec({"model": vit.state_dict()}) == {
        "size": "micro", "input_size": 48, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2,
    }


def test_group_matcher_gives_layer_decay_through_a_wrapper():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = create_vit("micro", input_size=32, patch_size=8)
            self.head = nn.Linear(64, 3)

        def group_matcher(self, coarse: bool = False):
            return vit_group_matcher(r"vit\.")

    groups = param_groups_layer_decay(Wrapper(), 0.05, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == [0.125, 0.25, 0.5, 1.0]  # stem, block 0, block 1 (+norm), head
