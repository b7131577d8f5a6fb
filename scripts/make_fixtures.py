#!/usr/bin/env python3
"""Reference fixtures for candle-xai: captum / zennit attributions of seeded torchvision models.

Writes ``<model>_refs.safetensors`` for resnet18, vgg11_bn, mobilenet_v2, efficientnet_b0, mobilenet_v3_small,
convnext_tiny, densenet121, shufflenet_v2_x1_0, squeezenet1_1 and regnet_y_400mf into ``--out`` (default
``tests/fixtures``). ``tests/fixtures/README.md`` documents every tensor. From efficientnet_b0 on (EXTENDED) a file
also holds ``lrp_gamma_identity`` (lxt 2.1's rules, xai_reference.lrp_gamma_identity) and ``<key>_f64``, the float64
recomputation of every tensor whose float32 value is ill-conditioned (f64_rel_err max-norm entry above 1e-3).

Setup (CPU only, Python 3.11; the versions are pinned in scripts/requirements-fixtures.txt):

    python3.11 -m venv /work/pyref
    /work/pyref/bin/pip install -r scripts/requirements-fixtures.txt
    # torch CPU wheels are enough, e.g. add --extra-index-url https://download.pytorch.org/whl/cpu

Run from the repository root:

    /work/pyref/bin/python scripts/make_fixtures.py --out tests/fixtures

Everything is deterministic: float32 on CPU, one thread, ``torch.use_deterministic_algorithms(True)``, fixed seeds;
the files are byte-identical from run to run (1.5-2.5 min on 2 cores for the first three models, ~25 s of that the
float32 references, the rest the float64 pass that fills the ``f64_rel_err`` metadata; about 5.5 min for all ten).
``--with-f64`` also writes ``<model>_refs_f64.safetensors`` (every reference recomputed in float64; not
committed). ``--models resnet18 vgg11_bn`` limits the run to some models.
Model weights are NOT stored; they come from a counter-based PRNG (FNV-1a 64 of the tensor name + splitmix64
finaliser, see ``seeded_values`` in scripts/xai_reference.py) that ``tests/common/seeded_weights.rs`` re-implements
bit-exactly. The seeded weights, weight specs, models, canonizers and composites are defined once, in
scripts/xai_reference.py, which scripts/make_layout_fixtures.py and scripts/bench_torch.py import too. Each refs file's
safetensors ``__metadata__["weights"]`` lists ``{"name", "shape", "lo", "hi"}`` per state_dict tensor (state_dict
order, ``num_batches_tracked`` left out). After writing, the script reloads each file, regenerates the weights from
the metadata alone and asserts bit-equality with the weights the references were computed with.
"""

import argparse
import copy
import json
import os
import struct
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors import safe_open

import captum
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from captum.attr._utils.approximation_methods import approximation_parameters

import zennit
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus
from zennit.layer import Sum

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xai_reference import (  # noqa: E402  (seeded weights, weight specs, models, canonizers, composites: defined once)
    CANONIZER_DOC,
    GAINS,
    GAMMA_IDENTITY,
    NUM_CLASSES,
    DenseNetMergeBatchNorm,
    composites,
    explicit_gamma_identity,
    lrp_gamma_identity,
    make_canonizers,
    seeded_model,
    weights_from_spec,
)

# ----------------------------------------------------------------------------------------------------------------
# constants

MODELS = ("resnet18", "vgg11_bn", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny",
          "densenet121", "shufflenet_v2_x1_0", "squeezenet1_1", "regnet_y_400mf")
# the files that also hold lrp_gamma_identity (lxt 2.1) and the float64 truth <key>_f64 of every ill-conditioned
# tensor (the first three files predate both and stay as they are)
EXTENDED = MODELS[3:]
F64_TRUTH_ABOVE = 1e-3  # f64_rel_err max-norm entry above which a tensor's float64 recomputation is stored too
BATCH, CHANNELS, SIZE = 2, 3, 64
IG_STEPS = 16
IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
SG_SAMPLES, SG_STDEV, SG_SEED = 4, 0.3, 1234
INPUT_SEED = 20240601

GRADCAM_LAYER = {"resnet18": "layer4", "vgg11_bn": "features.27", "mobilenet_v2": "features.18",
                 "efficientnet_b0": "features.8", "mobilenet_v3_small": "features.12", "convnext_tiny": "features.7",
                 "densenet121": "features.norm5", "shufflenet_v2_x1_0": "conv5", "squeezenet1_1": "features.12",
                 "regnet_y_400mf": "trunk_output"}
MID_LAYER = {"resnet18": "layer2", "vgg11_bn": "features.10", "mobilenet_v2": "features.7",
             "efficientnet_b0": "features.4", "mobilenet_v3_small": "features.6", "convnext_tiny": "features.3",
             "densenet121": "features.denseblock2", "shufflenet_v2_x1_0": "stage3", "squeezenet1_1": "features.7",
             "regnet_y_400mf": "trunk_output.block2"}
# the first max-pool (ties metadata), None: the model has none
FIRST_MAXPOOL = {"resnet18": "maxpool", "vgg11_bn": "features.3", "densenet121": "features.pool0",
                 "shufflenet_v2_x1_0": "maxpool", "squeezenet1_1": "features.2"}
# residual blocks whose add the canonizer turns into a zennit Sum
RESIDUAL_BLOCKS = {
    "mobilenet_v2": lambda m: isinstance(m, torchvision.models.mobilenetv2.InvertedResidual) and m.use_res_connect,
    "efficientnet_b0": lambda m: isinstance(m, torchvision.models.efficientnet.MBConv) and m.use_res_connect,
    "mobilenet_v3_small":
        lambda m: isinstance(m, torchvision.models.mobilenetv3.InvertedResidual) and m.use_res_connect,
    "convnext_tiny": lambda m: isinstance(m, torchvision.models.convnext.CNBlock),
    "regnet_y_400mf": lambda m: isinstance(m, torchvision.models.regnet.ResBottleneckBlock),
}
SUM_NODES = {"mobilenet_v2": 10, "efficientnet_b0": 9, "mobilenet_v3_small": 6, "convnext_tiny": 18,
             "regnet_y_400mf": 16}
# the canonizer without its residual Sum nodes (the conservation check's "BN merge only")
BN_MERGE_ONLY = {"densenet121": lambda: [DenseNetMergeBatchNorm()], "squeezenet1_1": lambda: []}
# models whose bias-free EpsilonPlus must conserve relevance (the others have squeeze-excitation gates or LayerNorm,
# which have no LRP rule: their relevance sums are reported, not asserted)
CONSERVATIVE = ("resnet18", "vgg11_bn", "mobilenet_v2", "densenet121", "squeezenet1_1")

# ----------------------------------------------------------------------------------------------------------------
# inputs

def make_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(INPUT_SEED)
    # row 0: smooth random image: white noise low-pass filtered by a Gaussian (sigma 2.5 px, valid 17x17 conv),
    # then normalised per channel to mean 0, std 1
    sigma, k = 2.5, 17
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g1 = torch.exp(-(r * r) / (2 * sigma * sigma))
    g1 = g1 / g1.sum()
    kern = (g1[:, None] * g1[None, :]).expand(CHANNELS, 1, k, k).contiguous()
    white = torch.randn(1, CHANNELS, SIZE + k - 1, SIZE + k - 1, generator=g)
    smooth = F.conv2d(white, kern, groups=CHANNELS)[0]
    smooth = (smooth - smooth.mean(dim=(1, 2), keepdim=True)) / smooth.std(dim=(1, 2), keepdim=True)

    # row 1: large flat constant regions (exact max-pool ties) plus one textured band
    flat = torch.empty(CHANNELS, SIZE, SIZE)
    left = torch.tensor([0.8, -0.5, 0.3])
    right = torch.tensor([-1.0, 1.2, 0.0])
    flat[:, :, :32] = left[:, None, None]
    flat[:, :, 32:] = right[:, None, None]
    flat[:, 12:44, 38:58] = 1.5                       # constant square in the right half
    flat[:, 6:22, 6:22] = torch.tensor([-1.5, 2.0, -0.75])[:, None, None]  # constant square in the left half
    flat[:, 52:, :] = 0.5 * smooth[:, 52:, :]         # textured band at the bottom
    return torch.stack([smooth, flat]).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# attributions

def one_hot(targets, dtype=torch.float32):
    return F.one_hot(targets, NUM_CLASSES).to(dtype)


def captured_forward_inputs(model):
    seen = []
    h = model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    return seen, h


def smoothgrad_refs(model, x, t, out):
    n = SG_SAMPLES
    # captum NoiseTunnel (nt_samples_batch_size=None -> a single partition) draws
    #   noise = torch.normal(0, torch.tensor(stdev).repeat((B*N, C, H, W)))
    # with the global generator and evaluates x.repeat_interleave(N, 0) + noise: noise row b*N+k belongs to x[b].
    torch.manual_seed(SG_SEED)
    noise = torch.normal(0, torch.tensor(SG_STDEV, device=x.device).repeat((BATCH * n, CHANNELS, SIZE, SIZE)))
    assert noise.dtype == torch.float32  # also when x is float64 (captum's stdev tensor is float32)
    noisy = x.repeat_interleave(n, dim=0) + noise

    results = {}
    for nt_type, key in (("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad_sq"), ("vargrad", "vargrad")):
        seen, h = captured_forward_inputs(model)
        torch.manual_seed(SG_SEED)
        a = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type=nt_type, nt_samples=n, stdevs=SG_STDEV, target=t, abs=False)
        h.remove()
        assert len(seen) == 1 and torch.equal(seen[0], noisy), "captum's noise differs from the reproduced noise"
        results[key] = a.detach()

    # manual check from the stored noise
    xs = noisy.clone().requires_grad_(True)
    y = model(xs)
    (g,) = torch.autograd.grad(y.gather(1, t.repeat_interleave(n)[:, None]).sum(), xs)
    g = g.view(BATCH, n, CHANNELS, SIZE, SIZE)
    manual = {"smoothgrad": g.mean(1), "smoothgrad_sq": (g * g).mean(1)}
    manual["vargrad"] = manual["smoothgrad_sq"] - manual["smoothgrad"] ** 2
    for k in ("smoothgrad", "smoothgrad_sq"):
        assert_close(manual[k], results[k], 1e-6, f"{k} manual vs captum")
    # vargrad is a difference of near-equal terms: compare on the scale of smoothgrad_sq
    assert_close(manual["vargrad"], results["vargrad"], 1e-6, "vargrad manual vs captum",
                 scale=results["smoothgrad_sq"].abs().max())

    out["smoothgrad_noise"] = noise.view(BATCH, n, CHANNELS, SIZE, SIZE).contiguous()
    out.update(results)
    out["smoothgrad_params"] = torch.tensor([float(n), SG_STDEV, float(SG_SEED)], dtype=torch.float64)


def assert_close(a, b, rel, what, scale=None):
    scale = (b.abs().max() if scale is None else scale).item()
    err = (a - b).abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max abs err {err:.3e} vs scale {scale:.3e}"


def ig_refs(model, x, t, out):
    ig = IntegratedGradients(model)
    for method in IG_METHODS:
        attr, delta = ig.attribute(x, baselines=0.0, target=t, n_steps=IG_STEPS, method=method,
                                   return_convergence_delta=True)
        step_fn, alpha_fn = approximation_parameters(method)
        out[f"ig_{method}"] = attr.detach()
        out[f"ig_{method}_delta"] = delta.detach()
        out[f"ig_{method}_alphas"] = torch.tensor(alpha_fn(IG_STEPS), dtype=torch.float64)
        out[f"ig_{method}_step_sizes"] = torch.tensor(step_fn(IG_STEPS), dtype=torch.float64)
    out["ig_baseline_const"] = ig.attribute(x, baselines=0.5, target=t, n_steps=IG_STEPS,
                                            method="gausslegendre").detach()
    out["ig_no_multiply"] = IntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, baselines=0.0, target=t, n_steps=IG_STEPS, method="gausslegendre").detach()


def gradcam_refs(model, layer, x, t, out):
    """captum's LayerGradCam at `layer`: `gradcam`, `gradcam_relu`, `gradcam_relu_upsampled`, checked against Grad-CAM
    recomputed from hooks (the hook returns a clone, as captum's does: DenseNet's forward applies an in-place F.relu to
    norm5's output)."""
    gc = LayerGradCam(model, layer)
    out["gradcam"] = gc.attribute(x, target=t, relu_attributions=False).detach()
    out["gradcam_relu"] = gc.attribute(x, target=t, relu_attributions=True).detach()
    out["gradcam_relu_upsampled"] = LayerAttribution.interpolate(
        out["gradcam_relu"], (SIZE, SIZE), "bilinear").detach()
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o) or o.clone())
    xx = x.clone().requires_grad_(True)
    y = model(xx)
    h.remove()
    (ga,) = torch.autograd.grad(y.gather(1, t[:, None]).sum(), acts["a"])
    cam = (ga.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True)
    assert_close(cam, out["gradcam"], 1e-5, "gradcam recomputed")


def layer_refs(kind, model, x, t, out):
    gradcam_refs(model, model.get_submodule(GRADCAM_LAYER[kind]), x, t, out)
    mid = model.get_submodule(MID_LAYER[kind])
    out["gradcam_mid"] = LayerGradCam(model, mid).attribute(x, target=t, relu_attributions=True).detach()
    layer_attribution_refs(model, mid, x, t, out)


def layer_attribution_refs(model, layer, x, t, out):
    """captum's attributions to ``layer``'s output: gradient, gradient x activation, and Integrated Gradients
    (IG_STEPS Gauss-Legendre steps from the layer's output at a zero input)."""
    out["layer_gradient"] = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(
        x, target=t).detach()
    out["layer_gxa"] = LayerGradientXActivation(model, layer, multiply_by_inputs=True).attribute(
        x, target=t).detach()
    lig, lig_delta = LayerIntegratedGradients(model, layer).attribute(
        x, baselines=0.0, target=t, n_steps=IG_STEPS, method="gausslegendre", return_convergence_delta=True)
    out["layer_ig"] = lig.detach()
    out["layer_ig_delta"] = lig_delta.detach()


def attributions(kind, model, x, t, out, logits):
    out["saliency"] = Saliency(model).attribute(x, target=t, abs=False).detach()
    out["saliency_abs"] = Saliency(model).attribute(x, target=t, abs=True).detach()
    out["input_x_gradient"] = InputXGradient(model).attribute(x, target=t).detach()
    smoothgrad_refs(model, x, t, out)
    ig_refs(model, x, t, out)
    layer_refs(kind, model, x, t, out)
    return lrp_refs(kind, model, x, t, out, logits)


def lrp_refs(kind, model, x, t, out, logits):
    checks = {}
    folded = folded_logits(kind, model, x)[0]
    for key, make in composites(kind).items():
        m = copy.deepcopy(model)
        composite = make()
        layer_rel = {}
        with Gradient(model=m, composite=composite) as attributor:
            if key == "lrp_epsilon_plus":
                def keep(mod, inp, o):
                    o.register_hook(lambda g: layer_rel.__setitem__("r", g.detach().clone()))
                h = m.get_submodule(MID_LAYER[kind]).register_forward_hook(keep)
            y, rel = attributor(x.clone(), one_hot(t, x.dtype))
            if key == "lrp_epsilon_plus":
                h.remove()
        assert_close(y.detach(), folded, 1e-5, f"{key}: composite's forward vs the canonized model's logits")
        # the merged BatchNorms keep their eps (zennit 0.5.1), 1e-3 in MobileNetV3
        assert_close(y.detach(), logits, 3e-2 if kind == "mobilenet_v3_small" else 1e-3,
                     f"{key}: canonized forward vs logits")
        out[key] = rel.detach()
        if key == "lrp_epsilon_plus":
            out["lrp_epsilon_plus_layer"] = layer_rel["r"]
        checks[key] = rel.detach().sum(dim=(1, 2, 3))
    if kind in EXTENDED:
        # lxt's Gradient*Input framework: the patched LayerNorm computes its statistics itself (rounding only)
        y, rel = lrp_gamma_identity(kind, copy.deepcopy(model), x, t)
        assert_close(y, folded, 1e-5, "lrp_gamma_identity: patched forward vs the canonized model's logits")
        out["lrp_gamma_identity"] = rel
        checks["lrp_gamma_identity"] = rel.sum(dim=(1, 2, 3))
    return checks


def folded_logits(kind, model, x):
    m = copy.deepcopy(model)
    handles = []
    for c in make_canonizers(kind):
        handles += c.apply(m)
    bns = []
    for name, bn in m.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        merged = (torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(bn.running_mean == 0)
                  and torch.all(bn.running_var == 1)).item()
        # every BN is identity after the merge (zennit 0.5.1 keeps eps), except in DenseNet those that read a
        # concatenation (each dense layer's norm1, the transitions' norm, norm5)
        reads_concat = kind == "densenet121" and name.rsplit(".", 1)[-1] in ("norm1", "norm", "norm5")
        assert merged != reads_concat, f"{name}: merged {merged}"
        if merged:
            bns.append(bn)
    sums = [mod for mod in m.modules() if isinstance(mod, Sum)]
    with torch.no_grad():
        y = m(x)
    for h in handles:
        h.remove()
    return y, len(bns), len(sums)


def conservation_check(kind, model, x, t):
    """On a bias-free copy of the model (conv/linear biases, BN bias and running_mean set to 0, so the merged convs
    have no bias either), EpsilonPlus is conservative iff every residual add became a Sum (Norm rule) node:
    sum(R_in) == sum(R_out) == 1 per row (up to the 1e-6 stabilisers). With the residual add left as a plain `+`
    (BN merge only) the gradient copies the relevance into both branches and the sum explodes."""
    nobias = copy.deepcopy(model)
    for name, buf in list(nobias.named_parameters()) + list(nobias.named_buffers()):
        if name.endswith(".bias") or name.endswith(".running_mean"):
            buf.data.zero_()
    res = {}
    bn_only = BN_MERGE_ONLY.get(kind, lambda: [SequentialMergeBatchNorm()])()
    for canon_name, canon in (("canonized", make_canonizers(kind)), ("bn_only", bn_only)):
        m = copy.deepcopy(nobias)
        comp = EpsilonPlus(canonizers=canon)
        with Gradient(model=m, composite=comp) as attributor:
            _, rel = attributor(x.clone(), one_hot(t, x.dtype))
        res[canon_name] = rel.sum(dim=(1, 2, 3)).tolist()
    if kind in EXTENDED:
        res["gamma_identity"] = lrp_gamma_identity(kind, copy.deepcopy(nobias), x, t)[1].sum(dim=(1, 2, 3)).tolist()
    return res


def explicit_check(kind, model64, x64, t, lxt64):
    """lrp_gamma_identity (lxt, float64) against the same rules as explicit LRP (xai_reference.
    explicit_gamma_identity, float64): max|d| / max|lxt| per variant. lxt's Gradient*Input framework divides by
    stabilize(z, 1e-10) where explicit LRP's Norm and LayerNorm rules use their stabilizer, and its identity rule
    stops relevance at exactly-zero inputs (input x gradient), where Pass passes it on: with stabilizer 1e-10 and
    zero inputs stopping both must agree up to rounding (asserted); the other two variants measure each convention."""
    res = {}
    for name, stabilizer, stops in (("stabilizer 1e-6", 1e-6, False), ("stabilizer 1e-10", 1e-10, False),
                                    ("stabilizer 1e-10, zero inputs stop", 1e-10, True)):
        rel = explicit_gamma_identity(kind, copy.deepcopy(model64), x64, t, stabilizer, stops)
        res[name] = float(f"{((rel - lxt64).abs().max() / lxt64.abs().max()).item():.3g}")
    assert res["stabilizer 1e-10, zero inputs stop"] < 1e-6, res
    return res


def maxpool_ties(kind, model, x):
    """Number of max-pool windows (first max-pool) whose maximum is attained more than once, per row."""
    name = FIRST_MAXPOOL.get(kind)  # the others have no max-pool
    if name is None:
        return None
    mp = model.get_submodule(name)
    got = {}
    h = mp.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    xi = got["x"]
    k, s, p = mp.kernel_size, mp.stride, mp.padding
    xp = F.pad(xi, (p, p, p, p), value=float("-inf")) if p else xi
    if mp.ceil_mode:  # SqueezeNet: the last window may reach past the border; its missing part counts as -inf
        out = [mp(xi[:1, :1]).shape[-2], mp(xi[:1, :1]).shape[-1]]
        extra = [max((o - 1) * s + k - n, 0) for o, n in zip(out, xp.shape[-2:])]
        xp = F.pad(xp, (0, extra[1], 0, extra[0]), value=float("-inf"))
    cols = F.unfold(xp, k, stride=s).view(xi.shape[0], xi.shape[1], k * k, -1)
    mx = cols.max(dim=2, keepdim=True).values
    ties = ((cols == mx).sum(dim=2) > 1)
    return ties.flatten(1).sum(1).tolist()


def check_maxpool_tie_convention():
    """PyTorch CPU max_pool2d sends the gradient of a tied window to the FIRST maximum in row-major window order."""
    z = torch.zeros(1, 1, 4, 4, requires_grad=True)
    F.max_pool2d(z, 2, 2).sum().backward()
    expect = torch.zeros(4, 4)
    expect[0::2, 0::2] = 1
    assert torch.equal(z.grad[0, 0], expect), z.grad
    z = torch.zeros(1, 1, 5, 5, requires_grad=True)
    F.max_pool2d(z, 3, 2, padding=1).sum().backward()
    # windows start at -1 (padding is -inf): the first valid element of each window gets the gradient
    expect = torch.zeros(5, 5)
    for oy in range(3):
        for ox in range(3):
            expect[max(2 * oy - 1, 0), max(2 * ox - 1, 0)] += 1
    assert torch.equal(z.grad[0, 0], expect), z.grad


# ----------------------------------------------------------------------------------------------------------------

SG_INPUTS = ("smoothgrad_noise", "smoothgrad_params")  # SmoothGrad's inputs; smoothgrad_sq is a result


def conditioning(out, out64):
    """{key: [max|ref32 - ref64| / max|ref64|, ||ref32 - ref64|| / ||ref64||]} for every result of the float64 pass
    (not the quadratures' points and weights, nor SmoothGrad's noise and parameters, which are inputs)."""
    f64_rel_err = {}
    for k, v in out64.items():
        if k.startswith("ig_") and (k.endswith("_alphas") or k.endswith("_step_sizes")) or k in SG_INPUTS:
            continue
        d = out[k].double() - v
        f64_rel_err[k] = [float(f"{(d.abs().max() / v.abs().max()).item():.3g}"),
                          float(f"{(d.norm() / v.norm()).item():.3g}")]
    return f64_rel_err


def generate(kind: str, outdir: str, with_f64: bool = False):
    t0 = time.time()
    model, spec = seeded_model(kind)
    x = make_inputs()
    out = {"inputs": x}

    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all()
    pred = logits.argmax(1)
    # row 1: the first class after the prediction, cyclically, whose logit is not near 0 (keeps the Epsilon-rule
    # denominator of the last Linear layer away from 0)
    alt = next(c for c in ((pred[1].item() + j) % NUM_CLASSES for j in range(1, NUM_CLASSES))
               if abs(logits[1, c].item()) >= 0.5)
    targets = torch.tensor([pred[0].item(), alt], dtype=torch.int64)
    assert targets[1] != pred[1]
    spread = logits.std(dim=1)
    assert (spread > 0.3).all() and (logits.abs().max() < 50), f"degenerate logits {logits}"
    out["targets"] = targets
    out["logits"] = logits
    t = targets

    lrp_sums = attributions(kind, model, x, t, out, logits)
    yf, n_bn, n_sum = folded_logits(kind, model, x)
    out["inputs_folded_logits"] = yf

    # conditioning: the same references in float64 (same float32 weights, inputs and noise, promoted); the
    # relative difference max|ref32 - ref64| / max|ref64| is what float32 rounding alone does to each tensor
    model64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        logits64 = model64(x64)
    out64 = {"logits": logits64}
    attributions(kind, model64, x64, t, out64, logits64)
    out64["inputs_folded_logits"] = folded_logits(kind, model64, x64)[0]
    f64_rel_err = conditioning(out, out64)
    # where float32 itself is ill-conditioned, the float64 truth as well (not for the convergence deltas, which are
    # ratios to their own rounding-sized values; see tests/fixtures/README.md)
    f64_truth = []
    if kind in EXTENDED:
        f64_truth = sorted(k for k, e in f64_rel_err.items() if e[0] > F64_TRUTH_ABOVE and not k.endswith("_delta"))
        for k in f64_truth:
            out[f"{k}_f64"] = out64[k]
    cons = conservation_check(kind, model, x, t)
    ties = maxpool_ties(kind, model, x)
    explicit = explicit_check(kind, model64, x64, t, out64["lrp_gamma_identity"]) if kind in EXTENDED else None

    n_bn_total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # DenseNet: only conv0/norm0 and each dense layer's conv1/norm2 are conv -> BN pairs
    n_bn_pairs = 1 + sum(isinstance(m, torchvision.models.densenet._DenseLayer) for m in model.modules())
    assert n_bn == (n_bn_pairs if kind == "densenet121" else n_bn_total), (n_bn, n_bn_total)
    if kind in RESIDUAL_BLOCKS:
        assert n_sum == sum(RESIDUAL_BLOCKS[kind](m) for m in model.modules()), n_sum
        assert n_sum == SUM_NODES[kind]
    elif kind in EXTENDED:
        assert n_sum == 0, n_sum
    if kind in CONSERVATIVE:
        for c in cons["canonized"]:
            # (ZPlus loses a little where a linear-bottleneck output is negative but its positive part z is 0)
            assert abs(c - 1.0) < 1e-2, f"canonized EpsilonPlus (bias 0) not conservative: {cons}"

    versions = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "captum": captum.__version__,
        "zennit": getattr(zennit, "__version__", None) or _dist_version("zennit"), "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    meta = {
        "model": kind,
        "precision": "float32",
        "model_def": {
            "resnet18": "torchvision.models.resnet18(num_classes=10), eval()",
            "vgg11_bn": "torchvision.models.vgg11_bn(num_classes=10) with classifier.0 = Linear(25088, 64), "
                        "classifier.3 = Linear(64, 64), classifier.6 = Linear(64, 10); eval()",
            "mobilenet_v2": "torchvision.models.mobilenet_v2(num_classes=10), eval()",
            "efficientnet_b0": "torchvision.models.efficientnet_b0(num_classes=10), eval()",
            "mobilenet_v3_small": "torchvision.models.mobilenet_v3_small(num_classes=10), eval()",
            "convnext_tiny": "torchvision.models.convnext_tiny(num_classes=10), eval()",
            "densenet121": "torchvision.models.densenet121(num_classes=10), eval()",
            "shufflenet_v2_x1_0": "torchvision.models.shufflenet_v2_x1_0(num_classes=10), eval()",
            "squeezenet1_1": "torchvision.models.squeezenet1_1(num_classes=10), eval()",
            "regnet_y_400mf": "torchvision.models.regnet_y_400mf(num_classes=10), eval()",
        }[kind],
        **versions,
        "input_size": json.dumps([BATCH, CHANNELS, SIZE, SIZE]),
        "weights": json.dumps(spec, separators=(",", ":")),
        "weight_scheme": "fnv1a64(name) + splitmix64(i+1) -> u = (z >> 40) / 2^24; value = lo + (hi - lo) * u in f32",
        "weight_gains": json.dumps(GAINS[kind]),
        "lrp_output_relevance": "one_hot(target)",
        "lrp_canonizer": CANONIZER_DOC[kind],
        "gradcam_layer": GRADCAM_LAYER[kind],
        "gradcam_mid_layer": MID_LAYER[kind],
        "layer_attr_layer": MID_LAYER[kind],
        "lrp_layer": MID_LAYER[kind],
        "targets_rule": "row 0: argmax(logits[0]); row 1: first c in (argmax(logits[1]) + j) % 10, j = 1..9, "
                        "with |logits[1, c]| >= 0.5",
        "ig": json.dumps({"n_steps": IG_STEPS, "baseline": 0.0, "methods": list(IG_METHODS)}),
        "smoothgrad": json.dumps({"nt_samples": SG_SAMPLES, "stdev": SG_STDEV, "seed": SG_SEED}),
        "maxpool_ties_first_pool": json.dumps(ties),
        "f64_rel_err": json.dumps(f64_rel_err, sort_keys=True),
    }
    if kind in EXTENDED:
        meta["lxt"] = _dist_version("lxt")
        meta["lrp_gamma_identity"] = (
            f"zennit Gamma(gamma={GAMMA_IDENTITY}, stabilizer=1e-6) on every Conv2d and Linear after the canonizer "
            "(lrp_canonizer); lxt identity rule on activations and BatchNorm, lxt layer_norm_forward (std detached) "
            "on LayerNorm / LayerNorm2d, lxt divide_gradient(scale * input, 2) on SqueezeExcitation, "
            "lxt monkey_patch_zennit; attribution = input x gradient, gradient seed one_hot(target) / "
            "logit[target] (relevance one_hot(target) at the logits); see xai_reference.lrp_gamma_identity")
        meta["f64_truth"] = json.dumps(f64_truth)
        meta["lrp_gamma_identity_explicit"] = json.dumps(explicit)
    for k, v in out.items():
        assert torch.isfinite(v).all() if v.is_floating_point() else True, f"{k} not finite"
    out = {k: v.contiguous() for k, v in out.items()}
    path = os.path.join(outdir, f"{kind}_refs.safetensors")
    save_safetensors_deterministic(out, path, meta)

    # ---- self-check: reload, regenerate weights from the metadata alone
    with safe_open(path, framework="pt") as f:
        md = f.metadata()
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    regen = weights_from_spec(json.loads(md["weights"]))
    sd = model.state_dict()
    assert list(regen) == [k for k in sd if not k.endswith("num_batches_tracked")]
    for k, v in regen.items():
        assert torch.equal(v.view(torch.int32), sd[k].view(torch.int32)), f"regenerated {k} differs"
    for k, v in out.items():
        assert torch.equal(loaded[k], v), k

    if with_f64:
        out64 = {**out64, "inputs": x64, "targets": targets,
                 "smoothgrad_noise": out["smoothgrad_noise"].double(), "smoothgrad_params": out["smoothgrad_params"]}
        for k in out:
            if k not in out64 and not k.endswith("_f64"):  # the float64 alphas / step sizes
                out64[k] = out[k]
        meta64 = {**meta, "precision": "float64 (model.double(), inputs and noise promoted from the float32 values)"}
        save_safetensors_deterministic(out64, os.path.join(outdir, f"{kind}_refs_f64.safetensors"), meta64)

    dt = time.time() - t0
    print(f"\n== {kind}: {path} ({os.path.getsize(path) / 1e6:.2f} MB, {dt:.1f} s)")
    print(f"   logits {logits.numpy().round(3).tolist()}  targets {targets.tolist()}  pred {pred.tolist()}")
    print(f"   folded-vs-orig logits max abs diff {(yf - logits).abs().max().item():.2e};  BN merged {n_bn}/"
          f"{n_bn_total}; Sum nodes {n_sum}; first-maxpool tied windows per row {ties}")
    print(f"   EpsilonPlus(bias=0) sum(R_in): canonized {np.round(cons['canonized'], 5).tolist()}, "
          f"BN-merge only {np.round(cons['bn_only'], 5).tolist()}")
    if "gamma_identity" in cons:
        print(f"   lrp_gamma_identity(bias=0) sum(R_in): {np.round(cons['gamma_identity'], 5).tolist()}")
    if f64_truth:
        print(f"   float64 truth stored for {f64_truth}")
    if explicit:
        print(f"   lrp_gamma_identity vs explicit LRP (float64, max|d| / max|lxt|): {explicit}")
    for k, s in lrp_sums.items():
        print(f"   {k:32s} sum(R_in) per row {np.round(s.numpy(), 4).tolist()}")
    print("   float32-vs-float64 relative error [max|d| / max|ref64|, ||d|| / ||ref64||], worst first:")
    for k, e in sorted(f64_rel_err.items(), key=lambda kv: -kv[1][0]):
        print(f"     {k:34s} {e[0]:<10.3g} {e[1]:.3g}")
    for k in sorted(loaded):
        v = loaded[k]
        mx = v.abs().max().item() if v.is_floating_point() else v.abs().max().item()
        print(f"   {k:34s} {str(list(v.shape)):22s} {str(v.dtype).replace('torch.', ''):8s} max|v| {mx:.4g}")
    return dt


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.float16: "F16"}


def save_safetensors_deterministic(tensors, path, metadata):
    """Byte-reproducible safetensors writer (safetensors' own writer emits __metadata__ in hash order).
    Layout as the official writer: tensors ordered by element size (desc) then name, header padded to 8 bytes."""
    assert sys.byteorder == "little"
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs, off = [], 0
    for k in order:
        t = tensors[k].detach().contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.chmod(path, 0o644)


def _dist_version(name):
    from importlib.metadata import version
    return version(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--with-f64", action="store_true",
                    help="also write <model>_refs_f64.safetensors: every reference computed in float64 (not committed)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # captum: "Input Tensor 0 did not already require gradients, required_grads has been set automatically."
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    check_maxpool_tie_convention()

    t0 = time.time()
    for kind in args.models:
        generate(kind, args.out, args.with_f64)
    print(f"\ntotal {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
