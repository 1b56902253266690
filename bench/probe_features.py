"""Linear probes of ViT encoder features on the demo MTL split: which pooling carries expressions.

For each encoder (an encoder.pt or `none` for random weights) the frozen ViT embeds every training
and validation frame (plain resize, no augmentation); a logistic regression (expressions,
class-balanced) and one per AU are fitted on the training frames and scored on validation, on the
CLS token after the final norm and on the mean of the patch tokens after it.

    python bench/probe_features.py DEMO/mtl runs/mae/encoder.pt none
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_cli.data.formats import read_mtl_annotations  # noqa: E402
from abaw_cli.data.mtl import MTLDataset  # noqa: E402
from abaw_cli.labels import AUS  # noqa: E402
from abaw_cli.metrics import mtl_scores  # noqa: E402
from abaw_cli.models.vit import ImageNormalize, create_vit, encoder_spec, load_encoder_weights  # noqa: E402


@torch.no_grad()
def embed(vit, root: Path, ann) -> dict[str, np.ndarray]:
    norm = ImageNormalize()
    loader = torch.utils.data.DataLoader(MTLDataset(root, ann, 112, train=False), batch_size=128, num_workers=0)
    cls, avg = [], []
    for images, _ in loader:
        x = vit.forward_features(norm(images))  # (N, 1 + L, D) after the final norm
        cls.append(x[:, 0].numpy())
        avg.append(x[:, 1:].mean(1).numpy())
    return {"cls": np.concatenate(cls), "avg": np.concatenate(avg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("encoders", nargs="+")
    args = ap.parse_args()
    train = read_mtl_annotations(args.data / "training_set_annotations.txt")
    val = read_mtl_annotations(args.data / "validation_set_annotations.txt")
    for enc in args.encoders:
        torch.manual_seed(0)
        if enc == "none":
            vit = create_vit("tiny", 112, 16, depth=4)
        else:
            spec = encoder_spec(enc)
            vit = create_vit("tiny", 112, int(spec["patch_size"]), embed_dim=int(spec["embed_dim"]), depth=int(spec["depth"]), num_heads=int(spec["num_heads"]))
            load_encoder_weights(vit, enc)
        vit.eval()
        t0 = time.perf_counter()
        ftr, fva = embed(vit, args.data, train), embed(vit, args.data, val)
        for pool in ("cls", "avg"):
            xtr, xva = ftr[pool], fva[pool]
            m = train.has_expression
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500, class_weight="balanced"))
            pred_e = clf.fit(xtr[m], train.expression[m]).predict(xva)
            m = train.has_aus
            pred_a = np.stack([make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500, class_weight="balanced"))
                               .fit(xtr[m], train.aus[m, j]).predict(xva) for j in range(len(AUS))], 1)
            s = mtl_scores(np.zeros((len(val), 2)), pred_e, pred_a, val)
            print(f"{enc:<40} {pool}: expression F1 {s['expression_f1']:.3f}  AU F1 {s['au_f1']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
