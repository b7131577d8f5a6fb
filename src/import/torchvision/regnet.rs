//! torchvision's RegNet X and Y, every size.
//!
//! `stem` (3x3 stride 2, BN, ReLU: `stem.0/1/2`); `trunk_output.blockS` stages of
//! `ResBottleneckBlock`s `blockS-I`: `f.a` (1x1, BN, ReLU), `f.b` (3x3 grouped, stride 2 in a
//! stage's first block, BN, ReLU), for Y models `f.se` (squeeze-and-excitation with ReLU and
//! Sigmoid), `f.c` (1x1, BN); the shortcut is `proj` (1x1 of the block's stride, BN) where the
//! width or the size changes and the input otherwise; the sum `add`, then `activation` (ReLU),
//! which is the block's output. Then `avgpool`, `flatten`, `fc`. Stage depths come from
//! torchvision's table (each size has its own); widths, groups and the SE from the weights.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

/// Blocks per stage, as torchvision's `BlockParams.from_init_params` computes them.
const DEPTHS: [(&str, [usize; 4]); 15] = [
    ("regnet_x_400mf", [1, 2, 7, 12]),
    ("regnet_x_800mf", [1, 3, 7, 5]),
    ("regnet_x_1_6gf", [2, 4, 10, 2]),
    ("regnet_x_3_2gf", [2, 6, 15, 2]),
    ("regnet_x_8gf", [2, 5, 15, 1]),
    ("regnet_x_16gf", [2, 6, 13, 1]),
    ("regnet_x_32gf", [2, 7, 13, 1]),
    ("regnet_y_400mf", [1, 3, 6, 6]),
    ("regnet_y_800mf", [1, 3, 8, 2]),
    ("regnet_y_1_6gf", [2, 6, 17, 2]),
    ("regnet_y_3_2gf", [2, 5, 13, 1]),
    ("regnet_y_8gf", [2, 4, 10, 1]),
    ("regnet_y_16gf", [2, 4, 11, 1]),
    ("regnet_y_32gf", [2, 5, 12, 1]),
    ("regnet_y_128gf", [2, 7, 17, 1]),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    DEPTHS.iter().map(|(name, _)| *name)
}

pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    let &(_, depths) = DEPTHS.iter().find(|(name, _)| *name == arch)?;
    let mut b = Builder::new();
    b.conv_norm_act("stem", 3, 2, 1, 1e-5, Some(OpSpec::ReLU));
    for (s, &blocks) in depths.iter().enumerate() {
        let stage = format!("trunk_output.block{}", s + 1);
        for i in 0..blocks {
            let p = format!("{stage}.block{}-{i}", s + 1);
            block(&mut b, &p, if i == 0 { 2 } else { 1 }, state);
        }
        b.alias_last([stage]);
    }
    b.alias_last(["trunk_output"]);
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.linear("fc");
    Some(b.finish("trunk_output"))
}

fn block(b: &mut Builder, p: &str, stride: usize, state: &StateDict) {
    let input = b.last();
    let f = format!("{p}.f");
    b.conv_norm_act(&format!("{f}.a"), 1, 1, 1, 1e-5, Some(OpSpec::ReLU));
    let bottleneck = state.shape(&format!("{f}.b.0.weight"));
    let groups = match bottleneck {
        Some(&[w, per_group, ..]) if per_group > 0 && w % per_group == 0 => w / per_group,
        _ => 1,
    };
    b.conv_norm_act(&format!("{f}.b"), 3, stride, groups, 1e-5, Some(OpSpec::ReLU));
    if state.contains(&format!("{f}.se.fc1.weight")) {
        b.squeeze_excitation(&format!("{f}.se"), OpSpec::ReLU, OpSpec::Sigmoid);
    }
    b.conv_norm_act(&format!("{f}.c"), 1, 1, 1, 1e-5, None);
    b.alias_last([f]);
    let branch = b.last();
    let shortcut = if state.contains(&format!("{p}.proj.0.weight")) {
        b.conv(&format!("{p}.proj.0"), 1, stride, 0, 1).inputs = Some(vec![input]);
        b.bn(&format!("{p}.proj.1"));
        b.alias_last([format!("{p}.proj")]);
        b.last()
    } else {
        input
    };
    b.add(&format!("{p}.add"), [&shortcut, &branch]);
    b.relu(&format!("{p}.activation"));
    b.alias_last([p]);
}
