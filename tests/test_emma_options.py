"""EMMA's cpu-small options: mean-token pooling and batch-standardised features, rebuilt from model_config."""

from __future__ import annotations

import torch

from abaw_cli.models.emma import EMMA, build_emma, emma_model_config
from abaw_cli.models.vit import load_encoder_weights, vit_from_config

MICRO_VIT = {"size": "micro", "input_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "drop_path": 0.0}


def test_avg_pool_and_batch_feature_norm_rebuild_from_model_config(tmp_path):
    vit = dict(MICRO_VIT, global_pool="avg")
    torch.manual_seed(0)
    encoder = vit_from_config(vit)
    # An MAE encoder file carries `norm`; mean-token pooling uses a fresh fc_norm instead.
    source = vit_from_config(MICRO_VIT).state_dict()
    report = load_encoder_weights(encoder, source)
    assert "norm.weight" in report.ignored and "fc_norm.weight" in report.missing
    model = EMMA(encoder, prior=None, feature_norm="batch")
    cfg = emma_model_config(vit, None, None, 256, "logits", "batch")
    model.train()
    model(torch.rand(8, 3, 32, 32))  # moves the running statistics
    rebuilt = build_emma(cfg)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-6)
    # Pooled features: the mean of the patch tokens (no CLS), standardised with the running stats.
    with torch.no_grad():
        tokens = model.encoder.forward_features(model.normalize(x))
        pooled = model.encoder.fc_norm(tokens[:, 1:].mean(1))
        assert torch.allclose(model.encoder.forward_head(tokens, pre_logits=True), pooled, atol=1e-6)


def test_defaults_are_the_papers():
    model = build_emma(emma_model_config(MICRO_VIT, None, None, 256, "logits"))
    assert isinstance(model.feature_norm, torch.nn.Identity)
    assert model.encoder.global_pool == "token"
