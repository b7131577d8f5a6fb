#!/usr/bin/env python3
"""Reference values of pnpxai 0.1.4's evaluation metrics (MoRF, LeRF, AbPC, MuFidelity, Sensitivity, Complexity).

Writes ``tests/fixtures/metrics/<model>_metrics.safetensors`` for the MNIST models ``mlp``, ``vgg``, ``resnet``
(``mnist_mlp``, ``mnist_vgg``, ``mnist_resnet``) and the seeded torchvision ``resnet18``;
``tests/fixtures/metrics/README.md`` documents every tensor and pnpxai's semantics as read in its source.

Run from the repository root (CPU, float32, one thread, deterministic; about 1 minute on 2 cores):

    /work/venv-ref/bin/python scripts/make_metric_fixtures.py --out tests/fixtures/metrics

Setup: the fixture venv of scripts/requirements-fixtures.txt, then
``<venv>/bin/pip install --no-deps -r scripts/requirements-metric-fixtures.txt`` (pnpxai 0.1.4, scipy, scikit-image,
lazy-loader; --no-deps so that torch, torchvision, captum, zennit and numpy stay as they are).

Every run also re-implements the documented semantics independently (``independent_check``: NumPy, the torch model
only for forwards / gradients) and asserts agreement with pnpxai, and recomputes every metric with the model in float64
(metadata ``f64_abs_err`` / ``f64_rel_err``).

How pnpxai is imported (its declared dependencies include shap, gensim, kaleido, optuna, pandas, ... which the metric
code never touches):
  * ``pnpxai/__init__.py`` and ``pnpxai/core/__init__.py`` are NOT executed: both packages are registered in
    ``sys.modules`` as bare namespace-like modules whose ``__path__`` is the installed package directory, so that
    ``pnpxai.evaluator.metrics``, ``pnpxai.explainers`` and ``pnpxai.core._types`` are imported from their own files.
    (Those two ``__init__`` files only re-export the experiment / recommender / detector machinery, which imports
    optuna and tabulate.)
  * ``shap`` is stubbed in ``sys.modules`` with a ``DeepExplainer`` that raises: pnpxai.explainers/__init__ imports
    pnpxai.explainers.deep_lift_shap, whose only use of shap is that class; neither the metrics nor the Gradient /
    GradientXInput explainers use it.
  * everything else on the path is real: scipy (spearmanr, entropy), scikit-image (imported by
    pnpxai.explainers.utils, unused here), torchvision (Resize, rgb_to_grayscale), captum, zennit, timm, transformers.

``--randomisation`` writes instead ``tests/fixtures/metrics/mnist_<m>_randomisation.safetensors`` (mlp, vgg, resnet):
Quantus 0.6.0's ``MPRT`` (model-parameter randomisation test) with its ``get_random_layer_generator`` patched to OUR
layer order (the graph's layers with parameters, top down) and OUR parameter draws (SplitMix64 purpose 4, as
src/metrics/randomisation.rs), Spearman and SSIM (about 10 s):

    /work/venv-ref/bin/python scripts/make_metric_fixtures.py --randomisation --out tests/fixtures/metrics \
        [--candle-xai target/release/candle-xai]

(quantus 0.6.0 and what its import needs, pinned in scripts/requirements-metric-fixtures.txt, --no-deps.) The
explanations Quantus computes are checked bit for bit against an independent cascade (torch.autograd), Spearman
against NumPy and scipy, SSIM against skimage; see the README section "Model-parameter randomisation".

Randomness: the Rust side draws from SplitMix64 streams (src/rng.rs). While a MuFidelity / Sensitivity evaluation
runs, ``torch.randn_like``, ``torch.randn`` and ``torch.rand_like`` are replaced by functions that return those
draws (see ``DrawReplay``; every call is checked against the expected sequence of calls and shapes).
"""

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import sys
import time
import types
import warnings

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from torchvision.models.resnet import BasicBlock

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from make_fixtures import _dist_version, save_safetensors_deterministic  # noqa: E402
from xai_reference import seeded_model  # noqa: E402

MODELS = ("mnist_mlp", "mnist_vgg", "mnist_resnet", "resnet18")
SEED = 0
SEED_EXTRA = 7            # second MuFidelity / Sensitivity run, mnist_mlp only
SEED_EXTRA_MODELS = ("mnist_mlp",)
KINDS = ("gradient", "pooled", "ties")
# big tensors that resnet18_metrics does not repeat: they are bit-identical to these tensors of the refs file
# Sensitivity compares its explainer's results on noisy inputs with the attribution of the clean input; with
# attr_input_x_gradient given, that attribution is pnpxai's own (bit-identical to the refs'), so the metric is checked
# apart from our Input x Gradient of the flat-region row, which the attribution parity holds at its own tolerance.
EXTERNAL = {"resnet18": {"inputs": "resnet18_refs.safetensors:inputs",
                         "attr_gradient": "resnet18_refs.safetensors:saliency",
                         "attr_input_x_gradient": "resnet18_refs.safetensors:input_x_gradient"}}


# ----------------------------------------------------------------------------------------------------------------
# pnpxai, imported without its package __init__ files (see the module docstring)

def import_pnpxai():
    def bare(name):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
        mod = types.ModuleType(name)
        mod.__path__ = list(spec.submodule_search_locations)
        mod.__file__ = spec.origin
        mod.__spec__ = spec
        sys.modules[name] = mod
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, mod)

    bare("pnpxai")
    bare("pnpxai.core")
    if "shap" not in sys.modules:
        shap = types.ModuleType("shap")

        class DeepExplainer:  # only pnpxai.explainers.DeepLiftShap uses it; never called here
            def __init__(self, *args, **kwargs):
                raise RuntimeError("shap is stubbed by scripts/make_metric_fixtures.py")

        shap.DeepExplainer = DeepExplainer
        sys.modules["shap"] = shap
    import pnpxai.evaluator.metrics as metrics
    import pnpxai.evaluator.metrics.mu_fidelity as mu_fidelity_module
    from pnpxai.explainers import Gradient, GradientXInput
    return types.SimpleNamespace(
        MoRF=metrics.MoRF, LeRF=metrics.LeRF, AbPC=metrics.AbPC, PixelFlipping=metrics.PixelFlipping,
        MuFidelity=metrics.MuFidelity, Sensitivity=metrics.Sensitivity, Complexity=metrics.Complexity,
        mu_fidelity_module=mu_fidelity_module, Gradient=Gradient, GradientXInput=GradientXInput)


# ----------------------------------------------------------------------------------------------------------------
# SplitMix64 streams (bit-exact copy of src/rng.rs)

MASK64 = 2 ** 64 - 1
PURPOSE_MUFID_NOISE, PURPOSE_MUFID_SUBSETS, PURPOSE_SENS_NOISE = 1, 2, 3


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & MASK64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self):  # float64 in [0, 1), 53 bits
        return (self.next_u64() >> 11) / float(1 << 53)

    def normals(self, n):  # Box-Muller in float64 (glibc log/cos/sin via math), each value rounded to float32
        out = []
        while len(out) < n:
            u1 = 1.0 - self.uniform()
            u2 = self.uniform()
            r = math.sqrt(-2.0 * math.log(u1))
            theta = math.tau * u2
            out.append(r * math.cos(theta))
            out.append(r * math.sin(theta))
        return np.array(out[:n], dtype=np.float32)  # float64 -> float32, round to nearest (= np.float32(v))


def stream(seed, purpose, index):
    return SplitMix64(seed ^ ((purpose * 0x9E3779B97F4A7C15) & MASK64) ^ ((index * 0xBF58476D1CE4E5B9) & MASK64))


_DRAW_CACHE = {}


def draws(kind, seed, purpose, index, n):
    key = (kind, seed, purpose, index, n)
    if key not in _DRAW_CACHE:
        g = stream(seed, purpose, index)
        if kind == "normal":
            v = g.normals(n)
        else:
            v = np.array([g.uniform() for _ in range(n)], dtype=np.float32)
        _DRAW_CACHE[key] = v
    return _DRAW_CACHE[key]


def _self_test_splitmix():
    # SplitMix64 reference output for seed 1234567 (Vigna's splitmix64.c)
    g = SplitMix64(1234567)
    got = [g.next_u64() for _ in range(3)]
    assert got == [6457827717110365317, 3203168211198807973, 9817491932198370423], got


class DrawReplay:
    """Replaces torch.randn_like / torch.randn / torch.rand_like by our SplitMix64 draws, in an expected order.

    ``plan``: list of (function name, shape, kind ("normal" | "uniform"), purpose, index). Each call must be the next
    entry of the plan with exactly that shape; on exit every entry must have been used."""

    NAMES = ("randn_like", "randn", "rand_like")

    def __init__(self, seed, plan):
        self.seed, self.plan, self.pos = seed, plan, 0
        self.stats = {"calls": 0, "uniform_rounded_to_one": 0, "ties_in_subset_rows": 0}

    def _next(self, name, shape):
        assert self.pos < len(self.plan), f"unexpected extra call torch.{name}{tuple(shape)}"
        ename, eshape, kind, purpose, index = self.plan[self.pos]
        assert (name, tuple(shape)) == (ename, tuple(eshape)), \
            f"call {self.pos}: torch.{name}{tuple(shape)}, expected torch.{ename}{tuple(eshape)}"
        self.pos += 1
        self.stats["calls"] += 1
        v = draws(kind, self.seed, purpose, index, int(np.prod(shape)))
        if kind == "uniform":
            self.stats["uniform_rounded_to_one"] += int((v >= 1.0).sum())
        return torch.from_numpy(v.copy()).reshape(tuple(shape))

    def __enter__(self):
        self.saved = {n: getattr(torch, n) for n in self.NAMES}

        def randn_like(t, **kw):
            assert not kw, kw
            return self._next("randn_like", t.shape).to(t.dtype)

        def rand_like(t, **kw):
            assert not kw, kw
            return self._next("rand_like", t.shape).to(t.dtype)

        def randn(*size, **kw):
            assert not kw, kw
            if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
                size = tuple(size[0])
            out = self._next("randn", size)  # float32: pnpxai asks for the default dtype
            if out.dim() == 2:
                self.stats["ties_in_subset_rows"] += sum(
                    int(len(set(row.tolist())) != len(row)) for row in out)
            return out

        torch.randn_like, torch.rand_like, torch.randn = randn_like, rand_like, randn
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch, n, f)
        if exc[0] is None:
            assert self.pos == len(self.plan), f"only {self.pos} of {len(self.plan)} expected draws were made"
        return False


def mufid_plan(n, shape, n_perturb, grid):
    plan = []
    for b in range(n):  # pnpxai loops over the samples; per sample: randn_like(repeated), then randn(subsets)
        plan.append(("randn_like", (n_perturb,) + tuple(shape[1:]), "normal", PURPOSE_MUFID_NOISE, b))
        plan.append(("randn", (n_perturb, grid * grid), "normal", PURPOSE_MUFID_SUBSETS, b))
    return plan


def sens_plan(n, shape, n_iter):
    return [("rand_like", (n_iter,) + tuple(shape[1:]), "uniform", PURPOSE_SENS_NOISE, b) for b in range(n)]


@contextlib.contextmanager
def patched(obj, name, fn):
    old = getattr(obj, name)
    setattr(obj, name, fn)
    try:
        yield
    finally:
        setattr(obj, name, old)


# ----------------------------------------------------------------------------------------------------------------
# models

def _layer(spec):
    t = spec["type"]
    if t == "Conv2d":
        return nn.Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
                         tuple(spec["padding"]), tuple(spec["dilation"]), spec["groups"], spec["bias"])
    if t == "BatchNorm2d":
        assert spec["affine"]
        return nn.BatchNorm2d(spec["num_features"], eps=spec["eps"])
    if t == "ReLU":
        return nn.ReLU(inplace=spec["inplace"])
    if t == "MaxPool2d":
        return nn.MaxPool2d(spec["kernel_size"], spec["stride"], spec["padding"], spec["dilation"],
                            ceil_mode=spec["ceil_mode"])
    if t == "Flatten":
        return nn.Flatten(spec["start_dim"], spec["end_dim"])
    if t == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    if t == "AdaptiveAvgPool2d":
        return nn.AdaptiveAvgPool2d(tuple(spec["output_size"]))
    raise ValueError(t)


class SequentialGroups(nn.Module):
    """MLP (``net``) and VGGSmall (``features``, ``classifier``): named nn.Sequential groups applied in order."""

    def __init__(self, layers):
        super().__init__()
        self.groups = []
        for spec in layers:
            group, idx = spec["name"].split(".")
            if group not in self._modules:
                self.add_module(group, nn.Sequential())
                self.groups.append(group)
            seq = self._modules[group]
            assert int(idx) == len(seq), spec["name"]
            seq.append(_layer(spec))

    def forward(self, x):
        for g in self.groups:
            x = self._modules[g](x)
        return x


class ResNetSmall(nn.Module):
    """x = relu(bn1(conv1(x))); layer1..3 (torchvision BasicBlock); AdaptiveAvgPool2d(1); flatten; fc."""

    def __init__(self, layers):
        super().__init__()
        by = {s["name"]: s for s in layers}
        self.conv1, self.bn1, self.relu = _layer(by["conv1"]), _layer(by["bn1"]), _layer(by["relu"])
        for i in (1, 2, 3):
            c1 = by[f"layer{i}.conv1"]
            down = None
            if f"layer{i}.downsample.0" in by:
                down = nn.Sequential(_layer(by[f"layer{i}.downsample.0"]), _layer(by[f"layer{i}.downsample.1"]))
            block = BasicBlock(c1["in_channels"], c1["out_channels"], stride=c1["stride"][0], downsample=down)
            self.add_module(f"layer{i}", block)
        self.avgpool, self.fc = _layer(by["avgpool"]), _layer(by["fc"])

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _check_layers_match(model, layers):
    """Every leaf layer of the arch JSON exists in the model with the same type and hyperparameters."""
    mods = dict(model.named_modules())
    for spec in layers:
        m = mods[spec["name"]]
        assert type(m).__name__ == spec["type"], (spec["name"], type(m).__name__)
        for k, v in spec.items():
            if k in ("name", "type", "params", "mode") or not hasattr(m, k):
                continue
            got = getattr(m, k)
            got = list(got) if isinstance(got, tuple) else got
            if k == "bias" and not isinstance(v, list):
                got = got is not None
            assert got == v, (spec["name"], k, got, v)
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert leaves == {s["name"] for s in layers}, leaves ^ {s["name"] for s in layers}


def mnist_model(m):
    d = os.path.join(ROOT, "tests", "fixtures", "mnist")
    arch = json.load(open(os.path.join(d, f"{m}_arch.json")))
    model = ResNetSmall(arch["layers"]) if arch["class"] == "ResNetSmall" else SequentialGroups(arch["layers"])
    _check_layers_match(model, arch["layers"])
    with safe_open(os.path.join(d, f"{m}.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict(sd, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with safe_open(os.path.join(d, f"{m}_refs.safetensors"), "pt") as f:
        refs = {k: f.get_tensor(k) for k in ("inputs", "targets", "logits", "saliency", "input_x_gradient")}
    with torch.no_grad():
        err = (model(refs["inputs"]) - refs["logits"]).abs().max().item()
    assert err <= 1e-5, f"mnist {m}: rebuilt model's logits differ from the refs by {err}"
    print(f"  mnist {m}: rebuilt from {m}_arch.json + {m}.safetensors, logits max|diff| vs refs {err:.2e}")
    return model, refs


def resnet18_model():
    model, _spec = seeded_model("resnet18")
    model.eval()
    with safe_open(os.path.join(ROOT, "tests", "fixtures", "resnet18_refs.safetensors"), "pt") as f:
        refs = {k: f.get_tensor(k) for k in ("inputs", "targets", "logits", "saliency", "input_x_gradient")}
    with torch.no_grad():
        err = (model(refs["inputs"]) - refs["logits"]).abs().max().item()
    assert err <= 1e-5, err
    print(f"  resnet18: seeded model (xai_reference.seeded_model), logits max|diff| vs refs {err:.2e}")
    return model, refs


def load(name):
    return mnist_model(name.split("_", 1)[1]) if name.startswith("mnist_") else resnet18_model()


# ----------------------------------------------------------------------------------------------------------------
# metrics

PF_DEFAULT = {"n_steps": 10, "channel_dim": 1, "baseline_fn": "zeros_like(inputs)", "prob_fn": "softmax(-1)",
              "pred_fn": "argmax(-1)"}
ABPC_DEFAULT = dict(PF_DEFAULT, lb=-1.0)
MUFID_DEFAULT = {"n_perturb": 150, "noise_scale": 0.2, "batch_size": 32, "grid_size": 9, "baseline": 0.0,
                 "mask_agg_dim": None}
MUFID_G7 = dict(MUFID_DEFAULT, n_perturb=40, noise_scale=0.3, grid_size=7)
SENS_DEFAULT = {"n_iter": 8, "epsilon": 0.2}
COMPLEXITY_DEFAULT = {"n_bins": 10}


def _f64(t):
    return torch.as_tensor(t).detach().to(torch.float64)


def compute_metrics(P, model, x, t, attrs, sens_attrs, seeds, params, aux):
    """All metric values of one model, as float64 tensors. ``attrs``: kind -> attribution; ``sens_attrs``: the
    attributions Sensitivity compares with, {"attr_gradient": signed gradient, "input_x_gradient": x * gradient}.
    ``params`` (filled here): key -> metric parameters. ``aux``: captured intermediates."""
    out = {}
    n, shape = x.shape[0], tuple(x.shape)
    grad_expl, gxi_expl = P.Gradient(model), P.GradientXInput(model)

    def pixel_flipping(kind, a, n_steps, suffix=""):
        pf = P.PixelFlipping(model, n_steps=n_steps)
        morf_curve = pf.evaluate(x, t, a, descending=True)["probs"]
        lerf_curve = pf.evaluate(x, t, a, descending=False)["probs"]
        morf = P.MoRF(model, n_steps=n_steps).evaluate(x, t, a)
        lerf = P.LeRF(model, n_steps=n_steps).evaluate(x, t, a)
        abpc = P.AbPC(model, n_steps=n_steps).evaluate(x, t, a)
        assert morf_curve.shape == (n, n_steps) and morf_curve.dtype == x.dtype
        assert torch.equal(morf, morf_curve.mean(-1)) and torch.equal(lerf, lerf_curve.mean(-1))
        assert torch.equal(abpc, (lerf_curve - morf_curve).clamp(min=-1.0).mean(-1))
        p = dict(PF_DEFAULT, n_steps=n_steps)
        for key, v, cls in ((f"morf_{kind}{suffix}", morf, "MoRF"), (f"lerf_{kind}{suffix}", lerf, "LeRF"),
                            (f"abpc_{kind}{suffix}", abpc, "AbPC"),
                            (f"morf_curve_{kind}{suffix}", morf_curve, "PixelFlipping(descending=True).probs"),
                            (f"lerf_curve_{kind}{suffix}", lerf_curve, "PixelFlipping(descending=False).probs")):
            out[key] = _f64(v)
            params[key] = dict(p, **({"lb": -1.0} if cls == "AbPC" else {}), metric=cls, attributions=f"attr_{kind}")

    def mu_fidelity(kind, a, seed, p, key, capture=False):
        metric = P.MuFidelity(model, n_perturb=p["n_perturb"], noise_scale=p["noise_scale"],
                              batch_size=p["batch_size"], grid_size=p["grid_size"], baseline=p["baseline"])
        seen, stds = [], []
        real_spearmanr, real_std_mean = P.mu_fidelity_module.spearmanr, torch.std_mean

        def spearmanr(u, v):
            seen.append((u.copy(), v.copy()))
            return real_spearmanr(u, v)

        def std_mean(tensor, *args, **kw):
            assert not args and not kw
            r = real_std_mean(tensor)
            stds.append((r[0].item(), r[1].item()))
            return r

        with warnings.catch_warnings(record=True) as w, \
                patched(P.mu_fidelity_module, "spearmanr", spearmanr), patched(torch, "std_mean", std_mean), \
                DrawReplay(seed, mufid_plan(n, shape, p["n_perturb"], p["grid_size"])) as rep:
            warnings.simplefilter("always")
            v = metric.evaluate(x, t, a)
        assert rep.stats["ties_in_subset_rows"] == 0, "a row of subset draws has a tie: argsort order ambiguous"
        assert len(seen) == n and len(stds) == n
        const = [str(x.message) for x in w if "constant" in str(x.message)]
        if const:
            aux.setdefault("notes", []).append(f"{key}: spearmanr constant input ({len(const)}x) -> NaN")
        # the std pnpxai uses is the UNBIASED std of the repeated stack: denominator n_perturb*C*H*W - 1
        for b in range(n):
            xb = x[b].detach().double().numpy().ravel()
            m = p["n_perturb"] * xb.size
            s_pop = xb.std()
            expect = np.float32(s_pop * math.sqrt(m / (m - 1)))
            assert abs(stds[b][0] - float(expect)) <= 2e-7 * abs(float(expect)), (stds[b][0], float(expect))
        out[key] = _f64(v)
        params[key] = dict(p, metric="MuFidelity", attributions=f"attr_{kind}", seed=seed)
        # rank margin: smallest gap between two distinct values of pred_diff / masked_attr, relative to the largest
        # magnitude; a float32 error above it can swap two ranks (one adjacent swap moves rho by <= 12/(n(n+1)))
        for i, what in ((0, "pred_diff"), (1, "masked_attr")):
            gaps = []
            for s in seen:
                u = np.unique(s[i].astype(np.float64))
                gaps.append(np.diff(u).min() / np.abs(u).max() if len(u) > 1 else math.inf)
            aux.setdefault("rank_margin", {})[f"{key}:{what}"] = float(min(gaps))
        if capture:
            aux[key + "_pred_diff"] = torch.from_numpy(np.stack([s[0] for s in seen]))
            aux[key + "_masked_attr"] = torch.from_numpy(np.stack([s[1] for s in seen]))
            aux[key + "_std_mean"] = torch.tensor(stds, dtype=x.dtype)

    def sensitivity(name, a, explainer, seed, key):
        metric = P.Sensitivity(model, explainer, n_iter=SENS_DEFAULT["n_iter"], epsilon=SENS_DEFAULT["epsilon"])
        with DrawReplay(seed, sens_plan(n, shape, SENS_DEFAULT["n_iter"])) as rep:
            v = metric.evaluate(x, t, a)
        if rep.stats["uniform_rounded_to_one"]:
            aux.setdefault("notes", []).append(
                f"{key}: {rep.stats['uniform_rounded_to_one']} uniform draws rounded to 1.0f")
        out[key] = _f64(v)
        params[key] = dict(SENS_DEFAULT, metric="Sensitivity", attributions=name, seed=seed,
                           explainer={"attr_gradient": "pnpxai.explainers.Gradient(model).attribute",
                                      "input_x_gradient": "pnpxai.explainers.GradientXInput(model).attribute"}[name])

    for kind, a in attrs.items():
        pixel_flipping(kind, a, PF_DEFAULT["n_steps"])
        mu_fidelity(kind, a, seeds[0], MUFID_DEFAULT, f"mu_fidelity_{kind}", capture=(kind == "gradient"))
        out[f"complexity_{kind}"] = _f64(P.Complexity(model, n_bins=COMPLEXITY_DEFAULT["n_bins"]).evaluate(x, t, a))
        params[f"complexity_{kind}"] = dict(COMPLEXITY_DEFAULT, metric="Complexity", attributions=f"attr_{kind}")
    sensitivity("attr_gradient", sens_attrs["attr_gradient"], grad_expl, seeds[0], "sensitivity_gradient")
    sensitivity("input_x_gradient", sens_attrs["input_x_gradient"], gxi_expl, seeds[0], "sensitivity_input_x_gradient")
    # non-default parameters
    pixel_flipping("gradient", attrs["gradient"], 7, suffix="_steps7")
    mu_fidelity("gradient", attrs["gradient"], seeds[0], MUFID_G7, "mu_fidelity_gradient_g7")
    for seed in seeds[1:]:
        for kind, a in attrs.items():
            mu_fidelity(kind, a, seed, MUFID_DEFAULT, f"mu_fidelity_{kind}_seed{seed}")
        sensitivity("attr_gradient", sens_attrs["attr_gradient"], grad_expl, seed, f"sensitivity_gradient_seed{seed}")
        sensitivity("input_x_gradient", sens_attrs["input_x_gradient"], gxi_expl, seed,
                    f"sensitivity_input_x_gradient_seed{seed}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# attributions

def attributions(P, model, x, t):
    """attr_gradient (pnpxai Gradient = d logit[target] / d x), input x gradient (pnpxai GradientXInput), the
    channel-pooled attr_pooled = sum_c (x * grad) and attr_ties."""
    grad = P.Gradient(model).attribute(x, t).detach()
    ixg = P.GradientXInput(model).attribute(x, t).detach()
    pooled = ixg.sum(dim=1)
    ties = torch.round(grad / grad.abs().amax(dim=(1, 2, 3), keepdim=True) * 4)
    return grad, ixg, pooled, ties


def check_attributions(P, model, x, t, grad, ixg, refs):
    from captum.attr import InputXGradient, Saliency
    sal = Saliency(model).attribute(x, target=t, abs=False).detach()
    cixg = InputXGradient(model).attribute(x, target=t).detach()
    d = {"pnpxai Gradient vs captum Saliency(abs=False)": (grad - sal).abs().max().item(),
         "pnpxai Gradient vs refs saliency": (grad - refs["saliency"]).abs().max().item(),
         "pnpxai GradientXInput vs captum InputXGradient": (ixg - cixg).abs().max().item(),
         "pnpxai GradientXInput vs refs input_x_gradient": (ixg - refs["input_x_gradient"]).abs().max().item(),
         "GradientXInput vs x * Gradient": (ixg - x * grad).abs().max().item()}
    for k, v in d.items():
        print(f"    {k}: max|diff| {v:.2e}")
    assert torch.equal(grad, sal) and torch.equal(ixg, cixg) and torch.equal(ixg, x * grad)
    return d


# ----------------------------------------------------------------------------------------------------------------

def _rel(a, b):
    """(max abs diff, max rel diff |a-b|/|b|) of float32-run a vs float64-run b; NaN == NaN."""
    a, b = a.double(), b.double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / b.abs())
    return diff.max().item(), rel.max().item()


# ----------------------------------------------------------------------------------------------------------------
# independent re-implementation of the semantics documented in tests/fixtures/metrics/README.md (NumPy; the torch
# model only for forward passes and gradients). It checks that the README describes what pnpxai computes.

def _np_rankdata(v):
    """Average ranks (1-based) of exact float values, as scipy.stats.rankdata(method='average')."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    ranks = np.empty(len(v), dtype=np.float64)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _np_spearman(u, v):
    if (u == u[0]).all() or (v == v[0]).all():
        return math.nan
    ru, rv = _np_rankdata(u), _np_rankdata(v)
    ru, rv = ru - ru.mean(), rv - rv.mean()
    return float(np.clip((ru * rv).sum() / math.sqrt((ru * ru).sum() * (rv * rv).sum()), -1.0, 1.0))


def _np_histogram_entropy(a, n_bins):
    a = np.asarray(a, dtype=np.float32).ravel()
    lo, hi = a.min(), a.max()                      # float32
    if lo == hi:
        lo, hi = lo - np.float32(0.5), hi + np.float32(0.5)
    step = np.float32(hi - lo) / np.float32(n_bins)
    edges = (np.arange(n_bins + 1, dtype=np.float32) * step + lo).astype(np.float32)
    edges[-1] = hi
    idx = (((a - lo) / np.float32(hi - lo)) * np.float32(n_bins)).astype(np.int64)
    idx[idx == n_bins] -= 1
    idx[a < edges[idx]] -= 1
    idx[(a >= edges[idx + 1]) & (idx != n_bins - 1)] += 1
    hist = np.bincount(idx, minlength=n_bins).astype(np.float64)
    p = hist / hist.sum()
    return float(-sum(q * math.log(q) for q in p if q > 0))


def _nearest_index(out, inp):
    scale = np.float32(np.float32(inp) / np.float32(out))
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), inp - 1)


def independent_check(P, model, x, t, attrs, res, sens_attrs, seed, aux, tie_reversal=True):
    xn = x.numpy()
    n, c, h, w = xn.shape
    diffs = {}

    def forward(batch):
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def softmax_t(logits, tgt):
        return torch.from_numpy(logits).softmax(-1).numpy()[np.arange(len(tgt)), tgt]

    tn = t.numpy()
    for kind, a in attrs.items():
        # pixel flipping
        an = a.numpy().reshape(n, -1)
        for desc in (True, False):
            curves = []
            for reverse_ties in ((False, True) if tie_reversal and kind == "ties" else (False,)):
                n_feat = an.shape[1]
                per_step = max(n_feat // 10, 1)
                probs = [softmax_t(forward(xn), tn)]
                rank = np.empty_like(an, dtype=np.int64)
                for b in range(n):
                    key = -an[b] if desc else an[b]
                    if reverse_ties:   # ties in DEcreasing index order instead of pnpxai's increasing order
                        order = np.lexsort((-np.arange(n_feat), key))
                    else:
                        order = np.argsort(key, kind="stable")
                    rank[b, order] = np.arange(n_feat)
                for step in range(1, 10):
                    k = n_feat if step == 9 else per_step * step
                    flip = (rank < k).reshape((n,) + a.shape[1:])
                    if a.dim() == 3:
                        flip = np.repeat(flip[:, None], c, axis=1)
                    probs.append(softmax_t(forward(np.where(flip, np.float32(0), xn)), tn))
                curves.append(np.stack(probs, 1))
            ref = res[f"{'morf' if desc else 'lerf'}_curve_{kind}"].numpy()
            diffs[f"{'morf' if desc else 'lerf'}_curve_{kind}"] = float(np.abs(curves[0] - ref).max())
            if len(curves) > 1:
                diffs[f"{'morf' if desc else 'lerf'}_curve_{kind} (ties reversed, NOT pnpxai)"] = \
                    float(np.abs(curves[1] - ref).max())
        # complexity
        comp = []
        for b in range(n):
            g = a[b].numpy()
            if a.dim() == 4:
                g = g[0] if c == 1 else (np.float32(0.2989) * g[0] + np.float32(0.587) * g[1]
                                         + np.float32(0.114) * g[2])
            comp.append(_np_histogram_entropy(g, 10))
        diffs[f"complexity_{kind}"] = float(np.abs(np.array(comp) - res[f"complexity_{kind}"].numpy()).max())
        # mu fidelity (default parameters)
        npert, scale, grid = 150, np.float32(0.2), 9
        subset = int(grid * grid * 0.2)
        ih, iw = _nearest_index(h, grid), _nearest_index(w, grid)
        logits = forward(xn)
        mf = []
        for b in range(n):
            xb = xn[b]
            m = npert * xb.size
            mean64 = float(xb.astype(np.float64).mean())
            std = np.float32(math.sqrt(((xb.astype(np.float64) - mean64) ** 2).sum() * npert / (m - 1)))
            mean = np.float32(mean64)
            z = draws("normal", seed, PURPOSE_MUFID_NOISE, b, m).reshape((npert,) + xb.shape)
            noise = z * std + mean
            pert = np.minimum(xb, scale * noise + xb)
            pert = np.maximum(xb - np.float32(1), pert)
            sd = draws("normal", seed, PURPOSE_MUFID_SUBSETS, b, npert * grid * grid).reshape(npert, grid * grid)
            keep = (np.argsort(sd, axis=-1, kind="stable") > subset).astype(np.float32).reshape(npert, grid, grid)
            keep = keep[:, ih][:, :, iw][:, None]                     # [P,1,H,W]
            masked = pert * keep                                      # baseline 0
            out = np.concatenate([forward(masked[i:i + 32]) for i in range(0, npert, 32)])
            pred_diff = logits[b, tn[b]] - out[:, tn[b]]
            if kind == "gradient":  # the perturbation is bit-exact: same f32 ops as pnpxai
                diffs.setdefault("mu_fidelity_gradient_pred_diff", 0.0)
                diffs["mu_fidelity_gradient_pred_diff"] = max(diffs["mu_fidelity_gradient_pred_diff"], float(
                    np.abs(pred_diff - aux["mu_fidelity_gradient_pred_diff"][b].numpy()).max()))
            ab = a[b].numpy().astype(np.float64)
            masked_attr = (ab * (1.0 - keep.astype(np.float64))).reshape(npert, -1).sum(-1)
            mf.append(_np_spearman(pred_diff.astype(np.float64), masked_attr))
        diffs[f"mu_fidelity_{kind}"] = float(np.nanmax(np.abs(np.array(mf) - res[f"mu_fidelity_{kind}"].numpy())))
    # sensitivity
    for name, expl in (("attr_gradient", P.Gradient(model)), ("input_x_gradient", P.GradientXInput(model))):
        key = "sensitivity_gradient" if name == "attr_gradient" else "sensitivity_input_x_gradient"
        sens = []
        for b in range(n):
            u = draws("uniform", seed, PURPOSE_SENS_NOISE, b, 8 * c * h * w).reshape(8, c, h, w)
            eps = np.float32(0.2)
            pert = xn[b][None] + ((u * eps) * np.float32(2) - eps)
            pa = expl.attribute(torch.from_numpy(pert), t[b].repeat(8)).detach().numpy().astype(np.float64)
            ab = sens_attrs[name][b].numpy().astype(np.float64)
            sens.append(max(np.linalg.norm((ab - pa[i]).ravel()) for i in range(8)) / np.linalg.norm(ab.ravel()))
        diffs[key] = float(np.abs(np.array(sens) - res[key].numpy()).max())
    return diffs


def generate(P, name, outdir, with_f64=True):
    t0 = time.time()
    print(f"\n{name}")
    model, refs = load(name)
    x, t = refs["inputs"].clone(), refs["targets"].clone()
    grad, ixg, pooled, ties = attributions(P, model, x, t)
    check = check_attributions(P, model, x, t, grad, ixg, refs)
    attrs = {"gradient": grad, "pooled": pooled, "ties": ties}
    seeds = (SEED, SEED_EXTRA) if name in SEED_EXTRA_MODELS else (SEED,)
    params, aux = {}, {}
    res = compute_metrics(P, model, x, t, attrs, {"attr_gradient": grad, "input_x_gradient": ixg}, seeds, params, aux)
    t32 = time.time() - t0
    indep = independent_check(P, model, x, t, attrs, res, {"attr_gradient": grad, "input_x_gradient": ixg}, SEED,
                              aux)
    for k, v in indep.items():
        print(f"    independent re-implementation vs pnpxai, {k}: max|diff| {v:.2e}")
        if "NOT pnpxai" in k:
            continue
        tol = 0.0 if k.endswith("pred_diff") else 1e-5 if k.startswith(("mu_fidelity", "sensitivity")) \
            else 1e-12 if k.startswith("complexity") else 2e-6
        assert v <= tol, (k, v, tol)

    # the same metrics with the model, the inputs and the draws in float64; attributions = the float32 ones, cast
    # (so that pixel-flipping orders and mufidelity subsets are identical), except Sensitivity, whose explainer runs in
    # float64 on the float64 inputs and whose reference attribution is the float64 one
    cond = {}
    if with_f64:
        model64 = copy.deepcopy(model).double()
        x64 = x.double()
        grad64 = P.Gradient(model64).attribute(x64, t).detach()
        ixg64 = P.GradientXInput(model64).attribute(x64, t).detach()
        attrs64 = {k: v.double() for k, v in attrs.items()}
        res64 = compute_metrics(P, model64, x64, t, attrs64, {"attr_gradient": grad64, "input_x_gradient": ixg64},
                                seeds, {}, {})
        for k in res:
            cond[k] = _rel(res[k], res64[k])
    t_all = time.time() - t0

    tensors = {"targets": t.to(torch.int64), "attr_pooled": pooled.contiguous(),
               "attr_ties": ties.to(torch.float16)}
    assert torch.equal(tensors["attr_ties"].float(), ties)  # integers in -4..4: exact in float16
    ext = EXTERNAL.get(name, {})
    if "inputs" in ext:
        assert torch.equal(x, refs["inputs"])
    else:
        tensors["inputs"] = x
    if "attr_gradient" in ext:
        assert torch.equal(grad.view(torch.int32), refs["saliency"].view(torch.int32)), \
            "attr_gradient is not bit-identical to the refs' saliency: store it"
    else:
        tensors["attr_gradient"] = grad
    if "attr_input_x_gradient" in ext:
        assert torch.equal(ixg.view(torch.int32), refs["input_x_gradient"].view(torch.int32)), \
            "attr_input_x_gradient is not bit-identical to the refs' input_x_gradient"
    tensors.update(res)
    tensors.update({k: v.contiguous() for k, v in aux.items() if isinstance(v, torch.Tensor)})

    # tied values: per attribution, sum over samples of (number of values - number of distinct values)
    n_ties = {k: sum(int(r.numel() - torch.unique(r).numel()) for r in a.flatten(1)) for k, a in attrs.items()}
    neg_zero = int(((ties == 0) & torch.signbit(ties)).sum())
    meta = {
        "model": name,
        "note": "see README.md beside this file",
        "versions": json.dumps({p: _dist_version(p) for p in
                                ("torch", "torchvision", "captum", "zennit", "pnpxai", "scipy", "numpy")},
                               sort_keys=True),
        "python": sys.version.split()[0],
        "params": json.dumps(params, sort_keys=True),
        "seeds": json.dumps(list(seeds)),
        "draws": "SplitMix64 stream(seed, purpose, index=sample): purpose 1 MuFidelity noise (normals), "
                 "2 MuFidelity subsets (normals), 3 Sensitivity noise (uniforms rounded to float32)",
        "external_tensors": json.dumps(ext, sort_keys=True),
        "attribution_checks": json.dumps({k: float(v) for k, v in check.items()}, sort_keys=True),
        "f64_abs_err": json.dumps({k: float(v[0]) for k, v in cond.items()}, sort_keys=True),
        "f64_rel_err": json.dumps({k: float(v[1]) for k, v in cond.items()}, sort_keys=True),
        "tied_values_per_attribution": json.dumps(n_ties, sort_keys=True),
        "attr_ties_negative_zeros": str(neg_zero),
        "notes": json.dumps(aux.get("notes", [])),
        "independent_check_max_abs_diff": json.dumps(indep, sort_keys=True),
        "mu_fidelity_rank_margin": json.dumps(aux.get("rank_margin", {}), sort_keys=True),
    }
    path = os.path.join(outdir, f"{name}_metrics.safetensors")
    save_safetensors_deterministic(tensors, path, meta)
    with safe_open(path, "pt") as f:  # reload check
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), tensors[k].contiguous()) or (
                torch.isnan(tensors[k]).any() and torch.equal(torch.isnan(f.get_tensor(k)), torch.isnan(tensors[k])))
    print(f"  wrote {path} ({os.path.getsize(path)} bytes) in {t_all:.1f} s (float32 pass {t32:.1f} s)")
    for k in sorted(res):
        v = res[k]
        c = f"  f64 abs {cond[k][0]:.1e} rel {cond[k][1]:.1e}" if cond else ""
        print(f"    {k:40s} {np.array2string(v.numpy().ravel()[:4], precision=6, max_line_width=200)}{c}")
    rm = aux.get("rank_margin", {})
    print("    mu_fidelity rank margin (min relative gap of distinct values): " + ", ".join(
        f"{k} {v:.1e}" for k, v in sorted(rm.items())))
    if aux.get("notes"):
        print("    notes:", aux["notes"])
    print(f"    tied values (sum over samples of count minus distinct): {n_ties}; -0.0 in attr_ties: {neg_zero}")
    return cond


# ----------------------------------------------------------------------------------------------------------------
# --randomisation: Quantus 0.6.0's MPRT (model-parameter randomisation test) with OUR randomised parameters and OUR
# layer order (src/metrics/randomisation.rs), for the MNIST models. See tests/fixtures/metrics/README.md.

PURPOSE_RANDOMISATION = 4
RANDOMISATION_SEED = 42
RANDOMISATION_MODELS = ("mnist_mlp", "mnist_vgg", "mnist_resnet")
PARAM_KINDS = ("Conv2d", "Linear", "BatchNorm2d", "LayerNorm")
_GAMMA = 0x9E3779B97F4A7C15


def stream_state(seed, purpose, index):
    return stream(seed, purpose, index).s


def splitmix_uniforms(state, n):
    """The first n ``uniform()`` draws of ``SplitMix64(state)``, vectorised (uint64 arithmetic wraps)."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state) + i * np.uint64(_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def randomisation_layers(m, candle_xai=None):
    """[(name, kind)] of the graph's nodes with parameters, top down (output's layer first), as
    src/metrics/randomisation.rs: the nodes of tests/fixtures/mnist/<m>.graph.json in order, filtered by kind,
    reversed. With ``candle_xai`` (a built binary) the list is cross-checked with ``candle-xai layers``."""
    d = os.path.join(ROOT, "tests", "fixtures", "mnist")
    graph = json.load(open(os.path.join(d, f"{m}.graph.json")))
    nodes = [(n["name"], n["op"]) for n in graph["nodes"]]
    if candle_xai:
        import subprocess
        out = subprocess.run([candle_xai, "layers", "--model", os.path.join(d, f"{m}.safetensors"),
                              "--graph", os.path.join(d, f"{m}.graph.json")], check=True, capture_output=True,
                             text=True).stdout
        listed = [tuple(line.split("\t")[:2]) for line in out.splitlines() if "\t" in line]
        assert listed == nodes, f"{m}: candle-xai layers {listed} != graph.json {nodes}"
    return [(name, kind) for name, kind in nodes if kind in PARAM_KINDS][::-1]


def randomise_module(mod, kind, seed, position):
    """Our reset_parameters (src/layers/mod.rs Op::reset_parameters) of the layer at ``position`` (top down)."""
    assert type(mod).__name__ == kind, (type(mod).__name__, kind)
    with torch.no_grad():
        if kind in ("Conv2d", "Linear"):
            w = mod.weight
            nw = w.numel()
            nb = mod.bias.numel() if mod.bias is not None else 0
            bound = 1.0 / math.sqrt(nw // w.shape[0])          # 1/sqrt(fan_in), f64
            u = splitmix_uniforms(stream_state(seed, PURPOSE_RANDOMISATION, position), nw + nb)
            v = ((u * 2.0 - 1.0) * bound).astype(np.float32)   # f64 -> f32, round to nearest
            w.copy_(torch.from_numpy(v[:nw].copy()).reshape(w.shape))
            if nb:
                mod.bias.copy_(torch.from_numpy(v[nw:].copy()))
        elif kind == "BatchNorm2d":
            mod.weight.fill_(1.0)
            mod.bias.fill_(0.0)
            mod.running_mean.fill_(0.0)
            mod.running_var.fill_(1.0)
        elif kind == "LayerNorm":
            mod.weight.fill_(1.0)
            mod.bias.fill_(0.0)
        else:
            raise ValueError(kind)


def _check_randomise_module(model, layers, seed):
    """The vectorised draws equal the scalar SplitMix64 (every value); BatchNorm/LayerNorm: our values are what
    torch's reset_parameters gives."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    for k, (name, kind) in enumerate(layers):
        mod = mods[name]
        if kind in ("Conv2d", "Linear"):
            n = mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
            g = stream(seed, PURPOSE_RANDOMISATION, k)
            scalar = np.array([g.uniform() for _ in range(n)])
            assert np.array_equal(scalar, splitmix_uniforms(stream_state(seed, PURPOSE_RANDOMISATION, k), n)), name
        else:
            ref = copy.deepcopy(mod)
            ref.reset_parameters()
            randomise_module(mod, kind, seed, k)
            for (pn, a), (_, b) in zip(mod.state_dict().items(), ref.state_dict().items()):
                if pn != "num_batches_tracked":
                    assert torch.equal(a, b), (name, pn)


def _quantus_native_order(model):
    """The modules Quantus' own get_random_layer_generator would reset, top down (for the report)."""
    return [(n, type(mod).__name__) for n, mod in model.named_modules() if hasattr(mod, "reset_parameters")][::-1]


def _saliency_explain(record):
    from captum.attr import Saliency

    def explain(model, inputs, targets, **kwargs):
        assert not kwargs, kwargs
        x = torch.as_tensor(np.ascontiguousarray(inputs))
        t = torch.as_tensor(np.asarray(targets))
        a = Saliency(model).attribute(x, target=t, abs=False).detach().numpy()
        record.append(a.copy())
        return a
    return explain


def _run_mprt(quantus, model, layers, seed, x, t, a, similarity_func, batch_size):
    """One Quantus MPRT call with get_random_layer_generator patched to OUR order and draws (cascading).
    Returns (scores dict, raw explanations explain_func produced, in call order)."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    def get_random_layer_generator(self, order="top_down", seed=42):
        assert order == "top_down" and seed == RANDOMISATION_SEED
        random_model = copy.deepcopy(self.model)
        mods = dict(random_model.named_modules())
        for k, (name, kind) in enumerate(layers):
            randomise_module(mods[name], kind, seed, k)
            yield name, random_model

    record = []
    metric = quantus.MPRT(similarity_func=similarity_func, layer_order="top_down", seed=seed,
                          return_last_correlation=False, abs=True, normalise=True, disable_warnings=True,
                          display_progressbar=False)
    with patched(PyTorchModel, "get_random_layer_generator", get_random_layer_generator):
        scores = metric(model=model, x_batch=x, y_batch=t, a_batch=a, channel_first=True,
                        explain_func=_saliency_explain(record), batch_size=batch_size)
    assert list(scores) == ["original"] + [n for n, _ in layers], list(scores)
    return scores, record


def _ssim_as_array(ssim):
    """Quantus 0.6.0's ``ssim(a, b, batched=True)`` returns a Python list, and MPRT calls ``.tolist()`` on the
    similarity (AttributeError): this wrapper only turns that list into an array (values untouched)."""
    def similarity(a, b, batched=False, **kwargs):
        return np.asarray(ssim(a, b, batched=batched, **kwargs)) if batched else ssim(a, b, **kwargs)
    return similarity


def _ssim_f64(u, v, win=7):
    """skimage.metrics.structural_similarity on 1-D float64 arrays (uniform 7-wide window, reflect, sample
    covariance, K1 .01, K2 .03, data_range = max - min of both, mean over the cropped interior), in NumPy."""
    n = len(u)
    idx = np.arange(n)[:, None] + np.arange(win)[None, :] - win // 2
    idx = np.where(idx < 0, -idx - 1, idx)
    idx = np.where(idx >= n, 2 * n - idx - 1, idx)

    def filt(z):
        return z[idx].sum(1) / win
    r = float(np.abs(max(u.max(), v.max()) - min(u.min(), v.min())))
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    ux, uy, uxx, uyy, uxy = filt(u), filt(v), filt(u * u), filt(v * v), filt(u * v)
    cn = win / (win - 1)
    vx, vy, vxy = cn * (uxx - ux * ux), cn * (uyy - uy * uy), cn * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return float(s[p:n - p].mean())


def generate_randomisation(name, outdir, candle_xai=None):
    import quantus
    import scipy.stats
    import skimage.metrics

    t0 = time.time()
    m = name.split("_", 1)[1]
    print(f"\n{name} (randomisation)")
    model, refs = mnist_model(m)
    x_t, t_t = refs["inputs"].clone(), refs["targets"].clone()
    x, t = x_t.numpy().copy(), t_t.numpy().copy()
    n = x.shape[0]
    layers = randomisation_layers(m, candle_xai)
    names = [nm for nm, _ in layers]
    mods = dict(model.named_modules())
    for nm, kind in layers:
        assert nm in mods and type(mods[nm]).__name__ == kind, (nm, kind)
    native = _quantus_native_order(model)
    print(f"  layers (top down, {len(layers)}): " + ", ".join(f"{nm} ({k})" for nm, k in layers))
    print(f"  Quantus' own order (hasattr reset_parameters, reversed) equals ours: {native == layers}")
    _check_randomise_module(model, layers, RANDOMISATION_SEED)
    seed = RANDOMISATION_SEED
    notes = []

    # the explanation (captum Saliency(abs=False)), also the given a_batch
    a = _saliency_explain([])(model, x, t)
    assert np.array_equal(a, refs["saliency"].numpy()), "Saliency differs from the refs' saliency"

    # independent cascade: our own randomised copies, gradients by torch.autograd directly
    indep_model = copy.deepcopy(model)
    imods = dict(indep_model.named_modules())
    def gradient(xb, tb):
        xi = torch.from_numpy(xb.copy()).requires_grad_(True)
        out = indep_model(xi)
        (g,) = torch.autograd.grad(out[torch.arange(len(tb)), torch.from_numpy(tb)].sum(), xi)
        return g.detach().numpy(), out.detach()

    grads, grads1, logits = [], [], []
    for k, (nm, kind) in enumerate(layers):
        randomise_module(imods[nm], kind, seed, k)
        g, out = gradient(x, t)
        grads.append(g)
        logits.append(out)
        # one sample at a time (batch 1, as the per-sample Quantus runs): torch's kernels differ from batch 4
        grads1.append(np.concatenate([gradient(x[b:b + 1], t[b:b + 1])[0] for b in range(n)]))
    grads = np.stack(grads)                                          # [L, N, C, H, W] f32, whole batch
    grads1 = np.stack(grads1)                                        # the same, each sample alone

    # Quantus, Spearman, whole batch (batch_size 64 > N: one batch)
    sp, rec = _run_mprt(quantus, model, layers, seed, x, t, a, quantus.correlation_spearman, 64)
    assert len(rec) == 1 + len(layers) and np.array_equal(rec[0], a)
    got = np.stack(rec[1:])
    assert np.array_equal(got, grads), "explanations inside Quantus != independent cascade (order/draws/cascade)"
    sp_curve = np.array([sp[nm] for nm in names], dtype=np.float64)   # [L, N]
    sp_original = np.array(sp["original"], dtype=np.float64)

    # Quantus, Spearman and SSIM, one call per sample (batch_size 1): the normalisation is per sample
    per = {"spearman": [], "ssim": []}
    for b in range(n):
        for key, fn in (("spearman", quantus.correlation_spearman), ("ssim", _ssim_as_array(quantus.ssim))):
            s, rec = _run_mprt(quantus, model, layers, seed, x[b:b + 1], t[b:b + 1], a[b:b + 1], fn, 1)
            assert np.array_equal(np.stack(rec[1:])[:, 0], grads1[:, b])
            per[key].append([s[nm][0] for nm in names])
            if key == "ssim":
                per.setdefault("ssim_original", []).append(s["original"][0])
    sp_per = np.array(per["spearman"], dtype=np.float64).T            # [L, N]
    ss_curve = np.array(per["ssim"], dtype=np.float64).T              # [L, N]

    # independent checks
    def quantus_prepared(g):   # normalise_by_max over the array given (f32), then abs: as Quantus
        g = g if np.all(g == 0.0) else np.divide(g, np.max(np.abs(g)))
        return np.abs(g)

    def ours_prepared(g):      # src/metrics/randomisation.rs: f64, abs, / own max
        v = np.abs(g.astype(np.float64).ravel())
        mx = v.max()
        return v / mx if mx > 0 else v

    checks = {}
    a_q = quantus_prepared(a)                                          # whole-batch max
    sp_indep = np.array([[_np_spearman(a_q[b].ravel().astype(np.float64),
                                       quantus_prepared(grads[j])[b].ravel().astype(np.float64))
                          for b in range(n)] for j in range(len(layers))])
    checks["spearman: Quantus vs NumPy re-implementation (batch normalisation, f32)"] = \
        float(np.abs(sp_indep - sp_curve).max())
    sp_scipy = np.array([[scipy.stats.spearmanr(a_q[b].ravel(), quantus_prepared(grads[j])[b].ravel())[0]
                          for b in range(n)] for j in range(len(layers))])
    checks["spearman: Quantus vs scipy.stats.spearmanr per pair"] = float(np.abs(sp_scipy - sp_curve).max())
    checks["spearman: batch run vs per-sample runs (batch-1 gradients)"] = float(np.abs(sp_per - sp_curve).max())
    checks["gradients: whole batch vs one sample at a time"] = float(np.abs(grads - grads1).max())
    sp_f64 = np.array([[_np_spearman(ours_prepared(a[b]), ours_prepared(grads[j][b])) for b in range(n)]
                       for j in range(len(layers))])
    checks["spearman: Quantus vs f64 per-sample normalisation (ours)"] = float(np.abs(sp_f64 - sp_curve).max())
    def ssim_f32(u, v):         # skimage directly, on the f32 arrays, data range of both (as Quantus' ssim)
        both = np.concatenate([u, v])
        return skimage.metrics.structural_similarity(u, v, data_range=float(np.abs(both.max() - both.min())))

    ss_sk = np.array([[ssim_f32(quantus_prepared(a[b:b + 1]).ravel(), quantus_prepared(grads1[j][b:b + 1]).ravel())
                       for b in range(n)] for j in range(len(layers))])
    checks["ssim: Quantus vs skimage directly (f32, per sample)"] = float(np.abs(ss_sk - ss_curve).max())
    ss_f64 = np.array([[_ssim_f64(ours_prepared(a[b]), ours_prepared(grads[j][b])) for b in range(n)]
                       for j in range(len(layers))])
    ss_f64_sk = np.array([[skimage.metrics.structural_similarity(
        ours_prepared(a[b]), ours_prepared(grads[j][b]),
        data_range=float(max(ours_prepared(a[b]).max(), ours_prepared(grads[j][b]).max())
                         - min(ours_prepared(a[b]).min(), ours_prepared(grads[j][b]).min())))
        for b in range(n)] for j in range(len(layers))])
    checks["ssim f64: NumPy re-implementation vs skimage on float64"] = float(np.abs(ss_f64 - ss_f64_sk).max())
    checks["ssim: Quantus (skimage in f32) vs f64 per-sample (ours)"] = float(np.abs(ss_f64_sk - ss_curve).max())
    # float32 sensitivity: the whole cascade with the model (same randomised values), inputs and gradients in
    # float64, similarities on the f64 per-sample preparation; vs the stored float32 (Quantus) curves
    model64, x64 = copy.deepcopy(model).double(), torch.from_numpy(x).double()
    mods64 = dict(model64.named_modules())

    def gradient64():
        xi = x64.clone().requires_grad_(True)
        out = model64(xi)
        return torch.autograd.grad(out[torch.arange(n), torch.from_numpy(t)].sum(), xi)[0].numpy()

    a64 = gradient64()
    sp64, ss64 = [], []
    for k, (nm, kind) in enumerate(layers):
        randomise_module(mods64[nm], kind, seed, k)   # f32 draws, cast exactly into the f64 parameters
        g64 = gradient64()
        sp64.append([_np_spearman(ours_prepared(a64[b]), ours_prepared(g64[b])) for b in range(n)])
        ss64.append([_ssim_f64(ours_prepared(a64[b]), ours_prepared(g64[b])) for b in range(n)])
    f64_err = {"randomisation_spearman_curve": float(np.abs(np.array(sp64) - sp_curve).max()),
               "randomisation_ssim_curve": float(np.abs(np.array(ss64) - ss_curve).max())}
    for k, v in checks.items():
        print(f"    {k}: max|diff| {v:.2e}")
    print(f"    float32 vs float64 model: {f64_err}")
    assert checks["spearman: Quantus vs NumPy re-implementation (batch normalisation, f32)"] <= 1e-12
    assert checks["spearman: Quantus vs scipy.stats.spearmanr per pair"] <= 1e-12
    assert checks["ssim: Quantus vs skimage directly (f32, per sample)"] <= 1e-12
    assert checks["ssim f64: NumPy re-implementation vs skimage on float64"] <= 1e-12
    assert np.allclose(sp_original, 1.0, atol=1e-12), sp_original
    assert np.allclose(per["ssim_original"], 1.0, atol=1e-6), per["ssim_original"]
    for key, arr in (("spearman", sp_curve), ("ssim", ss_curve)):
        if np.isnan(arr).any():
            notes.append(f"{key}: {int(np.isnan(arr).sum())} NaN similarities")
    zero = [(names[j], b) for j in range(len(layers)) for b in range(n) if not np.any(grads[j, b])]
    if zero:
        notes.append(f"all-zero explanations (layer, sample): {zero}")
    # ties in the prepared explanations (Spearman uses average ranks): per layer, max over samples of
    # (values - distinct values) with the f32 Quantus preparation
    ties = {names[j]: max(int(784 - np.unique(quantus_prepared(grads[j])[b]).size) for b in range(n))
            for j in range(len(layers))}
    ties["original"] = max(int(a[b].size - np.unique(a_q[b]).size) for b in range(n))
    t_all = time.time() - t0

    tensors = {
        "inputs": x_t.contiguous(), "targets": t_t.to(torch.int64),
        "randomisation_spearman_curve": torch.from_numpy(sp_curve.copy()),
        "randomisation_spearman": torch.from_numpy(sp_curve[-1].copy()),
        "randomisation_ssim_curve": torch.from_numpy(ss_curve.copy()),
        "randomisation_ssim": torch.from_numpy(ss_curve[-1].copy()),
        "randomisation_ssim_curve_f64": torch.from_numpy(ss_f64_sk.copy()),
        "randomised_logits": torch.stack(logits).contiguous(),          # [L, N, classes] f32
        "randomised_saliency": torch.from_numpy(grads[-1].copy()),      # [N, C, H, W] f32
    }
    meta = {
        "model": name,
        "note": "see README.md beside this file (section: model-parameter randomisation)",
        "layers": json.dumps(names),
        "layer_kinds": json.dumps([k for _, k in layers]),
        "quantus_native_order_equal": json.dumps(native == layers),
        "seed": str(seed),
        "draws": "layer at position k (top down): SplitMix64 stream(seed, 4, k); Conv2d/Linear: bound = "
                 "1/sqrt(weight.numel() // weight.shape[0]), weight then bias row-major, "
                 "f32((uniform()*2 - 1) * bound); BatchNorm2d: weight 1, bias 0, running_mean 0, running_var 1; "
                 "LayerNorm: weight 1, bias 0; cascading (top_down)",
        "mprt_params": json.dumps({"layer_order": "top_down", "abs": True, "normalise": True,
                                   "normalise_func": "normalise_by_max", "return_last_correlation": False,
                                   "explain_func": "captum Saliency(abs=False)", "a_batch": "the same explanation",
                                   "spearman": "correlation_spearman, one call, whole batch (batch_size 64)",
                                   "ssim": "quantus.similarity_func.ssim, one call per sample (batch_size 1)"},
                                  sort_keys=True),
        "versions": json.dumps({p: _dist_version(p) for p in
                                ("torch", "captum", "quantus", "scipy", "scikit-image", "numpy")}, sort_keys=True),
        "python": sys.version.split()[0],
        "checks_max_abs_diff": json.dumps(checks, sort_keys=True),
        "f64_abs_err": json.dumps(f64_err, sort_keys=True),
        "ties_per_layer": json.dumps(ties, sort_keys=True),
        "notes": json.dumps(notes),
    }
    path = os.path.join(outdir, f"{name}_randomisation.safetensors")
    save_safetensors_deterministic(tensors, path, meta)
    with safe_open(path, "pt") as f:
        for k in f.keys():
            v = f.get_tensor(k)
            assert torch.equal(v, tensors[k]) or torch.equal(torch.isnan(v), torch.isnan(tensors[k])), k
    print(f"  wrote {path} ({os.path.getsize(path)} bytes) in {t_all:.1f} s")
    np.set_printoptions(precision=6, suppress=True, linewidth=200)
    print(f"    spearman curve (rows: after 1..L layers):\n{sp_curve}")
    print(f"    ssim curve:\n{ss_curve}")
    print(f"    ties per layer: {ties}")
    if notes:
        print("    notes:", notes)
    return names, native, checks, f64_err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/metrics")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--no-f64", action="store_true", help="skip the float64 conditioning pass (metadata then empty)")
    ap.add_argument("--randomisation", action="store_true",
                    help="write only <model>_randomisation.safetensors (Quantus 0.6.0 MPRT) for the MNIST models")
    ap.add_argument("--candle-xai", default=None,
                    help="with --randomisation: a built candle-xai binary to cross-check the graph's layer list")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    _self_test_splitmix()
    if args.randomisation:
        t0 = time.time()
        for name in [m for m in args.models if m in RANDOMISATION_MODELS]:
            generate_randomisation(name, args.out, args.candle_xai)
        print(f"\ntotal {time.time() - t0:.1f} s")
        return
    P = import_pnpxai()

    t0 = time.time()
    conds = {}
    for name in args.models:
        conds[name] = generate(P, name, args.out, with_f64=not args.no_f64)
    if not args.no_f64:
        print("\nfloat32 vs float64 (max over models and samples): metric  abs  rel")
        keys = sorted({k for c in conds.values() for k in c})
        for k in keys:
            a = max(c[k][0] for c in conds.values() if k in c)
            r = max(c[k][1] for c in conds.values() if k in c)
            print(f"  {k:40s} {a:.2e} {r:.2e}")
    print(f"\ntotal {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
