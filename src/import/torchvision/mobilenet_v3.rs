//! torchvision's MobileNetV3 (Small and Large).
//!
//! `features.0`: Conv2dNormActivation (3x3 stride 2, BN eps 1e-3, Hardswish). `features.1..=K`:
//! `InvertedResidual` blocks (`features.N.block`: an optional 1x1 expansion `block.0`, the
//! depthwise `block.k`, an optional squeeze-and-excitation `block.k+1` with ReLU and
//! Hardsigmoid, the 1x1 projection without activation); blocks of stride 1 with equal input and
//! output widths add their input (`features.N.add`). Then the 1x1 Conv2dNormActivation
//! `features.K+1` (Hardswish), `avgpool`, `flatten`, and the classifier `classifier.0` Linear,
//! `.1` Hardswish, `.2` Dropout, `.3` Linear. Each block's activation (ReLU or Hardswish) and
//! stride come from torchvision's table; kernels, widths and the squeeze-and-excitation's
//! presence from the weights.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

const EPS: f64 = 1e-3;

/// Per block: (Hardswish rather than ReLU, stride).
const LARGE: [(bool, usize); 15] = [
    (false, 1),
    (false, 2),
    (false, 1),
    (false, 2),
    (false, 1),
    (false, 1),
    (true, 2),
    (true, 1),
    (true, 1),
    (true, 1),
    (true, 1),
    (true, 1),
    (true, 2),
    (true, 1),
    (true, 1),
];
const SMALL: [(bool, usize); 11] = [
    (false, 2),
    (false, 2),
    (false, 1),
    (true, 2),
    (true, 1),
    (true, 1),
    (true, 1),
    (true, 1),
    (true, 2),
    (true, 1),
    (true, 1),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    ["mobilenet_v3_large", "mobilenet_v3_small"].into_iter()
}

fn activation(hardswish: bool) -> OpSpec {
    if hardswish {
        OpSpec::Hardswish
    } else {
        OpSpec::ReLU
    }
}

pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    let blocks: &[(bool, usize)] = match arch {
        "mobilenet_v3_large" => &LARGE,
        "mobilenet_v3_small" => &SMALL,
        _ => return None,
    };
    let dim = |name: String, axis: usize| state.shape(&name).and_then(|s| s.get(axis).copied());
    let mut b = Builder::new();
    b.conv_norm_act("features.0", 3, 2, 1, EPS, Some(OpSpec::Hardswish));
    let mut width = dim("features.0.0.weight".into(), 0);
    for (i, &(hardswish, stride)) in blocks.iter().enumerate() {
        let p = format!("features.{}", i + 1);
        let input = b.last();
        let expand = dim(format!("{p}.block.0.0.weight"), 1).is_some_and(|c| c != 1);
        let mut k = 0;
        if expand {
            b.conv_norm_act(&format!("{p}.block.0"), 1, 1, 1, EPS, Some(activation(hardswish)));
            k = 1;
        }
        let depthwise = format!("{p}.block.{k}");
        let hidden = dim(format!("{depthwise}.0.weight"), 0).unwrap_or(1);
        let kernel = dim(format!("{depthwise}.0.weight"), 2).unwrap_or(3);
        b.conv_norm_act(&depthwise, kernel, stride, hidden, EPS, Some(activation(hardswish)));
        k += 1;
        let se = format!("{p}.block.{k}");
        if state.contains(&format!("{se}.fc1.weight")) {
            b.squeeze_excitation(&se, OpSpec::ReLU, OpSpec::Hardsigmoid);
            k += 1;
        }
        let project = format!("{p}.block.{k}");
        b.conv_norm_act(&project, 1, 1, 1, EPS, None);
        let out = dim(format!("{project}.0.weight"), 0);
        if stride == 1 && width.is_some() && width == out {
            let main = b.last();
            b.add(&format!("{p}.add"), [&input, &main]);
        }
        width = out;
        b.alias_last([p]);
    }
    let head = format!("features.{}", blocks.len() + 1);
    b.conv_norm_act(&head, 1, 1, 1, EPS, Some(OpSpec::Hardswish));
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.linear("classifier.0");
    b.node("classifier.1", OpSpec::Hardswish);
    b.dropout("classifier.2");
    b.linear("classifier.3");
    Some(b.finish(&head))
}
