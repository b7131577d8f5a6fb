"""The one definition of candle-xai's PyTorch reference side, imported by the fixture, layout and benchmark scripts.

* Seeded weights: the counter-based PRNG (``fnv1a64``, ``seeded_values``; ``tests/common/seeded_weights.rs``
  re-implements it bit-exactly), ``f32``, ``seeded_tensor``, ``weights_from_spec``.
* Weight specs: ``GAINS`` per architecture, ``is_branch_last_conv``, ``weight_spec`` (the ``{"name", "shape", "lo",
  "hi"}`` list stored in the fixtures' metadata).
* Models: ``torchvision_model`` (10 classes, VGG / AlexNet heads shrunk to width ``HIDDEN``), ``no_inplace``,
  ``freeze``, ``seeded_model`` (all of these plus the seeded weights, checked bit for bit).
* LRP: the canonizers zennit 0.5.1 lacks (``MobileNetV2Canonizer``, ``EfficientNetCanonizer``,
  ``MobileNetV3Canonizer``, ``ConvNeXtCanonizer``, ``DenseNetCanonizer``, ``ShuffleNetV2Canonizer``,
  ``RegNetCanonizer``), ``make_canonizers`` (the canonizers of every model), ``CANONIZER_DOC``, ``LRP_COMPOSITES``
  and ``composites`` (the six zennit composites under the fixtures' tensor names or under candle-xai's
  ``Composite::name()``).
* lrp-gamma-identity: ``lrp_gamma_identity`` (lxt 2.1's rules on zennit's Gamma: ``lxt_zennit_patched``,
  ``gamma_identity_composite``, ``lxt_patched``) and ``explicit_gamma_identity`` (the same rules as explicit LRP, the
  fixtures' cross-check).

scripts/make_fixtures.py, scripts/make_layout_fixtures.py and scripts/bench_torch.py import these, so the benchmark
times exactly the LRP (canonizers included) that the fixtures check. Needs torch, torchvision, zennit and numpy,
and lxt for lrp-gamma-identity (imported when used; versions in scripts/requirements-fixtures.txt); the scripts that
run from the repository root find this module next to them (Python puts a script's own folder on ``sys.path``).
"""

import contextlib
import math
import re
import types

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.densenet import _DenseLayer
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.core import BasicHook, Hook
from zennit.layer import Sum
from zennit.rules import Epsilon, Gamma
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
    # SiLU / Hardswish have slope 1/2 at 0: weak signals shrink block after block until the biases alone decide the
    # logits, strong ones grow; these conv gains sit where the stream keeps std ~0.3..1.5 through all the blocks
    # (so the two input rows get different logits), the SE / Hardsigmoid gates mostly unsaturated
    "efficientnet_b0": dict(conv=1.65, branch=1.0, head=6.0),
    "mobilenet_v3_small": dict(conv=1.7, branch=0.7, head=5.0),
    # ConvNeXt: LayerNorm in every branch and before every downsampling conv keeps the stream O(1) for any gain;
    # layer_scale: the [lo, hi] of every CNBlock.layer_scale
    "convnext_tiny": dict(conv=math.sqrt(2.0), branch=1.0, head=2.5, layer_scale=(0.5, 1.0)),
    # ReLU networks without residual adds: every conv gets the same gain (DenseNet's concatenations, ShuffleNetV2's
    # chunk / concat / shuffle and SqueezeNet's Fire concatenations keep the stream's scale; ShuffleNetV2's
    # conv gain is knife-edge: 1.0 shrinks the stream to its biases, 1.4 grows it 30x over the 16 blocks)
    "densenet121": dict(conv=1.4, branch=None, head=1.5),
    "shufflenet_v2_x1_0": dict(conv=1.25, branch=None, head=2.5),
    "squeezenet1_1": dict(conv=1.5, branch=None, head=2.0),  # head: the 1x1 conv classifier.1
    "regnet_y_400mf": dict(conv=1.3, branch=0.7, head=1.0),  # branch: f.c.0 of every ResBottleneckBlock
    # the layout fixtures' forward checks (scripts/make_layout_fixtures.py)
    "resnet50": dict(conv=1.2, branch=0.7, head=2.0),
    "vgg16_bn": dict(conv=1.2, branch=None, head=2.0),
    "alexnet": dict(conv=1.2, branch=None, head=2.0),
    "efficientnet_b1": dict(conv=1.67, branch=1.0, head=3.5),
    "efficientnet_v2_s": dict(conv=1.4, branch=0.7, head=2.5),
    "mobilenet_v3_large": dict(conv=1.67, branch=0.7, head=5.0),
    "convnext_small": dict(conv=math.sqrt(2.0), branch=1.0, head=2.5, layer_scale=(0.5, 1.0)),
    "densenet169": dict(conv=1.45, branch=None, head=1.5),
    "regnet_x_800mf": dict(conv=1.2, branch=0.7, head=1.5),
    "shufflenet_v2_x0_5": dict(conv=1.2, branch=None, head=2.0),
    "squeezenet1_0": dict(conv=1.45, branch=None, head=2.0),
    # the other archs' forward checks: their family's gains, the conv (ResNet-152: branch) gain lowered where depth
    # grows the stream until the biases decide the logits, raised for VGG without BN (nothing lifts its stream)
    "resnet34": dict(conv=1.2, branch=0.7, head=2.5),
    "resnet101": dict(conv=1.2, branch=0.7, head=2.0),
    "resnet152": dict(conv=1.2, branch=0.3, head=2.0),
    "vgg11": dict(conv=1.35, branch=None, head=2.0),
    "vgg13": dict(conv=1.35, branch=None, head=2.0),
    "vgg16": dict(conv=1.35, branch=None, head=2.0),
    "vgg19": dict(conv=1.35, branch=None, head=2.0),
    "vgg13_bn": dict(conv=1.2, branch=None, head=2.0),
    "vgg19_bn": dict(conv=1.2, branch=None, head=2.0),
    # EfficientNet's knife edge moves down with depth: 1.67 (b1's) blows b4..b7 up to chaos (float32 off by 1e-3..0.5)
    "efficientnet_b2": dict(conv=1.65, branch=1.0, head=3.5),
    "efficientnet_b3": dict(conv=1.6, branch=1.0, head=3.5),
    "efficientnet_b4": dict(conv=1.55, branch=1.0, head=3.5),
    "efficientnet_b5": dict(conv=1.5, branch=1.0, head=3.5),
    "efficientnet_b6": dict(conv=1.5, branch=1.0, head=3.5),
    "efficientnet_b7": dict(conv=1.4, branch=1.0, head=3.5),
    "efficientnet_v2_m": dict(conv=1.4, branch=0.7, head=2.5),
    "efficientnet_v2_l": dict(conv=1.33, branch=0.7, head=2.5),
    "convnext_base": dict(conv=math.sqrt(2.0), branch=1.0, head=2.5, layer_scale=(0.5, 1.0)),
    "convnext_large": dict(conv=math.sqrt(2.0), branch=1.0, head=2.5, layer_scale=(0.5, 1.0)),
    "densenet161": dict(conv=1.38, branch=None, head=1.5),
    "densenet201": dict(conv=1.45, branch=None, head=1.5),
    "regnet_x_400mf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_x_1_6gf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_x_3_2gf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_x_8gf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_x_16gf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_x_32gf": dict(conv=1.2, branch=0.7, head=1.5),
    "regnet_y_800mf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_1_6gf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_3_2gf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_8gf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_16gf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_32gf": dict(conv=1.3, branch=0.7, head=1.0),
    "regnet_y_128gf": dict(conv=1.3, branch=0.7, head=1.0),
    "shufflenet_v2_x1_5": dict(conv=1.2, branch=None, head=2.0),
    "shufflenet_v2_x2_0": dict(conv=1.2, branch=None, head=2.0),
}


def is_branch_last_conv(model: nn.Module, name: str) -> bool:
    """Last conv of a residual branch (scaled down so the residual stream does not blow up): ``conv2`` of a ResNet
    BasicBlock, ``conv3`` of a Bottleneck, the projection conv (the last, bare ``nn.Conv2d``) of a MobileNetV2
    InvertedResidual; and the last ``nn.Conv2d`` / ``nn.Linear`` of the ``block`` of an EfficientNet MBConv /
    FusedMBConv or a MobileNetV3 InvertedResidual (the projection conv ``block.<last>.0``; a FusedMBConv without
    expansion has a single conv ``block.0.0``) and of a ConvNeXt CNBlock (``block.5``, the second Linear); the last
    conv ``f.c.0`` of a RegNet ResBottleneckBlock. As for MobileNetV2, every block counts, with or without its
    residual connection."""
    m = re.fullmatch(r"(.+)\.(block\.\d+(?:\.0)?)\.weight", name)
    if m is not None:
        block = model.get_submodule(m.group(1))
        if isinstance(block, (MBConv, FusedMBConv, InvertedResidualV3, CNBlock)):
            last = [mod for mod in block.block.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))][-1]
            return model.get_submodule(f"{m.group(1)}.{m.group(2)}") is last
        return False
    m = re.fullmatch(r"(.+)\.f\.c\.0\.weight", name)
    if m is not None:  # RegNet ResBottleneckBlock: f = a (1x1), b (3x3 grouped), [se], c (1x1 conv + BN)
        return isinstance(model.get_submodule(m.group(1)), ResBottleneckBlock)
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
    gain from GAINS[arch] (head: the Linear with NUM_CLASSES outputs, SqueezeNet's 1x1 conv ``classifier.1``;
    branch: see is_branch_last_conv; conv: others)
    conv / linear bias: +-0.1; BN weight [0.5, 1.5], bias [-0.2, 0.2], running_mean [-0.2, 0.2], running_var [0.5, 1.5]
    LayerNorm (ConvNeXt's nn.LayerNorm and LayerNorm2d) weight [0.5, 1.5], bias [-0.2, 0.2]; ConvNeXt CNBlock
    layer_scale [C, 1, 1]: GAINS[arch]["layer_scale"] = [lo, hi] (torchvision's 1e-6 would switch the branches off)
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
        elif isinstance(mod, nn.LayerNorm):  # LayerNorm2d is a subclass
            lo, hi = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2)}[pname]
        elif isinstance(mod, CNBlock) and pname == "layer_scale":
            lo, hi = gains["layer_scale"]
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "bias":
            lo, hi = -0.1, 0.1
        elif isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "weight":
            fan_in = t[0].numel()
            if isinstance(mod, nn.Linear) and mod.out_features == NUM_CLASSES:
                gain = gains["head"]
            elif arch.startswith("squeezenet") and mod_name == "classifier.1":  # SqueezeNet's head is a 1x1 conv
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
    """Every module with an ``inplace`` flag (ReLU, ReLU6, SiLU, Hardswish, Hardsigmoid, Dropout, ...) made
    out-of-place: mathematically identical, but captum layer hooks and zennit hooks are safer without."""
    for m in model.modules():
        if isinstance(getattr(m, "inplace", None), bool):
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


class ResidualSumCanonizer(AttributeCanonizer):
    """The residual ``result += input`` of torchvision's EfficientNet MBConv / FusedMBConv (when use_res_connect),
    MobileNetV3 InvertedResidual (when use_res_connect), ConvNeXt CNBlock (always) and RegNet ResBottleneckBlock
    (always: ``proj(x) + f(x)`` or ``x + f(x)``, then its ReLU) -> zennit.layer.Sum over ``stack([input, branch],
    -1)`` (Norm rule), as InvertedResidualCanonizer does for MobileNetV2. branch = ``stochastic_depth(block(input))``
    (identity in eval), ``block(input)``, ``stochastic_depth(layer_scale * block(input))`` and ``f(x)``
    respectively; RegNet's first stack entry is ``proj(x)`` where the block has a projection."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, (MBConv, FusedMBConv)) and module.use_res_connect:
            forward = cls.forward_mbconv
        elif isinstance(module, InvertedResidualV3) and module.use_res_connect:
            forward = cls.forward_mobilenet_v3
        elif isinstance(module, CNBlock):
            forward = cls.forward_cnblock
        elif isinstance(module, ResBottleneckBlock):
            forward = cls.forward_regnet
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    @staticmethod
    def forward_mbconv(self, input):
        return self.canonizer_sum(torch.stack([input, self.stochastic_depth(self.block(input))], dim=-1))

    @staticmethod
    def forward_mobilenet_v3(self, input):
        return self.canonizer_sum(torch.stack([input, self.block(input)], dim=-1))

    @staticmethod
    def forward_cnblock(self, input):
        branch = self.stochastic_depth(self.layer_scale * self.block(input))
        return self.canonizer_sum(torch.stack([input, branch], dim=-1))

    @staticmethod
    def forward_regnet(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(self.canonizer_sum(torch.stack([shortcut, self.f(x)], dim=-1)))


class EfficientNetCanonizer(CompositeCanonizer):
    """SequentialMergeBatchNorm + MBConv / FusedMBConv residual add -> Sum (Norm rule)."""

    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), ResidualSumCanonizer()))


class MobileNetV3Canonizer(CompositeCanonizer):
    """SequentialMergeBatchNorm + InvertedResidual residual add -> Sum (Norm rule)."""

    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), ResidualSumCanonizer()))


class ConvNeXtCanonizer(CompositeCanonizer):
    """SequentialMergeBatchNorm (ConvNeXt has no BatchNorm: it merges nothing) + CNBlock residual add -> Sum."""

    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), ResidualSumCanonizer()))


class DenseNetMergeBatchNorm(MergeBatchNorm):
    """zennit's MergeBatchNorm on the true conv -> BatchNorm pairs of a torchvision DenseNet only: ``features.conv0``
    / ``features.norm0`` and every _DenseLayer's ``conv1`` / ``norm2``. SequentialMergeBatchNorm would also merge each
    _DenseLayer's ``conv2`` into the next leaf BatchNorm (the next layer's ``norm1``, a transition's ``norm`` or
    ``norm5``): consecutive leaves in module order, but that BN reads the concatenation, not the conv. Those stay
    BatchNorm modules (zennit's layer_map_base gives BatchNorm the Pass rule)."""

    def apply(self, root_module):
        instances = []
        for module in root_module.modules():
            if isinstance(module, torchvision.models.DenseNet):
                pairs = [(module.features.conv0, module.features.norm0)]
            elif isinstance(module, _DenseLayer):
                pairs = [(module.conv1, module.norm2)]
            else:
                continue
            for conv, bn in pairs:
                instance = self.copy()
                instance.register([conv], bn)
                instances.append(instance)
        return instances


class GlobalPoolCanonizer(AttributeCanonizer):
    """The functional tail of torchvision's DenseNet (``F.relu``, ``F.adaptive_avg_pool2d``) and ShuffleNetV2
    (``x.mean([2, 3])``) -> modules (``nn.ReLU``, ``nn.AdaptiveAvgPool2d((1, 1))``), so that the composites see them
    (Pass, Norm), as MobileNetV2PoolCanonizer does for MobileNetV2."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, torchvision.models.DenseNet):
            return {"forward": cls.forward_densenet.__get__(module), "canonizer_relu": nn.ReLU(),
                    "canonizer_avgpool": nn.AdaptiveAvgPool2d((1, 1))}
        if isinstance(module, torchvision.models.ShuffleNetV2):
            return {"forward": cls.forward_shufflenet.__get__(module),
                    "canonizer_avgpool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def forward_densenet(self, x):
        out = self.canonizer_relu(self.features(x))
        out = torch.flatten(self.canonizer_avgpool(out), 1)
        return self.classifier(out)

    @staticmethod
    def forward_shufflenet(self, x):
        x = self.conv5(self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x))))))
        return self.fc(torch.flatten(self.canonizer_avgpool(x), 1))


class DenseNetCanonizer(CompositeCanonizer):
    """DenseNetMergeBatchNorm (true pairs only) + the functional ReLU / global pool -> modules."""

    def __init__(self):
        super().__init__((DenseNetMergeBatchNorm(), GlobalPoolCanonizer()))


class ShuffleNetV2Canonizer(CompositeCanonizer):
    """SequentialMergeBatchNorm (every BN follows its conv in leaf order) + ``x.mean([2, 3])`` -> module."""

    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), GlobalPoolCanonizer()))


class RegNetCanonizer(CompositeCanonizer):
    """SequentialMergeBatchNorm + ResBottleneckBlock residual add -> Sum (Norm rule)."""

    def __init__(self):
        super().__init__((SequentialMergeBatchNorm(), ResidualSumCanonizer()))


CANONIZERS = {  # model -> fresh canonizer instances (a canonizer instance serves one composite)
    "resnet18": lambda: [ResNetCanonizer()],
    "vgg11_bn": lambda: [VGGCanonizer()],
    "mobilenet_v2": lambda: [MobileNetV2Canonizer()],
    "efficientnet_b0": lambda: [EfficientNetCanonizer()],
    "mobilenet_v3_small": lambda: [MobileNetV3Canonizer()],
    "convnext_tiny": lambda: [ConvNeXtCanonizer()],
    "densenet121": lambda: [DenseNetCanonizer()],
    "shufflenet_v2_x1_0": lambda: [ShuffleNetV2Canonizer()],
    "squeezenet1_1": lambda: [],  # no BatchNorm, no residual add; its global pool is a module already
    "regnet_y_400mf": lambda: [RegNetCanonizer()],
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
    "efficientnet_b0": "script's EfficientNetCanonizer = SequentialMergeBatchNorm (all 49 BN merged into the preceding "
                       "conv) + MBConv residual add (use_res_connect, 9 blocks) -> zennit.layer.Sum over "
                       "stack([input, stochastic_depth(block(input))], -1) (Norm rule)",
    "mobilenet_v3_small": "script's MobileNetV3Canonizer = SequentialMergeBatchNorm (all 34 BN merged into the "
                          "preceding conv) + InvertedResidual residual add (use_res_connect, 6 blocks) -> "
                          "zennit.layer.Sum over stack([input, block(input)], -1) (Norm rule)",
    "convnext_tiny": "script's ConvNeXtCanonizer = SequentialMergeBatchNorm (no BatchNorm: merges nothing) + CNBlock "
                     "residual add (all 18 blocks) -> zennit.layer.Sum over "
                     "stack([input, stochastic_depth(layer_scale * block(input))], -1) (Norm rule)",
    "densenet121": "script's DenseNetCanonizer = DenseNetMergeBatchNorm (the 59 true conv -> BN pairs merged: "
                   "features.conv0/norm0 and every dense layer's conv1/norm2; the 62 BN that read a concatenation, "
                   "every dense layer's norm1, the transitions' norm and norm5, stay BatchNorm: Pass rule) + the "
                   "functional F.relu / F.adaptive_avg_pool2d of DenseNet.forward replaced by nn.ReLU (Pass) and "
                   "nn.AdaptiveAvgPool2d((1, 1)) (Norm rule) modules",
    "shufflenet_v2_x1_0": "script's ShuffleNetV2Canonizer = SequentialMergeBatchNorm (all 56 BN merged into the "
                          "preceding conv, all true pairs) + the forward's x.mean([2, 3]) replaced by an "
                          "nn.AdaptiveAvgPool2d((1, 1)) module (Norm rule) and flatten",
    "squeezenet1_1": "none (no BatchNorm, no residual add; the classifier's AdaptiveAvgPool2d is a module already)",
    "regnet_y_400mf": "script's RegNetCanonizer = SequentialMergeBatchNorm (all 53 BN merged into the preceding "
                      "conv) + ResBottleneckBlock residual add (all 16 blocks) -> zennit.layer.Sum over "
                      "stack([proj(x) or x, f(x)], -1) (Norm rule), then the block's ReLU",
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


# ----------------------------------------------------------------------------------------------------------------
# lrp-gamma-identity: lxt 2.1's rules (AttnLRP outside attention, as lxt's ViT example applies them) on CNNs

GAMMA_IDENTITY = 0.25  # gamma of the Gamma rule on every Conv2d and Linear (zennit's stabilizer 1e-6)
# the element-wise activations that get lxt's identity rule (every one the seeded models use)
LXT_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Tanh)


def _lxt_layer_norm2d_forward(self, x):
    """lxt's layer_norm_forward (standard deviation detached) over the channel axis of an NCHW tensor: torchvision's
    LayerNorm2d permutes to NHWC, normalises the last axis and permutes back; so does this."""
    from lxt.efficient.patches import layer_norm_forward
    return layer_norm_forward(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _lxt_squeeze_excitation_forward(self, input):
    """torchvision SqueezeExcitation (``scale * input``) with lxt's uniform rule on the product: the gradient of
    both factors halved (``divide_gradient(product, 2)``, as lxt's gated_mlp_forward does for its gate product)."""
    from lxt.efficient.rules import divide_gradient
    return divide_gradient(self._scale(input) * input, 2)


@contextlib.contextmanager
def lxt_zennit_patched():
    """``lxt.efficient.zennit_patches.monkey_patch_zennit()`` (class-level: the relevance a zennit rule receives is
    gradient x module output, and it returns relevance / stabilize(input, 1e-10)), undone on exit so that the other
    composites in the same process stay zennit's own. Register the composite inside: zennit binds the forward hook
    at registration."""
    from lxt.efficient.zennit_patches import monkey_patch_zennit

    originals = (BasicHook.forward, BasicHook.backward)
    monkey_patch_zennit()
    try:
        yield
    finally:
        BasicHook.forward, BasicHook.backward = originals


@contextlib.contextmanager
def lxt_patched(model: nn.Module):
    """lxt 2.1's Gradient*Input rules on the modules of ``model``, undone on exit:

    * every element-wise activation (LXT_ACTIVATIONS) and every BatchNorm2d: ``lxt.efficient.patches.
      non_linear_forward`` (= ``identity_rule_implicit(original_forward, x)``: the backward multiplies the gradient by
      ``output / (input + 1e-10)``, so relevance = input x gradient passes unchanged). A merged BatchNorm (identity up
      to zennit 0.5.1's kept eps) is the identity for relevance either way; DenseNet's unmerged ones get Pass, as in
      zennit's layer_map_base and candle-xai's composite;
    * nn.LayerNorm: ``lxt.efficient.patches.layer_norm_forward`` (standard deviation detached); torchvision's
      LayerNorm2d the same over the channel axis (_lxt_layer_norm2d_forward);
    * torchvision SqueezeExcitation: the uniform rule on ``scale * input`` (_lxt_squeeze_excitation_forward).

    The patches are instance-level (``module.forward``), lxt's own patch_method on the classes would be global.
    Everything else (residual adds or zennit Sum modules, average pools, concatenations, chunks, channel shuffles,
    permutes, flatten, ConvNeXt's layer-scale product, max-pool) keeps its plain gradient, which in the
    Gradient*Input framework is the z-rule (Norm) for sums and pools and the identity for the rest."""
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward
    from zennit.types import Activation

    patched = []
    for module in model.modules():
        if isinstance(module, LXT_ACTIVATIONS + (nn.BatchNorm2d,)):
            module.original_forward = module.forward
            forward = non_linear_forward
        elif isinstance(module, LayerNorm2d):
            forward = _lxt_layer_norm2d_forward
        elif isinstance(module, nn.LayerNorm):
            forward = layer_norm_forward
        elif isinstance(module, SqueezeExcitation):
            forward = _lxt_squeeze_excitation_forward
        elif isinstance(module, Activation):
            raise NotImplementedError(f"no lxt rule chosen for {type(module).__name__}")
        else:
            continue
        module.forward = types.MethodType(forward, module)
        patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward
            module.__dict__.pop("original_forward", None)


def gamma_identity_composite(kind, gamma=GAMMA_IDENTITY):
    """zennit Gamma(gamma) (stabilizer 1e-6) on every Conv2d and Linear (the first layer too), nothing else; with the
    model's canonizers (make_canonizers: BatchNorm merge; their residual Sum modules get no rule, so plain
    gradient)."""
    return LayerMapComposite(layer_map=[(nn.Conv2d, Gamma(gamma=gamma)), (nn.Linear, Gamma(gamma=gamma))],
                             canonizers=make_canonizers(kind))


def lrp_gamma_identity(kind, model, x, targets, gamma=GAMMA_IDENTITY):
    """candle-xai's ``lrp-gamma-identity`` the lxt 2.1 way: (logits of the canonized, patched forward, relevance).

    lxt_zennit_patched, gamma_identity_composite registered (canonizers applied), lxt_patched (after the canonizers,
    which add modules: DenseNet's ReLU), then input x gradient at the input,
    with the gradient seed ``one_hot(targets) / logit[target]``: lxt's framework reads gradient x output as relevance,
    so the relevance at the logits is one_hot(targets), as in the other LRP references (lxt's ``y[t].backward()``
    would start from the logit's value). ``model`` is restored on return (pass a copy if its parameters matter)."""
    composite = gamma_identity_composite(kind, gamma)
    with lxt_zennit_patched():
        composite.register(model)
        try:
            with lxt_patched(model):
                xx = x.detach().clone().requires_grad_(True)
                y = model(xx)
                seed = nn.functional.one_hot(targets, y.shape[1]).to(y.dtype) / y.detach().gather(1, targets[:, None])
                (grad,) = torch.autograd.grad(y, xx, seed)
        finally:
            composite.remove()
    return y.detach(), (xx * grad).detach()


# the same rules read as explicit LRP (relevance, not gradient, flows backwards): a cross-check of the lxt reference
# and a measure of its stabilizer convention (see tests/fixtures/README.md, "lrp_gamma_identity")

class _LayerScaleIdentity(torch.autograd.Function):
    """``scale * x`` (ConvNeXt's layer scale) whose backward passes relevance unchanged (identity rule)."""

    @staticmethod
    def forward(ctx, scale, x):
        return scale * x

    @staticmethod
    def backward(ctx, relevance):
        return None, relevance


class _UniformProduct(torch.autograd.Function):
    """``scale * x`` (a squeeze-excitation gate [B, C, 1, 1] times its input) whose backward gives each factor half the
    relevance (the gate's half summed over the positions it scales): AttnLRP's uniform rule."""

    @staticmethod
    def forward(ctx, scale, x):
        return scale * x

    @staticmethod
    def backward(ctx, relevance):
        return relevance.sum(dim=(2, 3), keepdim=True) / 2, relevance / 2


class _LayerNormIdentity(torch.autograd.Function):
    """A LayerNorm with its standard deviation held constant, relevance through its remaining linear map as in the
    epsilon rule: R_in = x * J^T (R / stabilize(y, stabilizer))."""

    @staticmethod
    def forward(ctx, x, fn, stabilizer):
        ctx.fn, ctx.stabilizer = fn, stabilizer
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, relevance):
        from zennit.core import stabilize
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_()
            y = ctx.fn(xx)
            (grad,) = torch.autograd.grad(y, xx, relevance / stabilize(y.detach(), ctx.stabilizer))
        return x * grad, None, None


class _PassNonzero(Hook):
    """zennit's Pass, except that relevance stops where the module's input is exactly 0 (what lxt's identity rule
    does there in the Gradient*Input framework: input x gradient = 0)."""

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input

    def backward(self, module, grad_input, grad_output):
        return (grad_output[0] * (self.stored_tensors["input"][0] != 0),)

    def copy(self):
        return _PassNonzero()


def explicit_gamma_identity(kind, model, x, targets, stabilizer=1e-6, zero_input_stops=False, gamma=GAMMA_IDENTITY):
    """The rules of lrp_gamma_identity as explicit LRP on zennit hooks (relevance one_hot(targets) at the logits):
    Gamma(gamma) (stabilizer 1e-6) on Conv2d / Linear, Pass on activations and BatchNorm, Norm(stabilizer) on Sum
    and average pools, the LayerNorm identity of _LayerNormIdentity(stabilizer), ConvNeXt's layer scale the
    identity, the squeeze-excitation product uniform, everything else the gradient. ``zero_input_stops``: Pass
    stops at exactly-zero inputs (_PassNonzero). With stabilizer 1e-10 and zero_input_stops this equals
    lrp_gamma_identity (lxt's 1e-10 in its identity rule and zennit patch) up to rounding; returns the relevance.
    ``model`` is modified (pass a copy)."""
    from lxt.efficient.patches import layer_norm_forward
    from zennit.rules import Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm

    passing = _PassNonzero() if zero_input_stops else Pass()
    layer_map = [(Activation, passing), (BatchNorm, passing), (Sum, Norm(stabilizer=stabilizer)),
                 (AvgPool, Norm(stabilizer=stabilizer)), (nn.Conv2d, Gamma(gamma=gamma)),
                 (nn.Linear, Gamma(gamma=gamma))]
    composite = LayerMapComposite(layer_map=layer_map, canonizers=make_canonizers(kind))
    composite.register(model)

    def cnblock_forward(self, input):
        branch = self.stochastic_depth(_LayerScaleIdentity.apply(self.layer_scale, self.block(input)))
        return self.canonizer_sum(torch.stack([input, branch], dim=-1))

    def se_forward(self, input):
        return _UniformProduct.apply(self._scale(input), input)

    def layer_norm2d_forward(self, x):
        return _LayerNormIdentity.apply(x, _lxt_layer_norm2d_forward.__get__(self), stabilizer)

    def layer_norm_identity_forward(self, x):
        return _LayerNormIdentity.apply(x, layer_norm_forward.__get__(self), stabilizer)

    try:
        for module in model.modules():
            forward = {CNBlock: cnblock_forward, SqueezeExcitation: se_forward, LayerNorm2d: layer_norm2d_forward,
                       nn.LayerNorm: layer_norm_identity_forward}.get(type(module))
            if forward is not None:
                module.forward = types.MethodType(forward, module)
        xx = x.detach().clone().requires_grad_(True)
        y = model(xx)
        (relevance,) = torch.autograd.grad(y, xx, nn.functional.one_hot(targets, y.shape[1]).to(y.dtype))
    finally:
        composite.remove()
    return relevance.detach()

