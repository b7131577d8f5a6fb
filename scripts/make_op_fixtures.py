#!/usr/bin/env python3
"""Fixtures for operations no torchvision family in the parity suite uses (tests/engine/layer_edge_cases.rs),
each in a small network:

* ``group_norm``: GroupNorm (with and without its affine), GELU's tanh form and Tanh.
* ``shape_ops``: Upsample (bilinear with and without align_corners, nearest by a scale factor, nearest-exact to a
  size), AdaptiveMaxPool2d (overlapping uneven bins, and even bins with exact ties from nearest-exact copies),
  Mean over several negative dims with keepdim and over one dim without, Reshape with -1, Transpose, Softmax and
  Linear over a rank-3 input.
* ``vit`` and ``deit``: timm 1.0.31's ``VisionTransformer`` and ``VisionTransformerDistilled`` (class and
  distillation tokens, two heads averaged), tiny (24x24 images, patches of 8, width 32, 4 heads, depth 2), under
  timm's own state-dict names, described in the graph JSON (``vit_graph``): multi-head self-attention as
  Linear, Narrow, Reshape, Transpose, Scale, MatMul and Softmax nodes.

    /work/venv-ref/bin/python scripts/make_op_fixtures.py --out tests/fixtures/ops

Writes, per network, ``<name>.safetensors`` (the weights), ``<name>.graph.json`` (the engine's graph of the same
network) and ``<name>_refs.safetensors``: ``inputs``, ``targets`` [2] int64, ``logits`` and ``saliency``
(d logit[target] / d input), computed in float64 and stored as float32; ``shape_ops`` also has
``lrp_epsilon_plus``, zennit's EpsilonPlus composite run in float64 (modules without a zennit rule, as all the
new ones here, take the gradient).
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


SHAPE_OPS_GRAPH = {"input_channels": 3, "nodes": [
    {"name": "conv1", "op": "Conv2d", "kernel_size": 3, "padding": 1},
    {"name": "up1", "op": "Upsample", "size": [19, 23], "mode": "bilinear"},
    {"name": "act1", "op": "SiLU"},
    {"name": "pool1", "op": "AdaptiveMaxPool2d", "output_size": [5, 7]},
    {"name": "up2", "op": "Upsample", "scale_factor": 2, "mode": "nearest"},
    {"name": "conv2", "op": "Conv2d", "kernel_size": 3, "stride": 2, "padding": 1},
    {"name": "up3", "op": "Upsample", "scale_factor": [1.5, 2.0], "mode": "bilinear", "align_corners": True},
    {"name": "up4", "op": "Upsample", "size": [9, 17], "mode": "nearest-exact"},
    {"name": "pool2", "op": "AdaptiveMaxPool2d", "output_size": [3, 17]},
    {"name": "squeeze", "op": "Mean", "dim": [-1, -2], "keepdim": True},
    {"name": "gate", "op": "Sigmoid"},
    {"name": "scaled", "op": "Mul", "inputs": ["pool2", "gate"]},
    {"name": "tokens", "op": "Reshape", "shape": [8, -1]},
    {"name": "swap", "op": "Transpose", "dim0": 1, "dim1": 2},
    {"name": "proj", "op": "Linear"},
    {"name": "attend", "op": "Softmax", "dim": -1},
    {"name": "pooled", "op": "Mean", "dim": 1},
    {"name": "head", "op": "Linear"},
]}


class ShapeOps(nn.Module):
    """The network of SHAPE_OPS_GRAPH, module for module."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.up1 = nn.Upsample(size=(19, 23), mode="bilinear", align_corners=False)
        self.act1 = nn.SiLU()
        self.pool1 = nn.AdaptiveMaxPool2d((5, 7))
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.up3 = nn.Upsample(scale_factor=(1.5, 2.0), mode="bilinear", align_corners=True)
        self.up4 = nn.Upsample(size=(9, 17), mode="nearest-exact")
        self.pool2 = nn.AdaptiveMaxPool2d((3, 17))
        self.gate = nn.Sigmoid()
        self.proj = nn.Linear(8, 12)
        self.attend = nn.Softmax(dim=-1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.up4(self.up3(self.conv2(self.up2(self.pool1(self.act1(self.up1(self.conv1(x))))))))
        x = self.pool2(x)
        x = x * self.gate(x.mean(dim=(-1, -2), keepdim=True))
        x = x.reshape(x.shape[0], 8, -1).transpose(1, 2)
        return self.head(self.attend(self.proj(x)).mean(dim=1))


def vit_graph(depth, width, heads, patch, distilled=False):
    """The engine's graph of a timm VisionTransformer (or its distilled DeiT), module names as timm's."""
    head_width = width // heads
    nodes = [
        {"name": "patch_embed.proj", "op": "Conv2d", "kernel_size": patch, "stride": patch},
        {"name": "patch_embed.flatten", "op": "Reshape", "shape": [width, -1]},
        {"name": "patch_embed.tokens", "op": "Transpose", "dim0": 1, "dim1": 2},
        {"name": "tokens", "op": "PrependTokens", "tensors": ["cls_token", "dist_token"] if distilled else ["cls_token"]},
        {"name": "pos_embed", "op": "PositionEmbedding", "tensor": "pos_embed"},
    ]
    stream = "pos_embed"
    for i in range(depth):
        b = f"blocks.{i}"
        nodes += [{"name": f"{b}.norm1", "op": "LayerNorm", "eps": 1e-6, "inputs": [stream]},
                  {"name": f"{b}.attn.qkv", "op": "Linear"}]
        for j, part in enumerate("qkv"):
            nodes += [
                {"name": f"{b}.attn.{part}", "op": "Narrow", "dim": 2, "start": j * width, "length": width,
                 "inputs": [f"{b}.attn.qkv"]},
                {"name": f"{b}.attn.{part}.heads", "op": "Reshape", "shape": [-1, heads, head_width]},
                {"name": f"{b}.attn.{part}.t", "op": "Transpose", "dim0": 1, "dim1": 2},
            ]
        nodes += [
            {"name": f"{b}.attn.q.scaled", "op": "Scale", "factor": head_width ** -0.5, "inputs": [f"{b}.attn.q.t"]},
            {"name": f"{b}.attn.scores", "op": "MatMul", "transpose_rhs": True,
             "inputs": [f"{b}.attn.q.scaled", f"{b}.attn.k.t"]},
            {"name": f"{b}.attn.softmax", "op": "Softmax", "dim": -1},
            {"name": f"{b}.attn.mix", "op": "MatMul", "inputs": [f"{b}.attn.softmax", f"{b}.attn.v.t"]},
            {"name": f"{b}.attn.merge", "op": "Transpose", "dim0": 1, "dim1": 2},
            {"name": f"{b}.attn.concat", "op": "Reshape", "shape": [-1, width]},
            {"name": f"{b}.attn.proj", "op": "Linear"},
            {"name": f"{b}.add1", "op": "Add", "inputs": [f"{b}.attn.proj", stream]},
            {"name": f"{b}.norm2", "op": "LayerNorm", "eps": 1e-6},
            {"name": f"{b}.mlp.fc1", "op": "Linear"},
            {"name": f"{b}.mlp.act", "op": "GELU"},
            {"name": f"{b}.mlp.fc2", "op": "Linear"},
            {"name": f"{b}.add2", "op": "Add", "inputs": [f"{b}.mlp.fc2", f"{b}.add1"]},
        ]
        stream = f"{b}.add2"
    nodes += [{"name": "norm", "op": "LayerNorm", "eps": 1e-6, "inputs": [stream]}]
    for token, head in enumerate(["head", "head_dist"] if distilled else ["head"]):
        nodes += [
            {"name": f"{head}.token", "op": "Narrow", "dim": 1, "start": token, "length": 1, "inputs": ["norm"]},
            {"name": f"{head}.squeeze", "op": "Reshape", "shape": [width]},
            {"name": head, "op": "Linear"},
        ]
    if distilled:
        nodes += [{"name": "heads.sum", "op": "Add", "inputs": ["head", "head_dist"]},
                  {"name": "heads.mean", "op": "Scale", "factor": 0.5}]
    return {"input_channels": 3, "nodes": nodes}


def tiny_vit(distilled):
    """A seeded tiny timm ViT / DeiT with randomised LayerNorm affines and tokens."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    kind = VisionTransformerDistilled if distilled else VisionTransformer
    model = kind(img_size=24, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in name or "token" in name or "pos_embed" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith("weight"):
                p.normal_(0.0, (2.0 / p.shape[-1]) ** 0.5 if p.dim() == 2 else 0.2)
            else:
                p.uniform_(-0.2, 0.2)
    return model


def write_network(out, name, model, graph, x, targets, extra=None):
    """The weights, the graph and the float64 references of one network."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"{name}.safetensors"))
    with open(os.path.join(out, f"{name}.graph.json"), "w") as f:
        json.dump(graph, f, indent=1)
        f.write("\n")
    model64, x64 = model.double(), x.double().requires_grad_(True)
    logits = model64(x64)
    logits.gather(1, targets[:, None]).sum().backward()
    refs = {"inputs": x, "targets": targets, "logits": logits.detach().float(), "saliency": x64.grad.float()}
    refs.update(extra(model64, x.double(), targets) if extra else {})
    save_file(refs, os.path.join(out, f"{name}_refs.safetensors"), metadata={"torch": torch.__version__})


def zennit_epsilon_plus(model, x, targets):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    one_hot = torch.nn.functional.one_hot(targets, 5).to(x.dtype)
    with Gradient(model=model, composite=EpsilonPlus()) as attributor:
        _, relevance = attributor(x, one_hot)
    return {"lrp_epsilon_plus": relevance.float()}


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
    write_network(out, "group_norm", model, GRAPH, torch.randn(2, 3, 17, 19), torch.tensor([2, 4]))

    torch.manual_seed(1)
    write_network(out, "shape_ops", ShapeOps().eval(), SHAPE_OPS_GRAPH, torch.randn(2, 3, 13, 11),
                  torch.tensor([1, 3]), zennit_epsilon_plus)

    for name, distilled in [("vit", False), ("deit", True)]:
        torch.manual_seed(2)
        write_network(out, name, tiny_vit(distilled), vit_graph(2, 32, 4, 8, distilled), torch.randn(2, 3, 24, 24),
                      torch.tensor([0, 4]))


if __name__ == "__main__":
    main()
