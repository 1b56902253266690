"""EMMA: output layout, frozen always-eval prior, VA head inputs, rebuild from model_config."""

from __future__ import annotations

import pytest
import torch

from abaw_cli.models.emma import (
    AU_SLICE,
    EMMA,
    EXPRESSION_SLICE,
    VA_SLICE,
    build_emma,
    emma_model_config,
    split_outputs,
)
from abaw_cli.models.priors import build_prior
from abaw_cli.models.registry import build_model
from abaw_cli.models.vit import vit_from_config
from abaw_cli.train.engine import TrainConfig, default_param_groups

MICRO_VIT = {"size": "micro", "input_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "drop_path": 0.1}


@pytest.fixture(scope="module")
def fer_prior():
    return build_prior("fer")


def _emma(prior, va_input="logits") -> EMMA:
    torch.manual_seed(0)
    return EMMA(vit_from_config(MICRO_VIT), prior, va_input=va_input)


def test_output_layout_and_head_widths(fer_prior):
    model = _emma(fer_prior).eval()
    out = model(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 22)
    assert (VA_SLICE, EXPRESSION_SLICE, AU_SLICE) == (slice(0, 2), slice(2, 10), slice(10, 22))
    va, expr, au = split_outputs(out)
    assert va.shape == (5, 2) and expr.shape == (5, 8) and au.shape == (5, 12)
    # ViT head D -> 2/3 D -> 20 (768 -> 512 for ViT-B); VA head on [prior logits, 20 ViT logits].
    assert model.expression_au_head[0].weight.shape == (43, 64)
    assert model.expression_au_head[2].weight.shape == (20, 43)
    assert model.valence_arousal_head[0].weight.shape == (256, fer_prior.num_outputs + 20)
    assert model.valence_arousal_head[2].weight.shape == (2, 256)
    # The expression/AU logits are the ViT head's output, unchanged by the VA branch.
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        feats = model.encoder.forward_head(model.encoder.forward_features(model.normalize(x)), pre_logits=True)
        assert torch.allclose(model(x)[:, 2:], model.expression_au_head(feats), atol=1e-6)
    assert model.input_size == 32


def test_paper_head_is_768_512_20():
    vit = {"size": "base", "input_size": 32, "patch_size": 16, "embed_dim": 768, "depth": 1, "num_heads": 12}
    model = EMMA(vit_from_config(vit), prior=None)
    assert [m.weight.shape for m in model.expression_au_head if hasattr(m, "weight")] == [(512, 768), (20, 512)]
    assert model.valence_arousal_head[0].weight.shape == (256, 20)


def test_prior_stays_in_eval_mode_and_gets_no_gradient(fer_prior):
    model = _emma(fer_prior)
    model.train()
    assert model.training and model.encoder.training
    assert not model.prior.training
    assert all(not m.training for m in model.prior.modules())
    stats_before = {k: v.clone() for k, v in model.prior.state_dict().items()}
    out = model(torch.rand(4, 3, 32, 32))
    out.pow(2).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.prior.parameters())
    # BatchNorm running statistics did not move in a training-mode forward.
    for k, v in model.prior.state_dict().items():
        assert torch.equal(v, stats_before[k]), k
    # ...while the ViT and both heads did receive gradients (VA loss reaches the ViT too).
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.valence_arousal_head[0].weight.grad is not None


def test_va_loss_reaches_the_vit_through_its_logits(fer_prior):
    model = _emma(fer_prior)
    out = model(torch.rand(3, 3, 32, 32))
    out[:, 0:2].sum().backward()  # a VA-only loss
    assert model.expression_au_head[2].weight.grad.abs().sum() > 0
    assert model.encoder.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_features_ablation_feeds_the_cls_features(fer_prior):
    model = _emma(fer_prior, va_input="features").eval()
    assert model.valence_arousal_head[0].in_features == fer_prior.num_outputs + 64
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 22)
    with pytest.raises(ValueError, match="va_input"):
        _emma(fer_prior, va_input="pixels")


def test_rebuild_from_model_config_through_the_registry(fer_prior):
    model = _emma(fer_prior).eval()
    config = emma_model_config(MICRO_VIT, fer_prior, None, 256, "logits")
    rebuilt = build_model("mtl", config)
    assert isinstance(rebuilt, EMMA) and build_emma is not None
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x), atol=1e-6)
    none_config = emma_model_config(MICRO_VIT, None, 16, 32, "features")
    assert build_model("mtl", none_config).prior is None


def test_layer_decay_follows_mae_fine_tuning(fer_prior):
    model = _emma(fer_prior)
    layer_of = model.group_matcher()
    assert layer_of("encoder.patch_embed.proj.weight") == 0 and layer_of("encoder.cls_token") == 0
    assert layer_of("encoder.blocks.0.attn.qkv.weight") == 1
    assert layer_of("encoder.blocks.1.mlp.fc1.weight") == 2
    assert layer_of("encoder.norm.weight") == 3 == layer_of("expression_au_head.0.weight")
    groups = default_param_groups(model, TrainConfig(layer_decay=0.5, weight_decay=0.05))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.encoder.blocks[0].attn.qkv.weight)]["lr_scale"] == pytest.approx(0.25)
    assert by_param[id(model.encoder.blocks[1].attn.qkv.weight)]["lr_scale"] == pytest.approx(0.5)
    assert by_param[id(model.valence_arousal_head[0].weight)]["lr_scale"] == 1.0
    assert by_param[id(model.encoder.cls_token)]["weight_decay"] == 0.0
    assert by_param[id(model.expression_au_head[0].weight)]["weight_decay"] == 0.05
    # The frozen prior is in no optimiser group.
    assert not any(id(p) in by_param for p in model.prior.parameters())
