#!/usr/bin/env python3
"""Fixtures for operations no torchvision family in the parity suite uses (tests/engine/layer_edge_cases.rs):
GroupNorm (with and without its affine), GELU's tanh form and Tanh, in a small network.

    /work/venv-ref/bin/python scripts/make_op_fixtures.py --out tests/fixtures/ops

Writes ``group_norm.safetensors`` (the weights), ``group_norm.graph.json`` (the engine's graph of the same
network) and ``group_norm_refs.safetensors``: ``inputs`` [2,3,17,19], ``targets`` [2] int64, ``logits`` and
``saliency`` (d logit[target] / d input), computed in float64 and stored as float32.
"""

import argparse
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

GRAPH = {"input_channels": 3, "nodes": [
    {"name": "0", "op": "Conv2d", "kernel_size": 3, "padding": 1},
    {"name": "1", "op": "GroupNorm", "num_groups": 4},
    {"name": "2", "op": "GELU", "approximate": "tanh"},
    {"name": "3", "op": "Conv2d", "kernel_size": 3, "stride": 2},
    {"name": "4", "op": "GroupNorm", "num_groups": 3},
    {"name": "5", "op": "Tanh"},
    {"name": "6", "op": "AdaptiveAvgPool2d", "output_size": 1},
    {"name": "7", "op": "Flatten"},
    {"name": "8", "op": "Linear"},
]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures/ops")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.GELU(approximate="tanh"),
        nn.Conv2d(8, 6, 3, stride=2), nn.GroupNorm(3, 6, affine=False), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.3, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "group_norm.safetensors"))
    with open(os.path.join(out, "group_norm.graph.json"), "w") as f:
        json.dump(GRAPH, f, indent=1)
        f.write("\n")
    x = torch.randn(2, 3, 17, 19)
    targets = torch.tensor([2, 4])
    model64, x64 = model.double(), x.double().requires_grad_(True)
    logits = model64(x64)
    logits.gather(1, targets[:, None]).sum().backward()
    save_file({"inputs": x, "targets": targets, "logits": logits.detach().float(), "saliency": x64.grad.float()},
              os.path.join(out, "group_norm_refs.safetensors"), metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main()
