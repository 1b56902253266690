"""MAE model, encoder.pt key layout and the pretrain-mae stage on the demo face pool."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import typer
from timm.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner

from abaw_cli.data.formats import write_lsd_test_release
from abaw_cli.data.images import FaceImages, ImageSourceError, find_images
from abaw_cli.models.mae import MaskedAutoencoder
from abaw_cli.models.registry import load_model
from abaw_cli.models.vit import create_vit, load_encoder_weights
from abaw_cli.stages import pretrain_mae as stage
from abaw_cli.train.mae import pretrain_mae

TINY = dict(size="micro", input_size=32, patch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool(demo_root):
    return demo_root / "pool"


def test_patchify_order_and_round_trip():
    mae = MaskedAutoencoder(**TINY)
    imgs = torch.rand(2, 3, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # patch 1 = top row, second column; inside a patch: (row, col, channel), channel fastest
    assert torch.equal(patches[0, 1, :3], imgs[0, :, 0, 8])
    assert torch.equal(patches[0, 4, 3:6], imgs[0, :, 8, 1])
    assert torch.equal(mae.unpatchify(patches), imgs)


def test_loss_counts_masked_patches_only_with_normalised_targets():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(**TINY)
    x = mae.normalize(torch.rand(2, 3, 32, 32))
    target = mae.target(x)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    pred = target.clone()
    pred[:, 12:] += 5.0  # errors on visible patches are not counted
    assert mae.forward_loss(x, pred, mask).item() == pytest.approx(0.0, abs=1e-10)
    pred[0, 0] += 1.0  # an error of 1 on one masked patch of 24
    assert mae.forward_loss(x, pred, mask).item() == pytest.approx(1 / 24, rel=1e-5)
    loss, pred, mask = mae(torch.rand(2, 3, 32, 32))
    assert pred.shape == (2, 16, 192) and mask.sum().item() == 24 and torch.isfinite(loss)


def test_encoder_state_has_official_keys_and_loads_into_plain_timm():
    mae = MaskedAutoencoder(**TINY)
    state = mae.encoder_state_dict()
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(2):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert set(state) == expected  # 4 + 12 x depth + 2, the MAE encoder layout
    plain = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    plain.load_state_dict(state, strict=True)  # no missing, no unexpected key
    with_head = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    result = with_head.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys


def test_find_images_sources_and_refusals(pool, tmp_path):
    images = find_images([pool])
    assert len(images) >= 50
    listing = tmp_path / "list.txt"
    listing.write_text("# two faces\n" + "\n".join(str(p) for p in images[:2]) + "\n")
    assert find_images([listing, images[0]]) == images[:2]  # duplicates kept once
    listing.write_text("missing.jpg\n")
    with pytest.raises(ImageSourceError, match="list.txt: line 1"):
        find_images([listing])
    with pytest.raises(ImageSourceError, match="no such folder"):
        find_images([tmp_path / "nowhere"])
    # An ABAW list (header `image,...`, e.g. the LSD test release): its images in test_set_images/ beside it.
    (tmp_path / "test_set_images").mkdir()
    for p in images[:3]:
        shutil.copy(p, tmp_path / "test_set_images" / p.name)
    release = write_lsd_test_release(tmp_path / "LSD_Challenge_test_set_release.txt", [p.name for p in images[:3]])
    assert find_images([release]) == [tmp_path / "test_set_images" / p.name for p in images[:3]]
    item = FaceImages(images[:1], size=32)[0]
    assert item.shape == (3, 32, 32) and item.dtype == torch.float32 and 0 <= item.min() and item.max() <= 1


def test_pretrain_mae_loss_falls_and_writes_the_run_folder(pool, tmp_path):
    run = tmp_path / "run"
    result = pretrain_mae([pool], run, "test-tiny", overrides={"optim.epochs": 3})
    encoder, history = run / "encoder.pt", result.history
    losses = [h["train_loss"] for h in history]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses
    for name in ("config.yaml", "log.jsonl", "checkpoint-last.pt", "encoder.pt", "loss_curve.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert len(list((run / "reconstructions").glob("epoch_*.png"))) == 3
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "step"] == list(range(1, history[-1]["step"] + 1))

    # encoder.pt -> a fresh ViT through the project loader; checkpoint-last.pt -> the registry
    ckpt = torch.load(encoder, weights_only=True)
    assert ckpt["meta"]["embed_dim"] == 64 and ckpt["meta"]["patch_size"] == 8
    vit = create_vit("micro", input_size=32, patch_size=8, num_classes=6)
    report = load_encoder_weights(vit, encoder)
    assert report.missing == ["head.weight", "head.bias"] and not report.ignored
    model, meta = load_model(run / "checkpoint-last.pt", kinds=("mae",))
    assert isinstance(model, MaskedAutoencoder)
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert load_encoder_weights(create_vit("micro", input_size=32, patch_size=8), run / "checkpoint-last.pt").loaded


def test_cli_help_and_bad_data(tmp_path):
    app = typer.Typer()
    stage.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `pretrain-mae` as a subcommand
    runner = CliRunner()
    result = runner.invoke(app, ["pretrain-mae", "--help"])
    assert result.exit_code == 0 and "--max-steps" in result.output and "Examples" in result.output
    result = runner.invoke(app, ["pretrain-mae", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), "--preset", "test-tiny"])
    assert result.exit_code == 2
