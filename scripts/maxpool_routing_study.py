#!/usr/bin/env python3
"""How far float32 saliency and LRP through a deep max-pool network (VGG-11-BN, five max-pools) sit from float64,
for captum / zennit and for candle-xai, on real photos.

    /work/pyref/bin/python scripts/maxpool_routing_study.py --cli target/release/candle-xai [--work /tmp/routing]

For each of two weight sets -- torchvision's own random initialisation after torch.manual_seed(0) (1000 classes, what
scripts/bench_torch.py benchmarks) and the fixtures' seeded weights (xai_reference.seeded_model, 10 classes) -- it
cuts 12 inputs from the three sample photos (web/assets/samples: 4 random crops of each at random scales, every
other one mirrored; 224x224, ImageNet normalisation; numpy seed 1), explains each one's top-1 class with captum's
Saliency (signed) and zennit's EpsilonPlus (VGGCanonizer) in float32 and in float64, runs the candle-xai command on
the same input file (gradient, lrp-epsilon-plus), and prints per method how many inputs each float32 result has
within 1e-4 of the float64 one (max |a - a64| / max |a64|), the median and the worst of that distance.

A max-pool sends the gradient (and, in zennit, the relevance) to its window's maximum; where two values of a window
differ by a few float32 ulps, or a value sits within rounding of a ReLU's kink, float32 rounding decides the route,
and one window routed elsewhere moves the attribution of its whole receptive field. Neither library is exact here;
the script shows how often each is.
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import torch
import torchvision
from captum.attr import Saliency
from PIL import Image
from safetensors.torch import load_file, save_file
from zennit.attribution import Gradient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_reference import composites, no_inplace, seeded_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def crops():
    rng = np.random.default_rng(1)
    out = []
    for name in ["chelsea", "astronaut", "coffee"]:
        image = Image.open(os.path.join(ROOT, f"web/assets/samples/{name}.png")).convert("RGB")
        for j in range(4):
            s = rng.uniform(224 / min(image.size), 1.6 * 224 / min(image.size))
            size = (max(224, round(image.size[0] * s)), max(224, round(image.size[1] * s)))
            im = image.resize(size, Image.BILINEAR)
            left, top = rng.integers(0, im.size[0] - 223), rng.integers(0, im.size[1] - 223)
            im = im.crop((left, top, left + 224, top + 224))
            if j % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            x = torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1) / 255
            out.append((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out).contiguous()


def models(work):
    torch.manual_seed(0)
    initialised = no_inplace(torchvision.models.vgg11_bn()).eval()
    path = os.path.join(work, "vgg11_bn_torchvision_init.safetensors")
    save_file({k: v.contiguous() for k, v in initialised.state_dict().items() if "num_batches" not in k}, path)
    seeded, _ = seeded_model("vgg11_bn")
    seeded_path = os.path.join(work, "vgg11_bn_seeded.safetensors")
    save_file({k: v.contiguous() for k, v in seeded.state_dict().items() if "num_batches" not in k}, seeded_path)
    return [("torchvision init", initialised.eval(), path), ("seeded", seeded.eval(), seeded_path)]


def saliency(model, x, t):
    return Saliency(model).attribute(x.clone().requires_grad_(), target=t, abs=False).detach()


def epsilon_plus(model, x, t):
    with Gradient(model, composites("vgg11_bn", names="engine")["lrp-epsilon-plus"]()) as attributor:
        one_hot = torch.zeros(1, model(x).shape[1], dtype=x.dtype)
        one_hot[0, t] = 1
        return attributor(x.clone(), one_hot)[1].detach()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli", required=True)
    parser.add_argument("--work", default="/tmp/candle-xai-routing")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(2)
    x = crops()
    for label, model, weights in models(args.work):
        targets = model(x).argmax(1)
        inputs = os.path.join(args.work, "inputs.safetensors")
        save_file({"inputs": x, "targets": targets}, inputs)
        for method, ours_name, peer in [("saliency", "gradient", saliency), ("EpsilonPlus", "lrp-epsilon-plus", epsilon_plus)]:
            out = os.path.join(args.work, f"ours_{ours_name}.safetensors")
            subprocess.run([args.cli, "explain", "--model", weights, "--arch", "vgg11_bn", "--input", inputs,
                            "--method", ours_name, "--out", out], check=True, capture_output=True)
            ours = load_file(out)["attributions"].double()
            a32 = torch.cat([peer(model.float(), x[i:i + 1], int(targets[i])) for i in range(len(x))]).double()
            a64 = torch.cat([peer(model.double(), x[i:i + 1].double(), int(targets[i])) for i in range(len(x))])
            model.float()
            for who, a in [("PyTorch float32", a32), ("candle-xai", ours)]:
                d = [((a[i] - a64[i]).abs().max() / a64[i].abs().max()).item() for i in range(len(x))]
                print(f"{label:16s} {method:12s} {who:16s}: within 1e-4 of float64 on {sum(v < 1e-4 for v in d):2d}/"
                      f"{len(d)} inputs, median {np.median(d):.1e}, worst {max(d):.1e}", flush=True)


if __name__ == "__main__":
    main()
