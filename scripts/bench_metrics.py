#!/usr/bin/env python3
"""Python side of scripts/bench_metrics.sh: times each evaluation metric for candle-xai, pnpxai 0.1.4 and Quantus 0.6.0
on the same model, input, attributions and settings, in one run on this machine.

    python scripts/bench_metrics.py prepare --work-dir D
        writes D/input.safetensors (`inputs` [1,3,224,224] f32, `targets` [1] i64, the top-1 class) and
        D/attributions.safetensors (`attributions` [1,3,224,224]: captum Saliency(abs=False) for the target, `targets`)
    python scripts/bench_metrics.py run --work-dir D --bin candle-xai [--reps 5] [--wait-file F --wait-max-s 2400]
        [--out /tmp/bench_metrics.md] [--smoke]

Model: torchvision ``mobilenet_v2()`` with the ImageNet weights of web/assets/model/mobilenet_v2.safetensors (our CLI
reads the same file). Input: web/assets/samples/chelsea.png, Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet
mean/std). CPU, float32, ``torch.set_num_threads(2)`` by default (--threads).

Timed calls (model loaded, tensors in memory; one warm-up call per tool and metric, not counted, then --reps calls,
the tools interleaved: ours, pnpxai, quantus, ours, ...; the median is reported):
  ours     ``candle-xai evaluate --model M --input X --attributions A --metric NAME [--made-by gradient] --repeat 3
           --timings``: the third of the three scorings in ``evaluate_ms_calls`` of its stderr JSON line (excludes process
           start, model and file loading). Each call is a new process, which scores three times: the first two warm it
           as the warm-up and earlier calls warm the Python tools' process, and pay for faulting in the process's fresh
           memory (on the VM these were measured on, 0.4-7 s for MobileNetV2's first scoring, and up to 2.5x the warm
           time for Sensitivity's second; the first scoring's median is reported apart).
  pnpxai   ``Metric(model, ...).evaluate(x, t, a)`` of pnpxai.evaluator.metrics (imported as
           scripts/make_metric_fixtures.py does: without pnpxai's package __init__ files, shap stubbed).
  quantus  ``quantus.Metric(...)(model=model, x_batch=x, y_batch=t, a_batch=a, device="cpu")`` on NumPy arrays
           (what Quantus takes; its own model wrapper and preprocessing are inside the timing, as they are part of
           every call).
Shared machine: --wait-file F waits (before the timed runs, after the warm-up) for F to exist (wait_for); then every
interleaved triple starts only when other processes use < --max-foreign cores and is redone when they used more during
it (QuietGuard; torch's OpenMP threads slow down several-fold when another process takes a core, rayon much less).
The report states the load, the CPU other processes used, and how many triples were redone.
--smoke: small settings (n_steps 3, n_perturb 8, n_iter 2), one rep, no waiting: a quick check of the harness.
"""

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL_FILE = os.path.join(ROOT, "web/assets/model/mobilenet_v2.safetensors")
PHOTO = os.path.join(ROOT, "web/assets/samples/chelsea.png")

# pnpxai defaults (and our CLI's defaults)
N_STEPS = 10           # AbPC / MoRF / LeRF
N_PERTURB = 150        # MuFidelity
GRID = 9
NOISE_SCALE = 0.2
MUFID_BATCH = 32
N_ITER = 8             # Sensitivity
EPSILON = 0.2
N_BINS = 10            # Complexity
METRICS = ("abpc", "morf", "lerf", "mu-fidelity", "sensitivity", "complexity")
LABELS = {"abpc": "AbPC", "morf": "MoRF", "lerf": "LeRF", "mu-fidelity": "MuFidelity",
          "sensitivity": "Sensitivity", "complexity": "Complexity"}


def load_model():
    import torch
    import torchvision
    from safetensors.torch import load_file
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(load_file(MODEL_FILE))
    return model.eval().float()


def prepare(args):
    import torch
    from PIL import Image
    from torchvision import transforms
    from captum.attr import Saliency
    from safetensors.torch import save_file
    torch.set_num_threads(args.threads)
    model = load_model()
    tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    x = tf(Image.open(PHOTO).convert("RGB")).unsqueeze(0).contiguous().float()
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(-1).to(torch.int64)
    a = Saliency(model).attribute(x, target=t, abs=False).detach().contiguous().float()
    os.makedirs(args.work_dir, exist_ok=True)
    save_file({"inputs": x, "targets": t}, os.path.join(args.work_dir, "input.safetensors"))
    save_file({"attributions": a, "targets": t}, os.path.join(args.work_dir, "attributions.safetensors"))
    p = logits.softmax(-1)[0, t].item()
    print(f"prepared {args.work_dir}: input {tuple(x.shape)}, target {t.item()} (p={p:.4f}), "
          f"attributions {tuple(a.shape)} (captum Saliency, abs=False)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# the three tools

def import_pnpxai():
    sys.path.insert(0, HERE)
    from make_metric_fixtures import import_pnpxai as imp  # noqa: E402  (the bare-package import trick)
    return imp()


class Ours:
    def __init__(self, binary, work_dir, cfg):
        self.binary, self.work_dir, self.cfg = binary, work_dir, cfg
        self.first_scorings = {}  # metric -> the first scoring's ms of each process

    def argv(self, metric, out):
        c = self.cfg
        argv = [self.binary, "evaluate", "--model", MODEL_FILE,
                "--input", os.path.join(self.work_dir, "input.safetensors"),
                "--attributions", os.path.join(self.work_dir, "attributions.safetensors"),
                "--metric", metric, "--repeat", "3", "--timings", "--out", out]
        if metric in ("abpc", "morf", "lerf"):
            argv += [f"--{metric}-n-steps", str(c["n_steps"]), f"--{metric}-baseline", "0"]
        elif metric == "mu-fidelity":
            argv += ["--mu-fidelity-n-perturb", str(c["n_perturb"]), "--mu-fidelity-grid-size", str(GRID),
                     "--mu-fidelity-noise-scale", str(NOISE_SCALE), "--mu-fidelity-baseline", "0"]
        elif metric == "sensitivity":
            argv += ["--made-by", "gradient", "--sensitivity-n-iter", str(c["n_iter"]),
                     "--sensitivity-epsilon", str(EPSILON)]
        elif metric == "complexity":
            argv += ["--complexity-n-bins", str(N_BINS)]
        return argv

    def time(self, metric):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            r = subprocess.run(self.argv(metric, out), capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"candle-xai failed ({r.returncode}): {r.stderr[-2000:]}")
            line = [ln for ln in r.stderr.splitlines() if ln.startswith("{") and "evaluate_ms" in ln][-1]
            value = json.load(open(out))["metrics"]
        key = next(iter(value))
        calls = json.loads(line)["evaluate_ms_calls"]
        first, warm = calls[0], calls[-1]
        self.first_scorings.setdefault(metric, []).append(first)
        return warm, float(value[key][0])


class Pnpxai:
    def __init__(self, model, x, t, a, cfg):
        P = import_pnpxai()
        self.x, self.t, self.a = x, t, a
        grad = P.Gradient(model)
        self.metrics = {
            "abpc": P.AbPC(model, n_steps=cfg["n_steps"]),
            "morf": P.MoRF(model, n_steps=cfg["n_steps"]),
            "lerf": P.LeRF(model, n_steps=cfg["n_steps"]),
            "mu-fidelity": P.MuFidelity(model, n_perturb=cfg["n_perturb"], noise_scale=NOISE_SCALE,
                                        batch_size=MUFID_BATCH, grid_size=GRID, baseline=0.),
            "sensitivity": P.Sensitivity(model, grad, n_iter=cfg["n_iter"], epsilon=EPSILON),
            "complexity": P.Complexity(model, n_bins=N_BINS),
        }

    def time(self, metric):
        import torch
        torch.manual_seed(0)
        t0 = time.perf_counter()
        v = self.metrics[metric].evaluate(self.x, self.t, self.a)
        ms = (time.perf_counter() - t0) * 1e3
        return ms, float(v[0])


class Quantus:
    def __init__(self, model, x, t, a, cfg):
        import numpy as np
        import quantus
        import torch
        from captum.attr import Saliency
        self.np, self.model = np, model
        self.x, self.t, self.a = x.numpy(), t.numpy(), a.numpy()
        n_features = self.a[0].size                               # 150528 = 3*224*224, as pnpxai flattens them
        self.fis = math.ceil(n_features / cfg["n_steps"])          # 15053: ceil(150528/15053) = 10 steps

        class PixelFlippingAnySteps(quantus.PixelFlipping):
            # Quantus asserts that features_in_step divides H*W (50176 = 2^10 * 7^2), although it flips over C*H*W
            # features: no divisor gives 10 steps. Skip that assertion only; the loop handles a shorter last step.
            def custom_preprocess(self, x_batch, **kwargs):
                return None

        pf = dict(features_in_step=self.fis, abs=False, normalise=False, perturb_baseline=0.0,
                  disable_warnings=True)
        self.pf = PixelFlippingAnySteps(**pf)
        n_cells = GRID * GRID
        reset_cells = int(n_cells * NOISE_SCALE) + 1               # pnpxai resets the cells of argsort rank <= 16: 17 of 81
        self.subset_size = round(n_features * reset_cells / n_cells)  # 31592 of 150528 features
        self.fc = quantus.FaithfulnessCorrelation(
            nr_runs=cfg["n_perturb"], subset_size=self.subset_size,
            similarity_func=quantus.similarity_func.correlation_spearman, abs=False, normalise=False,
            perturb_baseline=0.0, return_aggregate=False, disable_warnings=True)

        def signed_saliency(model, inputs, targets, **kwargs):
            xi = torch.as_tensor(inputs).float().requires_grad_(True)
            ti = torch.as_tensor(targets).long()
            return Saliency(model).attribute(xi, target=ti, abs=False).detach().numpy()

        self.explain = signed_saliency
        self.ms = quantus.MaxSensitivity(nr_samples=cfg["n_iter"], lower_bound=EPSILON, upper_bound=None,
                                         abs=False, normalise=False, disable_warnings=True)
        self.cx = quantus.Complexity(disable_warnings=True)       # its defaults: abs=True, normalise=True

    def _pf(self, a):
        return self.np.asarray(self.pf(model=self.model, x_batch=self.x, y_batch=self.t, a_batch=a,
                                       device="cpu", softmax=True))

    def time(self, metric):
        np = self.np
        np.random.seed(0)
        common = dict(model=self.model, x_batch=self.x, y_batch=self.t, device="cpu")
        t0 = time.perf_counter()
        if metric == "morf":
            v = self._pf(self.a).mean()
        elif metric == "lerf":
            v = self._pf(-self.a).mean()                        # least relevant first: sort by -a
        elif metric == "abpc":
            morf, lerf = self._pf(self.a), self._pf(-self.a)
            v = np.clip(lerf - morf, -1.0, None).mean()
        elif metric == "mu-fidelity":
            v = self.fc(a_batch=self.a, softmax=False, **common)[0]
        elif metric == "sensitivity":
            v = self.ms(a_batch=self.a, explain_func=self.explain, softmax=False, **common)[0]
        elif metric == "complexity":
            v = self.cx(a_batch=self.a, **common)[0]
        ms = (time.perf_counter() - t0) * 1e3
        return ms, float(v)


# ----------------------------------------------------------------------------------------------------------------

def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


COMPILERS = {"rustc", "cargo", "cc", "c++", "gcc", "g++", "cc1", "cc1plus", "ld", "ld.lld", "lld", "mold",
             "clang", "build-script-b"}


def busy_processes():
    """Names of running compiler / linker processes (from /proc/*/comm)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name in COMPILERS or name.startswith("build-script"):
                found.add(name)
    return sorted(found)


class ForeignCpu:
    """CPU seconds used by other processes (not this one) between calls of sample(): the candle-xai subprocesses end
    before the next sample, so they are not counted; processes that start and end between two samples are missed."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.me = os.getpid()
        self.prev, self.prev_t = self._snap(), time.time()
        self.cpu_s, self.wall_s = {}, 0.0

    def _snap(self):
        snap = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != self.me:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        st = f.read()
                except OSError:
                    continue
                comm = st[st.index("(") + 1:st.rindex(")")]
                fields = st[st.rindex(")") + 2:].split()
                snap[int(pid)] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
        return snap

    def sample(self):
        cur, now = self._snap(), time.time()
        for pid, (comm, ticks) in cur.items():
            d = ticks - self.prev.get(pid, (comm, 0))[1]
            if d > 0:
                self.cpu_s[comm] = self.cpu_s.get(comm, 0.0) + d / self.tick
        self.wall_s += now - self.prev_t
        self.prev, self.prev_t = cur, now

    def cores(self):
        return sum(self.cpu_s.values()) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self, min_share=0.01):
        if self.wall_s <= 0:
            return "not measured"
        rows = sorted(((v, k) for k, v in self.cpu_s.items() if v / self.wall_s >= min_share), reverse=True)
        total = sum(self.cpu_s.values())
        head = f"{total:.0f} CPU-s in {self.wall_s:.0f} s of timed runs ({total / self.wall_s:.2f} cores on average)"
        return head + (": " + ", ".join(f"{k} {v:.0f} s" for v, k in rows[:6]) if rows else "")


class QuietGuard:
    """Other sessions share this machine and torch's OpenMP threads degrade badly (several-fold) when a core is taken.
    Before each interleaved (ours, pnpxai, quantus) triple: wait until other processes use < max_foreign cores over a
    3 s window; after it: discard the triple and redo it if they used more than max_foreign cores on average during
    it (at most max_retries times per triple; all waits together at most budget_s, then no more waiting)."""

    def __init__(self, max_foreign, budget_s, max_retries, enabled=True):
        self.max_foreign, self.budget_s, self.max_retries, self.enabled = max_foreign, budget_s, max_retries, enabled
        self.waited_s, self.discarded, self.retries, self.kept_loaded = 0.0, 0, 0, []

    def wait_quiet(self):
        if not self.enabled:
            return
        while self.waited_s < self.budget_s:
            t0 = time.time()
            probe = ForeignCpu()
            time.sleep(3)
            probe.sample()
            self.waited_s += time.time() - t0
            if probe.cores() < self.max_foreign:
                return

    def accept(self, share):
        if not self.enabled or share <= self.max_foreign:
            self.retries = 0
            return True
        if self.retries >= self.max_retries or self.waited_s >= self.budget_s:
            self.kept_loaded.append(share)
            self.retries = 0
            return True
        self.retries += 1
        self.discarded += 1
        return False

    def summary(self):
        if not self.enabled:
            return "off"
        kept = (f"; {len(self.kept_loaded)} kept although loaded ("
                + ", ".join(f"{v:.2f}" for v in self.kept_loaded) + " cores)") if self.kept_loaded else ""
        return (f"triples redone because other processes used > {self.max_foreign} cores during them: "
                f"{self.discarded}{kept}; {self.waited_s:.0f} s spent waiting for < {self.max_foreign} cores")


def wait_for(path, max_s, poll_s=10, quiet_s=60, quiet_load=0.7):
    """Wait until `path` exists (poll every poll_s, at most max_s). A file created or touched after the wait began is
    taken at its word; an older one (possibly left from an earlier run) only once the machine is quiet: no compiler or
    linker process for quiet_s and a 1-minute load average below quiet_load."""
    if not path:
        return "no wait file given"
    t0 = time.time()
    quiet_since, last_log = None, t0
    while True:
        now = time.time()
        if os.path.exists(path):
            fresh = os.path.getmtime(path) >= t0 - 1
            busy = busy_processes()
            load1 = float(open("/proc/loadavg").read().split()[0])
            if busy or load1 >= quiet_load:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            if fresh:
                return f"waited {(now - t0) / 60:.1f} min for {path} (created/touched during the wait)"
            if quiet_since is not None and now - quiet_since >= quiet_s:
                return (f"waited {(now - t0) / 60:.1f} min: {path} existed already (mtime "
                        f"{time.strftime('%H:%M:%S', time.gmtime(os.path.getmtime(path)))} UTC, before the wait), so "
                        f"also waited for {quiet_s} s with no compiler process and 1-min load < {quiet_load}")
        if now - t0 >= max_s:
            msg = (f"waited {max_s / 60:.0f} min for {path} (and a quiet machine), in vain: ran anyway "
                   f"(compiler processes now: {', '.join(busy_processes()) or 'none'}; load {loadavg()})")
            print(msg, file=sys.stderr)
            return msg
        if now - last_log >= 300:
            print(f"still waiting for {path} ({(now - t0) / 60:.0f} min; busy: {', '.join(busy_processes()) or 'none'}; "
                  f"load {loadavg()})", file=sys.stderr)
            last_log = now
        time.sleep(poll_s)


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_ratio(a, b):
    if a is None or b is None or b <= 0:
        return "–"
    r = a / b
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def run(args):
    import numpy as np
    import torch
    from safetensors.torch import load_file
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cfg = dict(n_steps=N_STEPS, n_perturb=N_PERTURB, n_iter=N_ITER)
    reps = args.reps
    if args.smoke:
        cfg = dict(n_steps=3, n_perturb=8, n_iter=2)
        reps = 1
    metrics = args.metrics.split(",") if args.metrics else list(METRICS)

    inp = load_file(os.path.join(args.work_dir, "input.safetensors"))
    att = load_file(os.path.join(args.work_dir, "attributions.safetensors"))
    x, t, a = inp["inputs"], inp["targets"], att["attributions"]
    model = load_model()
    with contextlib.redirect_stdout(io.StringIO()):  # quantus prints nothing with disable_warnings, pnpxai may
        tools = {"ours": Ours(args.bin, args.work_dir, cfg), "pnpxai": Pnpxai(model, x, t, a, cfg),
                 "quantus": Quantus(model, x, t, a, cfg)}

    # warm-up: every tool and metric once (also a check that everything runs), before waiting for the quiet slot
    values = {}
    for m in metrics:
        for name, tool in tools.items():
            with contextlib.redirect_stdout(io.StringIO()):
                ms, v = tool.time(m)
            values[(m, name)] = v
            print(f"warm-up {m:12s} {name:8s} {ms:10.1f} ms  value {v:.6g}", file=sys.stderr)

    waited = "no wait (smoke)" if args.smoke else wait_for(args.wait_file, args.wait_max_s)
    load_start = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    times = {(m, n): [] for m in metrics for n in tools}
    busy_seen = {}
    foreign = ForeignCpu()
    guard = QuietGuard(args.max_foreign, args.quiet_budget_s, args.max_retries, enabled=not args.smoke)
    for m in metrics:
        for rep in range(reps):
            while True:
                guard.wait_quiet()
                triple_cpu = ForeignCpu()
                got = {}
                for name, tool in tools.items():
                    for b in busy_processes():
                        busy_seen[b] = busy_seen.get(b, 0) + 1
                    with contextlib.redirect_stdout(io.StringIO()):
                        ms, _ = tool.time(m)
                    got[name] = ms
                    foreign.sample()
                triple_cpu.sample()
                share = triple_cpu.cores()
                line = (f"rep {rep + 1}/{reps} {m:12s} " + "  ".join(f"{n} {got[n]:.1f}" for n in tools) +
                        f"  (other processes: {share:.2f} cores)")
                if guard.accept(share):
                    break
                print(line + ": discarded, other load", file=sys.stderr)
            for name, ms in got.items():
                times[(m, name)].append(ms)
            print(line, file=sys.stderr)
    load_end = loadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    rows.append("| metric | ours ms | pnpxai ms | Quantus ms | pnpxai/ours | Quantus/ours |")
    rows.append("|---|---:|---:|---:|---:|---:|")
    for m in metrics:
        o, p, q = med[(m, "ours")], med[(m, "pnpxai")], med[(m, "quantus")]
        label = LABELS[m] + (" (2x PixelFlipping)" if m == "abpc" else "")
        rows.append(f"| {label} | {fmt_ms(o)} | {fmt_ms(p)} | {fmt_ms(q)} | {fmt_ratio(p, o)} | {fmt_ratio(q, o)} |")

    fis, sub = tools["quantus"].fis, tools["quantus"].subset_size
    ours_version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    notes = [
        f"Median of {reps} timed calls per cell (min–max in the raw table below), after one warm-up call per tool and "
        "metric; tools interleaved (ours, pnpxai, Quantus, ours, ...). Times exclude model loading and process "
        "start: ours is the third scoring of `candle-xai evaluate --repeat 3 --timings` (`evaluate_ms_calls`), a new "
        "process per call, warmed by its first two scorings as the Python tools' process is by its warm-up and earlier calls; pnpxai "
        "and Quantus are `time.perf_counter` around one metric call in a warm Python process. The first scoring of "
        "each of our processes, which also faults in the process's fresh memory, took (median per metric, ms): "
        + ", ".join(f"{m} {statistics.median(v):.0f}" for m, v in tools["ours"].first_scorings.items()) + ".",
        f"Model: torchvision MobileNetV2, ImageNet weights (web/assets/model/mobilenet_v2.safetensors). Input: "
        f"web/assets/samples/chelsea.png, Resize(256)/CenterCrop(224)/ToTensor/Normalize, batch 1, target = top-1 "
        f"class {int(t[0])}. Attributions: captum Saliency(abs=False), [1,3,224,224]. CPU, float32, "
        f"torch.set_num_threads({torch.get_num_threads()}); ours uses rayon on all {os.cpu_count()} cores and its "
        "default rows per forward pass.",
        f"AbPC / MoRF / LeRF: pnpxai AbPC / MoRF / LeRF (n_steps={cfg['n_steps']}, zero baseline, softmax "
        f"probability: {cfg['n_steps']} forwards of 1 image each per curve, the unperturbed input first; AbPC = both "
        "curves); ours the same curve points, several rows per forward. Quantus `PixelFlipping(features_in_step="
        f"{fis}, abs=False, normalise=False, perturb_baseline=0.0)` with softmax=True: ceil(150528/{fis}) = "
        f"{math.ceil(150528 / fis)} cumulative steps over all 150528 features (the last flips {150528 - fis * (math.ceil(150528 / fis) - 1)}), "
        f"{math.ceil(150528 / fis)} forwards of 1 image, no unperturbed point. Quantus asserts that features_in_step "
        "divides H*W = 50176 and no divisor gives 10 steps, so that assertion (custom_preprocess) is skipped by a "
        "subclass. LeRF in Quantus = PixelFlipping on -a; AbPC in Quantus has no class: timed as PixelFlipping on a "
        "and on -a in one timing, then mean(clamp(LeRF - MoRF, min=-1)).",
        f"MuFidelity: pnpxai MuFidelity(n_perturb={cfg['n_perturb']}, noise_scale=0.2, grid_size=9, batch_size=32, "
        f"baseline=0; logits). Quantus `FaithfulnessCorrelation(nr_runs={cfg['n_perturb']}, subset_size={sub}, "
        "similarity_func=correlation_spearman, perturb_baseline=0.0, abs=False, normalise=False)`, softmax=False "
        f"(logits): {sub} = round(150528 * 17/81) random features (channels drawn independently, not grid cells), "
        "no Gaussian noise, one forward of 1 image per run (Quantus has no batching here).",
        f"Sensitivity: pnpxai Sensitivity(explainer=pnpxai Gradient (signed input gradient), n_iter={cfg['n_iter']}, "
        f"epsilon=0.2): one backward pass over a batch of {cfg['n_iter']}; ours `--made-by gradient` (signed "
        f"gradient). Quantus `MaxSensitivity(nr_samples={cfg['n_iter']}, lower_bound=0.2, upper_bound=None)` (uniform "
        "noise in [-0.2, 0.2]), explain_func = captum Saliency(abs=False) (signed), one forward+backward of 1 image "
        f"per sample ({cfg['n_iter']} in all), abs=False, normalise=False, Frobenius norms (pnpxai's definition).",
        "Ours: every `evaluate` call first runs one forward pass of the unperturbed input (for the targets' logits "
        "and the pass sizing, src/metrics/mod.rs evaluate_async), inside `evaluate_ms`, also for Complexity, which "
        "needs no model; pnpxai's and Quantus' Complexity do not touch the model.",
        "Complexity: pnpxai Complexity(n_bins=10) = entropy of a 10-bin histogram of the grayscale (rgb_to_grayscale) "
        "attribution. Quantus Complexity (defaults abs=True, normalise=True) is a different quantity: entropy of "
        "|a| / sum|a| over all 150528 features. Both are model-free; the times are the cost of a reduction.",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), Linux {platform.release()}. "
        f"Load average (1/5/15 min) {load_start} at the start of the timed runs, {load_end} at the end. "
        f"Started {started}; {waited}. Compiler/linker processes seen before the timed calls: "
        f"{', '.join(f'{k} ({v} of {len(metrics) * reps * len(tools)} calls)' for k, v in sorted(busy_seen.items())) or 'none'}. "
        f"CPU used by other processes during the timed runs: {foreign.summary()}. Quiet guard: {guard.summary()}.",
        f"Versions: {ours_version} ({args.bin}), Python {platform.python_version()}, torch {version('torch')}, "
        f"torchvision {version('torchvision')}, captum {version('captum')}, zennit {version('zennit')}, "
        f"numpy {version('numpy')}, scipy {version('scipy')}, pnpxai {version('pnpxai')}, "
        f"quantus {version('quantus')}.",
    ]
    raw = ["| metric | tool | median ms | min ms | max ms | value (warm-up) |", "|---|---|---:|---:|---:|---:|"]
    for m in metrics:
        for n in tools:
            v = times[(m, n)]
            raw.append(f"| {LABELS[m]} | {n} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
                       f"{values[(m, n)]:.6g} |")
    text = "\n".join(
        ["# Evaluation metrics: candle-xai vs pnpxai 0.1.4 vs Quantus 0.6.0 (CPU)" + (" [SMOKE]" if args.smoke else ""),
         "", *rows, "", "Notes:", "", *[f"- {n}" for n in notes], "",
         "Raw timings (values differ across tools where the random draws or the definitions differ):", "", *raw,
         "", f"Reproduce: `{args.command}`", ""])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"times_ms": {f"{m}/{n}": v for (m, n), v in times.items()},
                       "values": {f"{m}/{n}": v for (m, n), v in values.items()},
                       "load_start": load_start, "load_end": load_end, "waited": waited,
                       "busy_seen": busy_seen, "foreign_cpu_s": foreign.cpu_s, "timed_wall_s": foreign.wall_s}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--work-dir", required=True)
    r.add_argument("--bin", required=True, help="the candle-xai binary")
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--metrics", default="", help="comma-separated subset of " + ",".join(METRICS))
    r.add_argument("--wait-file", default="", help="wait until this file exists before the timed runs")
    r.add_argument("--wait-max-s", type=float, default=2400)
    r.add_argument("--out", default="/tmp/bench_metrics.md")
    r.add_argument("--json-out", default="")
    r.add_argument("--command", default="scripts/bench_metrics.sh")
    r.add_argument("--smoke", action="store_true")
    r.add_argument("--max-foreign", type=float, default=0.25,
                   help="redo a (ours, pnpxai, quantus) triple when other processes used more cores than this")
    r.add_argument("--max-retries", type=int, default=3)
    r.add_argument("--quiet-budget-s", type=float, default=1800)
    args = ap.parse_args()
    (prepare if args.cmd == "prepare" else run)(args)


if __name__ == "__main__":
    main()
