//! Which nodes' outputs are never negative, known from the graph alone: a ReLU's (and the other
//! activations into [0, ∞)), and what pooling, reshaping, adding or concatenating such outputs
//! makes. The sign-split rules (ZPlus, AlphaBeta, Gamma) split a layer's input x into x+ and
//! x-; behind a ReLU x- is all zeros, and its half of their products only adds exact zeros.

use crate::backend::Activation;
use crate::graph::Graph;
use crate::layers::Op;

/// One flag per node: true where its output can never hold a negative number.
pub(crate) fn nonnegative_outputs(graph: &Graph) -> Vec<bool> {
    let mut known: Vec<bool> = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        // Nodes come in topological order: every input's flag is already known.
        let inputs_nonnegative = !node.inputs.is_empty() && node.inputs.iter().all(|&i| known.get(i) == Some(&true));
        let nonnegative = match &node.op {
            Op::Activation(Activation::Relu | Activation::Relu6 | Activation::Sigmoid | Activation::Hardsigmoid)
            | Op::Softmax(_) => true,
            // Selections, rearrangements, and sums or means with nonnegative weights
            // (interpolation included) of nonnegative values; rounding cannot make them negative.
            Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d(_)
            | Op::AdaptiveMaxPool2d(_)
            | Op::Flatten(_)
            | Op::Reshape(_)
            | Op::Mean(_)
            | Op::Upsample(_)
            | Op::Identity
            | Op::Add(_)
            | Op::Mul(_)
            | Op::Permute(_)
            | Op::Transpose(_)
            | Op::Concat(_)
            | Op::Narrow(_)
            | Op::ChannelShuffle(_) => inputs_nonnegative,
            _ => false,
        };
        known.push(nonnegative);
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PoolWindow;
    use crate::graph::Node;
    use crate::layers::{Add, BatchNorm2d, MaxPool2d};
    use crate::tensor::Device;

    #[test]
    fn relu_outputs_and_what_keeps_them_nonnegative() {
        let relu = || Op::Activation(Activation::Relu);
        let norm = Op::BatchNorm2d(BatchNorm2d::identity(1, 1e-5, &Device::cpu()).unwrap());
        let pool = Op::MaxPool2d(MaxPool2d {
            window: PoolWindow {
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
                dilation: (1, 1),
                ceil_mode: false,
            },
        });
        let graph = Graph::new(vec![
            Node::new("input", Op::Input, vec![]),
            Node::new("relu", relu(), vec![0]),
            Node::new("pool", pool, vec![1]),
            Node::new("norm", norm, vec![2]),
            Node::new("sum_of_relus", Op::Add(Add), vec![1, 1]),
            Node::new("sum_with_norm", Op::Add(Add), vec![1, 3]),
            Node::new("silu", Op::Activation(Activation::Silu), vec![4]),
            Node::new("relu_again", relu(), vec![5]),
        ])
        .unwrap();
        assert_eq!(
            nonnegative_outputs(&graph),
            [false, true, true, false, true, false, false, true],
            "input, relu, pool of relu, norm, relu + relu, relu + norm, silu, relu"
        );
    }
}
