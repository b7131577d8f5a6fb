//! torchvision's DenseNet (121, 161, 169, 201).
//!
//! `features`: `conv0` (7x7 stride 2), `norm0`, `relu0`, `pool0` (3x3 stride 2, padding 1); dense
//! blocks `denseblockB` of `denselayerL` (`norm1`, `relu1`, 1x1 `conv1`, `norm2`, `relu2`, 3x3
//! `conv2`), each layer reading the concatenation of the block's input and every earlier
//! layer's output (`denselayerL.cat`, from the second layer on); a block's output is the
//! concatenation of all of them (`denseblockB.cat`, also `denseblockB`). Between blocks,
//! `transitionB` (`norm`, `relu`, 1x1 `conv`, `pool` 2x2 average). Then `norm5`, the forward's
//! functional ReLU (`relu`) and global average pool (`avgpool`), `flatten` and `classifier`.
//! Layer counts come from torchvision's table; the growth rate and widths from the weights.

use super::builder::Builder;
use crate::import::graph_json::{GraphSpec, OpSpec, Pair};

const BLOCKS: [(&str, [usize; 4]); 4] = [
    ("densenet121", [6, 12, 24, 16]),
    ("densenet161", [6, 12, 36, 24]),
    ("densenet169", [6, 12, 32, 32]),
    ("densenet201", [6, 12, 48, 32]),
];

pub(super) fn names() -> impl Iterator<Item = &'static str> {
    BLOCKS.iter().map(|(name, _)| *name)
}

pub(super) fn spec(arch: &str) -> Option<GraphSpec> {
    let &(_, blocks) = BLOCKS.iter().find(|(name, _)| *name == arch)?;
    let mut b = Builder::new();
    b.conv("features.conv0", 7, 2, 3, 1);
    b.bn("features.norm0");
    b.relu("features.relu0");
    b.max_pool("features.pool0", 3, 2, 1);
    for (i, &layers) in blocks.iter().enumerate() {
        let block = format!("features.denseblock{}", i + 1);
        let mut features = vec![b.last()];
        for l in 1..=layers {
            let p = format!("{block}.denselayer{l}");
            // The first layer reads the block's input, the node before it.
            if features.len() > 1 {
                b.concat(&format!("{p}.cat"), &features);
            }
            b.bn(&format!("{p}.norm1"));
            b.relu(&format!("{p}.relu1"));
            b.conv(&format!("{p}.conv1"), 1, 1, 0, 1);
            b.bn(&format!("{p}.norm2"));
            b.relu(&format!("{p}.relu2"));
            b.conv(&format!("{p}.conv2"), 3, 1, 1, 1);
            b.alias_last([p]);
            features.push(b.last());
        }
        b.concat(&format!("{block}.cat"), &features);
        b.alias_last([block]);
        if i + 1 < blocks.len() {
            let t = format!("features.transition{}", i + 1);
            b.bn(&format!("{t}.norm"));
            b.relu(&format!("{t}.relu"));
            b.conv(&format!("{t}.conv"), 1, 1, 0, 1);
            b.node(
                &format!("{t}.pool"),
                OpSpec::AvgPool2d {
                    kernel_size: Pair::Same(2),
                    stride: Some(Pair::Same(2)),
                    padding: Pair::Same(0),
                    ceil_mode: false,
                    count_include_pad: true,
                    divisor_override: None,
                },
            );
            b.alias_last([t]);
        }
    }
    b.bn("features.norm5");
    b.alias_last(["features"]);
    b.relu("relu");
    b.adaptive_avg_pool("avgpool", 1);
    b.flatten("flatten");
    b.linear("classifier");
    Some(b.finish("features.norm5"))
}
