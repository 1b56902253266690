"""MAE pretraining speed and memory, measured in one run.

Reports, for the `cpu-small` preset on this machine's CPU (and on CUDA when present):
  - images/s of one MAE training step (forward + backward + AdamW) at the preset's batch;
  - images/s of a FULL-TOKEN step of the same encoder and decoder (the encoder sees all patches,
    masked ones replaced by a mask embedding, SimMIM-style; same loss on the masked patches) and
    the MAE speed-up over it: the reason MAE exists (the encoder sees 25% of the tokens at 0.75);
  - peak memory of each: CPU peak RSS of a fresh process running only that variant
    (resource.getrusage), CUDA torch.cuda.max_memory_allocated.
Where CUDA is present it also reports the `paper` preset (ViT-B/16, 224, decoder 8x512) in bf16.

    python bench/bench_mae.py [--steps 10] [--device auto|cpu|cuda] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_cli.config import load_config  # noqa: E402
from abaw_cli.models.mae import MaskedAutoencoder  # noqa: E402
from abaw_cli.models.vit import patch_tokens, random_masking  # noqa: E402
from abaw_cli.runtime import autocast  # noqa: E402
from abaw_cli.train.mae import PretrainMAEConfig  # noqa: E402
from abaw_cli.train.engine import default_param_groups  # noqa: E402


def full_token_loss(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor, mask_embed: torch.Tensor) -> torch.Tensor:
    """Same encoder/decoder/loss, but the encoder runs on ALL tokens (masked ones = mask_embed)."""
    vit = model.encoder
    x = model.normalize(imgs)
    tokens = patch_tokens(vit, x)
    mask = random_masking(tokens, model.mask_ratio, noise).mask  # (N, L), 1 = masked
    tokens = tokens * (1 - mask.unsqueeze(-1)) + (mask_embed + vit.pos_embed[:, 1:]) * mask.unsqueeze(-1)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    h = vit.norm(vit.blocks(torch.cat([cls, tokens], dim=1)))
    d = model.decoder_embed(h) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        d = blk(d)
    pred = model.decoder_pred(model.decoder_norm(d))[:, 1:]
    return model.forward_loss(x, pred, mask)


def measure(preset: str, variant: str, device: torch.device, steps: int, batch: int | None) -> dict:
    cfg = load_config(PretrainMAEConfig, "pretrain_mae", preset)
    batch = batch or cfg.optim.batch_size
    torch.manual_seed(0)
    model = MaskedAutoencoder(**{k: getattr(cfg.model, k) for k in vars(cfg.model)}).to(device)
    mask_embed = torch.nn.Parameter(torch.zeros(1, 1, model.encoder.embed_dim, device=device))
    model.register_parameter("bench_mask_embed", mask_embed)  # optimised like the rest in the full-token step
    opt = torch.optim.AdamW(default_param_groups(model, cfg.optim), lr=1e-4, betas=(0.9, 0.95))
    size, length = cfg.model.input_size, model.grid[0] * model.grid[1]
    imgs = torch.rand(batch, 3, size, size, device=device)
    noise = torch.rand(batch, length, device=device)

    def step() -> None:
        with autocast(device):
            loss = model(imgs, noise=noise)[0] if variant == "mae" else full_token_loss(model, imgs, noise, mask_embed)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (allocator, kernels)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"preset": preset, "variant": variant, "device": str(device), "batch": batch, "steps": steps,
           "tokens": length, "images_per_s": batch * steps / dt, "seconds_per_step": dt / steps}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def in_subprocess(preset: str, variant: str, device: str, steps: int, batch: int | None) -> dict:
    """One variant per fresh process, so that peak RSS belongs to that variant alone."""
    cmd = [sys.executable, __file__, "--one", preset, variant, "--device", device, "--steps", str(steps)]
    if batch:
        cmd += ["--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss_mib() -> float:
    code = "import resource, torch, timm, abaw_cli.train.mae; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip())


def report(pair: list[dict], memory_key: str, base: float = 0.0) -> None:
    mae, full = pair
    for r in pair:
        mem = r[memory_key] - base
        print(f"  {r['variant']:<10} batch {r['batch']:>4}  {r['images_per_s']:9.1f} images/s  "
              f"{1000 * r['seconds_per_step']:8.1f} ms/step  {memory_key.replace('_mib', '').replace('_', ' ')} {mem:8.1f} MiB")
    print(f"  MAE speed-up over the full-token step: {mae['images_per_s'] / full['images_per_s']:.2f}x; "
          f"memory ratio full/MAE: {(full[memory_key] - base) / max(mae[memory_key] - base, 1e-9):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="override the cpu-small batch (default: the preset's)")
    ap.add_argument("--skip-cpu", action="store_true", help="only the CUDA measurements")
    ap.add_argument("--one", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        dev = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        print(json.dumps(measure(args.one[0], args.one[1], dev, args.steps, args.batch)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_cpu:
        base = baseline_rss_mib()
        print(f"cpu-small preset on CPU ({args.steps} timed steps; RSS above the {base:.0f} MiB of a process that only imports):")
        report([in_subprocess("cpu-small", v, "cpu", args.steps, args.batch) for v in ("mae", "full")], "peak_rss_mib", base)

    if args.device != "cpu" and torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}, bf16 autocast")
        print("cpu-small preset on CUDA:")
        report([in_subprocess("cpu-small", v, "cuda", max(args.steps, 20), args.batch) for v in ("mae", "full")], "peak_gpu_mib")
        print("paper preset (ViT-B/16, 224, decoder 8x512, batch 256 per step) on CUDA:")
        report([in_subprocess("paper", v, "cuda", max(args.steps, 20), None) for v in ("mae", "full")], "peak_gpu_mib")
    elif args.device == "cuda":
        print("CUDA was asked for but torch sees no CUDA device: paper-preset numbers not measured")
    else:
        print("no CUDA device here: the paper preset (ViT-B/16 224, bf16) is measured only where CUDA is present")


if __name__ == "__main__":
    main()
