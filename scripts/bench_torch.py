#!/usr/bin/env python3
"""PyTorch side of the candle-xai benchmark (captum 0.9 / zennit 0.5.1 on CPU).

Writes ``<out-dir>/<model>.safetensors`` for each of ``--models`` (default resnet18, vgg11_bn and mobilenet_v2,
what scripts/bench.sh compares; also efficientnet_b0, mobilenet_v3_small, convnext_tiny, densenet121,
shufflenet_v2_x1_0, squeezenet1_1 and regnet_y_400mf) (torchvision state dicts, 1000 classes, torchvision's own
random initialisation after ``torch.manual_seed(0)`` (not the fixtures' counter-based seeded weights: timing needs no
bit-exact weights, only the same ones on both sides), plain contiguous float32, ``num_batches_tracked`` dropped; also
the vision transformers VIT_MODELS: torchvision's vit_b_16 (whose zero-initialised classification head is given
nn.Linear's default initialisation, still after the seed: a zero head makes every logit 0 and every gradient 0) and
timm's deit_small_patch16_224 (``timm.create_model(pretrained=False)``, timm's names; candle-xai reads it as
timm_vit_small_patch16_224)) and ``<out-dir>/input.safetensors`` (``input``: a seeded
random [batch, 3, size, size]), so that ``examples/bench.rs`` runs on exactly the same weights and input. Then times every
row and prints one JSON object per row ({model, method, batch, ms_median, ms_min, reps, threads}), also written to
``<out-dir>/torch.jsonl``; ``<out-dir>/torch_env.json`` holds the versions, each model's forward multiply-accumulates
per row (``forward_gmac``) and the GFLOP/s of PyTorch's own 4096^3 matrix product (``gemm_gflops``).

Each timed call explains each row's top-1 class, so it includes that prediction forward, as our ``explain`` does:
  gradient              Saliency(model).attribute(x, target, abs=False)
  input-x-gradient      InputXGradient(model).attribute(x, target)
  integrated-gradients  IntegratedGradients(model).attribute(x, target, n_steps=32, method="gausslegendre",
                        internal_batch_size=32, return_convergence_delta=True)  (ours always returns the delta)
  smoothgrad            NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=8,
                        nt_samples_batch_size=8, stdevs=0.1 * (x.max() - x.min()), target, abs=False)
  grad-cam (CNNs)       LayerAttribution.interpolate(LayerGradCam(model, layer).attribute(x, target,
                        relu_attributions=True), (H, W), "bilinear") at the fixtures' GRADCAM_LAYER
  lrp-*                 with Gradient(model, composite) as attributor: attributor(x, one_hot(target))
                        composite construction and registration (canonizers included) inside the timing, since
                        our LRP merges BatchNorm on every call. Composites and canonizers are the fixtures' own
                        (scripts/xai_reference.py: ``composites(arch, names="engine")``, ``make_canonizers``):
                        ResNetCanonizer for resnet18, MobileNetV2Canonizer (BN merge + residual Sum + pooling
                        module) for mobilenet_v2, EfficientNetCanonizer / MobileNetV3Canonizer / ConvNeXtCanonizer
                        (BN merge + residual Sum) for efficientnet_b0 / mobilenet_v3_small / convnext_tiny, ...
  lrp-gamma-identity    xai_reference.lrp_gamma_identity(arch, model, x, target): lxt 2.1's rules on zennit's Gamma
                        (the fixtures' lrp_gamma_identity), canonizers and lxt patches applied and undone per call.
The vision transformers (VIT_MODELS) have gradient, input-x-gradient, integrated-gradients and smoothgrad as above, and
(vit_rows) functions of scripts/make_vit_fixtures.py, imported, with its model constants set to the benchmarked model:
  grad-cam              make_vit_fixtures.grad_cam_refs(model, x, target, {}): pytorch-grad-cam's ViT recipe by hand
                        (forward with a hook on the last block's first LayerNorm, backward of the target logit, tokens
                        to the 14x14 grid, CAM, ReLU, bilinear upsampling)
  lrp-cp                make_vit_fixtures.lrp_cp(model, x, target): lxt 2.1's CP-LRP recipe (vit_b_16 only)
  lrp-attn              with make_vit_fixtures.attn_lrp_patched(model): make_vit_fixtures.lrp_seeded(model, x, target):
                        AttnLRP as the fixtures' lrp_attn, without its check of the explicit attention (vit_b_16 only)
  attention-rollout     no target: the capturing forward under no_grad (make_vit_fixtures.attention_capture), then
                        make_vit_fixtures.attention_rollout(maps, "min", 0.9, learned) (pnpxai's AttentionRollout
                        defaults; without the fixtures' diagnostics, a sort of each fused map)
  generic-attention     the capturing forward, autograd.grad of the target logit w.r.t. the maps, then
                        make_vit_fixtures.generic_attention (Chefer et al. 2021)
One warm-up call, then ``--reps`` timed calls; median and minimum in milliseconds.

    python scripts/bench_torch.py --out-dir /tmp/candle-xai-bench --reps 5 [--size 224] [--batch 1] [--threads N]
        [--device cuda]
        [--models resnet18 mobilenet_v2 efficientnet_b0 convnext_tiny ...] [--only lrp]

With ``--device cuda`` the model and input live on the GPU and every timed call ends with torch.cuda.synchronize().
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from importlib.metadata import version

import torch
import torchvision
from captum.attr import InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from safetensors.torch import save_file
from zennit.attribution import Gradient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_reference import (  # noqa: E402  (the fixtures' composites, defined once)
    CANONIZERS,
    composites,
    freeze,
    lrp_gamma_identity,
    no_inplace,
)
from make_fixtures import GRADCAM_LAYER  # noqa: E402  (the layer the Grad-CAM fixtures use: ours by default)

MODELS = ["resnet18", "vgg11_bn", "mobilenet_v2"]  # the default: what scripts/bench.sh compares
VIT_MODELS = ["vit_b_16", "deit_small_patch16_224"]  # vision transformers: captum, lxt, attention maps
KNOWN_MODELS = list(CANONIZERS) + VIT_MODELS  # every model the fixtures have canonizers for, and the ViTs
WEIGHT_SEED = 0
INPUT_SEED = 1
SG_SEED = 2


def build_model(arch):
    torch.manual_seed(WEIGHT_SEED)
    if arch == "deit_small_patch16_224":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=1000).eval()
    else:
        model = getattr(torchvision.models, arch)(num_classes=1000).eval()
    if arch == "vit_b_16":
        model.heads.head.reset_parameters()  # torchvision zero-initialises it: all logits 0, all gradients 0
    # zennit's hooks want out-of-place activations (used for every row); gradients w.r.t. the input only, as ours
    return freeze(no_inplace(model))


def save_state_dict(model, path):
    state = {k: v.detach().to(torch.float32).contiguous().clone()
             for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, path)


def top1(model, x):
    """Each row's top-1 class, [N]."""
    with torch.no_grad():
        return model(x).argmax(1)


def forward_gmac(model, x):
    """Multiply-accumulates of one forward of one row in the convolutions and linear layers, in billions: the
    work a forward's GEMMs do (an input-gradient pass does as many)."""
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            macs.append(output[:1].numel() * module.weight[0].numel())
        elif isinstance(module, torch.nn.Linear):
            macs.append(output[:1].numel() * module.in_features)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return sum(macs) / 1e9


def gemm_gflops(device, size=4096, reps=5):
    """PyTorch's own float32 matrix product (oneDNN/MKL on the CPU), [size, size] x [size, size]: the machine's
    practical peak, against which the rows' GFLOP/s are read."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def methods(arch, model):
    """Our method name -> a callable explaining x for its top-1 class."""
    def gradient(x):
        return Saliency(model).attribute(x, target=top1(model, x), abs=False)

    def input_x_gradient(x):
        return InputXGradient(model).attribute(x, target=top1(model, x))

    def integrated_gradients(x):
        return IntegratedGradients(model).attribute(
            x, target=top1(model, x), n_steps=32, method="gausslegendre", internal_batch_size=32,
            return_convergence_delta=True)

    def smoothgrad(x):
        stdev = float(0.1 * (x.max() - x.min()))
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=8, nt_samples_batch_size=8, stdevs=stdev, target=top1(model, x),
            abs=False)

    def lrp(make):
        def run(x):
            one_hot = torch.nn.functional.one_hot(top1(model, x), 1000).to(x.dtype)
            with Gradient(model=model, composite=make()) as attributor:
                return attributor(x, one_hot)
        return run

    def gamma_identity(x):
        return lrp_gamma_identity(arch, model, x, top1(model, x))

    def grad_cam(x):
        # captum's LayerGradCam at the fixtures' layer, ReLU'd and upsampled: ours GradCamParams::default()
        layer = model.get_submodule(GRADCAM_LAYER[arch])
        cam = LayerGradCam(model, layer).attribute(x, target=top1(model, x), relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")

    rows = {"gradient": gradient, "input-x-gradient": input_x_gradient,
            "integrated-gradients": integrated_gradients, "smoothgrad": smoothgrad}
    if arch in VIT_MODELS:
        rows.update(vit_rows(arch, model))
        return rows
    # exactly the composites and canonizers of the fixtures (scripts/xai_reference.py), under our Composite::name()
    rows["grad-cam"] = grad_cam
    rows.update({name: lrp(make) for name, make in composites(arch, names="engine").items()})
    rows["lrp-gamma-identity"] = gamma_identity
    return rows


def vit_rows(arch, model):
    """The transformer rows: make_vit_fixtures' functions (imported, not copied), its model constants (asserted on
    and used for the read-out) set to this model's."""
    import make_vit_fixtures as mvf

    if arch == "vit_b_16":
        blocks, heads = model.encoder.layers, model.encoder.layers[0].self_attention.num_heads
        image, patch = model.image_size, model.patch_size
    else:
        blocks, heads = model.blocks, model.blocks[0].attn.num_heads
        image, patch = model.patch_embed.img_size[0], model.patch_embed.patch_size[0]
    mvf.IMAGE, mvf.PATCH, mvf.DEPTH, mvf.HEADS = image, patch, len(blocks), heads

    def target(x):
        return top1(model, x)

    def learned(maps):
        return maps[0].shape[-1] - (mvf.IMAGE // mvf.PATCH) ** 2

    def grad_cam(x):
        out = {}
        mvf.grad_cam_refs(model, x, target(x), out)
        return out["gradcam_relu_upsampled"]

    def lrp_cp(x):
        return mvf.lrp_cp(model, x, target(x))[1][0]

    def lrp_attn(x):
        t = target(x)
        with mvf.attn_lrp_patched(model, rules=True):
            return mvf.lrp_seeded(model, x, t)[1][0]

    def rollout(x):
        with torch.no_grad(), mvf.attention_capture(model) as maps:
            model(x)
        return mvf.attention_rollout(maps, "min", 0.9, learned(maps))  # without the fixtures' diagnostics

    def generic(x):
        t = target(x)
        xx = x.detach().clone().requires_grad_(True)  # the maps need a graph: the parameters are frozen
        with mvf.attention_capture(model) as maps:
            logits = model(xx)
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), maps)
        return mvf.generic_attention([a.detach() for a in maps], grads, learned(maps))

    rows = {"grad-cam": grad_cam}
    if arch == "vit_b_16":  # lxt's recipes are for torchvision's ViT
        rows.update({"lrp-cp": lrp_cp, "lrp-attn": lrp_attn})
    rows.update({"attention-rollout": rollout, "generic-attention": generic})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="/tmp/candle-xai-bench")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=1, help="rows of the input (each explained for its top-1 class)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument("--only", default=None, help="only rows whose method name contains this")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=KNOWN_MODELS,
                        help=f"torchvision architectures (and timm's deit_small_patch16_224) to time (default: "
                             f"{' '.join(MODELS)})")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    reps = max(args.reps, 1)

    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(INPUT_SEED))
    save_file({"input": x.contiguous()}, os.path.join(args.out_dir, "input.safetensors"))
    facts = {"torch": torch.__version__, "torchvision": torchvision.__version__, "captum": version("captum"),
             "zennit": version("zennit"), "threads": torch.get_num_threads(),
             **{name: version(name) for name in ("timm", "lxt") if any(m in VIT_MODELS for m in args.models)},
             "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    device = torch.device(args.device)
    facts["gemm_gflops"] = gemm_gflops(device)
    facts["forward_gmac"] = {}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    x = x.to(device)
    rows = []
    for arch in args.models:
        model = build_model(arch)
        save_state_dict(model, os.path.join(args.out_dir, f"{arch}.safetensors"))
        model = model.to(device)
        facts["forward_gmac"][arch] = forward_gmac(model, x)
        for name, run in methods(arch, model).items():
            if args.only and args.only not in name:
                continue
            torch.manual_seed(SG_SEED)
            run(x)  # warm-up
            sync()
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                result = run(x)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
                del result
            row = {"model": arch, "method": name, "batch": args.batch, "ms_median": statistics.median(times), "ms_min": min(times),
                   "reps": reps, "threads": torch.get_num_threads(), "device": facts["device"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(os.path.join(args.out_dir, "torch_env.json"), "w") as f:
        json.dump(facts, f)
    with open(os.path.join(args.out_dir, "torch.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
