#!/usr/bin/env python3
"""How accurately PyTorch's own float32 convolutions (oneDNN on the CPU) sum, for tests/engine/conv_accuracy.rs.

    /work/pyref/bin/python scripts/make_conv_accuracy_fixture.py   # venv: scripts/requirements-fixtures.txt

A max-pool routes the gradient (and zennit's relevance) to each window's maximum. Where two window values differ by a
few float32 ulps, which one wins is decided by the rounding error of the convolutions before it, so a convolution
that sums less accurately than PyTorch's routes more windows away from the float64 route (see
scripts/maxpool_routing_study.py). This script measures PyTorch's float32 accuracy on every convolution of a deep
max-pool network -- torchvision's vgg11_bn with the fixtures' seeded weights (tests/fixtures/vgg11_bn_refs.safetensors
lists them), on the sample photo chelsea.png resized to 64x64 -- so that the test can hold ours to it:

- the float64 forward of the photo gives each convolution's input, rounded to float32 (`<conv>.input`, stored);
- on that input, PyTorch's float32 convolution (no bias) is compared with the float64 one: per output element,
  |float32 - float64| / sum_k |w_k x_k| (the error relative to the sum of the magnitudes of its terms, which is
  what a float32 sum of K terms can be held to);
- `__metadata__["convolutions"]` lists, per convolution in forward order, its name, stride, padding, the
  reduction length K and the mean and maximum of that relative error over all output elements.

Deterministic (one thread, float32 and float64 on the CPU); the file is byte-identical from run to run.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import save_safetensors_deterministic  # noqa: E402
from xai_reference import seeded_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def photo():
    image = Image.open(os.path.join(ROOT, "web/assets/samples/chelsea.png")).convert("RGB")
    image = image.resize((SIZE, SIZE), Image.BILINEAR)
    x = torch.tensor(np.asarray(image), dtype=torch.float64).permute(2, 0, 1)[None] / 255
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
    return (x - mean) / std


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, _ = seeded_model("vgg11_bn")
    features = model.double().features  # the seeded float32 weights, exactly
    x = photo()
    tensors, convolutions = {"input": x.float().contiguous()}, []
    for index, layer in enumerate(features):
        name = f"features.{index}"
        if isinstance(layer, nn.Conv2d):
            x32 = x.float()
            w32 = layer.weight.float()
            geometry = dict(stride=layer.stride, padding=layer.padding)
            pytorch = F.conv2d(x32, w32, None, **geometry).double()
            exact = F.conv2d(x32.double(), w32.double(), None, **geometry)
            scale = F.conv2d(x32.double().abs(), w32.double().abs(), None, **geometry)
            relative = ((pytorch - exact).abs() / scale.clamp_min(1e-300))[scale > 0]
            tensors[f"{name}.input"] = x32.contiguous()
            convolutions.append(
                {
                    "name": name,
                    "stride": layer.stride[0],
                    "padding": layer.padding[0],
                    "k": w32[0].numel(),
                    "mean_relative_error": float(relative.mean()),
                    "max_relative_error": float(relative.max()),
                }
            )
            print(f"{name}: K {w32[0].numel()}, PyTorch float32 mean {relative.mean():.3e} max {relative.max():.3e}")
        with torch.no_grad():
            x = layer(x)
    out = os.path.join(ROOT, "tests/fixtures/conv_accuracy.safetensors")
    metadata = {
        "model": "vgg11_bn (seeded weights: tests/fixtures/vgg11_bn_refs.safetensors)",
        "photo": f"web/assets/samples/chelsea.png, bilinear to {SIZE}x{SIZE}, ImageNet normalisation",
        "torch": torch.__version__,
        "convolutions": json.dumps(convolutions),
    }
    save_safetensors_deterministic(tensors, out, metadata)
    print("wrote", out)


if __name__ == "__main__":
    main()
