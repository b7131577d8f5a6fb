"""The one definition of candle-xai's PyTorch reference side, imported by the fixture, layout and benchmark scripts.

* Seeded weights: the counter-based PRNG (``fnv1a64``, ``seeded_values``; ``tests/common/seeded_weights.rs``
  re-implements it bit-exactly), ``f32``, ``seeded_tensor``, ``weights_from_spec``.
* Weight specs: ``GAINS`` per architecture, ``is_branch_last_conv``, ``weight_spec`` (the ``{"name", "shape", "lo",
  "hi"}`` list stored in the fixtures' metadata).
* Models: ``torchvision_model`` (10 classes, VGG / AlexNet heads shrunk to width ``HIDDEN``), ``no_inplace``,
  ``freeze``, ``seeded_model`` (all of these plus the seeded weights, checked bit for bit).
* LRP: the MobileNetV2 canonizer zennit 0.5.1 lacks (``MobileNetV2Canonizer``), ``make_canonizers`` (the canonizers of
  every model), ``CANONIZER_DOC``, ``LRP_COMPOSITES`` and ``composites`` (the six zennit composites under the
  fixtures' tensor names or under candle-xai's ``Composite::name()``).

scripts/make_fixtures.py, scripts/make_layout_fixtures.py and scripts/bench_torch.py import these, so the benchmark
times exactly the LRP (canonizers included) that the fixtures check. Needs torch, torchvision, zennit and numpy
(versions in scripts/requirements-fixtures.txt); the scripts that run from the repository root find this module next
to them (Python puts a script's own folder on ``sys.path``).
"""

import math
import re

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Convolution

NUM_CLASSES = 10  # the seeded models' classes (the benchmark builds its own 1000-class models)
HIDDEN = 64  # VGG / AlexNet classifier width in the seeded models

# ----------------------------------------------------------------------------------------------------------------
# seeded weights

_M64 = (1 << 64) - 1


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def seeded_values(name: str, numel: int, lo: float, hi: float) -> np.ndarray:
    """Counter-based PRNG, bit-identical to tests/common/seeded_weights.rs::seeded_values."""
    key = np.uint64(fnv1a64(name))
    i = np.arange(1, numel + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    d = np.float32(hi32 - lo32)
    p = (d * u).astype(np.float32)
    return (lo32 + p).astype(np.float32)


def f32(x: float) -> float:
    """The float32 value of x, as a Python float (repr round-trips exactly)."""
    return float(np.float32(x))


def seeded_tensor(entry) -> torch.Tensor:
    """The float32 tensor of one ``{"name", "shape", "lo", "hi"}`` entry."""
    numel = int(np.prod(entry["shape"], dtype=np.int64))
    return torch.from_numpy(seeded_values(entry["name"], numel, entry["lo"], entry["hi"]).reshape(entry["shape"]))


def weights_from_spec(spec):
    return {e["name"]: seeded_tensor(e) for e in spec}


# ----------------------------------------------------------------------------------------------------------------
# weight specs

# weight-scale gains per architecture, see weight_spec()
GAINS = {
    #               conv / hidden linear, last conv of a residual branch, final classifier linear
    "resnet18": dict(conv=1.2, branch=0.7, head=2.5),
    "vgg11_bn": dict(conv=1.2, branch=None, head=2.0),
    "mobilenet_v2": dict(conv=math.sqrt(2.0), branch=0.7, head=4.0),
    # the layout fixtures' forward checks (scripts/make_layout_fixtures.py)
    "resnet50": dict(conv=1.2, branch=0.7, head=2.0),
    "vgg16_bn": dict(conv=1.2, branch=None, head=2.0),
    "alexnet": dict(conv=1.2, branch=None, head=2.0),
}


def is_branch_last_conv(model: nn.Module, name: str) -> bool:
    """Last conv of a residual branch (scaled down so the residual stream does not blow up): ``conv2`` of a ResNet
    BasicBlock, ``conv3`` of a Bottleneck, the projection conv (the last, bare ``nn.Conv2d``) of a MobileNetV2
    InvertedResidual."""
    m = re.fullmatch(r"(.+)\.(conv\d|conv\.\d+)\.weight", name)
    if m is None:
        return False
    block, conv = model.get_submodule(m.group(1)), m.group(2)
    if isinstance(block, BasicBlock):
        return conv == "conv2"
    if isinstance(block, Bottleneck):
        return conv == "conv3"
    if isinstance(block, InvertedResidual) and conv.startswith("conv."):
        # InvertedResidual.conv = [CNA(expand)?, CNA(depthwise), Conv2d(project), BatchNorm2d]
        return isinstance(block.conv[int(conv[len("conv."):])], nn.Conv2d)
    return False


def weight_spec(arch: str, model: nn.Module):
    """[{"name", "shape", "lo", "hi"}] in state_dict order (num_batches_tracked left out).

    conv / linear weight: +-sqrt(3 / fan_in) * gain (uniform with variance gain^2 / fan_in), fan_in = in/groups*kh*kw,
    gain from GAINS[arch] (head: the Linear with NUM_CLASSES outputs; branch: see is_branch_last_conv; conv: others)
    conv / linear bias: +-0.1; BN weight [0.5, 1.5], bias [-0.2, 0.2], running_mean [-0.2, 0.2], running_var [0.5, 1.5]
    """
    gains = GAINS[arch]
    spec = []
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        mod_name, pname = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        if isinstance(mod, nn.BatchNorm2d):
            lo, hi = {
                "weight": (0.5, 1.5),
                "bias": (-0.2, 0.2),
                "running_mean": (-0.2, 0.2),
                "running_var": (0.5, 1.5),
            }[pname]
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "bias":
            lo, hi = -0.1, 0.1
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "weight":
            fan_in = t[0].numel()
            if isinstance(mod, nn.Linear) and mod.out_features == NUM_CLASSES:
                gain = gains["head"]
            elif is_branch_last_conv(model, name):
                gain = gains["branch"]
            else:
                gain = gains["conv"]
            a = f32(math.sqrt(3.0 / fan_in) * gain)
            lo, hi = -a, a
        else:
            raise RuntimeError(f"no weight rule for {name} ({type(mod).__name__})")
        spec.append({"name": name, "shape": list(t.shape), "lo": f32(lo), "hi": f32(hi)})
    return spec


# ----------------------------------------------------------------------------------------------------------------
# models

def torchvision_model(arch: str) -> nn.Module:
    """``torchvision.models.<arch>(num_classes=10)`` in eval mode; VGG and AlexNet get their classifier shrunk to
    hidden width HIDDEN (same ``nn.Sequential``, same module names), as any fine-tuned head may be."""
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)
    if arch.startswith("vgg"):
        model.classifier[0] = nn.Linear(512 * 7 * 7, HIDDEN)
        model.classifier[3] = nn.Linear(HIDDEN, HIDDEN)
        model.classifier[6] = nn.Linear(HIDDEN, NUM_CLASSES)
    elif arch == "alexnet":
        model.classifier[1] = nn.Linear(256 * 6 * 6, HIDDEN)
        model.classifier[4] = nn.Linear(HIDDEN, HIDDEN)
        model.classifier[6] = nn.Linear(HIDDEN, NUM_CLASSES)
    return model.eval()


def no_inplace(model: nn.Module) -> nn.Module:
    # in-place activations are mathematically identical, but captum layer hooks and zennit hooks are safer without
    for m in model.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            m.inplace = False
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Gradients with respect to the input only (as candle-xai)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def seeded_model(arch: str):
    """(model, spec): torchvision_model(arch) with out-of-place activations, frozen parameters and the seeded weights
    of weight_spec(arch, model), checked bit for bit."""
    model = no_inplace(torchvision_model(arch))
    spec = weight_spec(arch, model)
    weights = weights_from_spec(spec)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(v.view(torch.int32), weights[k].view(torch.int32)), f"{k} not set"
    assert set(weights) == {k for k in sd if not k.endswith("num_batches_tracked")}
    return freeze(model), spec


# ----------------------------------------------------------------------------------------------------------------
# canonizers (MobileNetV2: zennit 0.5.1 ships none)

class InvertedResidualCanonizer(AttributeCanonizer):
    """Residual add of torchvision InvertedResidual (use_res_connect) -> zennit.layer.Sum (gets the Norm rule),
    exactly like zennit.torchvision.ResNetBasicBlockCanonizer does for BasicBlock."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        out = torch.stack([x, self.conv(x)], dim=-1)
        return self.canonizer_sum(out)


class MobileNetV2PoolCanonizer(AttributeCanonizer):
    """torchvision MobileNetV2 pools with the functional F.adaptive_avg_pool2d, which no composite can hook; this
    puts an nn.AdaptiveAvgPool2d module there so that it gets the Norm rule, like ResNet's and VGG's pooling."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, torchvision.models.MobileNetV2):
            return {"forward": cls.forward.__get__(module), "canonizer_avgpool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def forward(self, x):
        x = self.features(x)
        x = self.canonizer_avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class MobileNetV2Canonizer(CompositeCanonizer):
    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), InvertedResidualCanonizer(), MobileNetV2PoolCanonizer()))


CANONIZERS = {  # model -> fresh canonizer instances (a canonizer instance serves one composite)
    "resnet18": lambda: [ResNetCanonizer()],
    "vgg11_bn": lambda: [VGGCanonizer()],
    "mobilenet_v2": lambda: [MobileNetV2Canonizer()],
}


def make_canonizers(kind):
    return CANONIZERS[kind]()


CANONIZER_DOC = {
    "resnet18": "zennit.torchvision.ResNetCanonizer() = SequentialMergeBatchNorm + BasicBlock residual add -> "
                "zennit.layer.Sum (Norm rule)",
    "vgg11_bn": "zennit.torchvision.VGGCanonizer() = SequentialMergeBatchNorm",
    "mobilenet_v2": "script's MobileNetV2Canonizer = SequentialMergeBatchNorm (all 52 BN merged into the preceding "
                    "conv) + InvertedResidual residual add -> zennit.layer.Sum (Norm rule) + the functional global "
                    "average pool replaced by an nn.AdaptiveAvgPool2d module (Norm rule)",
}

# ----------------------------------------------------------------------------------------------------------------
# composites

# (fixture tensor name, candle-xai Composite::name(), canonizers -> zennit composite), in the benchmark's row order
LRP_COMPOSITES = (
    ("lrp_epsilon_0_25", "lrp-uniform-epsilon", lambda canonizers: LayerMapComposite(
        layer_map=layer_map_base() + [(Convolution, Epsilon(0.25)), (torch.nn.Linear, Epsilon(0.25))],
        canonizers=canonizers)),
    ("lrp_epsilon_gamma_box", "lrp-epsilon-gamma-box",
     lambda canonizers: EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canonizers)),
    ("lrp_epsilon_plus", "lrp-epsilon-plus", lambda canonizers: EpsilonPlus(canonizers=canonizers)),
    ("lrp_epsilon_alpha2_beta1", "lrp-epsilon-alpha2-beta1",
     lambda canonizers: EpsilonAlpha2Beta1(canonizers=canonizers)),
    ("lrp_epsilon_plus_flat", "lrp-epsilon-plus-flat", lambda canonizers: EpsilonPlusFlat(canonizers=canonizers)),
    ("lrp_epsilon_alpha2_beta1_flat", "lrp-epsilon-alpha2-beta1-flat",
     lambda canonizers: EpsilonAlpha2Beta1Flat(canonizers=canonizers)),
)


def composites(kind, names="fixture"):
    """{name: () -> a fresh zennit composite with fresh canonizers of make_canonizers(kind)}; names "fixture" (the
    refs files' tensor names) or "engine" (candle-xai's Composite::name(), the benchmark's rows)."""
    column = {"fixture": 0, "engine": 1}[names]
    return {entry[column]: (lambda make=entry[2]: make(make_canonizers(kind))) for entry in LRP_COMPOSITES}
