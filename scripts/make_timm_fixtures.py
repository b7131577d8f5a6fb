#!/usr/bin/env python3
"""Fixtures for timm's naming of ResNet, EfficientNet and ConvNeXt: state-dict layouts and forward checks.

Needs timm (1.0.31 made the committed files) next to the fixture venv's torch, safetensors, zennit and numpy
(scripts/xai_reference.py is imported for the seeded weights). A venv that borrows everything else from the
fixture venv:

    python3 -m venv /work/venv-timm
    echo /work/venv-ref/lib/python3.11/site-packages > /work/venv-timm/lib/python3.11/site-packages/venv-ref.pth
    /work/venv-timm/bin/pip install --no-deps --ignore-installed "timm==1.0.31"

Run from the repository root:

    /work/venv-timm/bin/python scripts/make_timm_fixtures.py --out tests/fixtures/layouts

Writes into --out, for ``<arch>`` the timm model name (``timm.create_model(arch, pretrained=False,
num_classes=10)``, eval mode):

* ``timm_<arch>.json`` for every arch of LAYOUTS: the list of ``[name, shape]`` of the state dict, floating-point
  tensors only (the format of scripts/make_layout_fixtures.py's ``<arch>.json``).
* ``timm_<arch>_forward.safetensors`` for every arch of FORWARD: no weights, only ``logits`` [1, 10] (float64,
  computed in float64) and ``__metadata__`` (keys sorted): ``arch`` (``timm_<arch>``), ``input`` (the seeded-weights
  entry ``{"name": "input", ...}`` of the [1, 3, 64, 64] image, values in [-1, 1)) and ``weights`` (the
  seeded-weights list ``[{"name", "shape", "lo", "hi"}]`` of scripts/xai_reference.py /
  tests/common/seeded_weights.rs, state_dict order; ranges: see timm_weight_spec, gains: GAINS).

Both kinds of file are byte-reproducible: the .safetensors header is written here (safetensors' own writer orders
``__metadata__`` keys by a hash map), in the layout safetensors writes (8-byte little-endian header length, compact
JSON header, ``__metadata__`` first, padded with spaces to a multiple of 8 bytes, then the data).
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from timm.models.resnet import BasicBlock, Bottleneck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_reference import NUM_CLASSES, f32, seeded_tensor, weights_from_spec  # noqa: E402  (defined once)

LAYOUTS = ("resnet18", "resnet50", "efficientnet_b0", "efficientnet_b3", "convnext_tiny", "convnext_small")
SIDE = 64  # input [1, 3, SIDE, SIDE]

# conv / hidden linear, last conv (linear) of a residual branch, final classifier linear; chosen so the logits are
# O(1..6) and still depend on the input (another seeded image moves them by 0.5 .. 2.6)
GAINS = {
    # xai_reference.GAINS["resnet50"] except the head (2.0 there: logits up to 14; with 2.0 this model's spec and
    # logits equal those of torchvision's resnet50_forward.safetensors exactly)
    "resnet50": dict(conv=1.2, branch=0.7, head=0.8),
    # SiLU: the stream's std stays ~0.3..0.4 through the blocks; the edge is sharp (conv gain 1.65: logits hardly
    # depend on the input, 1.9: they blow up to O(50))
    "efficientnet_b0": dict(conv=1.8, branch=1.0, head=6.0),
    # layer_scale: the [lo, hi] of every ConvNeXtBlock.gamma (timm's 1e-6 would switch the branches off)
    "convnext_tiny": dict(conv=math.sqrt(2.0), branch=1.0, head=2.5, layer_scale=(0.5, 1.0)),
}
FORWARD = tuple(GAINS)


def timm_model(arch: str) -> nn.Module:
    return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES).eval()


def is_branch_last(model: nn.Module, name: str) -> bool:
    """The last conv (linear) of a residual branch, every block counted with or without its residual connection:
    ``conv2`` of a BasicBlock, ``conv3`` of a Bottleneck, ``conv_pw`` of a DepthwiseSeparableConv, ``conv_pwl`` of
    an InvertedResidual, ``mlp.fc2`` of a ConvNeXtBlock."""
    last = {BasicBlock: "conv2", Bottleneck: "conv3", DepthwiseSeparableConv: "conv_pw", InvertedResidual: "conv_pwl",
            ConvNeXtBlock: "mlp.fc2"}
    mod_name = name.rsplit(".", 1)[0]
    for kind, conv in last.items():
        if mod_name.endswith("." + conv):
            block = mod_name[: -len(conv) - 1]
            if type(model.get_submodule(block)) is kind:
                return True
    return False


def timm_weight_spec(arch: str, model: nn.Module):
    """[{"name", "shape", "lo", "hi"}] in state_dict order (num_batches_tracked left out), the rules of
    xai_reference.weight_spec: conv / linear weight +-sqrt(3 / fan_in) * gain (GAINS[arch]: head = the Linear with
    NUM_CLASSES outputs, branch = is_branch_last, conv = the others, squeeze-excitation convs included), bias +-0.1;
    BatchNorm (timm's BatchNormAct2d is a subclass) weight [0.5, 1.5], bias [-0.2, 0.2], running_mean [-0.2, 0.2],
    running_var [0.5, 1.5]; LayerNorm (timm's LayerNorm and LayerNorm2d are subclasses) weight [0.5, 1.5], bias
    [-0.2, 0.2]; ConvNeXtBlock.gamma GAINS[arch]["layer_scale"]."""
    gains = GAINS[arch]
    spec = []
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        mod_name, pname = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        if isinstance(mod, nn.BatchNorm2d):
            lo, hi = {
                "weight": (0.5, 1.5),
                "bias": (-0.2, 0.2),
                "running_mean": (-0.2, 0.2),
                "running_var": (0.5, 1.5),
            }[pname]
        elif isinstance(mod, nn.LayerNorm):
            lo, hi = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2)}[pname]
        elif isinstance(mod, ConvNeXtBlock) and pname == "gamma":
            lo, hi = gains["layer_scale"]
        elif type(mod) in (nn.Conv2d, nn.Linear) and pname == "bias":
            lo, hi = -0.1, 0.1
        elif type(mod) in (nn.Conv2d, nn.Linear) and pname == "weight":
            fan_in = t[0].numel()
            if isinstance(mod, nn.Linear) and mod.out_features == NUM_CLASSES:
                gain = gains["head"]
            elif is_branch_last(model, name):
                gain = gains["branch"]
            else:
                gain = gains["conv"]
            a = f32(math.sqrt(3.0 / fan_in) * gain)
            lo, hi = -a, a
        else:
            raise RuntimeError(f"no weight rule for {name} ({type(mod).__name__})")
        spec.append({"name": name, "shape": list(t.shape), "lo": f32(lo), "hi": f32(hi)})
    return spec


def seeded_timm_model(arch: str):
    """(model, spec): timm_model(arch) with the seeded weights of timm_weight_spec, checked bit for bit."""
    model = timm_model(arch)
    spec = timm_weight_spec(arch, model)
    weights = weights_from_spec(spec)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(v.view(torch.int32), weights[k].view(torch.int32)), f"{k} not set"
    assert set(weights) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spec


def write_layout(arch: str, out: str):
    model = timm_model(arch)
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items() if v.is_floating_point()]
    with open(os.path.join(out, f"timm_{arch}.json"), "w") as f:
        json.dump(layout, f, separators=(",", ":"))


def save_safetensors(path: str, tensors: dict, metadata: dict):
    """safetensors' file layout, with the ``__metadata__`` keys sorted and the tensors in name order."""
    dtypes = {torch.float64: ("F64", "<f8"), torch.float32: ("F32", "<f4")}
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    data, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        code, np_dtype = dtypes[t.dtype]
        raw = t.detach().contiguous().numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(data))


def write_forward(arch: str, out: str):
    model, spec = seeded_timm_model(arch)
    inp = {"name": "input", "shape": [1, 3, SIDE, SIDE], "lo": f32(-1.0), "hi": f32(1.0)}
    with torch.no_grad():
        logits32 = model(seeded_tensor(inp))
        logits = model.double()(seeded_tensor(inp).double())
    save_safetensors(
        os.path.join(out, f"timm_{arch}_forward.safetensors"),
        {"logits": logits},
        {"arch": f"timm_{arch}", "weights": json.dumps(spec), "input": json.dumps(inp)},
    )
    err = ((logits32.double() - logits).abs().max() / logits.abs().max()).item()
    print(f"timm_{arch}: logits {np.round(logits.flatten().numpy(), 4).tolist()} "
          f"(float32 forward: max|d| / max|logit| {err:.2e})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/layouts")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    print(f"timm {timm.__version__}, torch {torch.__version__}")
    for arch in LAYOUTS:
        write_layout(arch, args.out)
    for arch in FORWARD:
        write_forward(arch, args.out)


if __name__ == "__main__":
    main()
