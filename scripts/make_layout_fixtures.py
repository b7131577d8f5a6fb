#!/usr/bin/env python3
"""Fixtures for tests/import_layouts.rs: torchvision state-dict layouts, forward checks and .pth files.

Run from the repository root with the fixture venv (see scripts/make_fixtures.py for its setup):

    /work/pyref/bin/python scripts/make_layout_fixtures.py --out tests/fixtures/layouts
    /work/pyref/bin/python scripts/make_layout_fixtures.py --archs convnext_tiny convnext_small  # only these

``--archs`` limits the run to those architectures' ``<arch>.json`` and ``<arch>_forward.safetensors`` and leaves the
.pth files alone (without it everything below is written). The .json files are byte-reproducible; the
``_forward.safetensors`` files carry the same tensors and metadata from run to run.

Writes into --out:

* ``<arch>.json`` for every architecture the importer knows: the list of ``[name, shape]`` of
  ``torchvision.models.<arch>(num_classes=10)``'s state dict, floating-point tensors only (the integer
  ``num_batches_tracked`` counters are dropped by every candle-xai loader, so they are left out here too).
  VGG and AlexNet get their classifier shrunk to hidden width 64 (same ``nn.Sequential``, same module
  names: ``classifier.0/3/6`` replaced), as any fine-tuned head may be.
* ``<arch>_forward.safetensors`` for every architecture of ARCHS (FORWARD: their input sides): no weights, only
  ``logits`` [1, 10] (float64, computed in float64) and ``__metadata__``: ``arch``, ``weights`` (the
  seeded-weights list of ``{"name", "shape", "lo", "hi"}`` of scripts/xai_reference.py /
  tests/common/seeded_weights.rs, state_dict order; gains ``xai_reference.GAINS``) and ``input`` (one more such
  entry, named ``input``: the [1, 3, 64, 64] image, 96x96 for alexnet).
* ``tiny_checkpoint.pth``: ``torch.save`` (zip format) of ``{"epoch": 3, "state_dict": <tensors>,
  "optimizer": {...}}``, where the tensors are a tiny conv net's state dict plus views that exercise the
  reader: a transposed (non-contiguous) tensor, a slice with a storage offset, a strided slice sharing
  the same storage, float16 / bfloat16 / float64 tensors, an ``nn.Parameter`` and an int64 tensor.
* ``tiny_legacy.pth``: the same tensors, names prefixed with ``module.`` (as ``nn.DataParallel`` saves
  them), in the pre-1.6 non-zip format (``_use_new_zipfile_serialization=False``).
* ``tiny_expected.safetensors``: what the reader must return: every floating-point tensor as float32,
  contiguous, under its unprefixed name.
"""

import argparse
import contextlib
import json
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_reference import f32, seeded_model, seeded_tensor, torchvision_model  # noqa: E402  (defined once)

ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "mobilenet_v2", "alexnet",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
    "regnet_y_32gf", "regnet_y_128gf",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "squeezenet1_0", "squeezenet1_1",
)
# every arch's forward check: its input side (64, alexnet 96); its gains: xai_reference.GAINS
FORWARD = {arch: 64 for arch in ARCHS} | {"alexnet": 96}


def floating_items(model: nn.Module):
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


@contextlib.contextmanager
def regnet_widths_on_cpu():
    """torchvision's RegNet computes its block widths with torch ops at construction time, which a meta device
    cannot evaluate: that one classmethod runs on the CPU (tiny tensors), the model itself stays on meta."""
    from torchvision.models.regnet import BlockParams

    original = BlockParams.__dict__["from_init_params"]

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)

    BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        BlockParams.from_init_params = original


def write_layout(arch: str, out: str):
    with torch.device("meta"), regnet_widths_on_cpu():  # names, shapes and dtypes only: no memory, no initialisation
        model = torchvision_model(arch)
    layout = [[k, list(v.shape)] for k, v in floating_items(model)]
    with open(os.path.join(out, f"{arch}.json"), "w") as f:
        json.dump(layout, f, separators=(",", ":"))


def write_forward(arch: str, side: int, out: str):
    model, spec = seeded_model(arch)
    inp = {"name": "input", "shape": [1, 3, side, side], "lo": f32(-1.0), "hi": f32(1.0)}
    with torch.no_grad():
        logits32 = model(seeded_tensor(inp))
        logits = model.double()(seeded_tensor(inp).double())
    save_file(
        {"logits": logits.contiguous()},
        os.path.join(out, f"{arch}_forward.safetensors"),
        metadata={"arch": arch, "weights": json.dumps(spec), "input": json.dumps(inp)},
    )
    err = ((logits32.double() - logits).abs().max() / logits.abs().max()).item()
    print(f"{arch}: logits {logits.flatten().tolist()} (float32 forward: max|d| / max|logit| {err:.2e})")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def tiny_tensors():
    torch.manual_seed(7)
    model = Tiny()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    tensors = dict(model.state_dict())  # includes the int64 bn.num_batches_tracked
    base = torch.arange(20, dtype=torch.float32) * 0.5
    tensors["extra.base"] = base
    tensors["extra.slice"] = base[5:11]  # storage offset 5, shares base's storage
    tensors["extra.strided"] = base[1::3]  # stride 3
    tensors["extra.transposed"] = torch.randn(3, 5).t()  # strides (1, 5)
    tensors["extra.half"] = torch.randn(2, 3).half()
    tensors["extra.bfloat16"] = torch.randn(4).bfloat16()
    tensors["extra.double"] = torch.randn(2, 2, dtype=torch.float64)
    tensors["extra.parameter"] = nn.Parameter(torch.randn(3))
    tensors["extra.scalar"] = torch.tensor(2.5)
    tensors["extra.index"] = torch.arange(4)  # int64: dropped by the reader
    return tensors


def write_pth(out: str):
    tensors = tiny_tensors()
    checkpoint = {"epoch": 3, "state_dict": tensors, "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "lr": 0.1}}
    torch.save(checkpoint, os.path.join(out, "tiny_checkpoint.pth"))
    torch.save({f"module.{k}": v for k, v in tensors.items()}, os.path.join(out, "tiny_legacy.pth"),
               _use_new_zipfile_serialization=False)
    expected = {k: v.detach().float().contiguous().clone() for k, v in tensors.items() if v.is_floating_point()}
    save_file(expected, os.path.join(out, "tiny_expected.safetensors"))
    for name in ("tiny_checkpoint.pth", "tiny_legacy.pth"):
        print(f"{name}: {os.path.getsize(os.path.join(out, name))} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/layouts")
    parser.add_argument("--archs", nargs="*", choices=ARCHS,
                        help="only these architectures' layouts and forward checks, no .pth files (default: all)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    archs = ARCHS if args.archs is None else args.archs
    for arch in archs:
        write_layout(arch, args.out)
    for arch, side in FORWARD.items():
        if arch in archs:
            write_forward(arch, side, args.out)
    if args.archs is None:
        write_pth(args.out)


if __name__ == "__main__":
    main()
