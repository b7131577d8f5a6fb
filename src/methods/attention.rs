//! Explanations read from a transformer's attention weights:
//!
//! - attention rollout (Abnar & Zuidema 2020) as pnpxai's `AttentionRollout` computes it: per
//!   block, the heads fused (min, max or mean), the smallest `discard_ratio` of the fused map
//!   zeroed (the class token's attention to itself kept), half the identity added for the
//!   residual path, rows renormalised, and the blocks' maps multiplied in order;
//! - gradient-weighted attention (Chefer et al. 2021, "Generic attention-model
//!   explainability"): per block, the positive part of gradient x attention averaged over the
//!   heads, accumulated as R += cam R from the identity.
//!
//! Both read the class token's row over the patch tokens (the learned tokens dropped, as in
//! Grad-CAM's token grid), lay it on the patch grid and upsample it bilinearly to the input.
//! The attention weights are the outputs of the Softmax nodes that feed a product; the
//! rollout itself is a chain of [T, T] products per sample, done on the host.

use candle_core::{Tensor as HostTensor, D};
use serde::{Deserialize, Serialize};

use super::probe::Probe;
use super::{Attribution, Parameter, Scale};
use crate::error::{Error, Result};
use crate::graph::{Activations, Graph, NodeId};
use crate::layers::Op;
use crate::tensor::Tensor;

/// How a block's heads become one map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum HeadFusion {
    /// pnpxai's default.
    #[default]
    Min,
    Max,
    Mean,
}

impl HeadFusion {
    pub const ALL: [HeadFusion; 3] = [HeadFusion::Min, HeadFusion::Max, HeadFusion::Mean];

    pub fn name(self) -> &'static str {
        match self {
            HeadFusion::Min => "min",
            HeadFusion::Max => "max",
            HeadFusion::Mean => "mean",
        }
    }

    /// [N, H, T, T] -> [N, T, T].
    fn fuse(self, heads: &HostTensor) -> Result<HostTensor> {
        Ok(match self {
            HeadFusion::Min => heads.min(1)?,
            HeadFusion::Max => heads.max(1)?,
            HeadFusion::Mean => heads.mean(1)?,
        })
    }
}

impl std::str::FromStr for HeadFusion {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Error::choose(name.trim(), "a head fusion", &Self::ALL, Self::name)
    }
}

impl TryFrom<String> for HeadFusion {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttentionRolloutParams {
    pub head_fusion: HeadFusion,
    /// The share of each fused map's smallest entries set to zero, in [0, 1).
    pub discard_ratio: f64,
}

impl Default for AttentionRolloutParams {
    /// pnpxai's defaults.
    fn default() -> Self {
        Self {
            head_fusion: HeadFusion::Min,
            discard_ratio: 0.9,
        }
    }
}

impl AttentionRolloutParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::choice::<HeadFusion>(
                "head_fusion",
                "Head fusion",
                "how each block's heads become one map: their minimum, maximum or mean",
                HeadFusion::ALL.map(HeadFusion::name).to_vec(),
            ),
            Parameter::number(
                "discard_ratio",
                "Discard ratio",
                "the share of each block's smallest attention weights set to zero before the rollout",
            )
            .at_least(0.0)
            .tuned(Scale::Linear, 0.0, 0.95),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.discard_ratio) {
            return Err(Error::invalid_parameter(
                "discard_ratio",
                format!("{} is not in [0, 1)", self.discard_ratio),
            ));
        }
        Ok(())
    }
}

/// The Softmax nodes whose output weighs a product: attention's weights, block by block.
fn attention_nodes(graph: &Graph) -> Vec<NodeId> {
    let nodes = graph.nodes();
    (0..nodes.len())
        .filter(|&id| matches!(nodes[id].op, Op::Softmax(_)))
        .filter(|&id| {
            nodes
                .iter()
                .any(|n| matches!(n.op, Op::MatMul(_)) && n.inputs.first() == Some(&id))
        })
        .collect()
}

/// Whether `graph` has attention weights these methods can read.
pub(crate) fn has_attention(graph: &Graph) -> bool {
    !attention_nodes(graph).is_empty()
}

fn no_attention() -> Error {
    Error::invalid_parameter(
        "method",
        "this model has no attention (no Softmax whose weights multiply values); the attention methods explain transformers",
    )
}

/// The weights [N, H, T, T] of every attention, on the host, first block first.
async fn attention_weights(graph: &Graph, activations: &Activations) -> Result<Vec<HostTensor>> {
    let mut maps = Vec::new();
    for id in attention_nodes(graph) {
        maps.push(square_maps(activations.get(id).to_host_async().await?)?);
    }
    match maps.is_empty() {
        true => Err(no_attention()),
        false => Ok(maps),
    }
}

/// Attention weights as [N, H, T, T] (heads folded in when the graph kept them apart).
fn square_maps(t: HostTensor) -> Result<HostTensor> {
    let dims = t.dims().to_vec();
    match dims.as_slice() {
        [n, h, q, k] if q == k => Ok(t.reshape((*n, *h, *q, *k))?),
        [n, q, k] if q == k => Ok(t.reshape((*n, 1, *q, *k))?),
        _ => Err(Error::Shape(format!(
            "attention weights of shape {dims:?}: the methods read self-attention maps [N, heads, T, T]"
        ))),
    }
}

/// pnpxai's discard: per sample, the `ratio` smallest of the T*T fused entries set to zero,
/// entry [0, 0] restored.
fn discard(fused: &HostTensor, ratio: f64) -> Result<HostTensor> {
    let (n, t, _) = fused.dims3()?;
    let k = (((t * t) as f64) * ratio) as usize;
    if k == 0 {
        return Ok(fused.clone());
    }
    let mut values = fused.flatten_all()?.to_vec1::<f32>()?;
    for row in values.chunks_mut(t * t) {
        let kept = row[0];
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.select_nth_unstable_by(k - 1, |&a, &b| row[a].total_cmp(&row[b]));
        for &i in &order[..k] {
            row[i] = 0.0;
        }
        row[0] = kept;
    }
    Ok(HostTensor::from_vec(values, (n, t, t), fused.device())?)
}

fn identity(n: usize, t: usize, device: &candle_core::Device) -> Result<HostTensor> {
    Ok(HostTensor::eye(t, candle_core::DType::F32, device)?
        .unsqueeze(0)?
        .repeat((n, 1, 1))?)
}

/// Attention rollout over `maps` (each [N, H, T, T]): [N, T, T].
fn rollout(maps: &[HostTensor], params: &AttentionRolloutParams) -> Result<HostTensor> {
    let (n, _, t, _) = maps[0].dims4()?;
    let eye = identity(n, t, maps[0].device())?;
    let mut rolled = eye.clone();
    for map in maps {
        let fused = discard(&params.head_fusion.fuse(map)?, params.discard_ratio)?;
        let mixed = ((fused * 0.5)? + (&eye * 0.5)?)?;
        let normalised = mixed.broadcast_div(&mixed.sum_keepdim(D::Minus1)?)?;
        rolled = rolled.matmul(&normalised)?;
    }
    Ok(rolled)
}

/// Chefer et al.'s accumulation over (weights, gradients) pairs: [N, T, T].
fn gradient_weighted(maps: &[HostTensor], grads: &[HostTensor]) -> Result<HostTensor> {
    let (n, _, t, _) = maps[0].dims4()?;
    let mut relevance = identity(n, t, maps[0].device())?;
    for (map, grad) in maps.iter().zip(grads) {
        let cam = (grad * map)?.relu()?.mean(1)?;
        relevance = (&relevance + cam.matmul(&relevance)?)?;
    }
    Ok(relevance)
}

/// `tokens` as (side, learned): the last side * side are a square grid of patches (the
/// largest that fits), the first `learned` the class and distillation tokens, a few at most.
pub(crate) fn patch_grid(tokens: usize) -> Option<(usize, usize)> {
    let side = (1..=tokens).take_while(|s| s * s <= tokens).last()?;
    let learned = tokens - side * side;
    (learned <= side).then_some((side, learned))
}

/// The class token's row over the patch tokens, on the patch grid, upsampled to `input`.
async fn class_row_map(relevance: &HostTensor, input: &Tensor) -> Result<Attribution> {
    let (n, t, _) = relevance.dims3()?;
    let Some((side, learned)) = patch_grid(t).filter(|&(_, learned)| learned > 0) else {
        return Err(Error::Shape(format!(
            "{t} tokens are not a class token and a square grid of patches"
        )));
    };
    let (_, _, h, w) = input.dims4()?;
    let grid = relevance
        .narrow(1, 0, 1)?
        .narrow(2, learned, side * side)?
        .reshape((n, 1, side, side))?;
    Ok(Attribution {
        attributions: Tensor::from_candle(grid.upsample_bilinear2d(h, w, false)?)?,
        convergence_delta: None,
    })
}

pub(crate) async fn attention_rollout(
    graph: &Graph,
    activations: &Activations,
    input: &Tensor,
    params: &AttentionRolloutParams,
) -> Result<Attribution> {
    let maps = attention_weights(graph, activations).await?;
    class_row_map(&rollout(&maps, params)?, input).await
}

pub(crate) async fn generic_attention(
    probe: &Probe<'_>,
    activations: &Activations,
    input: &Tensor,
) -> Result<Attribution> {
    let graph = probe.graph;
    let nodes = attention_nodes(graph);
    if nodes.is_empty() {
        return Err(no_attention());
    }
    let grads = probe.gradients_at(activations, &nodes)?;
    let mut host_maps = Vec::with_capacity(nodes.len());
    let mut host_grads = Vec::with_capacity(nodes.len());
    for (&id, grad) in nodes.iter().zip(grads) {
        host_maps.push(square_maps(activations.get(id).to_host_async().await?)?);
        host_grads.push(square_maps(grad.to_host_async().await?)?);
    }
    class_row_map(&gradient_weighted(&host_maps, &host_grads)?, input).await
}
