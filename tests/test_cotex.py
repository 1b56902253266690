"""Masked CoTEX model and loss: JS term, per-view token dropping, unmasked inference, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abaw_cli.labels import LSD_CLASSES
from abaw_cli.models.cotex import MaskedCoTEX, build_masked_cotex
from abaw_cli.models.registry import build_model, load_model
from abaw_cli.train.checkpoint import make_checkpoint, save_atomic
from abaw_cli.train.losses import js_divergence

MICRO_VIT = {"size": "micro", "input_size": 32, "patch_size": 8, "drop_path": 0.0, "embed_dim": 64, "depth": 2, "num_heads": 2}
MICRO = {"vit": MICRO_VIT, "num_views": 2, "classes": list(LSD_CLASSES), "mask_ratio": 0.5}


pytestmark = pytest.mark.usefixtures("one_thread")


def micro_model(seed: int = 0) -> MaskedCoTEX:
    torch.manual_seed(seed)
    return build_masked_cotex(MICRO)


def test_js_divergence_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(5, 6), dim=1)
    q = torch.softmax(torch.randn(5, 6), dim=1)
    assert js_divergence([p, p]).item() == 0.0
    assert js_divergence([p, p, p]).item() == pytest.approx(0.0, abs=1e-7)  # a mean of 3 is not exact in float
    value = js_divergence([p, q])
    assert value.item() > 0
    # Against the two-distribution textbook form 0.5 KL(p||m) + 0.5 KL(q||m) (natural log).
    m = (p + q) / 2
    expected = 0.5 * (p * (p / m).log()).sum(1).mean() + 0.5 * (q * (q / m).log()).sum(1).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # Bounded by log(k) and finite for one-hot (zero-probability) inputs.
    one_hot = F.one_hot(torch.tensor([0, 1]), 6).float()
    other = F.one_hot(torch.tensor([2, 3]), 6).float()
    assert js_divergence([one_hot, other]).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)


def test_js_divergence_gradient_pulls_views_together():
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6)
    js = js_divergence([a.softmax(1), b.softmax(1)])
    js.backward()
    stepped = (a - 0.5 * a.grad).detach()
    assert js_divergence([stepped.softmax(1), b.softmax(1)]) < js.detach()


def test_masks_differ_between_views_and_samples_and_keep_the_right_count():
    model = micro_model().train()
    x = torch.rand(6, 3, 32, 32)
    out = model.forward_views(x)
    assert out.logits.shape == (2, 6, len(LSD_CLASSES))
    masks = out.masks  # (views, samples, 16 tokens), 1 = dropped
    assert masks.shape == (2, 6, 16)
    assert torch.all(masks.sum(-1) == 8)  # int(16 * (1 - 0.5)) kept in every view and sample
    assert not torch.equal(masks[0], masks[1])  # the views see different patches
    assert len({tuple(m.tolist()) for m in masks[0]}) > 1  # and so do the samples of a batch
    # A second call draws fresh masks.
    assert not torch.equal(model.forward_views(x).masks, masks)


def test_token_drop_keeps_cls_and_adds_position_before_dropping():
    """A view's masked forward equals running its blocks on [cls+pos0, kept (patch+pos)] tokens."""
    model = micro_model().train()
    view = model.views[0]
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(7)
    logits = model.forward_views(x).logits[0]
    torch.manual_seed(7)
    noise = torch.rand(2, 16)  # the same draw random_masking makes for view 0
    keep = noise.argsort(dim=1)[:, :8]
    tokens = view.patch_embed(model.normalize(x)) + view.pos_embed[:, 1:]
    kept = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    cls = (view.cls_token + view.pos_embed[:, :1]).expand(2, -1, -1)
    manual = view.forward_head(view.norm(view.blocks(torch.cat([cls, kept], 1))))
    assert torch.allclose(logits, manual, atol=1e-5)


def test_inference_is_unmasked_deterministic_and_sums_the_views():
    model = micro_model().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
        per_view = model(x, return_views=True)
        full = [v.forward_head(v.forward_features(model.normalize(x))) for v in model.views]
    assert a.shape == (4, len(LSD_CLASSES))
    assert torch.equal(a, b)
    assert model.forward_views(x).masks is None
    assert torch.allclose(a, full[0] + full[1], atol=1e-5)
    assert torch.allclose(per_view.sum(0), a)
    # Training mode drops tokens, so the same input gives different logits there.
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def test_views_from_one_encoder_differ_only_by_their_masks(tmp_path):
    from abaw_cli.models.vit import create_vit, load_encoder_weights

    encoder = create_vit("micro", 32, 8)
    path = save_atomic({"model": encoder.state_dict(), "meta": {}}, tmp_path / "encoder.pt")
    model = micro_model(seed=3)
    for view in model.views:
        report = load_encoder_weights(view, path)
        assert set(report.missing) == {"head.weight", "head.bias"}
    model.views[1].head.load_state_dict(model.views[0].head.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        same = model(x, return_views=True)
        model.train()
        masked = model(x, return_views=True)
    assert torch.allclose(same[0], same[1])  # identical weights, all tokens: identical views
    assert not torch.allclose(masked[0], masked[1])  # only the token drop tells them apart


def test_checkpoint_round_trip_through_the_registry(tmp_path):
    model = micro_model(seed=1).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    ckpt = make_checkpoint("cotrain", MICRO, model.state_dict(), {"classes": list(LSD_CLASSES), "input_size": 32})
    path = save_atomic(ckpt, tmp_path / "best.pt")
    loaded, meta = load_model(path, kinds=("cotrain",))
    assert isinstance(loaded, MaskedCoTEX) and not loaded.training
    assert meta["meta"]["classes"] == list(LSD_CLASSES)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.input_size == 32 and loaded.num_views == 2


def test_layer_decay_groups_treat_both_views_alike():
    from timm.optim import param_groups_layer_decay

    model = build_model("cotrain", MICRO)
    groups = param_groups_layer_decay(model, 0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    for suffix in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"):
        assert scale_of[id(names[f"views.0.{suffix}"])] == scale_of[id(names[f"views.1.{suffix}"])]
    assert scale_of[id(names["views.0.patch_embed.proj.weight"])] < scale_of[id(names["views.0.blocks.1.mlp.fc2.weight"])]
    assert scale_of[id(names["views.0.head.weight"])] == 1.0


def test_single_view_model_is_the_unmasked_baseline():
    model = build_model("cotrain", {**MICRO, "num_views": 1, "mask_ratio": 0.0}).train()
    x = torch.rand(2, 3, 32, 32)
    out = model.forward_views(x)
    assert out.logits.shape == (1, 2, len(LSD_CLASSES)) and out.masks is None
    with pytest.raises(ValueError):
        MaskedCoTEX([], mask_ratio=0.5)
    with pytest.raises(ValueError):
        build_model("cotrain", {**MICRO, "mask_ratio": 1.0})
