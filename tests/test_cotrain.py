"""`abaw cotrain` on the demo LSD set: a short real run, co-training on unlabeled faces, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from abaw_cli.cli import app
from abaw_cli.data.demo import SCALES
from abaw_cli.data.formats import read_test_list
from abaw_cli.data.lsd import balanced_class_weights, balanced_sample_weights, train_transform
from abaw_cli.data.manifest import DatasetError
from abaw_cli.labels import LSD_CLASSES
from abaw_cli.models.registry import load_model
from abaw_cli.train.cotrain import CotrainTask, cotrain, load_lsd, load_unlabeled, pseudo_label_loss, resolve_config
from abaw_cli.train.engine import read_log


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tiny_cotrain_run):
    """One test-tiny run (2 epochs) on the demo LSD set (conftest), shared by the checks below."""
    return tiny_cotrain_run


def test_short_run_writes_best_checkpoint_metrics_and_plots(tiny_run):
    out, best, result = tiny_run
    history = result.history
    assert best == out / "best.pt" and best.is_file()
    for name in ("metrics.json", "config.yaml", "log.jsonl", "checkpoint-last.pt", "confusion_matrix.png", "val_curves.png"):
        assert (out / name).is_file(), name
    epochs = [h for h in history if h["type"] == "epoch"]
    assert len(epochs) == 2
    for row in epochs:
        for key in ("val_f1", "val_f1_view1", "val_f1_view2", "val_accuracy", *(f"val_f1_{c}" for c in LSD_CLASSES)):
            assert 0.0 <= row[key] <= 1.0, key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection_metric"] == "f1"
    assert metrics["best"] == max(r["val_f1"] for r in epochs)
    best_epoch = metrics["best_epoch"]
    assert best_epoch["metrics"]["f1"] == metrics["best"] == result.best["value"]
    assert {"f1_view1", "f1_view2"} <= set(best_epoch["metrics"]) and best_epoch["checkpoint"] == "best.pt"
    assert epochs[best_epoch["epoch"]]["val_f1"] == metrics["best"]
    assert metrics["unreadable_images"]["count"] == 0
    steps = [r for r in read_log(out / "log.jsonl") if r["type"] == "step"]
    assert steps and all(np.isfinite(r["loss"]) and r["js"] >= 0 and r["ce"] > 0 for r in steps)
    # The paper's batch rule: preset batch 8 / (1 - 0.5) = 16 per step.
    assert "batch_size: 16" in (out / "config.yaml").read_text()


def test_best_checkpoint_predicts_six_classes_alone(tiny_run, demo_root):
    out, best, _ = tiny_run
    model, ckpt = load_model(best, kinds=("cotrain",))
    meta = ckpt["meta"]
    assert meta["classes"] == list(LSD_CLASSES)
    assert meta["input_size"] == 32
    assert meta["metrics"]["f1"] == json.loads((out / "metrics.json").read_text())["best"]
    assert model.num_views == 2
    assert {k.split(".")[1] for k in model.state_dict()} == {"0", "1"}  # both views are in best.pt
    x = torch.rand(5, 3, meta["input_size"], meta["input_size"])
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (5, 6)
    assert torch.equal(logits, model(x))  # eval: no token dropping


def test_co_training_starts_at_its_epoch_and_logs_pseudo_labels(demo_root, tmp_path):
    out = tmp_path / "run_u"
    overrides = {
        "data.root": str(demo_root / "lsd"), "data.unlabeled": str(demo_root / "pool"), "optim.device": "cpu",
        "optim.epochs": 2, "optim.max_steps": 9,  # 7 steps per epoch: epoch 0 and two steps of epoch 1
        "loss.pseudo_threshold": 0.0, "loss.pseudo_start_epoch": 1,  # threshold 0: every agreed face counts
    }
    cotrain(out, "test-tiny", overrides=overrides)
    steps = [r for r in read_log(out / "log.jsonl") if r["type"] == "step"]
    assert len(steps) == 9
    first, later = [r for r in steps if r["epoch"] == 0], [r for r in steps if r["epoch"] == 1]
    assert first and all(r["pseudo_rate"] == 0.0 and r["pseudo"] == 0.0 for r in first)  # not before its epoch
    assert later and all(r["pseudo_rate"] > 0 and r["pseudo"] > 0 for r in later)


def test_unlabeled_folder_must_not_hold_validation_images(demo_root, tmp_path):
    overrides = {"data.root": str(demo_root / "lsd"), "data.unlabeled": str(demo_root / "lsd" / "validation_set_real_images"), "optim.device": "cpu"}
    with pytest.raises(DatasetError, match="validation"):
        cotrain(tmp_path / "leak", "test-tiny", overrides=overrides)


def test_the_test_release_list_is_an_unlabeled_source(demo_root, tmp_path):
    """`abaw cotrain --unlabeled lsd/LSD_Challenge_test_set_release.txt`: the listed images, found in
    test_set_images/ beside the list, are co-trained on; a list whose images are elsewhere is
    refused with a message that says where they were looked for."""
    release = demo_root / "lsd" / "LSD_Challenge_test_set_release.txt"
    _, val = load_lsd(demo_root / "lsd", "auto")
    faces = load_unlabeled(str(release), val)
    listed = read_test_list(release)
    assert faces == [demo_root / "lsd" / "test_set_images" / name for name in listed]
    assert len(faces) == SCALES["tiny"].lsd_test and all(f.is_file() for f in faces)
    out = tmp_path / "run_t"
    result = CliRunner().invoke(app, [
        "cotrain", "--data", str(demo_root / "lsd"), "--out", str(out), "--preset", "test-tiny", "--device", "cpu",
        "--unlabeled", str(release), "--max-steps", "2", "--pseudo-threshold", "0", "--pseudo-start-epoch", "0",
    ])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_log(out / "log.jsonl") if r["type"] == "step"]
    assert len(steps) == 2 and all("pseudo_rate" in r for r in steps)
    assert steps[0]["pseudo_rate"] > 0 and steps[0]["pseudo"] > 0  # the test faces were pseudo-labelled (views agree at the start)
    elsewhere = tmp_path / "elsewhere" / release.name
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(release.read_bytes())
    with pytest.raises(DatasetError, match="test_set_images/ beside the list.*pass the folder"):
        load_unlabeled(str(elsewhere), val)


def test_views_start_from_the_same_weights(demo_root, tmp_path):
    cfg = resolve_config("test-tiny", tmp_path, False, {"data.root": str(demo_root / "lsd")})
    train, val = load_lsd(demo_root / "lsd", "auto")
    model = CotrainTask(cfg, train, val).build_model()
    first, second = model.views[0].state_dict(), model.views[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)  # --init none: one random init for both
    # From an encoder file, both views hold its weights.
    from abaw_cli.models.vit import create_vit
    from abaw_cli.train.checkpoint import save_atomic

    encoder = create_vit("micro", 32, 8)
    cfg.init = str(save_atomic({"model": encoder.state_dict(), "meta": {}}, tmp_path / "encoder.pt"))
    model = CotrainTask(cfg, train, val).build_model()
    for view in model.views:
        assert torch.equal(view.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
        assert view.head.weight.abs().max() < 1e-3  # MAE fine-tuning's near-zero head


def test_pseudo_labels_need_agreement_and_confidence():
    big = 10.0
    # Teacher logits (2 views, 4 faces, 6 classes): face 0 both sure of class 2; face 1 both class 3
    # but view 2 unsure; face 2 views disagree; face 3 both sure of class 5.
    teacher = torch.zeros(2, 4, 6)
    teacher[0, 0, 2] = teacher[1, 0, 2] = big
    teacher[0, 1, 3], teacher[1, 1, 3] = big, 0.5
    teacher[0, 2, 1] = teacher[1, 2, 4] = big
    teacher[0, 3, 5] = teacher[1, 3, 5] = big
    student = torch.zeros(2, 4, 6, requires_grad=True)
    loss, selected = pseudo_label_loss(student, teacher, threshold=0.9)
    assert selected.tolist() == [True, False, False, True]
    # Uniform student logits: CE = log 6 on each selected face, normalised by all 4 faces.
    assert loss.item() == pytest.approx(2 * np.log(6) / 4, rel=1e-5)
    loss.backward()
    assert student.grad[:, 1:3].abs().sum() == 0  # unselected faces teach nothing
    assert student.grad[0, 0, 2] < 0 and student.grad[1, 3, 5] < 0  # selected: pushed to the agreed class
    _, none = pseudo_label_loss(student.detach(), teacher, threshold=1.0)
    assert not none.any()


def test_pseudo_labels_per_class_cap_keeps_the_most_confident():
    # 5 faces all confidently class 1 (confidence rising with the index), 1 face class 4.
    teacher = torch.zeros(2, 6, 6)
    for i in range(5):
        teacher[:, i, 1] = 4.0 + i
    teacher[:, 5, 4] = 8.0
    student = torch.zeros(2, 6, 6)
    _, uncapped = pseudo_label_loss(student, teacher, threshold=0.5)
    assert uncapped.all()
    _, capped = pseudo_label_loss(student, teacher, threshold=0.5, per_class_cap=2)
    assert capped.tolist() == [False, False, False, True, True, True]


def test_batch_scaling_explicit_batch_and_resume(tmp_path):
    cfg = resolve_config("test-tiny", tmp_path, False, {"model.mask_ratio": 0.75})
    assert cfg.optim.batch_size == 32 and not cfg.data.scale_batch_by_mask  # 8 / (1 - 0.75)
    cfg = resolve_config("test-tiny", tmp_path, False, {"optim.batch_size": 10})
    assert cfg.optim.batch_size == 10  # --batch is taken as given
    paper = resolve_config("paper", tmp_path, False, {"init": "none"})
    assert paper.optim.batch_size == 128 and paper.model.size == "base" and paper.loss.lambda_js == 100.0
    assert paper.optim.layer_decay == 1.0  # nothing pretrained to protect with --init none
    from abaw_cli.config import dump_config

    dump_config(resolve_config("test-tiny", tmp_path, False, {}), tmp_path / "config.yaml")
    resumed = resolve_config("test-tiny", tmp_path, True, {"optim.epochs": 5})
    assert resumed.optim.batch_size == 16 and resumed.optim.epochs == 5  # scaled once, not twice


def test_style_augmentation_is_off_in_the_paper_recipe_and_changes_only_the_look(tmp_path):
    assert not resolve_config("paper", tmp_path, False, {"init": "none"}).data.style_augment
    assert resolve_config("cpu-small", tmp_path, False, {"init": "none"}).data.style_augment
    face = torch.zeros(3, 114, 114, dtype=torch.uint8)  # 112 x 228/224: the resize keeps it
    face[:, 30:90, 40:80] = torch.tensor([200, 150, 120], dtype=torch.uint8)[:, None, None]
    torch.manual_seed(0)
    plain = torch.stack([train_transform(112)(face) for _ in range(8)])
    torch.manual_seed(0)
    styled = torch.stack([train_transform(112, style_augment=True)(face) for _ in range(8)])
    for out in (plain, styled):
        assert out.shape == (8, 3, 112, 112) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert set((plain * 255).round().unique().tolist()) <= {0.0, 200.0, 150.0, 120.0}  # geometry only: no new values
    assert len(styled.unique()) > 50  # colour, blur, JPEG and grain make new ones
    # The face stays where it was: the style transforms move no pixel.
    assert ((plain.mean(1) > 0.1) == (styled.mean(1) > 0.1)).float().mean() > 0.9


def test_class_balance_weights_and_sampler():
    labels = np.array([0] * 6 + [1, 2, 3, 4] + [5] * 2)
    weights = balanced_class_weights(labels)
    counts = np.bincount(labels, minlength=6)
    assert torch.allclose(weights * torch.tensor(counts, dtype=torch.float32), torch.full((6,), len(labels) / 6))
    per_sample = balanced_sample_weights(labels)
    totals = np.bincount(labels, weights=per_sample.numpy(), minlength=6)
    assert np.allclose(totals, 1.0)  # every class carries the same total draw weight


def test_cli_help_lists_the_options():
    from typer.testing import CliRunner

    from abaw_cli.cli import app

    result = CliRunner().invoke(app, ["cotrain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--data", "--init", "--mask-ratio", "--lambda-js", "--unlabeled", "--pseudo-threshold", "--balance", "--resume", "Examples"):
        assert option in result.output, option


def test_cli_refuses_a_missing_data_root(tmp_path):
    from typer.testing import CliRunner

    from abaw_cli.cli import app

    result = CliRunner().invoke(app, ["cotrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--preset", "test-tiny"])
    assert result.exit_code == 2
    assert "nope" in result.output
