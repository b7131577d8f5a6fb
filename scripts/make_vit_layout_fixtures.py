#!/usr/bin/env python3
"""Forward fixtures for the published vision transformers (tests/engine/import_layouts.rs, ``forward_fixture``).

Run from the repository root with the fixture venv (torch, torchvision, timm and transformers; the versions that made
the committed files are printed first):

    /work/venv-ref/bin/python scripts/make_vit_layout_fixtures.py --out tests/fixtures/layouts
    /work/venv-ref/bin/python scripts/make_vit_layout_fixtures.py --archs vit_b_16 hf_vit_base_patch16_224  # only these

Writes into --out, for every architecture of MODELS (named as candle-xai recognises it), with 10 classes:

* torchvision ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``: ``torchvision.models.<arch>(
  num_classes=10)`` (the builders' default image size, 224 for all five);
* timm ``timm_deit_tiny_distilled_patch16_224``, ``timm_vit_small_patch16_224``, ``timm_vit_base_patch32_224``:
  ``timm.create_model(<name without timm_>, pretrained=False, num_classes=10)`` (224);
* Hugging Face ``hf_vit_base_patch16_224``: ``ViTForImageClassification(ViTConfig(num_labels=10))`` (ViT-Base/16 at
  224; SDPA attention, which computes in the model's dtype, where the eager path's softmax is float32), its state dict
  under its own names (``vit.embeddings...``, ``classifier.weight``);

``<arch>_forward.safetensors``: no weights, only ``logits`` [1, 10] (float64, computed in float64: ``model.double()``,
eval, no_grad) and ``__metadata__`` (keys sorted): ``arch``, ``weights`` (the seeded-weights list ``[{"name", "shape",
"lo", "hi"}]`` of scripts/xai_reference.py / tests/common/seeded_weights.rs, state_dict order, every tensor of the state
dict (all floating point, asserted); ranges: scripts/make_vit_fixtures.py's ``weight_spec``, i.e. linear / conv
weights uniform with variance gain^2 / fan_in, gain 1.5 in the blocks and 3 for the classifier(s), biases +-0.1,
LayerNorm [0.5, 1.5] / +-0.2, tokens and position embeddings +-0.5; torchvision's attention ``in_proj_weight`` /
``in_proj_bias`` those of a block's Linear, see vit_weight_spec) and ``input`` (one more such entry, named
``input``: the [1, 3, S, S] image, S = 224, values in [-1, 1) as in scripts/make_layout_fixtures.py). The files are
byte-reproducible (make_fixtures.save_safetensors_deterministic, the writer of the other forward fixtures' layout).

Checks, per model: the seeded weights are loaded bit for bit; the logits are finite; they depend on the input (a
second seeded image, ``input_alt``, moves them by more than MIN_SENSITIVITY of their norm); the float32 forward is
within F32_TOL (max|d| / max|logit|) of the float64 one. Prints each model's parameter count, wall time, peak RSS of
the process so far, max|logit|, the sensitivity and the float32 error (run one arch per process for per-model peaks).
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_vit_fixtures as mvf  # noqa: E402  (weight_spec and the writer: defined once)
from xai_reference import NUM_CLASSES, f32, seeded_tensor, weights_from_spec  # noqa: E402

MIN_SENSITIVITY = 0.05  # ||logits(input) - logits(input_alt)|| / ||logits(input)||
F32_TOL = 1e-5  # max|logits32 - logits64| / max|logits64|


def torchvision_vit(name):
    import torchvision

    return lambda: getattr(torchvision.models, name)(num_classes=NUM_CLASSES)


def timm_vit(name):
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


class HuggingFaceLogits(nn.Module):
    """``ViTForImageClassification(ViTConfig(num_labels=10))`` returning its logits tensor; its state dict names are
    the wrapped model's under ``model.`` (stripped from the spec: the fixture holds the model's own names)."""

    def __init__(self):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.model = ViTForImageClassification(ViTConfig(num_labels=NUM_CLASSES, attn_implementation="sdpa"))
        assert self.model.config._attn_implementation == "sdpa", self.model.config._attn_implementation

    def forward(self, x):
        return self.model(pixel_values=x).logits


# candle-xai's name: (constructor, state-dict prefix to strip, image side)
MODELS = {
    **{name: (torchvision_vit(name), "", 224) for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")},
    **{f"timm_{name}": (timm_vit(name), "", 224)
       for name in ("deit_tiny_distilled_patch16_224", "vit_small_patch16_224", "vit_base_patch32_224")},
    "hf_vit_base_patch16_224": (HuggingFaceLogits, "model.", 224),
}


IN_PROJ_GAIN = 1.5  # torchvision's in_proj_weight: the gain make_vit_fixtures.weight_spec gives the blocks' Linears


def vit_weight_spec(model, strip):
    """make_vit_fixtures.weight_spec, except for torchvision's attention in-projection: ``in_proj_weight`` and
    ``in_proj_bias`` are parameters of nn.MultiheadAttention itself, not of an nn.Linear, so weight_spec gives them
    the tokens' +-0.5; here they get what a Linear of the blocks gets (weight +-IN_PROJ_GAIN * sqrt(3 / fan_in), bias
    +-0.1). With +-0.5 (5.6x the Linear bound at width 768) the attention logits are so large that the softmax
    saturates and the network turns chaotic: the float32 forward of vit_b_32 is off by 30% of max|logit|, ViT-H's by
    120%, torch's own no-grad and autograd float32 paths disagreeing as much."""
    spec = mvf.weight_spec(model, strip)
    for e in spec:
        if e["name"].endswith(".in_proj_weight"):
            bound = IN_PROJ_GAIN * (3.0 / e["shape"][1]) ** 0.5
            e["lo"], e["hi"] = f32(-bound), f32(bound)
        elif e["name"].endswith(".in_proj_bias"):
            e["lo"], e["hi"] = f32(-0.1), f32(0.1)
    return spec


def seeded_model(arch):
    """The eval-mode model with its seeded weights (as make_vit_fixtures.seeded, with vit_weight_spec), and the spec;
    checks that the spec covers every state-dict tensor, all floating point, and that the loaded weights are the
    spec's bit for bit."""
    make, strip, _ = MODELS[arch]
    model = make().eval()
    spec = vit_weight_spec(model, strip)
    model.load_state_dict({strip + k: v for k, v in weights_from_spec(spec).items()})
    for p in model.parameters():
        p.requires_grad_(False)
    state = model.state_dict()
    others = [k for k, v in state.items() if not v.is_floating_point()]
    assert not others, f"{arch}: non-floating state-dict tensors {others}"
    assert [strip + e["name"] for e in spec] == list(state), f"{arch}: spec and state dict differ"
    for e in spec:
        assert torch.equal(seeded_tensor(e).view(torch.int32), state[strip + e["name"]].view(torch.int32)), e["name"]
    return model, spec


def write_forward(arch, out):
    t0 = time.time()
    _, _, side = MODELS[arch]
    model, spec = seeded_model(arch)
    params = sum(p.numel() for p in model.parameters())
    inp = {"name": "input", "shape": [1, 3, side, side], "lo": f32(-1.0), "hi": f32(1.0)}
    alt = {**inp, "name": "input_alt"}
    with torch.no_grad():
        logits32 = model(seeded_tensor(inp))
        model = model.double()
        logits = model(seeded_tensor(inp).double())
        logits_alt = model(seeded_tensor(alt).double())
    assert logits.shape == (1, NUM_CLASSES) and logits.dtype == torch.float64, (logits.shape, logits.dtype)
    assert torch.isfinite(logits).all() and torch.isfinite(logits_alt).all(), f"{arch}: logits {logits}"
    sensitivity = ((logits_alt - logits).norm() / logits.norm()).item()
    f32_err = ((logits32.double() - logits).abs().max() / logits.abs().max()).item()
    assert sensitivity > MIN_SENSITIVITY, f"{arch}: logits hardly depend on the input ({sensitivity:.3g})"
    assert f32_err < F32_TOL, f"{arch}: float32 forward off by {f32_err:.3g} relative"
    path = os.path.join(out, f"{arch}_forward.safetensors")
    mvf.mf.save_safetensors_deterministic(
        {"logits": logits.contiguous()}, path,
        {"arch": arch, "weights": json.dumps(spec), "input": json.dumps(inp)})
    dt = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    print(f"{arch}: {params:,} parameters, {len(spec)} tensors, {dt:.1f} s, peak RSS so far {peak:.2f} GiB, "
          f"{os.path.getsize(path):,} bytes; max|logit| {logits.abs().max().item():.4g}, ||logits|| "
          f"{logits.norm().item():.4g}, sensitivity ||d|| / ||logits|| {sensitivity:.3g} (max|d| "
          f"{(logits_alt - logits).abs().max().item():.4g}), float32 max|d| / max|logit| {f32_err:.2e}", flush=True)
    print(f"   logits {[round(v, 5) for v in logits.flatten().tolist()]}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/layouts")
    parser.add_argument("--archs", nargs="*", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    import timm
    import torchvision
    import transformers

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    for arch in args.archs:
        write_forward(arch, args.out)


if __name__ == "__main__":
    main()
