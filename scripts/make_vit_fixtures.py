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

The torchvision model's file (``vit_w128_d2_8``) also holds two LRP references computed with lxt 2.1's own rule
functions in its Gradient x Input framework: the attribution is input x gradient, the gradient seeded at the logits
with ``one_hot(target) / logit[target]`` (lxt reads gradient x output as relevance, so the relevance at the logits is
one_hot(target), as in scripts/xai_reference.py's lrp_gamma_identity). Both are in the float64 pass too.

* ``lrp_cp``: lxt's shipped recipe for torchvision's ViT, CP-LRP (``lxt.efficient.monkey_patch(vision_transformer)``,
  the ``cp_LRP`` map of lxt/efficient/models/vit_torch.py, plus ``monkey_patch_zennit``): nn.GELU ->
  ``non_linear_forward`` (identity rule), nn.LayerNorm -> ``layer_norm_forward`` (std detached),
  nn.MultiheadAttention -> ``cp_multi_head_attention_forward`` (query and key detached: the attention weights are
  constants, relevance flows through the values only); zennit ``Gamma(CONV_GAMMA)`` on nn.Conv2d and
  ``Gamma(LINEAR_GAMMA)`` on nn.Linear (stabilizer 1e-6). The attention's in-projection and out_proj are applied
  functionally by torch (``F.multi_head_attention_forward``), so no zennit rule reaches them: they take the plain
  gradient (LRP-0); asserted. The monkey patches are class-level; they are undone after each use (lxt_cp_patched).
* ``lrp_attn``: AttnLRP (lxt ships it for Hugging Face models only) with the same lxt functions on torchvision's ViT,
  instance-level (attn_lrp_patched): each EncoderBlock's nn.MultiheadAttention written out (explicit_attention:
  q, k, v from in_proj, heads split, ``divide_gradient(q, 4)``, ``divide_gradient(k, 4)``, ``divide_gradient(v, 2)``
  as in lxt's ``wrap_attention_forward``, softmax(q k^T / sqrt(head_dim)) v, heads merged, out_proj), nn.LayerNorm
  -> ``layer_norm_forward``, nn.GELU -> ``identity_rule_implicit``; every Linear and the patch convolution the plain
  gradient (LRP-0). The explicit attention without the rules is checked against torchvision's logits.

Every model's file also holds four attention-map references ([N, 1, 64, 64], in the float64 pass too), computed from
each block's attention probabilities A_l = softmax(q k^T / sqrt(64)) [N, 2, T, T] (T = 64 patches + the learned
tokens: 1, or 2 for the distilled DeiT, whose class and distillation tokens are both dropped from the read-out):

* ``rollout_min_0_9``, ``rollout_mean_0``, ``rollout_max_0_5``: pnpxai's ``AttentionRollout`` (head fusion min / mean /
  max, discard ratio 0.9 / 0 / 0.5; ROLLOUT_SEMANTICS), reimplemented in torch: per block fuse the heads, zero the
  int(T*T*ratio) smallest entries per sample (topk) and restore entry [0, 0], 0.5 * A + 0.5 * I, rows normalised,
  rollout = rollout @ A; the class token's row over the patches, 8x8, bilinear (align_corners=False) to 64x64. The
  discard is checked for ties (the k-th and (k+1)-th smallest differ) and to zero the same entries in float64.
* ``generic_attention``: Chefer et al. 2021 (Transformer-MM-Explainability's ViT ``generate_relevance``): G_l the
  gradient of sum_i logits[i, target[i]] with respect to A_l, R = I, R += mean_heads(clamp(G_l * A_l, 0)) @ R per
  block, read out and upsampled as the rollout; without the reference's [0, 1] display normalisation.

The maps are captured (ATTENTION_CAPTURE) as the tensors multiplied into the values: torchvision through
explicit_attention without the lxt rules (a sink list), timm with ``attn.fused_attn = False`` and a forward hook on
``attn.attn_drop``, Hugging Face (eager attention) with a forward hook on each ``ViTSelfAttention`` (its output[1]);
each capture is checked to give probabilities (rows summing to 1) and the model's logits.

Writes ``<arch>_refs.safetensors`` per model, named by the architecture candle-xai recognises it as
(``vit_w128_d2_8``, ``timm_deit_w128_d2_distilled_patch8_64``, ``hf_vit_w128_d2_patch8_64``), with
``__metadata__``: ``arch``, ``weights`` (the seeded-weights list of scripts/xai_reference.py, state_dict order),
``f64_rel_err``, ``attention_rollout`` (JSON: the variants' head fusion and discard ratio, learned_tokens, the
capture, the semantics), ``generic_attention`` (in words) and the versions; for ``vit_w128_d2_8`` also ``lrp_cp_rules``, ``lrp_attn_rules`` (what was computed,
in words), ``lxt`` and ``zennit``. The script also prints each LRP reference's relevance sums on a bias-free copy of
the model (every Linear / Conv2d / in-projection / LayerNorm bias 0; class token and position embedding kept, their
relevance printed too) and their float32-vs-float64 errors.
"""

import argparse
import contextlib
import copy
import functools
import json
import os
import sys
import types
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (inputs, targets and captum references: defined once)
from xai_reference import f32, weights_from_spec  # noqa: E402

IMAGE, PATCH, WIDTH, DEPTH, HEADS, MLP = 64, 8, 128, 2, 2, 256
LRP_ARCH = "vit_w128_d2_8"  # the model that gets lrp_cp / lrp_attn
CONV_GAMMA, LINEAR_GAMMA = 0.25, 0.05  # lrp_cp's zennit Gamma on the patch convolution / on the nn.Linear modules


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


def cam_layer(model):
    """pytorch-grad-cam's ViT target layer: the last block's first LayerNorm."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "encoder") and hasattr(inner.encoder, "layers"):  # torchvision
        return inner.encoder.layers[-1].ln_1, f"encoder.layers.encoder_layer_{DEPTH - 1}.ln_1"
    if hasattr(inner, "blocks"):  # timm
        return inner.blocks[-1].norm1, f"blocks.{DEPTH - 1}.norm1"
    return inner.vit.encoder.layer[-1].layernorm_before, f"vit.encoder.layer.{DEPTH - 1}.layernorm_before"


def block_layer(model):
    """The first encoder block, whose output (both residuals added) layer attribution is checked at, and its name."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "encoder") and hasattr(inner.encoder, "layers"):  # torchvision
        return inner.encoder.layers[0], "encoder.layers.encoder_layer_0"
    if hasattr(inner, "blocks"):  # timm
        return inner.blocks[0], "blocks.0"
    return inner.vit.encoder.layer[0], "vit.encoder.layer.0"


def grad_cam_refs(model, x, t, out):
    """Grad-CAM with pytorch-grad-cam's ViT recipe: the layer's tokens [N, T, D] without the learned ones
    (``reshape_transform``: tokens[:, k:] to [N, h, w, D], channels first), channel weights the spatial mean of the
    target's gradient, the weighted channel sum (``gradcam``), ReLU'd (``gradcam_relu``), upsampled bilinearly
    (align_corners=False) to the input (``gradcam_relu_upsampled``); pytorch-grad-cam's own min-max scaling is a
    display step and left out, as captum's LayerGradCam leaves it."""
    layer, _ = cam_layer(model)
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    xx = x.clone().requires_grad_(True)
    logits = model(xx)
    hook.remove()
    tokens = seen["a"]
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), tokens)
    side = int(round((tokens.shape[1]) ** 0.5 - 0.5))
    while (side + 1) ** 2 <= tokens.shape[1]:
        side += 1
    learned = tokens.shape[1] - side * side

    def grid(z):
        return z[:, learned:].reshape(z.shape[0], side, side, z.shape[2]).permute(0, 3, 1, 2)

    a, g = grid(tokens.detach()), grid(grad)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    out["gradcam"] = cam.detach()
    out["gradcam_relu"] = torch.relu(cam).detach()
    out["gradcam_relu_upsampled"] = torch.nn.functional.interpolate(
        out["gradcam_relu"], size=x.shape[2:], mode="bilinear", align_corners=False)


# ---- attention maps: pnpxai's AttentionRollout, Chefer et al. 2021's generic attention (gradient-weighted)

ROLLOUT_VARIANTS = {  # key: (head fusion, discard ratio)
    "rollout_min_0_9": ("min", 0.9),  # pnpxai's defaults
    "rollout_mean_0": ("mean", 0.0),
    "rollout_max_0_5": ("max", 0.5),
}
ROLLOUT_SEMANTICS = (
    "pnpxai AttentionRollout semantics: per block (first first) the attention probabilities [N, heads, T, T] fused "
    "over heads (min / max / mean), per sample the int(T*T*discard_ratio) smallest of the T*T fused entries set to 0 "
    "(topk, largest=False) with entry [0, 0] then restored, 0.5 * fused + 0.5 * I, rows normalised to sum 1, rollout "
    "= rollout @ fused from I; the class token's row (token 0) over the patch tokens (the learned tokens dropped: "
    "pnpxai drops token 0 only, here all learned_tokens, i.e. also DeiT's distillation token) viewed 8x8 and "
    "upsampled to 64x64 by F.interpolate(mode='bilinear', align_corners=False); no normalisation.")
GENERIC_ATTENTION = (
    "Chefer et al. 2021 generic attention (Transformer-MM-Explainability ViT generate_relevance): G_l = d(sum_i "
    "logits[i, target[i]]) / dA_l for each block's attention probabilities A_l, R = I, per block (first first) R = R + "
    "mean_heads(clamp(G_l * A_l, min=0)) @ R, the class token's row R[:, 0, learned_tokens:] viewed 8x8 and upsampled "
    "to 64x64 by F.interpolate(mode='bilinear', align_corners=False); the reference's [0, 1] min-max display "
    "normalisation is left out.")
ATTENTION_CAPTURE = {
    "torchvision": "each nn.MultiheadAttention replaced by explicit_attention without lxt rules (attn_lrp_patched("
                   "rules=False)), which appends softmax(q k^T / sqrt(64)), the tensor multiplied into v",
    "timm": "every block's attn.fused_attn = False (timm's explicit path), forward hook on attn.attn_drop (eval "
            "dropout, identity): its output, the softmax probabilities multiplied into v",
    "hf": "attn_implementation='eager'; forward hook on each ViTSelfAttention (vit.encoder.layer[i].attention."
          "attention): output[1], eager_attention_forward's attn_weights, the tensor multiplied into the values (its "
          "attention dropout is functional, no module to hook); HF's eager softmax runs in float32, also in the "
          "float64 pass",
}


def library(model):
    inner = getattr(model, "model", model)
    if hasattr(inner, "encoder") and hasattr(inner.encoder, "layers"):
        return "torchvision"
    return "timm" if hasattr(inner, "blocks") else "hf"


@contextlib.contextmanager
def attention_capture(model):
    """Yields a list that each forward of ``model`` fills with its blocks' attention probabilities [N, heads, T, T]
    (first block first): the very tensors the values are multiplied by, so that autograd.grad against them is the
    gradient of the output with respect to the attention map (ATTENTION_CAPTURE)."""
    maps, handles, fused = [], [], []
    inner = getattr(model, "model", model)
    lib = library(model)
    with contextlib.ExitStack() as stack:
        if lib == "torchvision":
            stack.enter_context(attn_lrp_patched(model, rules=False, sink=maps))
        elif lib == "timm":
            for blk in inner.blocks:
                fused.append((blk.attn, blk.attn.fused_attn))
                blk.attn.fused_attn = False
                handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o)))
        else:
            assert inner.config._attn_implementation == "eager", inner.config._attn_implementation
            for layer in inner.vit.encoder.layer:
                handles.append(layer.attention.attention.register_forward_hook(lambda m, i, o: maps.append(o[1])))
        try:
            yield maps
        finally:
            for h in handles:
                h.remove()
            for attn, value in fused:
                attn.fused_attn = value


def attention_maps(model, x, t):
    """(A, G, learned tokens, logits error): each block's attention probabilities A_l [N, heads, T, T] and the
    gradient G_l of sum_i logits[i, t[i]] with respect to them. Checks that the captured tensors are probabilities
    (in [0, 1], rows summing to 1) and that the capturing forward reproduces the model's logits."""
    with torch.no_grad():
        reference = model(x)
    xx = x.detach().clone().requires_grad_(True)
    with attention_capture(model) as maps:
        logits = model(xx)
    assert len(maps) == DEPTH, len(maps)
    f64 = x.dtype == torch.float64
    err = ((logits.detach() - reference).abs().max() / reference.abs().max()).item()
    assert err < (1e-12 if f64 else 1e-5), f"capturing forward vs model: {err:.3g} relative"
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), maps)
    n, patches = x.shape[0], (IMAGE // PATCH) ** 2
    tokens = maps[0].shape[-1]
    learned = tokens - patches
    assert learned == (2 if library(model) == "timm" else 1), learned
    # HF's eager softmax is float32 even on the double model
    row_tol = 1e-6 if library(model) == "hf" or not f64 else 1e-12
    for a, g in zip(maps, grads):
        assert a.shape == (n, HEADS, tokens, tokens) and g.shape == a.shape and a.dtype == x.dtype, (a.shape, a.dtype)
        assert a.min() >= 0 and a.max() <= 1, (a.min(), a.max())
        assert (a.sum(-1) - 1).abs().max() < row_tol, (a.sum(-1) - 1).abs().max()
        assert g.abs().max() > 0
    return [a.detach() for a in maps], [g.detach() for g in grads], learned, err


def upsampled_cls_row(m, learned):
    """m [N, T, T] -> the class token's row over the patch tokens, 8x8, bilinearly upsampled to the input."""
    side = IMAGE // PATCH
    row = m[:, 0, learned:]
    return F.interpolate(row.reshape(m.shape[0], 1, side, side), size=(IMAGE, IMAGE), mode="bilinear",
                         align_corners=False)


def attention_rollout(maps, head_fusion, discard_ratio, learned, gaps=None, masks=None):
    """pnpxai AttentionRollout (ROLLOUT_SEMANTICS); appends to ``gaps``, per block, each sample's relative gap
    between the k-th and the (k+1)-th smallest fused entries ((v[k+1] - v[k]) / v[k+1]: the discard is ambiguous
    where it is 0), and to ``masks`` the discarded entries [N, T*T]; without them (None: scripts/bench_torch.py,
    which times the rollout alone) neither diagnostic is computed."""
    n, _, tokens, _ = maps[0].shape
    eye = torch.eye(tokens, dtype=maps[0].dtype).repeat(n, 1, 1)
    rollout = eye.clone()
    for a in maps:
        if head_fusion == "min":
            fused = a.min(dim=1).values
        elif head_fusion == "max":
            fused = a.max(dim=1).values
        else:
            fused = a.mean(dim=1)
        flat = fused.flatten(1).clone()
        k = int(flat.shape[1] * discard_ratio)
        if k > 0:
            if gaps is not None:
                ordered = flat.sort(dim=-1).values
                gaps.append(((ordered[:, k] - ordered[:, k - 1]) / ordered[:, k]).tolist())
            first = flat[:, 0].clone()
            _, indices = flat.topk(k=k, dim=-1, largest=False)
            if masks is not None:
                mask = torch.zeros_like(flat, dtype=torch.bool)
                mask[torch.arange(n)[:, None], indices] = True
                masks.append(mask)
            flat[torch.arange(n)[:, None], indices] = 0.0
            flat[:, 0] = first
        fused = flat.view(n, tokens, tokens)
        fused = 0.5 * fused + 0.5 * eye
        fused = fused / fused.sum(dim=-1, keepdim=True)
        rollout = torch.matmul(rollout, fused)
    return upsampled_cls_row(rollout, learned)


def generic_attention(maps, grads, learned):
    """Chefer et al. 2021's generate_relevance (GENERIC_ATTENTION), batched."""
    n, _, tokens, _ = maps[0].shape
    r = torch.eye(tokens, dtype=maps[0].dtype).repeat(n, 1, 1)
    for a, g in zip(maps, grads):
        cam = (g * a).clamp(min=0).mean(dim=1)
        r = r + torch.matmul(cam, r)
    return upsampled_cls_row(r, learned)


def attention_refs(model, x, t, out, diag):
    maps, grads, learned, err = attention_maps(model, x, t)
    diag["learned_tokens"], diag["capture_logits_err"] = learned, err
    for key, (fusion, ratio) in ROLLOUT_VARIANTS.items():
        gaps = diag.setdefault("discard_gaps", {}).setdefault(key, [])
        masks = diag.setdefault("discard_masks", {}).setdefault(key, [])
        out[key] = attention_rollout(maps, fusion, ratio, learned, gaps, masks)
        assert all(g > 0 for per_block in gaps for g in per_block), f"{key}: tie at the discard boundary {gaps}"
    out["generic_attention"] = generic_attention(maps, grads, learned)


def references(model, x, t, diag=None):
    out = {}
    out["saliency"] = mf.Saliency(model).attribute(x, target=t, abs=False).detach()
    out["saliency_abs"] = mf.Saliency(model).attribute(x, target=t, abs=True).detach()
    out["input_x_gradient"] = mf.InputXGradient(model).attribute(x, target=t).detach()
    mf.smoothgrad_refs(model, x, t, out)
    mf.ig_refs(model, x, t, out)
    grad_cam_refs(model, x, t, out)
    mf.layer_attribution_refs(model, block_layer(model)[0], x, t, out)
    attention_refs(model, x, t, out, {} if diag is None else diag)
    return out


# ---- LRP references of the torchvision ViT (LRP_ARCH), lxt 2.1's rules in its Gradient x Input framework

LRP_CP_RULES = (
    "CP-LRP, lxt 2.1's shipped recipe for torchvision ViT: lxt.efficient.monkey_patch(torchvision.models."
    "vision_transformer) (the cp_LRP map of lxt/efficient/models/vit_torch.py, class-level) and lxt monkey_patch_zennit, "
    f"zennit LayerMapComposite([(nn.Conv2d, Gamma({CONV_GAMMA})), (nn.Linear, Gamma({LINEAR_GAMMA}))]), stabilizer 1e-6. "
    "Rules: conv_proj (patch embedding) zennit Gamma(0.25); every nn.Linear module that is called (each MLP's two "
    "Linear layers, heads.head) zennit Gamma(0.05), in lxt's patched hook (relevance in = gradient x module output, "
    "gradient out = zennit relevance / stabilize(module input, 1e-10)); nn.GELU lxt non_linear_forward (identity rule: "
    "gradient x gelu(x) / (x + 1e-10)); nn.LayerNorm (ln_1, ln_2, encoder.ln) lxt layer_norm_forward ((x - mean) / "
    "detach(sqrt(var + eps)) * weight + bias, the mean keeps its gradient); nn.MultiheadAttention lxt "
    "cp_multi_head_attention_forward (query and key inputs detached, so softmax(q k^T / sqrt(64)) is a constant and "
    "the gradient flows through value = in_proj's V rows, then out_proj). The attention's in_proj (V part) and out_proj "
    "are applied functionally inside torch's multi_head_attention_forward, so zennit's Gamma hooks (registered on "
    "out_proj) never fire: they take the plain gradient (LRP-0). Class-token concatenation, position-embedding add, "
    "residual adds, class-token selection and the (p = 0, eval) dropouts: plain gradient. Attribution = input x "
    "gradient at the pixels, gradient seed one_hot(target) / logit[target] (relevance one_hot(target) at the logits).")

LRP_ATTN_RULES = (
    "AttnLRP with lxt 2.1's rule functions applied to torchvision's ViT (instance-level patches): each EncoderBlock's "
    "nn.MultiheadAttention replaced by explicit attention: q, k, v = F.linear(x, in_proj_weight, in_proj_bias) split "
    "in three, heads split [B, 2, N, 64], lxt divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2) (as "
    "lxt's wrap_attention_forward for Hugging Face models: the uniform rule on both matmuls), scores = q @ k^T * 64^-0.5, "
    "softmax over the last axis (plain gradient), @ v, heads merged, out_proj (plain gradient); nn.LayerNorm (ln_1, ln_2, "
    "encoder.ln) lxt layer_norm_forward (std detached, mean keeps its gradient); nn.GELU lxt identity_rule_implicit "
    "(gradient x gelu(x) / (x + 1e-10)); every nn.Linear (MLP, heads.head), the attention projections and conv_proj "
    "(patch embedding): plain gradient (LRP-0, i.e. epsilon 0, no zennit); class-token concatenation, position-embedding "
    "add, residual adds, class-token selection and the (p = 0, eval) dropouts: plain gradient. Attribution = input x "
    "gradient at the pixels, gradient seed one_hot(target) / logit[target] (relevance one_hot(target) at the logits).")

_MISSING = object()


@contextlib.contextmanager
def class_attributes_restored(targets):
    """Saves ``cls.__dict__[name]`` for each (cls, name) and restores it (or deletes it, where it was absent) on exit:
    lxt's monkey patches replace methods of the classes themselves (nn.GELU, nn.LayerNorm, nn.MultiheadAttention,
    zennit's BasicHook), for every model in the process."""
    saved = [(cls, name, cls.__dict__.get(name, _MISSING)) for cls, name in targets]
    try:
        yield
    finally:
        for cls, name, value in saved:
            if value is _MISSING:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, value)


def lrp_seeded(model, x, t, extra=()):
    """lxt's Gradient x Input read-out: (logits, [input x gradient, and parameter x gradient for each of ``extra``]),
    the gradient seeded with one_hot(t) / logit[t], so that the relevance at the logits is one_hot(t)."""
    xx = x.detach().clone().requires_grad_(True)
    y = model(xx)
    seed = F.one_hot(t, y.shape[1]).to(y.dtype) / y.detach().gather(1, t[:, None])
    grads = torch.autograd.grad(y, (xx, *extra), seed)
    return y.detach(), [(v * g).detach() for v, g in zip((xx, *extra), grads)]


def lrp_cp(model, x, t, extra=()):
    """CP-LRP, lxt's recipe for torchvision's ViT (LRP_CP_RULES), patched for this call only; returns lrp_seeded's
    (logits, relevances). Asserts which nn.Linear / nn.Conv2d modules ran (and so met a zennit rule): the attention's
    out_proj never does (torch applies its weight functionally)."""
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.models.vit_torch import cp_LRP
    from lxt.efficient.patches import cp_multi_head_attention_forward, layer_norm_forward, non_linear_forward
    from torchvision.models import vision_transformer
    from zennit.composites import LayerMapComposite
    from zennit.core import BasicHook
    from zennit.rules import Gamma

    assert set(cp_LRP) == {nn.GELU, nn.LayerNorm, nn.MultiheadAttention}, cp_LRP
    targets = [(cls, n) for cls in cp_LRP for n in ("forward", "original_forward")]
    targets += [(BasicHook, "forward"), (BasicHook, "backward")]
    with class_attributes_restored(targets):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # lxt warns and skips where a class is patched already
            monkey_patch(vision_transformer)
            monkey_patch_zennit()
        assert (nn.GELU.forward is non_linear_forward and nn.LayerNorm.forward is layer_norm_forward
                and nn.MultiheadAttention.forward is cp_multi_head_attention_forward)
        composite = LayerMapComposite([(nn.Conv2d, Gamma(CONV_GAMMA)), (nn.Linear, Gamma(LINEAR_GAMMA))])
        composite.register(model)
        ran = []
        handles = [m.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
                   for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            result = lrp_seeded(model, x, t, extra)
        finally:
            composite.remove()
            for h in handles:
                h.remove()
    assert nn.LayerNorm.forward is not layer_norm_forward and "original_forward" not in nn.GELU.__dict__
    expected = ["conv_proj"] + [f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in range(DEPTH) for j in (0, 3)]
    assert ran == expected + ["heads.head"], ran
    return result


def explicit_attention(self, query, key, value, need_weights=False, rules=True, sink=None):
    """torchvision's self-attention (nn.MultiheadAttention, batch_first, no mask, dropout 0) written out; with
    ``rules`` lxt's AttnLRP gradient corrections on q, k and v (wrap_attention_forward's factors); ``sink`` (a list)
    receives the attention probabilities softmax(q k^T / sqrt(head_dim)) [B, heads, N, N], the tensor multiplied
    into v."""
    from lxt.efficient.rules import divide_gradient

    assert query is key and key is value and not need_weights and self.batch_first and self._qkv_same_embed_dim
    b, n, e = query.shape
    h = self.num_heads
    d = e // h
    q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, n, h, d).transpose(1, 2) for z in (q, k, v))
    if rules:
        q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    scores = q @ k.transpose(-2, -1) * d ** -0.5
    probs = scores.softmax(dim=-1)
    if sink is not None:
        sink.append(probs)
    out = (probs @ v).transpose(1, 2).reshape(b, n, e)
    return self.out_proj(out), None


@contextlib.contextmanager
def attn_lrp_patched(model, rules=True, sink=None):
    """Instance-level patches (undone on exit): every nn.MultiheadAttention -> explicit_attention(rules, sink); with
    ``rules`` also every nn.LayerNorm -> lxt layer_norm_forward, every nn.GELU -> lxt identity_rule_implicit."""
    from lxt.efficient.patches import layer_norm_forward
    from lxt.efficient.rules import identity_rule_implicit

    patched = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            forward = types.MethodType(functools.partial(explicit_attention, rules=rules, sink=sink), module)
        elif rules and isinstance(module, nn.LayerNorm):
            forward = types.MethodType(layer_norm_forward, module)
        elif rules and isinstance(module, nn.GELU):
            forward = functools.partial(identity_rule_implicit, module.forward)
        else:
            continue
        module.forward = forward
        patched.append(type(module).__name__)
    assert patched.count("MultiheadAttention") == DEPTH, patched
    if rules:
        assert patched.count("LayerNorm") == 2 * DEPTH + 1 and patched.count("GELU") == DEPTH, patched
    try:
        yield model
    finally:
        for module in model.modules():
            module.__dict__.pop("forward", None)


def lrp_attn(model, x, t, extra=()):
    """AttnLRP with lxt's functions on torchvision's ViT (LRP_ATTN_RULES); returns lrp_seeded's (logits, relevances).
    First checks that the written-out attention alone reproduces torchvision's logits (float64: 1e-12, float32: 1e-5
    of max|logit|), both those of torch's inference fast path (no gradient: _native_multi_head_attention) and those of
    its differentiable path (F.multi_head_attention_forward)."""
    with torch.no_grad():
        reference = model(x)
        with attn_lrp_patched(model, rules=False):
            explicit = model(x)
    reference_grad = model(x.detach().clone().requires_grad_(True)).detach()
    tol = 1e-12 if x.dtype == torch.float64 else 1e-5
    for ref in (reference, reference_grad):
        err = ((explicit - ref).abs().max() / ref.abs().max()).item()
        assert err < tol, f"explicit attention vs torchvision: {err:.3g} relative"
    with attn_lrp_patched(model, rules=True):
        return lrp_seeded(model, x, t, extra)


LRP_REFERENCES = {"lrp_cp": lrp_cp, "lrp_attn": lrp_attn}


def lrp_refs(model, x, t, logits):
    out = {}
    for key, fn in LRP_REFERENCES.items():
        y, (rel,) = fn(model, x, t)
        # the patched LayerNorm computes its statistics itself: rounding only
        tol = 1e-12 if x.dtype == torch.float64 else 1e-5
        err = ((y - logits).abs().max() / logits.abs().max()).item()
        assert err < tol, f"{key}: patched forward vs logits {err:.3g}"
        assert torch.isfinite(rel).all(), key
        out[key] = rel
    return out


def lrp_conservation(model, x, t):
    """Each LRP reference on a bias-free copy (every parameter named *bias: Linear, Conv2d, the attention's in_proj
    and out_proj, LayerNorm; class token and position embedding kept): per row, sum of the pixel relevance and the
    relevance the class token and the position embedding absorb (parameter x gradient)."""
    nobias = copy.deepcopy(model)
    for name, p in nobias.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    extra = (nobias.class_token, nobias.encoder.pos_embedding)
    for p in extra:
        p.requires_grad_(True)
    res = {}
    for key, fn in LRP_REFERENCES.items():
        rows = []
        for i in range(x.shape[0]):  # one row at a time: the parameters' gradients sum over the batch
            _, rels = fn(nobias, x[i:i + 1], t[i:i + 1], extra)
            rows.append([r.sum().item() for r in rels])
        pixels, cls, pos = zip(*rows)
        res[key] = {"pixels": pixels, "class_token": cls, "pos_embedding": pos, "total": [sum(r) for r in rows]}
    return res


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
    diag32, diag64 = {}, {}
    out.update(references(model, x, t, diag32))
    with_lrp = arch == LRP_ARCH
    if with_lrp:
        out.update(lrp_refs(model, x, t, logits))

    model64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        out64 = {"logits": model64(x64)}
    out64.update(references(model64, x64, t, diag64))
    if with_lrp:
        out64.update(lrp_refs(model64, x64, t, out64["logits"]))
    f64_rel_err = mf.conditioning(out, out64)
    metadata = {
        "arch": arch,
        "weights": json.dumps(spec, separators=(",", ":")),
        "f64_rel_err": json.dumps(f64_rel_err, sort_keys=True),
        "torch": torch.__version__,
        "captum": mf.captum.__version__,
        "gradcam_layer": cam_layer(model)[1],
        "layer_attr_layer": block_layer(model)[1],
        "attention_rollout": json.dumps({
            "variants": {k: {"head_fusion": f, "discard_ratio": r} for k, (f, r) in ROLLOUT_VARIANTS.items()},
            "learned_tokens": diag32["learned_tokens"],
            "capture": ATTENTION_CAPTURE[library(model)],
            "semantics": ROLLOUT_SEMANTICS}, sort_keys=True),
        "generic_attention": GENERIC_ATTENTION,
    }
    if with_lrp:
        metadata.update({"lrp_cp_rules": LRP_CP_RULES, "lrp_attn_rules": LRP_ATTN_RULES,
                         "lxt": mf._dist_version("lxt"), "zennit": mf._dist_version("zennit")})
    tensors = {k: v.contiguous() for k, v in out.items()}
    path = os.path.join(outdir, f"{arch}_refs.safetensors")
    mf.save_safetensors_deterministic(tensors, path, metadata)
    worst = max(f64_rel_err.items(), key=lambda kv: kv[1][0])
    print(f"{arch}: logits {logits.abs().max().item():.2f}, worst float32 conditioning {worst}")
    print(f"   attention maps: {diag32['learned_tokens']} learned tokens, capturing forward vs logits "
          f"{diag32['capture_logits_err']:.3g} (float32) {diag64['capture_logits_err']:.3g} (float64)")
    for key in list(ROLLOUT_VARIANTS) + ["generic_attention"]:
        v = out[key]
        line = (f"   {key}: min {v.min().item():.4g} max {v.max().item():.4g}, float32 vs float64 {f64_rel_err[key]}")
        if diag32["discard_gaps"].get(key):
            same = all(torch.equal(a, b) for a, b in zip(diag32["discard_masks"][key], diag64["discard_masks"][key]))
            assert same, f"{key}: float32 and float64 discard different entries"
            line += (", smallest relative discard gap (v[k+1] - v[k]) / v[k+1] "
                     f"{min(min(g) for g in diag32['discard_gaps'][key]):.3g} (float32) "
                     f"{min(min(g) for g in diag64['discard_gaps'][key]):.3g} (float64), same entries discarded")
        print(line)
    if with_lrp:
        for key in LRP_REFERENCES:
            v = out[key]
            print(f"   {key}: max|R| {v.abs().max().item():.4g}, sum(R) per row "
                  f"{[round(s, 5) for s in v.sum(dim=(1, 2, 3)).tolist()]}, float32 vs float64 "
                  f"[max|d| / max|ref64|, ||d|| / ||ref64||] {f64_rel_err[key]}")
        conservation = lrp_conservation(model64, x64, t)
        for key, sums in conservation.items():
            print(f"   {key} on the bias-free model (float64), per row: " + ", ".join(
                f"{part} {[float(f'{s:.6g}') for s in vals]}" for part, vals in sums.items()))
        # CP-LRP is conservative once the biases are 0 (attention weights constant, Gamma and LayerNorm's identity
        # conservative): pixels + class token + position embedding = 1 up to the stabilizers (~1e-6). AttnLRP's softmax is not.
        assert all(abs(s - 1) < 1e-5 for s in conservation["lrp_cp"]["total"]), conservation["lrp_cp"]


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
