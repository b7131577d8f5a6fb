//! torchvision's VGG-11/13/16/19, with and without BatchNorm.
//!
//! `features` is torchvision's `make_layers(cfg, batch_norm)`: per conv a `Conv2d(3, padding=1)`
//! at index i, its `BatchNorm2d` at i+1 (`_bn` variants), a `ReLU`, and a `MaxPool2d(2, 2)`
//! where the cfg says 'M' (after every stage, the last one included). The conv indices, the
//! BatchNorms and the pools therefore follow from the conv count per stage; any other layout
//! leaves tensors at indices the graph does not read, which `fit` reports. Then `avgpool`
//! (AdaptiveAvgPool2d(7, 7)), `flatten` and the classifier `0 Linear, 1 ReLU, 2 Dropout,
//! 3 Linear, 4 ReLU, 5 Dropout, 6 Linear`; layer sizes come from the weights, so a shrunk
//! classifier fits too.

use super::builder::Builder;
use crate::import::graph_json::GraphSpec;

/// Convs per stage (cfg 'A', 'B', 'D', 'E'); every stage ends in a max pool.
const ARCHS: &[(&str, [usize; 5])] = &[
    ("vgg11", [1, 1, 2, 2, 2]),
    ("vgg13", [2, 2, 2, 2, 2]),
    ("vgg16", [2, 2, 3, 3, 3]),
    ("vgg19", [2, 2, 4, 4, 4]),
];

pub(super) fn names() -> impl Iterator<Item = String> {
    ARCHS.iter().flat_map(|a| [a.0.to_string(), format!("{}_bn", a.0)])
}

/// The graph of `arch`, or `None` when it is not a VGG.
pub(super) fn spec(arch: &str) -> Option<GraphSpec> {
    let (base, batch_norm) = match arch.strip_suffix("_bn") {
        Some(base) => (base, true),
        None => (arch, false),
    };
    let &(_, stages) = ARCHS.iter().find(|a| a.0 == base)?;
    let mut b = Builder::new();
    let mut index = 0;
    let mut next = || {
        index += 1;
        format!("features.{}", index - 1)
    };
    let mut last_relu = String::new();
    for &convs in &stages {
        for _ in 0..convs {
            let conv = next();
            b.conv(&conv, 3, 1, 1, 1);
            if batch_norm {
                let bn = next();
                b.bn(&bn);
            }
            last_relu = next();
            b.relu(&last_relu);
        }
        let pool = next();
        b.max_pool(&pool, 2, 2, 0);
    }
    b.adaptive_avg_pool("avgpool", 7);
    b.flatten("flatten");
    b.linear("classifier.0");
    b.relu("classifier.1");
    b.dropout("classifier.2");
    b.linear("classifier.3");
    b.relu("classifier.4");
    b.dropout("classifier.5");
    b.linear("classifier.6");
    Some(b.finish(&last_relu))
}
