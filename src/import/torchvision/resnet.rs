//! torchvision's ResNet-18/34/50/101/152 (v1.5: a Bottleneck block strides in `conv2`).
//!
//! Per block `layerL.B`: `conv1 bn1 relu conv2 bn2` (BasicBlock) or
//! `conv1 bn1 relu conv2 bn2 relu_1 conv3 bn3` (Bottleneck), then `downsample.0/.1` on the
//! block input when the block changes stride or width, `layerL.B.add`, and the final ReLU
//! (`relu_1` / `relu_2`, the block's `relu` module used again), which is also `layerL.B` and,
//! for a stage's last block, `layerL`.

use super::builder::Builder;
use crate::import::graph_json::GraphSpec;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Basic,
    Bottleneck,
}

const ARCHS: &[(&str, Block, [usize; 4])] = &[
    ("resnet18", Block::Basic, [2, 2, 2, 2]),
    ("resnet34", Block::Basic, [3, 4, 6, 3]),
    ("resnet50", Block::Bottleneck, [3, 4, 6, 3]),
    ("resnet101", Block::Bottleneck, [3, 4, 23, 3]),
    ("resnet152", Block::Bottleneck, [3, 8, 36, 3]),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    ARCHS.iter().map(|a| a.0)
}

/// The graph of `arch`, or `None` when it is not a ResNet. Sizes come from the weights.
pub(super) fn spec(arch: &str) -> Option<GraphSpec> {
    let &(_, block, counts) = ARCHS.iter().find(|a| a.0 == arch)?;
    let mut b = Builder::new();
    b.conv("conv1", 7, 2, 3, 1);
    b.bn("bn1");
    b.relu("relu");
    b.max_pool("maxpool", 3, 2, 1);
    for (stage, &count) in counts.iter().enumerate() {
        let layer = format!("layer{}", stage + 1);
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            // torchvision adds a downsample where the stride or the width changes: the first
            // block of every stage except a BasicBlock layer1 (64 -> 64 channels).
            let downsample = i == 0 && (stage > 0 || block == Block::Bottleneck);
            let mut aliases = vec![format!("{layer}.{i}")];
            if i + 1 == count {
                aliases.push(layer.clone());
            }
            residual_block(&mut b, &format!("{layer}.{i}"), block, stride, downsample, aliases);
        }
    }
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.linear("fc");
    Some(b.finish("layer4"))
}

fn residual_block(b: &mut Builder, p: &str, block: Block, stride: usize, downsample: bool, aliases: Vec<String>) {
    let input = b.last();
    match block {
        Block::Basic => {
            b.conv(&format!("{p}.conv1"), 3, stride, 1, 1);
            b.bn(&format!("{p}.bn1"));
            b.relu(&format!("{p}.relu"));
            b.conv(&format!("{p}.conv2"), 3, 1, 1, 1);
            b.bn(&format!("{p}.bn2"));
        }
        Block::Bottleneck => {
            b.conv(&format!("{p}.conv1"), 1, 1, 0, 1);
            b.bn(&format!("{p}.bn1"));
            b.relu(&format!("{p}.relu"));
            b.conv(&format!("{p}.conv2"), 3, stride, 1, 1);
            b.bn(&format!("{p}.bn2"));
            b.relu(&format!("{p}.relu"));
            b.conv(&format!("{p}.conv3"), 1, 1, 0, 1);
            b.bn(&format!("{p}.bn3"));
        }
    }
    let main = b.last();
    let identity = if downsample {
        b.conv(&format!("{p}.downsample.0"), 1, stride, 0, 1).inputs = Some(vec![input]);
        b.bn(&format!("{p}.downsample.1"));
        b.last()
    } else {
        input
    };
    b.add(&format!("{p}.add"), [&main, &identity]);
    b.relu(&format!("{p}.relu"));
    b.alias_last(aliases);
}
