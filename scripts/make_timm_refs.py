#!/usr/bin/env python3
"""captum reference attributions computed on timm's ``efficientnet_b0`` and ``convnext_tiny`` themselves.

The weights are the seeded weights of the torchvision fixtures (``tests/fixtures/<arch>_refs.safetensors``, written
by scripts/make_fixtures.py), loaded into ``timm.create_model(arch, pretrained=False, num_classes=10)`` (eval,
out-of-place activations, frozen parameters) under timm's names; the inputs, targets, SmoothGrad noise, IG settings
and Grad-CAM definitions are those of the torchvision fixtures, so every reference here must equal the torchvision
fixture's tensor of the same key up to float32 rounding (checked and printed; with timm 1.0.31 / torch 2.15.0 on
CPU every tensor, the float32 ones included, comes out bit-identical to the torchvision fixture's).

Needs the timm venv of scripts/make_timm_fixtures.py (timm 1.0.31 next to the fixture venv's torch 2.15, captum
0.9.0, zennit 0.5.1, safetensors, numpy). Run from the repository root (about 15 s on 2 cores):

    /work/venv-timm/bin/python scripts/make_timm_refs.py --out tests/fixtures

Writes ``timm_efficientnet_b0_refs.safetensors`` and ``timm_convnext_tiny_refs.safetensors`` into ``--out``
(byte-reproducible, make_fixtures.save_safetensors_deterministic), each with

* tensors (float32 unless said): ``inputs``, ``targets`` (int64), ``logits`` (the timm model's), ``saliency``,
  ``saliency_abs``, ``input_x_gradient``, ``smoothgrad``, ``smoothgrad_sq``, ``vargrad``, ``smoothgrad_noise``,
  ``smoothgrad_params`` (float64) (make_fixtures.smoothgrad_refs), ``ig_<method>``, ``ig_<method>_delta``,
  ``ig_<method>_alphas`` / ``_step_sizes`` (float64), ``ig_baseline_const``, ``ig_no_multiply``
  (make_fixtures.ig_refs), ``gradcam``, ``gradcam_relu``, ``gradcam_relu_upsampled`` (captum LayerGradCam at
  GRADCAM_LAYER, the timm module whose output is the torchvision fixture's ``gradcam_layer`` output);
* ``__metadata__``: ``arch`` (``timm_<arch>``), ``weights`` (the torchvision fixture's seeded-weights list
  ``[{"name", "shape", "lo", "hi"}]``, UNCHANGED: the seeded values hash the torchvision name), ``timm_names``
  (JSON list, same order: the timm state-dict name of each tensor; ConvNeXt's ``layer_scale`` [C, 1, 1] is timm's
  ``gamma`` [C], the same values reshaped), ``gradcam_layer`` (timm module), ``gradcam_layer_torchvision``,
  ``timm`` / ``torch`` / ``captum`` versions, ``f64_rel_err`` (the torchvision fixture's entries for the keys written
  here), ``model_def``, ``precision``, ``ig``, ``smoothgrad``, ``input_size``, ``source_fixture``, ``lrp`` (why
  there is none), ``note``.

No LRP: zennit on timm's modules would need canonizers equivalent to the torchvision ones (BatchNormAct2d merge,
residual adds as zennit Sum, ...); the torchvision fixtures' LRP references cover the same functions.

Checks (asserted): the torchvision -> timm name mapping derived from module structure equals the positional pairing
of the two state dicts, module by module with equal types and hyper-parameters (conv geometry, BN / LayerNorm eps)
and equal shapes (up to layer_scale's reshape); the timm model holds the weights bit for bit; float64 logits of
timm and torchvision agree to 1e-12 relative; the Grad-CAM layer outputs agree (float64, 1e-12); every reference
agrees with the torchvision fixture within 1e-5 relative (max|d| / max|ref|), except the convergence deltas
``ig_*_delta`` (rounding-sized values: compared on the scale of the logits).
"""

import argparse
import copy
import json
import os
import re
import sys
import time
import warnings

import captum
import timm
import torch
import torch.nn as nn
from captum.attr import InputXGradient, Saliency
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (  # noqa: E402  (defined once)
    GRADCAM_LAYER,
    gradcam_refs,
    ig_refs,
    save_safetensors_deterministic,
    smoothgrad_refs,
)
from make_timm_fixtures import timm_model  # noqa: E402
from xai_reference import freeze, no_inplace, seeded_model, weights_from_spec  # noqa: E402

ARCHS = ("efficientnet_b0", "convnext_tiny")
# the timm module whose output is torchvision's GRADCAM_LAYER output: efficientnet's features.8 is
# Conv2dNormActivation(conv_head, BN, SiLU) = timm's conv_head + bn2 (BatchNormAct2d: BN then SiLU); convnext's
# features.7 (the last stage's blocks) = timm's stages.3 (downsample + blocks)
GRADCAM_LAYER_TIMM = {"efficientnet_b0": "bn2", "convnext_tiny": "stages.3"}
REL_TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# name mapping

def structural_timm_name(arch: str, name: str, timm_net: nn.Module) -> str:
    """timm's state-dict name of torchvision's tensor ``name``, from the two module structures (the table of
    src/import/torchvision/timm.rs), independent of state-dict order."""
    mod, param = name.rsplit(".", 1)
    if arch == "efficientnet_b0":
        n_stages = len(timm_net.blocks)
        if mod == "features.0.0":
            return f"conv_stem.{param}"
        if mod == "features.0.1":
            return f"bn1.{param}"
        if mod == f"features.{n_stages + 1}.0":
            return f"conv_head.{param}"
        if mod == f"features.{n_stages + 1}.1":
            return f"bn2.{param}"
        if mod == "classifier.1":
            return f"classifier.{param}"
        m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(\d+)(?:\.(\w+))?", mod)
        assert m, name
        s, b, k, sub = int(m[1]) - 1, int(m[2]), int(m[3]), m[4]
        p = f"blocks.{s}.{b}"
        block = timm_net.get_submodule(p)
        inverted = hasattr(block, "conv_pwl")
        parts = [("conv_pw", "bn1"), ("conv_dw", "bn2")] if inverted else [("conv_dw", "bn1")]
        if k < len(parts):
            return f"{p}.{parts[k][{'0': 0, '1': 1}[sub]]}.{param}"
        has_se = not isinstance(block.se, nn.Identity)
        if has_se and k == len(parts):
            return f"{p}.se.{ {'fc1': 'conv_reduce', 'fc2': 'conv_expand'}[sub] }.{param}"
        assert k == len(parts) + has_se, name
        last = ("conv_pwl", "bn3") if inverted else ("conv_pw", "bn2")
        return f"{p}.{last[{'0': 0, '1': 1}[sub]]}.{param}"
    if arch == "convnext_tiny":
        if mod in ("features.0.0", "features.0.1"):
            return f"stem.{mod[-1]}.{param}"
        if mod == "classifier.0":
            return f"head.norm.{param}"
        if mod == "classifier.2":
            return f"head.fc.{param}"
        m = re.fullmatch(r"features\.(\d+)\.(\d+)(?:\.block\.(\d+))?", mod)
        assert m, name
        f, i, k = int(m[1]), int(m[2]), m[3]
        if f % 2 == 0:  # downsampling: LayerNorm2d, Conv2d
            assert k is None
            return f"stages.{f // 2}.downsample.{i}.{param}"
        p = f"stages.{(f - 1) // 2}.blocks.{i}"
        if k is None:
            assert param == "layer_scale", name
            return f"{p}.gamma"
        return f"{p}.{ {'0': 'conv_dw', '2': 'norm', '3': 'mlp.fc1', '5': 'mlp.fc2'}[k] }.{param}"
    raise ValueError(arch)


def module_signature(m: nn.Module):
    """Type and hyper-parameters that fix what a weighted module computes."""
    if type(m) is nn.Conv2d:
        return ("Conv2d", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.padding_mode, m.bias is not None)
    if type(m) is nn.Linear:
        return ("Linear", m.in_features, m.out_features, m.bias is not None)
    if isinstance(m, nn.BatchNorm2d):
        return ("BatchNorm2d", m.num_features, m.eps, m.affine, m.track_running_stats)
    if isinstance(m, nn.LayerNorm):
        # torchvision's and timm's LayerNorm2d: both normalise over C at every pixel (checked by the logits)
        return ("LayerNorm2d" if "LayerNorm2d" in type(m).__name__ else "LayerNorm", m.normalized_shape, m.eps,
                m.elementwise_affine)
    return (type(m).__name__,)  # ConvNeXt blocks (layer_scale / gamma)


def timm_names_for(arch: str, tv_model: nn.Module, tv_spec, timm_net: nn.Module):
    """The timm name of every entry of the torchvision spec; asserts that positional and structural mapping agree,
    with equal shapes (layer_scale [C, 1, 1] vs gamma [C]) and equal module signatures."""
    timm_sd = {k: v for k, v in timm_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(timm_sd) == len(tv_spec), (len(timm_sd), len(tv_spec))
    names, reshaped = [], 0
    for e, (tname, tval) in zip(tv_spec, timm_sd.items()):
        structural = structural_timm_name(arch, e["name"], timm_net)
        assert structural == tname, f"{e['name']}: structural {structural} vs positional {tname}"
        if list(tval.shape) != e["shape"]:
            assert e["name"].endswith(".layer_scale") and tname.endswith(".gamma"), (e, tname, tval.shape)
            assert e["shape"] == [tval.shape[0], 1, 1], (e, tval.shape)
            reshaped += 1
        tv_mod = tv_model.get_submodule(e["name"].rsplit(".", 1)[0])
        timm_mod = timm_net.get_submodule(tname.rsplit(".", 1)[0])
        sig_tv, sig_timm = module_signature(tv_mod), module_signature(timm_mod)
        if sig_tv[0] != "CNBlock":
            assert sig_tv == sig_timm, f"{e['name']} {sig_tv} vs {tname} {sig_timm}"
        else:
            assert sig_timm == ("ConvNeXtBlock",), sig_timm
        names.append(tname)
    return names, reshaped


def load_timm(arch: str, tv_model: nn.Module, tv_spec):
    """(timm model holding the torchvision fixture's seeded weights under timm's names, timm names)."""
    net = no_inplace(timm_model(arch))
    names, reshaped = timm_names_for(arch, tv_model, tv_spec, net)
    tv_weights = weights_from_spec(tv_spec)
    sd = net.state_dict()
    weights = {tn: tv_weights[e["name"]].reshape(sd[tn].shape) for e, tn in zip(tv_spec, names)}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    sd = net.state_dict()
    for k, v in weights.items():
        assert torch.equal(sd[k].view(torch.int32), v.view(torch.int32)), f"{k} not set"
    print(f"   name mapping: {len(names)} tensors, structural == positional, module types / hyper-parameters equal,"
          f" shapes equal except {reshaped} layer_scale [C,1,1] -> gamma [C]")
    return freeze(net), names


# ----------------------------------------------------------------------------------------------------------------
# references

def layer_output(model, layer_name, x):
    got = {}
    h = model.get_submodule(layer_name).register_forward_hook(lambda m, i, o: got.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["a"]


def attributions(model, layer_name, x, t, out):
    out["saliency"] = Saliency(model).attribute(x, target=t, abs=False).detach()
    out["saliency_abs"] = Saliency(model).attribute(x, target=t, abs=True).detach()
    out["input_x_gradient"] = InputXGradient(model).attribute(x, target=t).detach()
    smoothgrad_refs(model, x, t, out)
    ig_refs(model, x, t, out)
    gradcam_refs(model, model.get_submodule(layer_name), x, t, out)


# ----------------------------------------------------------------------------------------------------------------

def generate(arch: str, outdir: str, fixtures: str):
    t0 = time.time()
    src = os.path.join(fixtures, f"{arch}_refs.safetensors")
    with safe_open(src, framework="pt") as f:
        md = f.metadata()
        ref = {k: f.get_tensor(k) for k in f.keys()}
    tv_spec = json.loads(md["weights"])
    assert json.dumps(tv_spec, separators=(",", ":")) == md["weights"]
    assert md["gradcam_layer"] == GRADCAM_LAYER[arch]
    print(f"\n== timm {arch} (weights of {src})")

    tv_model, spec = seeded_model(arch)
    assert spec == tv_spec, "the torchvision fixture's weights are not xai_reference.weight_spec's"
    net, names = load_timm(arch, tv_model, tv_spec)
    x, t = ref["inputs"], ref["targets"]

    # float64 forward: timm vs torchvision, logits and the Grad-CAM layer's output
    tv64, net64, x64 = copy.deepcopy(tv_model).double(), copy.deepcopy(net).double(), x.double()
    with torch.no_grad():
        l_tv, l_timm = tv64(x64), net64(x64)
    err64 = ((l_timm - l_tv).abs().max() / l_tv.abs().max()).item()
    assert err64 <= 1e-12, err64
    layer = GRADCAM_LAYER_TIMM[arch]
    a_tv, a_timm = layer_output(tv64, GRADCAM_LAYER[arch], x64), layer_output(net64, layer, x64)
    assert a_tv.shape == a_timm.shape, (a_tv.shape, a_timm.shape)
    err_layer = ((a_timm - a_tv).abs().max() / a_tv.abs().max()).item()
    assert err_layer <= 1e-12, err_layer
    print(f"   float64 logits timm vs torchvision: max|d| / max|logit| {err64:.2e}; Grad-CAM layer {layer} vs "
          f"{GRADCAM_LAYER[arch]} output {list(a_timm.shape)}: {err_layer:.2e}")

    with torch.no_grad():
        logits = net(x)
    assert torch.equal(logits.argmax(1)[:1], t[:1]), (logits, t)
    out = {"inputs": x, "targets": t, "logits": logits}
    attributions(net, layer, x, t, out)

    # cross-check against the torchvision fixture
    print("   vs the torchvision fixture, max|d| / max|ref| (ig_*_delta: max|d| / max|logit|):")
    worst = {}
    for k in sorted(out):
        d = (out[k].double() - ref[k].double()).abs().max().item()
        if k.endswith("_delta"):
            scale = ref["logits"].double().abs().max().item()
        else:
            scale = ref[k].double().abs().max().item() or 1.0
        worst[k] = d / scale
        print(f"     {k:32s} {worst[k]:.3e}")
        assert worst[k] <= REL_TOL, f"{k}: {worst[k]:.3e} vs the torchvision fixture"

    tv_err = json.loads(md["f64_rel_err"])
    meta = {
        "arch": f"timm_{arch}",
        "model_def": f"timm.create_model('{arch}', pretrained=False, num_classes=10), eval(), inplace=False",
        "weights": md["weights"],
        "timm_names": json.dumps(names, separators=(",", ":")),
        "gradcam_layer": layer,
        "gradcam_layer_torchvision": GRADCAM_LAYER[arch],
        "timm": timm.__version__,
        "torch": torch.__version__,
        "captum": captum.__version__,
        "precision": "float32",
        "input_size": md["input_size"],
        "ig": md["ig"],
        "smoothgrad": md["smoothgrad"],
        "f64_rel_err": json.dumps({k: v for k, v in tv_err.items() if k in out}, sort_keys=True),
        "source_fixture": os.path.basename(src),
        "lrp": "not computed: zennit on timm's modules needs canonizers equivalent to the torchvision ones "
               "(BatchNormAct2d merge, residual adds as zennit Sum); the torchvision fixture's LRP covers the same "
               "functions",
        "note": "weights = the torchvision fixture's seeded weights, generated under their torchvision names "
                "(metadata weights) and loaded under the timm name at the same position (metadata timm_names, the "
                "same state-dict order and shapes"
                + (", except layer_scale [C, 1, 1] -> gamma [C], a reshape" if arch == "convnext_tiny" else "")
                + ").",
    }
    out = {k: v.contiguous() for k, v in out.items()}
    path = os.path.join(outdir, f"timm_{arch}_refs.safetensors")
    save_safetensors_deterministic(out, path, meta)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), out[k]), k
    top = max(worst, key=worst.get)
    summary = f"worst {top} {worst[top]:.3e}" if worst[top] else "every key bit-identical"
    print(f"   wrote {path} ({os.path.getsize(path)} bytes, {time.time() - t0:.1f} s); {summary}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--fixtures", default="tests/fixtures", help="where the torchvision <arch>_refs.safetensors are")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS), choices=ARCHS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    print(f"timm {timm.__version__}, torch {torch.__version__}, captum {captum.__version__}")
    for arch in args.archs:
        generate(arch, args.out, args.fixtures)


if __name__ == "__main__":
    main()
