//! torchvision's EfficientNet (B0..B7) and EfficientNetV2 (S, M, L).
//!
//! `features.0`: Conv2dNormActivation (3x3 stride 2, BN, SiLU). `features.1..=K`: one
//! `nn.Sequential` per stage of torchvision's table, of `MBConv` blocks (`features.S.B.block`:
//! an optional 1x1 expansion `block.0`, the depthwise `block.k`, squeeze-and-excitation
//! `block.k+1` (`avgpool`, `fc1`, SiLU `activation`, `fc2`, Sigmoid `scale_activation`, and the
//! product `block.k+1.mul`, which also answers to `block.k+1`), the 1x1 projection `block.k+2`
//! without activation) or, in V2's first stages, `FusedMBConv` blocks (a k x k expansion
//! `block.0`, a 1x1 projection `block.1`; or a single k x k `block.0`). Blocks of stride 1 with
//! equal input and output widths pass `stochastic_depth` (the identity in eval) and add their
//! input (`features.S.B.add`). Then the 1x1 Conv2dNormActivation head `features.K+1`,
//! `avgpool`, `flatten`, `classifier.0` Dropout, `classifier.1` Linear.
//! Depths, kernels and strides come from torchvision's tables (V1 scaled by its depth
//! multiplier, as torchvision rounds it), widths from the weights; BatchNorm eps is 1e-5 for
//! B0..B4 and 1e-3 for B5..B7 and V2, as torchvision builds them.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

/// One stage of torchvision's table: (fused, kernel, first stride, blocks).
type Stage = (bool, usize, usize, usize);

/// B0's stages; B1..B7 scale the block counts by their depth multiplier.
const V1_STAGES: [Stage; 7] = [
    (false, 3, 1, 1),
    (false, 3, 2, 2),
    (false, 5, 2, 2),
    (false, 3, 2, 3),
    (false, 5, 1, 3),
    (false, 5, 2, 4),
    (false, 3, 1, 1),
];
const V1_DEPTH: [(&str, f64); 8] = [
    ("efficientnet_b0", 1.0),
    ("efficientnet_b1", 1.1),
    ("efficientnet_b2", 1.2),
    ("efficientnet_b3", 1.4),
    ("efficientnet_b4", 1.8),
    ("efficientnet_b5", 2.2),
    ("efficientnet_b6", 2.6),
    ("efficientnet_b7", 3.1),
];
const V2_S: [Stage; 6] = [
    (true, 3, 1, 2),
    (true, 3, 2, 4),
    (true, 3, 2, 4),
    (false, 3, 2, 6),
    (false, 3, 1, 9),
    (false, 3, 2, 15),
];
const V2_M: [Stage; 7] = [
    (true, 3, 1, 3),
    (true, 3, 2, 5),
    (true, 3, 2, 5),
    (false, 3, 2, 7),
    (false, 3, 1, 14),
    (false, 3, 2, 18),
    (false, 3, 1, 5),
];
const V2_L: [Stage; 7] = [
    (true, 3, 1, 4),
    (true, 3, 2, 7),
    (true, 3, 2, 7),
    (false, 3, 2, 10),
    (false, 3, 1, 19),
    (false, 3, 2, 25),
    (false, 3, 1, 7),
];

/// The head's width (4x the last stage's), which tells B1 and B2 apart: their rounded
/// depths are equal.
const V1_HEAD_WIDTH: [(&str, usize); 8] = [
    ("efficientnet_b0", 1280),
    ("efficientnet_b1", 1280),
    ("efficientnet_b2", 1408),
    ("efficientnet_b3", 1536),
    ("efficientnet_b4", 1792),
    ("efficientnet_b5", 2048),
    ("efficientnet_b6", 2304),
    ("efficientnet_b7", 2560),
];

/// The torchvision name of a state dict that fits `arch`'s depths: among the variants with
/// those depths, the one with its head's width; other widths keep `arch`.
pub(super) fn variant(arch: &str, state: &StateDict) -> Option<String> {
    let (stages, _) = table(arch)?;
    let head = state
        .shape(&format!("features.{}.0.weight", stages.len() + 1))
        .and_then(|s| s.first().copied())?;
    V1_HEAD_WIDTH
        .iter()
        .find(|&&(name, width)| width == head && table(name).is_some_and(|(s, _)| s == stages))
        .map(|(name, _)| name.to_string())
}

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    V1_DEPTH
        .iter()
        .map(|(name, _)| *name)
        .chain(["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"])
}

/// The stages and BatchNorm eps of `arch`.
fn table(arch: &str) -> Option<(Vec<Stage>, f64)> {
    if let Some(&(_, depth)) = V1_DEPTH.iter().find(|(name, _)| *name == arch) {
        let stages = V1_STAGES
            .iter()
            .map(|&(fused, k, s, n)| (fused, k, s, (n as f64 * depth).ceil() as usize))
            .collect();
        let eps = if depth > 2.0 { 1e-3 } else { 1e-5 };
        return Some((stages, eps));
    }
    let stages = match arch {
        "efficientnet_v2_s" => V2_S.to_vec(),
        "efficientnet_v2_m" => V2_M.to_vec(),
        "efficientnet_v2_l" => V2_L.to_vec(),
        _ => return None,
    };
    Some((stages, 1e-3))
}

pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    let (stages, eps) = table(arch)?;
    let mut b = Builder::new();
    b.conv_norm_act("features.0", 3, 2, 1, eps, Some(OpSpec::SiLU));
    let mut width = state.shape("features.0.0.weight").and_then(|s| s.first().copied());
    for (s, &(fused, kernel, stride, blocks)) in stages.iter().enumerate() {
        let stage = format!("features.{}", s + 1);
        for i in 0..blocks {
            let p = format!("{stage}.{i}");
            let stride = if i == 0 { stride } else { 1 };
            let block = Block { kernel, stride, eps };
            let input = b.last();
            let out_width = if fused {
                block.fused(&mut b, &p, state)
            } else {
                block.mbconv(&mut b, &p, state)
            };
            // A stage's later blocks keep its width; the weights say so for the first.
            let same_width = match (width, out_width) {
                (Some(a), Some(c)) => a == c,
                _ => i > 0,
            };
            width = out_width;
            if stride == 1 && same_width {
                let branch = b.last();
                b.node(&format!("{p}.stochastic_depth"), OpSpec::StochasticDepth).inputs = Some(vec![branch]);
                let skip = b.last();
                b.add(&format!("{p}.add"), [&input, &skip]);
            }
            b.alias_last([p]);
        }
        b.alias_last([stage]);
    }
    let head = format!("features.{}", stages.len() + 1);
    b.conv_norm_act(&head, 1, 1, 1, eps, Some(OpSpec::SiLU));
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.dropout("classifier.0");
    b.linear("classifier.1");
    Some(b.finish(&head))
}

struct Block {
    kernel: usize,
    stride: usize,
    eps: f64,
}

impl Block {
    /// MBConv `p`; returns its output width when the weights tell it.
    fn mbconv(&self, b: &mut Builder, p: &str, state: &StateDict) -> Option<usize> {
        let dim = |name: String, axis: usize| state.shape(&name).and_then(|s| s.get(axis).copied());
        // The expansion is there when block.0 is a 1x1 convolution feeding a depthwise one.
        let expand = dim(format!("{p}.block.0.0.weight"), 1).is_some_and(|c| c != 1);
        let mut k = 0;
        if expand {
            b.conv_norm_act(&format!("{p}.block.0"), 1, 1, 1, self.eps, Some(OpSpec::SiLU));
            k = 1;
        }
        let depthwise = format!("{p}.block.{k}");
        let hidden = dim(format!("{depthwise}.0.weight"), 0).unwrap_or(1);
        b.conv_norm_act(
            &depthwise,
            self.kernel,
            self.stride,
            hidden,
            self.eps,
            Some(OpSpec::SiLU),
        );
        b.squeeze_excitation(&format!("{p}.block.{}", k + 1), OpSpec::SiLU, OpSpec::Sigmoid);
        let project = format!("{p}.block.{}", k + 2);
        b.conv_norm_act(&project, 1, 1, 1, self.eps, None);
        dim(format!("{project}.0.weight"), 0)
    }

    /// FusedMBConv `p`; returns its output width when the weights tell it.
    fn fused(&self, b: &mut Builder, p: &str, state: &StateDict) -> Option<usize> {
        let dim = |name: String| state.shape(&name).and_then(|s| s.first().copied());
        b.conv_norm_act(
            &format!("{p}.block.0"),
            self.kernel,
            self.stride,
            1,
            self.eps,
            Some(OpSpec::SiLU),
        );
        let project = format!("{p}.block.1");
        if state.contains(&format!("{project}.0.weight")) {
            b.conv_norm_act(&project, 1, 1, 1, self.eps, None);
            return dim(format!("{project}.0.weight"));
        }
        dim(format!("{p}.block.0.0.weight"))
    }
}
