//! torchvision's ConvNeXt (Tiny, Small, Base, Large).
//!
//! `features.0`: the 4x4 stride-4 stem conv `features.0.0` and its LayerNorm2d `features.0.1`
//! (eps 1e-6). Stages `features.1, 3, 5, 7` of `CNBlock`s, downsampling `features.2, 4, 6`
//! in between (LayerNorm2d `.0`, 2x2 stride-2 conv `.1`). A CNBlock `features.S.B`: `block.0`
//! depthwise 7x7 conv, `block.1` Permute to NHWC, `block.2` LayerNorm (eps 1e-6) over the
//! channels, `block.3` Linear to 4x the width, `block.4` GELU, `block.5` Linear back,
//! `block.6` Permute to NCHW; then `layer_scale` (the block's learned [C, 1, 1] scale),
//! `stochastic_depth` (the identity in eval) and the residual sum `add`. Then `avgpool`,
//! `classifier.0` LayerNorm2d, `classifier.1` Flatten, `classifier.2` Linear. Block counts
//! come from torchvision's table; widths from the weights.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

const EPS: f64 = 1e-6;

/// Blocks per stage.
const DEPTHS: [(&str, [usize; 4]); 4] = [
    ("convnext_tiny", [3, 3, 9, 3]),
    ("convnext_small", [3, 3, 27, 3]),
    ("convnext_base", [3, 3, 27, 3]),
    ("convnext_large", [3, 3, 27, 3]),
];

/// The stem's width tells Small, Base and Large apart (their depths are equal).
const STEM_WIDTH: [(&str, usize); 4] = [
    ("convnext_tiny", 96),
    ("convnext_small", 96),
    ("convnext_base", 128),
    ("convnext_large", 192),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    DEPTHS.iter().map(|(name, _)| *name)
}

/// The torchvision name of a state dict that fits `arch`: Small, Base and Large share their
/// depths, so the first of them fits all three, and the stem's width names the variant. Other
/// widths keep the name whose depths fit.
pub(super) fn variant(arch: &str, state: &StateDict) -> String {
    let depths = DEPTHS.iter().find(|(name, _)| *name == arch).map(|(_, d)| d);
    let stem = state.shape("features.0.0.weight").and_then(|s| s.first().copied());
    STEM_WIDTH
        .iter()
        .find(|&&(name, width)| Some(width) == stem && DEPTHS.iter().any(|(n, d)| *n == name && Some(d) == depths))
        .map_or(arch, |(name, _)| name)
        .to_string()
}

pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    let &(_, depths) = DEPTHS.iter().find(|(name, _)| *name == arch)?;
    let mut b = Builder::new();
    b.conv("features.0.0", 4, 4, 0, 1);
    layer_norm_2d(&mut b, "features.0.1");
    b.alias_last(["features.0"]);
    for (s, &blocks) in depths.iter().enumerate() {
        if s > 0 {
            let down = format!("features.{}", 2 * s);
            layer_norm_2d(&mut b, &format!("{down}.0"));
            b.conv(&format!("{down}.1"), 2, 2, 0, 1);
            b.alias_last([down]);
        }
        let stage = format!("features.{}", 2 * s + 1);
        for i in 0..blocks {
            block(&mut b, &format!("{stage}.{i}"), state);
        }
        b.alias_last([stage]);
    }
    b.adaptive_avg_pool("avgpool", 1);
    layer_norm_2d(&mut b, "classifier.0");
    b.node("classifier.1", OpSpec::Flatten);
    b.linear("classifier.2");
    Some(b.finish("features.7"))
}

fn layer_norm_2d(b: &mut Builder, name: &str) {
    b.node(name, OpSpec::LayerNorm2d { eps: EPS });
}

fn block(b: &mut Builder, p: &str, state: &StateDict) {
    let input = b.last();
    let width = state.shape(&format!("{p}.block.0.weight")).map_or(1, |s| s[0]);
    b.conv(&format!("{p}.block.0"), 7, 1, 3, width);
    b.node(&format!("{p}.block.1"), OpSpec::Permute { dims: vec![0, 2, 3, 1] });
    b.node(
        &format!("{p}.block.2"),
        OpSpec::LayerNorm {
            eps: EPS,
            axis: crate::layers::NormAxis::Last,
        },
    );
    b.linear(&format!("{p}.block.3"));
    b.node(
        &format!("{p}.block.4"),
        OpSpec::GELU {
            approximate: Default::default(),
        },
    );
    b.linear(&format!("{p}.block.5"));
    b.node(&format!("{p}.block.6"), OpSpec::Permute { dims: vec![0, 3, 1, 2] });
    b.alias_last([format!("{p}.block")]);
    b.node(
        &format!("{p}.layer_scale"),
        OpSpec::LayerScale {
            tensor: "layer_scale".into(),
        },
    )
    .params = Some(p.to_string());
    b.node(&format!("{p}.stochastic_depth"), OpSpec::StochasticDepth);
    let branch = b.last();
    b.add(&format!("{p}.add"), [&input, &branch]);
    b.alias_last([p]);
}
