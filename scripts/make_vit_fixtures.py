#!/usr/bin/env python3
"""Reference fixtures for vision transformers (tests/engine/torchvision_parity.rs, the TRANSFORMERS suite).

    /work/venv-ref/bin/python scripts/make_vit_fixtures.py --out tests/fixtures

Three small transformers with seeded weights, one from each library whose names candle-xai reads: torchvision's
``VisionTransformer``, timm's distilled DeiT (``VisionTransformerDistilled``: class and distillation tokens, two heads
averaged) and Hugging Face transformers' ``ViTForImageClassification``; each 64x64 images in patches of 8, width 128
(2 heads of 64, as the published models' heads are), depth 2, MLP width 256, 10 classes. Inputs, targets and the
captum references are those of scripts/make_fixtures.py (saliency, |saliency|, Input x Gradient, SmoothGrad with its
stored noise, Integrated Gradients with every quadrature, a constant baseline and without the input factor), as is
the float64 conditioning pass (``f64_rel_err``).

Writes ``<arch>_refs.safetensors`` per model, named by the architecture candle-xai recognises it as
(``vit_w128_d2_8``, ``timm_deit_w128_d2_distilled_patch8_64``, ``hf_vit_w128_d2_patch8_64``), with
``__metadata__``: ``arch``, ``weights`` (the seeded-weights list of scripts/xai_reference.py, state_dict order),
``f64_rel_err`` and the versions.
"""

import argparse
import copy
import json
import os
import sys
import warnings

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (inputs, targets and captum references: defined once)
from xai_reference import f32, weights_from_spec  # noqa: E402

IMAGE, PATCH, WIDTH, DEPTH, HEADS, MLP = 64, 8, 128, 2, 2, 256


def torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=IMAGE, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
                             hidden_dim=WIDTH, mlp_dim=MLP, num_classes=mf.NUM_CLASSES)


def timm_deit():
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                                      mlp_ratio=MLP / WIDTH, num_classes=mf.NUM_CLASSES)


class HuggingFaceLogits(nn.Module):
    """``ViTForImageClassification`` returning its logits tensor, as captum expects."""

    def __init__(self):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH, num_hidden_layers=DEPTH,
                           num_attention_heads=HEADS, intermediate_size=MLP, num_labels=mf.NUM_CLASSES,
                           attn_implementation="eager")
        self.model = ViTForImageClassification(config)

    def forward(self, x):
        return self.model(pixel_values=x).logits


MODELS = {
    "vit_w128_d2_8": (torchvision_vit, ""),
    "timm_deit_w128_d2_distilled_patch8_64": (timm_deit, ""),
    "hf_vit_w128_d2_patch8_64": (HuggingFaceLogits, "model."),
}


def weight_spec(model: nn.Module, strip: str):
    """Seeded ranges by the module each tensor belongs to: convolutions and linear layers uniform with variance
    gain^2 / fan_in (gain 1.5 in the blocks, 3 for the classifier), their biases in +-0.1, LayerNorm scales in
    [0.5, 1.5] and shifts in +-0.2, the learned tokens and the position embedding in +-0.5."""
    kinds = {}
    for name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            kinds[f"{name}.{pname}" if name else pname] = module
    spec = []
    for name, tensor in model.state_dict().items():
        module = kinds.get(name)
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.LayerNorm):
            lo, hi = (0.5, 1.5) if leaf == "weight" else (-0.2, 0.2)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and leaf == "weight":
            is_head = tensor.shape[0] == mf.NUM_CLASSES
            bound = (3.0 if is_head else 1.5) * (3.0 / tensor[0].numel()) ** 0.5
            lo, hi = -bound, bound
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            lo, hi = -0.1, 0.1
        else:  # class / distillation tokens, position embeddings
            lo, hi = -0.5, 0.5
        spec.append({"name": name[len(strip):], "shape": list(tensor.shape), "lo": f32(lo), "hi": f32(hi)})
    return spec


def seeded(make, strip):
    model = make().eval()
    spec = weight_spec(model, strip)
    weights = weights_from_spec(spec)
    model.load_state_dict({strip + k: v for k, v in weights.items()})
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spec


def references(model, x, t):
    out = {}
    out["saliency"] = mf.Saliency(model).attribute(x, target=t, abs=False).detach()
    out["saliency_abs"] = mf.Saliency(model).attribute(x, target=t, abs=True).detach()
    out["input_x_gradient"] = mf.InputXGradient(model).attribute(x, target=t).detach()
    mf.smoothgrad_refs(model, x, t, out)
    mf.ig_refs(model, x, t, out)
    return out


def generate(arch, outdir):
    make, strip = MODELS[arch]
    model, spec = seeded(make, strip)
    x = mf.make_inputs()
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    alt = (pred[1] + 1) % mf.NUM_CLASSES
    t = torch.tensor([pred[0].item(), alt.item()], dtype=torch.int64)
    assert (logits.std(dim=1) > 0.3).all() and logits.abs().max() < 50, f"degenerate logits {logits}"
    out = {"inputs": x, "targets": t, "logits": logits}
    out.update(references(model, x, t))

    model64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        out64 = {"logits": model64(x64)}
    out64.update(references(model64, x64, t))
    f64_rel_err = {}
    for k, v in out64.items():
        if k.startswith("ig_") and (k.endswith("_alphas") or k.endswith("_step_sizes")) or k.startswith("smoothgrad_"):
            continue
        d = out[k].double() - v
        f64_rel_err[k] = [float(f"{(d.abs().max() / v.abs().max()).item():.3g}"),
                          float(f"{(d.norm() / v.norm()).item():.3g}")]
    metadata = {
        "arch": arch,
        "weights": json.dumps(spec, separators=(",", ":")),
        "f64_rel_err": json.dumps(f64_rel_err, sort_keys=True),
        "torch": torch.__version__,
        "captum": mf.captum.__version__,
    }
    tensors = {k: v.contiguous() for k, v in out.items()}
    path = os.path.join(outdir, f"{arch}_refs.safetensors")
    mf.save_safetensors_deterministic(tensors, path, metadata)
    worst = max(f64_rel_err.items(), key=lambda kv: kv[1][0])
    print(f"{arch}: logits {logits.abs().max().item():.2f}, worst float32 conditioning {worst}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for arch in args.models:
        generate(arch, args.out)


if __name__ == "__main__":
    main()
