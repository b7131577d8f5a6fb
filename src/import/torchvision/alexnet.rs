//! torchvision's AlexNet: `features` 0 conv 11x11 stride 4 padding 2, 1 ReLU, 2 MaxPool(3, 2),
//! 3 conv 5x5 padding 2, 4 ReLU, 5 MaxPool, 6/8/10 conv 3x3 padding 1 each followed by a ReLU,
//! 12 MaxPool; `avgpool` AdaptiveAvgPool2d(6, 6); `flatten`; classifier 0 Dropout, 1 Linear,
//! 2 ReLU, 3 Dropout, 4 Linear, 5 ReLU, 6 Linear (sizes from the weights).

use super::builder::Builder;
use crate::import::graph_json::GraphSpec;

pub(super) const NAME: &str = "alexnet";

/// The graph of `arch`, or `None` when it is not `alexnet`.
pub(super) fn spec(arch: &str) -> Option<GraphSpec> {
    if arch != NAME {
        return None;
    }
    let mut b = Builder::new();
    b.conv("features.0", 11, 4, 2, 1);
    b.relu("features.1");
    b.max_pool("features.2", 3, 2, 0);
    b.conv("features.3", 5, 1, 2, 1);
    b.relu("features.4");
    b.max_pool("features.5", 3, 2, 0);
    b.conv("features.6", 3, 1, 1, 1);
    b.relu("features.7");
    b.conv("features.8", 3, 1, 1, 1);
    b.relu("features.9");
    b.conv("features.10", 3, 1, 1, 1);
    b.relu("features.11");
    b.max_pool("features.12", 3, 2, 0);
    b.adaptive_avg_pool("avgpool", 6);
    b.flatten("flatten");
    b.dropout("classifier.0");
    b.linear("classifier.1");
    b.relu("classifier.2");
    b.dropout("classifier.3");
    b.linear("classifier.4");
    b.relu("classifier.5");
    b.linear("classifier.6");
    Some(b.finish("features.11"))
}
