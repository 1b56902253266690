"""The training engine on tiny MAE runs: exact resume, accumulation, torchrun DDP, non-finite stop, best.pt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from abaw_cli.config import load_config
from abaw_cli.data.images import find_images
from abaw_cli.train.checkpoint import load_checkpoint
from abaw_cli.train.distributed import EpochSampler
from abaw_cli.train.engine import Engine, EngineError, NonFiniteLossError, Schedule
from abaw_cli.train.mae import MAETask, PretrainMAEConfig

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces(demo_root):
    return find_images([demo_root / "pool"])


def tiny_cfg(**optim) -> PretrainMAEConfig:
    return load_config(PretrainMAEConfig, "pretrain_mae", "test-tiny", {f"optim.{k}": v for k, v in optim.items()})


def run(cfg, faces, out, task_cls=MAETask, resume=False):
    engine = Engine(cfg.optim, task_cls(cfg, faces), out, resume=resume, run_config=cfg)
    engine.fit()
    return engine


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sampler_shards_are_the_single_process_batches_and_can_skip():
    single = EpochSampler(40, batch_size=8, batches_per_epoch=5, seed=3)
    ranks = [EpochSampler(40, batch_size=4, batches_per_epoch=5, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in (single, *ranks):
        s.set_epoch(2)
    one, r0, r1 = list(single), list(ranks[0]), list(ranks[1])
    for j in range(5):
        assert sorted(one[8 * j : 8 * j + 8]) == sorted(r0[4 * j : 4 * j + 4] + r1[4 * j : 4 * j + 4])
    single.set_epoch(2, start_batch=3)
    assert list(single) == one[24:]
    single.set_epoch(3)
    assert list(single) != one  # a new order every epoch
    weighted = EpochSampler(4, batch_size=50, batches_per_epoch=20, seed=0, weights=[1, 1, 1, 5])
    counts = torch.bincount(torch.tensor([i for i, _ in weighted]), minlength=4)
    assert counts[3] > 2 * counts[:3].max()


def test_resume_continues_exactly(faces, tmp_path):
    cfg = tiny_cfg(epochs=2, max_steps=20, checkpoint_every_steps=4)
    straight = run(cfg, faces, tmp_path / "straight")

    class Interrupted(MAETask):
        calls = 0

        def training_step(self, model, batch, device):
            Interrupted.calls += 1
            if Interrupted.calls == 19:  # during step 19 (epoch 1); the last checkpoint holds step 16
                raise KeyboardInterrupt
            return super().training_step(model, batch, device)

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, faces, out, Interrupted)
    assert load_checkpoint(out / "checkpoint-last.pt")["train_state"]["global_step"] == 16
    resumed = run(cfg, faces, out, resume=True)

    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if '"step"' in line and '"type": "step"' in line]
    assert steps == list(range(1, 21))  # rows the interrupted run wrote after step 16 were dropped
    assert resumed.history == straight.history


def test_accumulation_equals_the_larger_batch(faces, tmp_path):
    big = run(tiny_cfg(max_steps=4, batch_size=8, accum_steps=1), faces, tmp_path / "big")
    acc = run(tiny_cfg(max_steps=4, batch_size=4, accum_steps=2), faces, tmp_path / "acc")
    a, b = params(big.model), params(acc.model)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_torchrun_two_processes_match_one(faces, demo_root, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from abaw_cli.train.mae import pretrain_mae
        pretrain_mae([Path({str(demo_root / "pool")!r})], Path(sys.argv[1]), "test-tiny",
                     overrides={{"optim.max_steps": 5, "optim.batch_size": 4, "optim.device": "cpu"}})
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run(tiny_cfg(max_steps=5, batch_size=8), faces, tmp_path / "single")
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoint-last.pt")
    assert ddp["train_state"]["world_size"] == 2 and ddp["train_state"]["global_batch"] == 8
    a, b = params(single.model), ddp["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    log_single = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    log_ddp = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    for x, y in zip(log_single, log_ddp):
        if x["type"] == "step":
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-4) and x["lr"] == pytest.approx(y["lr"])


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(faces, tmp_path):
    class Exploding(MAETask):
        calls = 0

        def training_step(self, model, batch, device):
            Exploding.calls += 1
            loss, logs = super().training_step(model, batch, device)
            return (loss * float("nan") if Exploding.calls == 7 else loss), logs

    cfg = tiny_cfg(checkpoint_every_steps=3)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan .* optimiser step 7.*checkpoint-last.pt \(step 6\) is kept"):
        run(cfg, faces, out, Exploding)
    ckpt = load_checkpoint(out / "checkpoint-last.pt")
    assert ckpt["train_state"]["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nan_gradient_behind_a_finite_loss_also_stops(faces, tmp_path):
    class NanGrad(MAETask):
        def training_step(self, model, batch, device):
            loss, logs = super().training_step(model, batch, device)
            t = model.mask_token.sum() - 1e9  # where() keeps the value finite; sqrt's gradient is NaN
            return loss + torch.where(t > 0, torch.sqrt(t), torch.zeros_like(t)), logs

    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm nan .* optimiser step 1.*no checkpoint"):
        run(tiny_cfg(), faces, tmp_path / "run", NanGrad)


def test_best_checkpoint_and_run_folder_refusals(faces, tmp_path):
    scores = iter([0.2, 0.5, 0.4])

    class Scored(MAETask):
        selection_metric = "score"

        def validate(self, model, device, epoch):
            return {"score": next(scores)}

    out = tmp_path / "run"
    engine = run(tiny_cfg(epochs=3, max_steps=9, batch_size=40), faces, out, Scored)
    assert [h["val_score"] for h in engine.history] == [0.2, 0.5, 0.4]
    best = load_checkpoint(out / "best.pt", kinds=("mae",))
    assert best["meta"]["metrics"] == {"score": 0.5} and "train_state" not in best
    assert json.loads((out / "metrics.json").read_text())["best"] == 0.5
    with pytest.raises(EngineError, match="already holds a run"):
        run(tiny_cfg(), faces, out)
    with pytest.raises(EngineError, match="fewer than one optimiser step"):
        run(tiny_cfg(batch_size=len(faces) + 1), faces, tmp_path / "small")


def test_lr_scales_with_the_effective_batch():
    plan = Schedule.plan(tiny_cfg(batch_size=8, accum_steps=4).optim, n_items=1000, world=2)
    assert plan.global_batch == 64 and plan.steps_per_epoch == 15
    assert plan.lr == pytest.approx(6.4e-2 * 64 / 256)
