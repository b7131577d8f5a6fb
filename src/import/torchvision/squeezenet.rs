//! torchvision's SqueezeNet 1.0 and 1.1.
//!
//! `features`: the stem conv `features.0` (1.0: 7x7 stride 2; 1.1: 3x3 stride 2) and ReLU,
//! max pools (3x3 stride 2, ceil_mode) and `Fire` modules: `squeeze` 1x1 conv and
//! `squeeze_activation`, then `expand1x1` and `expand3x3` (padding 1) each with its ReLU,
//! concatenated (`features.N.cat`, also `features.N`). `classifier.0` Dropout, `classifier.1`
//! the 1x1 conv to the classes, `classifier.2` ReLU, `classifier.3` AdaptiveAvgPool2d(1), then
//! `flatten`.

use super::builder::Builder;
use crate::import::graph_json::GraphSpec;

/// What `features.N` is, in order.
#[derive(Clone, Copy)]
enum Feature {
    Pool,
    Fire,
}
use Feature::{Fire, Pool};

const V1_0: [Feature; 11] = [Pool, Fire, Fire, Fire, Pool, Fire, Fire, Fire, Fire, Pool, Fire];
const V1_1: [Feature; 11] = [Pool, Fire, Fire, Pool, Fire, Fire, Pool, Fire, Fire, Fire, Fire];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    ["squeezenet1_0", "squeezenet1_1"].into_iter()
}

pub(super) fn spec(arch: &str) -> Option<GraphSpec> {
    let (stem_kernel, features) = match arch {
        "squeezenet1_0" => (7, V1_0),
        "squeezenet1_1" => (3, V1_1),
        _ => return None,
    };
    let mut b = Builder::new();
    b.conv("features.0", stem_kernel, 2, 0, 1);
    b.relu("features.1");
    for (i, feature) in features.iter().enumerate() {
        let p = format!("features.{}", i + 2);
        match feature {
            Pool => {
                b.max_pool_with(&p, 3, 2, 0, true);
            }
            Fire => fire(&mut b, &p),
        }
    }
    let cam_layer = format!("features.{}", features.len() + 1);
    b.dropout("classifier.0");
    b.conv("classifier.1", 1, 1, 0, 1);
    b.relu("classifier.2");
    b.adaptive_avg_pool("classifier.3", 1);
    b.flatten("flatten");
    Some(b.finish(&cam_layer))
}

fn fire(b: &mut Builder, p: &str) {
    b.conv(&format!("{p}.squeeze"), 1, 1, 0, 1);
    b.relu(&format!("{p}.squeeze_activation"));
    let squeezed = b.last();
    b.conv(&format!("{p}.expand1x1"), 1, 1, 0, 1);
    b.relu(&format!("{p}.expand1x1_activation"));
    let one = b.last();
    b.conv(&format!("{p}.expand3x3"), 3, 1, 1, 1).inputs = Some(vec![squeezed]);
    b.relu(&format!("{p}.expand3x3_activation"));
    let three = b.last();
    b.concat(&format!("{p}.cat"), &[one, three]);
    b.alias_last([p]);
}
