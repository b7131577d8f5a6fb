//! torchvision's ShuffleNetV2 (x0.5, x1.0, x1.5, x2.0).
//!
//! `conv1` (3x3 stride 2, BN, ReLU: `conv1.0/1/2`), `maxpool` (3x3 stride 2, padding 1), stages
//! `stage2..4` of `InvertedResidual` blocks (4, 8 and 4 of them), `conv5` (1x1, BN, ReLU), the
//! global mean (`x.mean([2, 3])` in the forward: `globalpool`, then `flatten`) and `fc`.
//! A stage's first block (stride 2) runs `branch1` (depthwise 3x3 stride 2, BN, 1x1, BN, ReLU)
//! and `branch2` (1x1, BN, ReLU, depthwise 3x3, BN, 1x1, BN, ReLU) on its input; the other
//! blocks split their input in two halves (`chunk_0`, `chunk_1`) and run `branch2` on the
//! second. The halves are concatenated (`cat`) and shuffled in 2 groups (`shuffle`, also the
//! block's name). The variants differ in widths only, read from the weights; the name comes
//! from the first stage's width.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec};
use crate::import::StateDict;

const REPEATS: [usize; 3] = [4, 8, 4];

/// Each variant's `stage2` output width.
const VARIANTS: [(&str, usize); 4] = [
    ("shufflenet_v2_x0_5", 48),
    ("shufflenet_v2_x1_0", 116),
    ("shufflenet_v2_x1_5", 176),
    ("shufflenet_v2_x2_0", 244),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    VARIANTS.iter().map(|(name, _)| *name)
}

/// The variant a state dict that fits `arch` is, by its first stage's width; other widths
/// keep the name they were read under.
pub(super) fn variant(arch: &str, state: &StateDict) -> Option<String> {
    if !arch.starts_with("shufflenet_v2") {
        return None;
    }
    let half = state
        .shape("stage2.0.branch1.2.weight")
        .and_then(|s| s.first().copied())?;
    VARIANTS
        .iter()
        .find(|&&(_, width)| width == 2 * half)
        .map(|(name, _)| name.to_string())
}

pub(super) fn spec(arch: &str, state: &StateDict) -> Option<GraphSpec> {
    let &(_, stage2_width) = VARIANTS.iter().find(|(name, _)| *name == arch)?;
    let mut b = Builder::new();
    b.conv("conv1.0", 3, 2, 1, 1);
    b.bn("conv1.1");
    b.relu("conv1.2");
    b.alias_last(["conv1"]);
    b.max_pool("maxpool", 3, 2, 1);
    for (s, &repeats) in REPEATS.iter().enumerate() {
        let stage = format!("stage{}", s + 2);
        for i in 0..repeats {
            let p = format!("{stage}.{i}");
            // Stride-1 blocks run branch2 on half their input; the weights say how wide.
            let half = state
                .shape(&format!("{p}.branch2.0.weight"))
                .and_then(|d| d.get(1).copied())
                .unwrap_or(stage2_width << s >> 1);
            if i == 0 {
                down_block(&mut b, &p, state);
            } else {
                split_block(&mut b, &p, half, state);
            }
        }
        b.alias_last([stage]);
    }
    b.conv("conv5.0", 1, 1, 0, 1);
    b.bn("conv5.1");
    b.relu("conv5.2");
    b.alias_last(["conv5"]);
    b.adaptive_avg_pool("globalpool", 1);
    b.flatten("flatten");
    b.linear("fc");
    Some(b.finish("conv5"))
}

fn depthwise_width(state: &StateDict, name: &str) -> usize {
    state.shape(name).and_then(|s| s.first().copied()).unwrap_or(1)
}

/// `branch2` on `input`: 1x1, BN, ReLU, depthwise 3x3 of `stride`, BN, 1x1, BN, ReLU.
fn branch2(b: &mut Builder, p: &str, stride: usize, state: &StateDict, input: String) {
    let q = format!("{p}.branch2");
    b.conv(&format!("{q}.0"), 1, 1, 0, 1).inputs = Some(vec![input]);
    b.bn(&format!("{q}.1"));
    b.relu(&format!("{q}.2"));
    let width = depthwise_width(state, &format!("{q}.3.weight"));
    b.conv(&format!("{q}.3"), 3, stride, 1, width);
    b.bn(&format!("{q}.4"));
    b.conv(&format!("{q}.5"), 1, 1, 0, 1);
    b.bn(&format!("{q}.6"));
    b.relu(&format!("{q}.7"));
    b.alias_last([q]);
}

fn shuffle(b: &mut Builder, p: &str, halves: [String; 2]) {
    b.concat(&format!("{p}.cat"), &halves);
    b.node(&format!("{p}.shuffle"), OpSpec::ChannelShuffle { groups: 2 });
    b.alias_last([p]);
}

fn down_block(b: &mut Builder, p: &str, state: &StateDict) {
    let input = b.last();
    let q = format!("{p}.branch1");
    let width = depthwise_width(state, &format!("{q}.0.weight"));
    b.conv(&format!("{q}.0"), 3, 2, 1, width);
    b.bn(&format!("{q}.1"));
    b.conv(&format!("{q}.2"), 1, 1, 0, 1);
    b.bn(&format!("{q}.3"));
    b.relu(&format!("{q}.4"));
    b.alias_last([q.clone()]);
    let first = b.last();
    branch2(b, p, 2, state, input);
    let second = b.last();
    shuffle(b, p, [first, second]);
}

fn split_block(b: &mut Builder, p: &str, half: usize, state: &StateDict) {
    let input = b.last();
    b.node(
        &format!("{p}.chunk_0"),
        OpSpec::Narrow {
            dim: 1,
            start: 0,
            length: half,
        },
    );
    let first = b.last();
    b.node(
        &format!("{p}.chunk_1"),
        OpSpec::Narrow {
            dim: 1,
            start: half,
            length: half,
        },
    )
    .inputs = Some(vec![input]);
    let half_input = b.last();
    branch2(b, p, 1, state, half_input);
    let second = b.last();
    shuffle(b, p, [first, second]);
}
