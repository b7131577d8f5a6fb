#!/usr/bin/env python3
"""Tuning quality: candle-xai's `optimize` against pnpxai 0.1.4's optimizer (optuna TPE).

Task: torchvision's MobileNetV2 (ImageNet weights, web/assets/model/mobilenet_v2.safetensors),
the three sample photos web/assets/samples/{chelsea,coffee,astronaut}.png (Resize(256),
CenterCrop(224), ToTensor, Normalize ImageNet; target = top-1 class), the explainer LRP
epsilon-gamma-box (pnpxai `LRPEpsilonGammaBox`, ours `lrp-epsilon-gamma-box`), the objective
AbPC (pnpxai `AbPC()` defaults: n_steps 10, zero baseline, lb -1), maximised, 50 trials per
(photo, seed). scripts/bench_tuning.sh drives it; this file has the subcommands:

  prep    --out DIR                    write DIR/<photo>.safetensors (`inputs` [1,3,224,224] f32,
                                       `targets` [1] i64) from torchvision's preprocessing
  pnpxai  --input X --seed S --n-trials N --variant stock|matched --out R.json
                                       one pnpxai optimize run (see below)
  evaluate --input X --epsilon E --gamma G [--pooling P] [--normalization N] [--pool-module]
                                       pnpxai's AbPC of one configuration (prints JSON)
  spot    --dir DIR --bin BIN          spot check: AbPC of a few configurations, pnpxai against
                                       `candle-xai evaluate`; writes DIR/spot.json
  stock-ceiling --dir DIR              pnpxai-stock's whole reachable space (20 post-processings of its
                                       one attribution) scored: the most its search can find
  record  --dir DIR --tool T --photo P --seed S --json R.json --wall W
                                       append one run's summary to DIR/results.jsonl
  report  --dir DIR [--md OUT.md]      the Markdown tables from DIR/results.jsonl

What each side searches (see the report's notes; 50 trials each):

ours (`candle-xai optimize`, TPE with optuna's defaults: 10 random startup trials, then 24
candidates per parameter from Parzen estimators of the best 10 %; one extra "defaults" trial
(epsilon 1e-6, gamma 0.25) before the 50, outside the TPE history):
  ours        `--fixed-pooling --pooling none` (OURS_ARGS): epsilon, gamma (log, [1e-6, 1]);
              AbPC of the unpooled [1,3,224,224] attributions.
  ours-pool   the pooling searched too (`--pooling sumpos`, the defaults trial with pnpxai's
              default pooling): epsilon, gamma and pooling (the 10 poolings). NOTE: the binary
              this was written against ignores the pooling when it scores AbPC (evaluate and
              optimize pass the unpooled attributions to the pixel flipping; the pooling only
              reaches the re-explanations of Sensitivity / randomisation), so `pooling` is a
              dummy dimension there and every value is the unpooled AbPC.

pnpxai 0.1.4 (pnpxai.evaluator.optimizer.optimize with its Objective, sampler 'tpe' = optuna's
TPESampler(seed=S) with its defaults, direction 'maximize', n_jobs 1, 50 trials):
  pnpxai-stock    as shipped, on torchvision's MobileNetV2 as is. The suggestor asks optuna for
                    explainer.epsilon                        float, log, [1e-6, 1]
                    explainer.gamma                          float, log, [1e-6, 1]
                    postprocessor.pooling_fn.method          the 10 image poolings
                    postprocessor.normalization_fn.method    minmax | identity
                  but `Explainer.set_kwargs` only setattr()s epsilon / gamma on a shallow copy:
                  the zennit composite was built in __init__ with the defaults (1e-6, 0.25) and
                  is not rebuilt, so the suggested values never reach the attributions; what is
                  really searched is pooling x normalisation (20 combinations) of ONE attribution.
                  Also, MobileNetV2's global pool is the functional F.adaptive_avg_pool2d, which
                  zennit cannot hook: relevance goes through it as the plain gradient (uniform
                  R/49 per position), where ours (and the project's zennit reference,
                  scripts/xai_reference.py MobileNetV2PoolCanonizer) applies the Norm rule.
  pnpxai-matched  the same optimizer and sampler on OUR objective: the composite rebuilt from
                  the suggested epsilon / gamma (LRPEpsilonGammaBox.set_kwargs fixed), the
                  global pool an nn.AdaptiveAvgPool2d module (Norm rule, as ours: attributions
                  equal ours to ~1e-5), and a fixed identity post-processor (no pooling, no
                  normalisation, no tunables), so the search space is exactly epsilon, gamma
                  and each configuration's AbPC equals ours (spot check).
"""

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = os.path.join(ROOT, "web/assets/model/mobilenet_v2.safetensors")
SAMPLES = os.path.join(ROOT, "web/assets/samples")
PHOTOS = ("chelsea", "coffee", "astronaut")
POOLINGS = ("sumpos", "sumabs", "l1norm", "maxnorm", "l2norm", "l2normsq", "possum", "posmaxnorm",
            "posl2norm", "posl2normsq")

warnings.filterwarnings("ignore")


def load_model(pool_module=False):
    """torchvision's MobileNetV2 with the ImageNet weights; pool_module: its functional global pool
    replaced by an nn.AdaptiveAvgPool2d module (a subclass, so that torch.fx traces it: zennit then
    gives it the Norm rule, as ours and scripts/xai_reference.py's MobileNetV2PoolCanonizer do)."""
    import torch
    import torchvision
    from safetensors.torch import load_file

    class MobileNetV2PoolModule(torchvision.models.MobileNetV2):
        def __init__(self):
            super().__init__()
            self.global_pool = torch.nn.AdaptiveAvgPool2d((1, 1))

        def forward(self, x):
            return self.classifier(torch.flatten(self.global_pool(self.features(x)), 1))

    model = MobileNetV2PoolModule() if pool_module else torchvision.models.mobilenet_v2()
    model.load_state_dict(load_file(MODEL))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_input(path):
    from safetensors.torch import load_file
    x = load_file(path)
    return x["inputs"], x["targets"]


def import_pnpxai():
    """pnpxai without its package __init__ files (scripts/make_metric_fixtures.py), then its optimizer."""
    sys.path.insert(0, HERE)
    from make_metric_fixtures import import_pnpxai as bare_import
    bare_import()
    import optuna
    from pnpxai.core.modality.modality import ImageModality
    from pnpxai.evaluator.metrics import AbPC
    from pnpxai.evaluator.optimizer.objectives import Objective
    from pnpxai.evaluator.optimizer.optimize import optimize
    from pnpxai.explainers import LRPEpsilonGammaBox
    from pnpxai.explainers import lrp as lrp_module
    from pnpxai.explainers.utils.postprocess import PostProcessor
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna, ImageModality, AbPC, Objective, optimize, LRPEpsilonGammaBox, lrp_module, PostProcessor


# --------------------------------------------------------------------------------------------
# prep

def cmd_prep(args):
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from torchvision import transforms as T
    model = load_model()
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    os.makedirs(args.out, exist_ok=True)
    meta = {}
    for name in PHOTOS:
        x = tf(Image.open(os.path.join(SAMPLES, f"{name}.png")).convert("RGB")).unsqueeze(0).contiguous()
        with torch.no_grad():
            probs = model(x).softmax(-1)
        t = probs.argmax(-1).to(torch.int64)
        save_file({"inputs": x, "targets": t}, os.path.join(args.out, f"{name}.safetensors"))
        meta[name] = {"target": int(t.item()), "prob": float(probs[0, t].item())}
    with open(os.path.join(args.out, "inputs.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


# --------------------------------------------------------------------------------------------
# pnpxai

def identity_postprocessor(PostProcessor):
    """A post-processor that leaves the attributions as they are and has nothing to tune."""
    from pnpxai.explainers.utils.postprocess import Identity

    class Fixed(PostProcessor):
        def get_tunables(self):
            return {}

    return Fixed(pooling_fn=Identity(), normalization_fn=Identity())


def rebuilt_explainer(LRPEpsilonGammaBox, lrp_module, model):
    class Rebuilt(LRPEpsilonGammaBox):
        def set_kwargs(self, **kwargs):
            clone = super().set_kwargs(**kwargs)
            clone.zennit_composite = lrp_module._get_epsilon_gamma_box_composite(
                clone.low, clone.high, clone.epsilon, clone.gamma, clone.stabilizer, clone.zennit_canonizers)
            return clone
    return Rebuilt(model)


def pnpxai_objective(variant, inputs, targets):
    optuna, ImageModality, AbPC, Objective, optimize, LRPEpsilonGammaBox, lrp_module, PostProcessor = import_pnpxai()
    modality = ImageModality(channel_dim=1)
    if variant == "stock":
        model = load_model()
        explainer = LRPEpsilonGammaBox(model)
        # pnpxai's default post-processor (ImageModality.get_default_postprocessors()[0], sumpos + minmax);
        # its pooling and normalisation are searched, so this is only the starting object
        postprocessor = modality.get_default_postprocessors()[0]
    elif variant == "matched":
        model = load_model(pool_module=True)
        explainer = rebuilt_explainer(LRPEpsilonGammaBox, lrp_module, model)
        postprocessor = identity_postprocessor(PostProcessor)
    else:
        raise SystemExit(f"unknown variant {variant}")
    objective = Objective(explainer=explainer, postprocessor=postprocessor, metric=AbPC(model),
                          modality=modality, inputs=inputs, targets=targets)
    return optuna, optimize, objective


def cmd_pnpxai(args):
    import torch
    t_start = time.perf_counter()
    inputs, targets = load_input(args.input)
    optuna, optimize, objective = pnpxai_objective(args.variant, inputs, targets)
    t0 = time.perf_counter()
    study = optimize(objective, direction="maximize", sampler="tpe", n_trials=args.n_trials, seed=args.seed)
    t1 = time.perf_counter()
    trials = [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name,
               "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
               if t.datetime_complete and t.datetime_start else None} for t in study.trials]
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None
                and math.isfinite(t["value"])]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    out = {
        "tool": f"pnpxai-{args.variant}", "input": args.input, "seed": args.seed, "n_trials": args.n_trials,
        "optuna": optuna.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "best": best, "optimize_seconds": t1 - t0, "setup_seconds": t0 - t_start, "trials": trials,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"pnpxai-{args.variant} seed {args.seed}: best {best['value'] if best else None:.6f} "
          f"{best['params'] if best else None} ({t1 - t0:.1f} s)")


def pnpxai_abpc(model, inputs, targets, epsilon, gamma, pooling="none", normalization="identity"):
    """pnpxai's AbPC of one configuration, computed as its Objective does (a fresh explainer);
    pooling "none": the unpooled attributions."""
    _, ImageModality, AbPC, _, _, LRPEpsilonGammaBox, _, PostProcessor = import_pnpxai()
    modality = ImageModality(channel_dim=1)
    explainer = LRPEpsilonGammaBox(model, epsilon=epsilon, gamma=gamma)
    attrs = explainer.attribute(inputs, targets)
    scored = attrs
    if pooling != "none":
        pp = PostProcessor(pooling_fn=modality.pooling_fn_selector.select(pooling),
                           normalization_fn=modality.normalization_fn_selector.select(normalization))
        scored = pp(attrs)
    elif normalization == "minmax":
        scored = modality.normalization_fn_selector.select("minmax")(attrs)
    metric = AbPC(model).set_explainer(explainer)
    return float(metric.evaluate(inputs, targets, scored).sum().item()), attrs


def cmd_evaluate(args):
    model = load_model(pool_module=args.pool_module)
    inputs, targets = load_input(args.input)
    v, _ = pnpxai_abpc(model, inputs, targets, args.epsilon, args.gamma, args.pooling, args.normalization)
    print(json.dumps({"abpc": v}))


# --------------------------------------------------------------------------------------------
# spot check

def ours_run(bin_path, command, x, epsilon, gamma, pooling="none", bn_merge="exact"):
    """`candle-xai evaluate` (AbPC) or `explain` (the attributions) of one configuration."""
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json" if command == "evaluate" else "a.safetensors")
        cmd = [bin_path, command, "--model", MODEL, "--input", x, "--method", "lrp-epsilon-gamma-box",
               "--epsilon", repr(epsilon), "--gamma", repr(gamma), "--bn-merge", bn_merge, "--out", out]
        if command == "evaluate":
            cmd += ["--metric", "abpc", "--pooling", pooling]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if command == "evaluate":
            with open(out) as f:
                return json.load(f)["metrics"]["abpc"][0]
        return load_file(out)["attributions"]


def cmd_spot(args):
    model = load_model()
    pool_model = load_model(pool_module=True)
    configs = [("chelsea", 1e-6, 0.25), ("coffee", 0.01, 1e-3), ("astronaut", 0.3, 0.05)]
    rows = []
    for photo, eps, gamma in configs:
        x = os.path.join(args.dir, f"{photo}.safetensors")
        inputs, targets = load_input(x)
        matched, attrs_matched = pnpxai_abpc(pool_model, inputs, targets, eps, gamma)
        ours_attrs = ours_run(args.bin, "explain", x, eps, gamma)
        row = {
            "photo": photo, "epsilon": eps, "gamma": gamma,
            # the objective both sides maximise in the matched comparison
            "ours_none": ours_run(args.bin, "evaluate", x, eps, gamma, "none"),
            # zennit 0.5.1 (pnpxai's) keeps eps in the merged BatchNorms: ours with --bn-merge keep-eps
            "ours_none_keep_eps": ours_run(args.bin, "evaluate", x, eps, gamma, "none", "keep-eps"),
            "pnpxai_matched_none": matched,
            "attr_max_rel_diff_ours_vs_matched": float((ours_attrs - attrs_matched).abs().max()
                                                       / attrs_matched.abs().max()),
            "pnpxai_matched_none_minmax": pnpxai_abpc(pool_model, inputs, targets, eps, gamma, "none", "minmax")[0],
            # ours --pooling sumpos (pooling ignored by the AbPC path) against pnpxai's sumpos
            "ours_sumpos": ours_run(args.bin, "evaluate", x, eps, gamma, "sumpos"),
            "pnpxai_matched_sumpos": pnpxai_abpc(pool_model, inputs, targets, eps, gamma, "sumpos")[0],
            # pnpxai's own LRP on torchvision's model (functional global pool)
            "pnpxai_stock_model_none": pnpxai_abpc(model, inputs, targets, eps, gamma)[0],
            "pnpxai_stock_model_sumpos_identity": pnpxai_abpc(model, inputs, targets, eps, gamma, "sumpos")[0],
            "pnpxai_stock_model_sumpos_minmax": pnpxai_abpc(model, inputs, targets, eps, gamma, "sumpos",
                                                            "minmax")[0],
            # pnpxai's defaults as its optimizer scores them: 1e-6 / 0.25, sumpos, minmax
            "stock_defaults": pnpxai_abpc(model, inputs, targets, 1e-6, 0.25, "sumpos", "minmax")[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.dir, "spot.json"), "w") as f:
        json.dump(rows, f, indent=1)


def cmd_stock_ceiling(args):
    """pnpxai-stock's attribution does not depend on the suggested epsilon / gamma, so its search
    space is 10 poolings x 2 normalisations of one attribution: score all 20 (the most it can find)."""
    _, ImageModality, AbPC, _, _, LRPEpsilonGammaBox, _, PostProcessor = import_pnpxai()
    model = load_model()
    modality = ImageModality(channel_dim=1)
    out = {}
    for photo in PHOTOS:
        inputs, targets = load_input(os.path.join(args.dir, f"{photo}.safetensors"))
        explainer = LRPEpsilonGammaBox(model)
        attrs = explainer.attribute(inputs, targets)
        metric = AbPC(model).set_explainer(explainer)
        scores = {}
        for pooling in modality.pooling_fn_selector.choices:
            for norm in modality.normalization_fn_selector.choices:
                pp = PostProcessor(pooling_fn=modality.pooling_fn_selector.select(pooling),
                                   normalization_fn=modality.normalization_fn_selector.select(norm))
                scores[f"{pooling},{norm}"] = float(metric.evaluate(inputs, targets, pp(attrs)).sum().item())
        best = max((v, k) for k, v in scores.items() if math.isfinite(v))
        out[photo] = {"max": best[0], "argmax": best[1], "scores": scores}
        print(photo, best, flush=True)
    with open(os.path.join(args.dir, "stock_ceiling.json"), "w") as f:
        json.dump(out, f, indent=1)


# --------------------------------------------------------------------------------------------
# record

def config_of(tool, params):
    if tool.startswith("ours"):
        text = f"ε {params['epsilon']:.2g}, γ {params['gamma']:.2g}"
        return text + (f", pooling {params['pooling']} (ignored)" if "pooling" in params else "")
    eps, gamma = params["explainer.epsilon"], params["explainer.gamma"]
    if tool == "pnpxai-stock":  # the suggested epsilon / gamma never reach the composite
        return (f"{params['postprocessor.pooling_fn.method']}, {params['postprocessor.normalization_fn.method']}"
                f" (ε/γ suggested {eps:.2g}/{gamma:.2g}, used 1e-6/0.25)")
    return f"ε {eps:.2g}, γ {gamma:.2g}"


def cmd_record(args):
    with open(args.json) as f:
        r = json.load(f)
    row = {"tool": args.tool, "photo": args.photo, "seed": args.seed, "wall_s": args.wall}
    if args.tool.startswith("ours"):
        tpe = [t for t in r["trials"] if t["objective"] is not None]
        best_tpe = max(tpe, key=lambda t: t["objective"]) if tpe else None
        row.update(n_trials=len(r["trials"]), best=best_tpe["objective"] if best_tpe else None,
                   best_with_defaults=r["best"]["objective"], defaults=r["defaults"]["objective"],
                   best_trial=best_tpe["number"] if best_tpe else None,
                   best_config=config_of(args.tool, best_tpe["params"]) if best_tpe else "–",
                   n_failed=sum(t["state"] == "failed" for t in r["trials"]),
                   n_pruned=sum(t["state"] == "pruned" for t in r["trials"]))
    else:
        best = r["best"]
        row.update(n_trials=r["n_trials"], best=best["value"] if best else None,
                   best_trial=best["number"] + 1 if best else None,
                   best_config=config_of(args.tool, best["params"]) if best else "–",
                   search_s=r["optimize_seconds"], setup_s=r["setup_seconds"],
                   n_failed=sum(t["state"] != "COMPLETE" for t in r["trials"]),
                   n_distinct=len({round(t["value"], 12) for t in r["trials"] if t["value"] is not None}))
    with open(os.path.join(args.dir, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------------------------
# report

LABEL = {"ours": "ours", "ours-pool": "ours, pooling searched", "pnpxai-matched": "pnpxai (matched)",
         "pnpxai-stock": "pnpxai (stock)"}


def fmt(v, digits=4):
    return "–" if v is None else f"{v:.{digits}f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cmd_report(args):
    rows = []
    with open(os.path.join(args.dir, "results.jsonl")) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    cells = {(r["photo"], r["seed"], r["tool"]): r for r in rows}  # the last run of a cell wins
    photos = [p for p in PHOTOS if any(r["photo"] == p for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    n_trials = sorted({r["n_trials"] for r in rows})
    meta, spot = {}, []
    for name in ("inputs.json", "spot.json"):
        path = os.path.join(args.dir, name)
        if os.path.exists(path):
            with open(path) as f:
                (meta.update if name == "inputs.json" else spot.extend)(json.load(f))
    stock_defaults = {r["photo"]: r["stock_defaults"] for r in spot if "stock_defaults" in r}
    ceiling = {}
    path = os.path.join(args.dir, "stock_ceiling.json")
    if os.path.exists(path):
        with open(path) as f:
            ceiling = {p: v["max"] for p, v in json.load(f).items()}
    # the best configuration any run of the objective of A evaluated, per photo
    known = {}
    for (photo, seed, tool), r in cells.items():
        if tool in ("ours", "ours-pool", "pnpxai-matched"):
            for v in (r.get("best"), r.get("best_with_defaults")):
                if v is not None:
                    known[photo] = max(known.get(photo, -math.inf), v)
    per_photo = {"stock_defaults": stock_defaults, "ceiling": ceiling, "known": known}

    out = io.StringIO()
    w = lambda s="": print(s, file=out)

    def table(tools, extra_cols, title):
        tools = [t for t in tools if any(r["tool"] == t for r in rows)]
        if not tools:
            return
        w(title)
        w()
        head = ["photo (class)", "seed"] + [f"best {LABEL[t]}" for t in tools] + [c[0] for c in extra_cols] \
            + [f"wall {LABEL[t]} (s)" for t in tools]
        w("| " + " | ".join(head) + " |")
        w("|---|---|" + "---:|" * (len(head) - 2))

        def line(photo, seed_label, get):
            cols = [photo, seed_label] + [fmt(get(t, "best")) for t in tools] \
                + [fmt(get(c[1], c[2])) for c in extra_cols] + [fmt(get(t, "wall_s"), 1) for t in tools]
            w("| " + " | ".join(cols) + " |")

        for photo in photos:
            cls = f" ({meta[photo]['target']})" if photo in meta else ""
            for seed in seeds:
                line(f"{photo}{cls}", str(seed), lambda t, k, photo=photo, seed=seed:
                     per_photo[k].get(photo) if k in per_photo else (cells.get((photo, seed, t)) or {}).get(k))
            line(f"{photo}{cls}", "**median**", lambda t, k, photo=photo: per_photo[k].get(photo)
                 if k in per_photo else median([(cells.get((photo, s, t)) or {}).get(k) for s in seeds]))
        line("**all**", "**median**", lambda t, k: median(
            [per_photo[k].get(p) for p in photos] if k in per_photo
            else [(cells.get((p, s, t)) or {}).get(k) for p in photos for s in seeds]))
        w()

    table(["ours", "pnpxai-matched", "ours-pool"],
          [("ours incl. its defaults trial", "ours", "best_with_defaults"), ("defaults (ε 1e-6, γ 0.25)", "ours", "defaults"),
           ("best any run found", None, "known")],
          f"### A. The same objective: AbPC of the unpooled LRP epsilon-gamma-box attributions, "
          f"ε and γ searched ({'/'.join(map(str, n_trials))} trials; best over the TPE trials)")
    table(["pnpxai-stock"], [("its defaults (sumpos, minmax)", None, "stock_defaults"),
                             ("max of its 20 reachable configurations", None, "ceiling")],
          "### B. pnpxai 0.1.4's optimizer as shipped (its own LRP and pooled AbPC; only pooling x normalisation "
          "really searched): not the objective of A")
    tools = [t for t in ("ours", "pnpxai-matched", "ours-pool", "pnpxai-stock") if any(r["tool"] == t for r in rows)]
    w("Best configuration found (trial number in brackets):")
    w()
    w("| photo | seed | " + " | ".join(LABEL[t] for t in tools) + " |")
    w("|---|---|" + "---|" * len(tools))
    for photo in photos:
        for seed in seeds:
            cols = [photo, str(seed)]
            for t in tools:
                c = cells.get((photo, seed, t))
                cols.append(f"{c['best_config']} [{c['best_trial']}]" if c else "–")
            w("| " + " | ".join(cols) + " |")
    if spot:
        w()
        w("Spot check (one configuration scored both ways; AbPC):")
        w()
        keys = [k for k in spot[0] if k not in ("photo", "epsilon", "gamma", "stock_defaults")]
        w("| photo | ε | γ | " + " | ".join(keys) + " |")
        w("|---|---|---|" + "---:|" * len(keys))
        for r in spot:
            w(f"| {r['photo']} | {r['epsilon']:g} | {r['gamma']:g} | "
              + " | ".join(f"{r[k]:.3g}" if "diff" in k else f"{r[k]:.7f}" for k in keys) + " |")
    text = out.getvalue()
    print(text, end="")
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep"); p.add_argument("--out", required=True)
    p = sub.add_parser("pnpxai")
    p.add_argument("--input", required=True); p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n-trials", type=int, default=50); p.add_argument("--variant", default="stock")
    p.add_argument("--out", required=True)
    p = sub.add_parser("evaluate")
    p.add_argument("--input", required=True); p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--gamma", type=float, default=0.25); p.add_argument("--pooling", default="none")
    p.add_argument("--normalization", default="identity"); p.add_argument("--pool-module", action="store_true")
    p = sub.add_parser("spot"); p.add_argument("--dir", required=True); p.add_argument("--bin", required=True)
    p = sub.add_parser("stock-ceiling"); p.add_argument("--dir", required=True)
    p = sub.add_parser("record"); p.add_argument("--dir", required=True); p.add_argument("--tool", required=True)
    p.add_argument("--photo", required=True); p.add_argument("--seed", type=int, required=True)
    p.add_argument("--json", required=True); p.add_argument("--wall", type=float, required=True)
    p = sub.add_parser("report"); p.add_argument("--dir", required=True); p.add_argument("--md")
    args = ap.parse_args()
    {"prep": cmd_prep, "pnpxai": cmd_pnpxai, "evaluate": cmd_evaluate, "spot": cmd_spot,
     "stock-ceiling": cmd_stock_ceiling, "record": cmd_record, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
