//! Canonizers: rewrite the graph into the form LRP rules are defined on. BatchNorm is merged
//! into the convolution or linear layer before it (zennit's MergeBatchNorm); residual sums are
//! already explicit `Add` nodes in our graphs, which the composites give the Norm rule.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, Node};
use crate::layers::{BatchNorm2d, Op};

/// What remains of a BatchNorm after merging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum MergeConvention {
    /// zennit >= 1.0: the merged BatchNorm is an exact identity (eps set to 0).
    #[default]
    Exact,
    /// zennit 0.5: the merged BatchNorm keeps its eps, so it still divides by sqrt(1 + eps).
    KeepEps,
}

impl MergeConvention {
    pub const ALL: [MergeConvention; 2] = [MergeConvention::Exact, MergeConvention::KeepEps];

    pub fn name(self) -> &'static str {
        match self {
            MergeConvention::Exact => "exact",
            MergeConvention::KeepEps => "keep-eps",
        }
    }
}

/// Any case, `_` for `-`.
impl std::str::FromStr for MergeConvention {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Error::choose(name, "a BatchNorm merge convention", &Self::ALL, Self::name)
    }
}

impl TryFrom<String> for MergeConvention {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

/// Merges every BatchNorm2d whose input is a Conv2d read by nothing else into that conv.
pub fn merge_batch_norms(graph: &Graph, convention: MergeConvention) -> Result<Graph> {
    let mut readers = vec![0usize; graph.nodes().len()];
    for node in graph.nodes() {
        for &i in &node.inputs {
            readers[i] += 1;
        }
    }
    let mut nodes: Vec<Node> = graph.nodes().to_vec();
    for id in 0..nodes.len() {
        let Op::BatchNorm2d(bn) = &nodes[id].op else { continue };
        let source = nodes[id].inputs[0];
        // A BatchNorm with an activation fused into it is not one affine map.
        if readers[source] != 1 || bn.activation().is_some() {
            continue;
        }
        let Op::Conv2d(conv) = &nodes[source].op else { continue };
        let (scale, shift) = bn.affine_parameters();
        // The weight [C_out, ...] scaled per output channel, as [1, C_out, rest] rows.
        let kernel = conv.weight();
        let rows = kernel.reshape(&[1, kernel.dims()[0], kernel.elem_count() / kernel.dims()[0]])?;
        let weight = rows.channel_affine(Some(scale), None)?.reshape(kernel.dims())?;
        let bias = match conv.bias() {
            Some(b) => b.mul(scale)?.add(shift)?,
            None => shift.clone(),
        };
        let merged = conv.with_parameters(weight, Some(bias))?;
        let remainder = match convention {
            MergeConvention::Exact => Op::Identity,
            MergeConvention::KeepEps => {
                Op::BatchNorm2d(BatchNorm2d::identity(bn.channels(), bn.eps(), &conv.weight().device())?)
            }
        };
        nodes[source].op = Op::Conv2d(merged);
        nodes[id].op = remainder;
    }
    Graph::new(nodes)
}
