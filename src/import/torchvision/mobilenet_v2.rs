//! torchvision's MobileNetV2.
//!
//! `features.0`: Conv2dNormActivation (`features.0.0` conv 3x3 stride 2, `.1` BN, `.2` ReLU6).
//! `features.1..=17`: InvertedResidual blocks from torchvision's (t, c, n, s) table. A block
//! with expand ratio t != 1 starts with `conv.0` = 1x1 conv + BN + ReLU6; then the depthwise
//! Conv2dNormActivation (`conv.K.0` 3x3, groups = hidden channels, read from its weight, `.1`,
//! `.2`), the 1x1 projection `conv.K+1` and its BN `conv.K+2`. Blocks with stride 1 and equal
//! input and output channels add their input (`features.N.add`). The block's output (the add,
//! or the last BN) is also `features.N`.
//! `features.18`: 1x1 Conv2dNormActivation; then `avgpool` (the forward's
//! `adaptive_avg_pool2d(x, 1)`), `flatten`, `classifier.0` Dropout, `classifier.1` Linear.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

/// torchvision's inverted residual settings: (expand ratio t, blocks n, first stride s).
const SETTINGS: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (6, 2, 2),
    (6, 3, 2),
    (6, 4, 2),
    (6, 3, 1),
    (6, 3, 2),
    (6, 1, 1),
];

pub(super) const NAME: &str = "mobilenet_v2";

/// The graph of `arch`, or `None` when it is not `mobilenet_v2`. Depthwise group counts and
/// the residual connections come from the weights' shapes.
pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    if arch != NAME {
        return None;
    }
    let mut b = Builder::new();
    conv_norm_relu6(&mut b, "features.0", 3, 2, 1);
    let mut index = 1;
    for &(t, n, s) in &SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            // Without shapes, torchvision's own table: only a group's first block changes width.
            inverted_residual(&mut b, state, &format!("features.{index}"), t != 1, stride, i > 0);
            index += 1;
        }
    }
    conv_norm_relu6(&mut b, &format!("features.{index}"), 1, 1, 1);
    let cam_layer = format!("features.{index}");
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.dropout("classifier.0");
    b.linear("classifier.1");
    Some(b.finish(&cam_layer))
}

/// torchvision's `Conv2dNormActivation(..., activation_layer=nn.ReLU6)` named `p`.
fn conv_norm_relu6(b: &mut Builder, p: &str, kernel: usize, stride: usize, groups: usize) {
    b.conv_norm_act(p, kernel, stride, groups, 1e-5, Some(OpSpec::ReLU6));
}

fn inverted_residual(b: &mut Builder, state: &StateDict, p: &str, expand: bool, stride: usize, same_width: bool) {
    let input = b.last();
    let dim = |name: String, axis: usize| state.shape(&name).and_then(|s| s.get(axis).copied());
    let mut k = 0;
    let in_channels = if expand {
        conv_norm_relu6(b, &format!("{p}.conv.0"), 1, 1, 1);
        k = 1;
        dim(format!("{p}.conv.0.0.weight"), 1)
    } else {
        dim(format!("{p}.conv.0.0.weight"), 0)
    };
    let depthwise = format!("{p}.conv.{k}");
    let hidden = dim(format!("{depthwise}.0.weight"), 0).unwrap_or(1);
    conv_norm_relu6(b, &depthwise, 3, stride, hidden);
    let project = format!("{p}.conv.{}", k + 1);
    b.conv(&project, 1, 1, 0, 1);
    b.bn(&format!("{p}.conv.{}", k + 2));
    let out_channels = dim(format!("{project}.weight"), 0);
    let residual = stride == 1
        && match (in_channels, out_channels) {
            (Some(i), Some(o)) => i == o,
            _ => same_width,
        };
    if residual {
        let main = b.last();
        b.add(&format!("{p}.add"), [&main, &input]);
    }
    b.alias_last([p]);
}
