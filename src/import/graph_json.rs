//! The custom graph format: a JSON list of nodes, each a PyTorch module with its attributes,
//! whose parameters are read from the state dict as `<params>.weight`, `<params>.bias`, ...
//! (`params` defaults to the node's name). The torchvision importers produce the same
//! `GraphSpec`, so there is one way from a description to a graph.
//!
//! ```json
//! { "input_channels": 1,
//!   "nodes": [
//!     {"name": "conv1", "op": "Conv2d", "kernel_size": 3, "padding": 1},
//!     {"name": "bn1", "op": "BatchNorm2d"},
//!     {"name": "relu", "op": "ReLU"},
//!     {"name": "skip", "op": "Add", "inputs": ["relu", "input"]} ] }
//! ```
//! A node reads the node before it unless `inputs` names others; `input` is the image.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::StateDict;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node};
use crate::layers::{
    Activation, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Add, AvgPool2d, BatchNorm2d, ChannelShuffle, Concat, Conv2d,
    Flatten, LayerNorm, LayerScale, Linear, MatMul, MaxPool2d, Mean, Mul, Narrow, NormAxis, Op, Permute, PoolWindow,
    PositionEmbedding, PrependTokens, Reshape, Scale, Softmax, Transpose, Upsample, UpsampleMode, UpsampleSize,
    WindowGeometry,
};
use crate::tensor::Tensor;

/// The name of the graph's input node.
pub const INPUT: &str = "input";

/// The key under which a graph description may sit in a safetensors file's `__metadata__`.
pub const METADATA_KEY: &str = "candle_xai_graph";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GraphSpec {
    /// Channels of the input image (3 for RGB, 1 for grey).
    pub input_channels: usize,
    /// Smallest input side the model accepts; checked before running.
    #[serde(default)]
    pub min_input_size: Option<usize>,
    /// The one input side the model takes (a transformer's position embedding fixes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    /// The layer Grad-CAM uses when none is named.
    #[serde(default)]
    pub default_cam_layer: Option<String>,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    #[serde(flatten)]
    pub op: OpSpec,
    /// Nodes read; the previous node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// State-dict prefix of this node's tensors, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

/// An int or an [h, w] pair, as PyTorch accepts for sizes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Pair {
    Same(usize),
    Each([usize; 2]),
}

/// By hand rather than serde's untagged derive, whose error ("data did not match any variant
/// of untagged enum Pair") says neither what was expected nor what was found.
impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let whole = |v: &serde_json::Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        match &value {
            serde_json::Value::Array(items) => match items.as_slice() {
                [h, w] => whole(h).zip(whole(w)).map(|(h, w)| Pair::Each([h, w])),
                _ => None,
            },
            single => whole(single).map(Pair::Same),
        }
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number or a [height, width] pair of whole numbers, found {value}"
            ))
        })
    }
}

impl Pair {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Pair::Same(v) => (v, v),
            Pair::Each([h, w]) => (h, w),
        }
    }
}

/// One dimension or a list of them (`dim=1`, `dim=(2, 3)`), negative counting from the end.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Dims(pub Vec<isize>);

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let whole = |v: &serde_json::Value| v.as_i64().and_then(|n| isize::try_from(n).ok());
        match &value {
            serde_json::Value::Array(items) => items.iter().map(whole).collect::<Option<Vec<_>>>(),
            single => whole(single).map(|d| vec![d]),
        }
        .map(Dims)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a dimension or a list of dimensions (whole numbers), found {value}"
            ))
        })
    }
}

/// A scale factor: one number for both sides or a [height, width] pair.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Factors {
    Same(f64),
    Each([f64; 2]),
}

impl<'de> Deserialize<'de> for Factors {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let positive = |v: &serde_json::Value| v.as_f64().filter(|f| f.is_finite() && *f > 0.0);
        match &value {
            serde_json::Value::Array(items) => match items.as_slice() {
                [h, w] => positive(h).zip(positive(w)).map(|(h, w)| Factors::Each([h, w])),
                _ => None,
            },
            single => positive(single).map(Factors::Same),
        }
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a positive scale factor or a [height, width] pair of them, found {value}"
            ))
        })
    }
}

/// `F.interpolate`'s modes that candle-xai computes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InterpolationMode {
    #[default]
    Nearest,
    NearestExact,
    Bilinear,
}

const fn one() -> Pair {
    Pair::Same(1)
}
const fn zero() -> Pair {
    Pair::Same(0)
}
const fn one_group() -> usize {
    1
}
const fn bn_eps() -> f64 {
    1e-5
}
const fn leaky_slope() -> f64 {
    0.01
}
const fn yes() -> bool {
    true
}
const fn ln_eps() -> f64 {
    1e-5
}
fn gamma() -> String {
    "gamma".into()
}

/// GELU's two forms, as PyTorch's `approximate` argument names them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GeluApproximation {
    #[default]
    None,
    Tanh,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op")]
pub enum OpSpec {
    Conv2d {
        kernel_size: Pair,
        #[serde(default = "one")]
        stride: Pair,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default = "one_group")]
        groups: usize,
    },
    /// `<params>.weight` and, when the file has it, `<params>.bias`; `weight` and `bias` name
    /// the tensors outright where they are not a module's (`self_attention.in_proj_weight`).
    Linear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<String>,
    },
    BatchNorm2d {
        #[serde(default = "bn_eps")]
        eps: f64,
    },
    ReLU,
    ReLU6,
    LeakyReLU {
        #[serde(default = "leaky_slope")]
        negative_slope: f64,
    },
    MaxPool2d {
        kernel_size: Pair,
        #[serde(default)]
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default)]
        ceil_mode: bool,
    },
    AvgPool2d {
        kernel_size: Pair,
        #[serde(default)]
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default)]
        ceil_mode: bool,
        #[serde(default = "yes")]
        count_include_pad: bool,
        #[serde(default)]
        divisor_override: Option<usize>,
    },
    AdaptiveAvgPool2d {
        output_size: Pair,
    },
    AdaptiveMaxPool2d {
        output_size: Pair,
    },
    Flatten,
    /// `x.reshape(N, *shape)`: the batch dimension stays; one entry of `shape` may be -1.
    Reshape {
        shape: Vec<isize>,
    },
    /// `x.mean(dim, keepdim)`.
    Mean {
        dim: Dims,
        #[serde(default)]
        keepdim: bool,
    },
    /// `nn.Softmax(dim)`.
    Softmax {
        dim: isize,
    },
    /// `nn.Upsample` / `F.interpolate` of an NCHW map: `size` or `scale_factor`, `mode`
    /// nearest (default), nearest-exact or bilinear (with `align_corners`, default false).
    Upsample {
        #[serde(default)]
        size: Option<Pair>,
        #[serde(default)]
        scale_factor: Option<Factors>,
        #[serde(default)]
        mode: InterpolationMode,
        #[serde(default)]
        align_corners: bool,
    },
    Dropout,
    Identity,
    /// torchvision's `StochasticDepth`, the identity in eval mode.
    StochasticDepth,
    Add,
    /// The element-wise product of its two inputs; an [N, C, 1, 1] input scales the other's
    /// channels (squeeze-and-excitation).
    Mul,
    SiLU,
    GELU {
        #[serde(default)]
        approximate: GeluApproximation,
    },
    Sigmoid,
    Tanh,
    Hardswish,
    Hardsigmoid,
    /// `nn.LayerNorm(C)` over the last dimension, or over the channels of an NCHW map with
    /// `"axis": "channels"`; `<params>.weight` and `<params>.bias` when the file has them.
    LayerNorm {
        #[serde(default = "ln_eps")]
        eps: f64,
        #[serde(default = "last_axis")]
        axis: NormAxis,
    },
    /// torchvision's and timm's `LayerNorm2d`: LayerNorm over the channels of NCHW.
    LayerNorm2d {
        #[serde(default = "ln_eps")]
        eps: f64,
    },
    /// `nn.GroupNorm(num_groups, C)`.
    GroupNorm {
        num_groups: usize,
        #[serde(default = "ln_eps")]
        eps: f64,
    },
    /// A learned per-channel scale read from `<params>.<tensor>` (timm's `gamma`, torchvision
    /// ConvNeXt's `layer_scale`).
    LayerScale {
        #[serde(default = "gamma")]
        tensor: String,
    },
    /// Output dimension k is input dimension `dims[k]` (`torch.permute`).
    Permute {
        dims: Vec<usize>,
    },
    /// `a @ b` of two activations of rank 3 or more (`inputs`: [a, b]), `b` transposed in its
    /// last two dims with `"transpose_rhs": true` (attention's `q @ k.transpose(-2, -1)`).
    MatMul {
        #[serde(default)]
        transpose_rhs: bool,
    },
    /// `x * factor` for a constant factor.
    Scale {
        factor: f64,
    },
    /// Learned tokens put before the sequence [N, T, D] (`torch.cat((cls_token.expand(N, -1,
    /// -1), x), dim=1)`), read from the state-dict tensors named in `tensors` ([1, 1, D] each),
    /// in order.
    PrependTokens {
        tensors: Vec<String>,
    },
    /// `x + pos_embed`, the state-dict tensor `tensor` of shape [1, T, D].
    PositionEmbedding {
        tensor: String,
    },
    /// `x.transpose(dim0, dim1)`.
    Transpose {
        dim0: isize,
        dim1: isize,
    },
    /// `torch.cat(inputs, dim)`.
    Concat {
        #[serde(default = "channel_dim")]
        dim: usize,
    },
    /// `x.narrow(dim, start, length)`: one piece of a `chunk` or `split`.
    Narrow {
        #[serde(default = "channel_dim")]
        dim: usize,
        start: usize,
        length: usize,
    },
    /// `nn.ChannelShuffle(groups)`.
    ChannelShuffle {
        groups: usize,
    },
}

const fn channel_dim() -> usize {
    1
}

const fn last_axis() -> NormAxis {
    NormAxis::Last
}

impl OpSpec {
    /// A convolution's window, checked: candle convolves with one stride and one dilation
    /// for both axes. `layer` names it in errors.
    pub fn conv_geometry(&self, layer: &str) -> Result<Option<WindowGeometry>> {
        let OpSpec::Conv2d {
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
        } = *self
        else {
            return Ok(None);
        };
        let unsupported = |reason: &str| Error::UnsupportedLayer {
            layer: layer.to_string(),
            kind: "Conv2d".into(),
            reason: reason.into(),
        };
        let ((sh, sw), (dh, dw), (kh, kw)) = (stride.hw(), dilation.hw(), kernel_size.hw());
        if sh != sw || dh != dw {
            return Err(unsupported("different strides or dilations along height and width"));
        }
        if sh == 0 || dh == 0 || kh == 0 || kw == 0 {
            return Err(unsupported("zero kernel size, stride or dilation"));
        }
        let (ph, pw) = padding.hw();
        Ok(Some(WindowGeometry {
            kernel: (kh, kw),
            stride: sh,
            dilation: dh,
            padding: (ph, ph, pw, pw),
            groups,
        }))
    }

    /// A pooling layer's window (the stride defaults to the kernel size), checked.
    pub fn pool_window(&self, layer: &str) -> Result<Option<PoolWindow>> {
        let window = match *self {
            OpSpec::MaxPool2d {
                kernel_size,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => PoolWindow {
                kernel: kernel_size.hw(),
                stride: stride.unwrap_or(kernel_size).hw(),
                padding: padding.hw(),
                dilation: dilation.hw(),
                ceil_mode,
            },
            OpSpec::AvgPool2d {
                kernel_size,
                stride,
                padding,
                ceil_mode,
                ..
            } => PoolWindow {
                kernel: kernel_size.hw(),
                stride: stride.unwrap_or(kernel_size).hw(),
                padding: padding.hw(),
                dilation: (1, 1),
                ceil_mode,
            },
            _ => return Ok(None),
        };
        window.validate(layer)?;
        Ok(Some(window))
    }
}

impl GraphSpec {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidGraph(format!("graph JSON: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a GraphSpec always serialises")
    }

    /// Builds the graph with parameters from `state`. Returns it with the names of the
    /// state-dict tensors it used.
    pub fn build(&self, state: &StateDict) -> Result<(Graph, HashSet<String>)> {
        let mut used = HashSet::new();
        let mut nodes = vec![Node::new(INPUT, Op::Input, vec![])];
        for spec in &self.nodes {
            let inputs = match &spec.inputs {
                Some(names) => names
                    .iter()
                    .map(|n| {
                        nodes.iter().position(|node: &Node| node.answers_to(n)).ok_or_else(|| {
                            Error::InvalidGraph(format!("`{}` reads `{n}`, which is not defined before it", spec.name))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                None => vec![nodes.len() - 1],
            };
            let prefix = spec.params.as_deref().unwrap_or(&spec.name);
            let op = build_op(&spec.name, &spec.op, prefix, state, &mut used)?;
            let mut node = Node::new(spec.name.clone(), op, inputs);
            node.aliases = spec.aliases.clone();
            nodes.push(node);
        }
        Ok((Graph::new(nodes)?, used))
    }
}

fn build_op(name: &str, spec: &OpSpec, prefix: &str, state: &StateDict, used: &mut HashSet<String>) -> Result<Op> {
    let mut take = |suffix: &str, rank: usize| -> Result<candle_core::Tensor> {
        let key = format!("{prefix}.{suffix}");
        let t = state.require(&key, rank)?;
        used.insert(key);
        Ok(t)
    };
    let optional = |suffix: &str, used: &mut HashSet<String>| -> Result<Option<Tensor>> {
        let key = format!("{prefix}.{suffix}");
        if !state.contains(&key) {
            return Ok(None);
        }
        used.insert(key.clone());
        Ok(Some(Tensor::from_candle(state.require(&key, 1)?)?))
    };
    let optional_bias = |used: &mut HashSet<String>| optional("bias", used);
    let unsupported = |reason: &str| Error::UnsupportedLayer {
        layer: name.to_string(),
        kind: format!("{spec:?}").split([' ', '{']).next().unwrap_or("").to_string(),
        reason: reason.to_string(),
    };
    Ok(match *spec {
        OpSpec::Conv2d { .. } => {
            let geometry = spec.conv_geometry(name)?.expect("a Conv2d spec has a geometry");
            let weight = Tensor::from_candle(take("weight", 4)?)?;
            Op::Conv2d(Conv2d::new(weight, optional_bias(used)?, geometry).map_err(|e| named(name, e))?)
        }
        OpSpec::Linear {
            weight: ref weight_name,
            bias: ref bias_name,
        } => {
            let (weight, bias) = match (weight_name, bias_name) {
                (None, None) => (take("weight", 2)?, optional_bias(used)?),
                _ => {
                    let weight_key = weight_name.clone().unwrap_or_else(|| format!("{prefix}.weight"));
                    let weight = state.require(&weight_key, 2)?;
                    used.insert(weight_key);
                    let bias = match bias_name {
                        Some(key) => {
                            used.insert(key.clone());
                            Some(Tensor::from_candle(state.require(key, 1)?)?)
                        }
                        None => optional_bias(used)?,
                    };
                    (weight, bias)
                }
            };
            Op::Linear(Linear::new(Tensor::from_candle(weight)?, bias).map_err(|e| named(name, e))?)
        }
        OpSpec::BatchNorm2d { eps } => {
            let weight = take("weight", 1)?;
            let bias = take("bias", 1)?;
            let mean = take("running_mean", 1)?;
            let var = take("running_var", 1)?;
            let lowest = match var.elem_count() {
                0 => 0.0,
                _ => var.min(0)?.to_scalar::<f32>()?,
            };
            if lowest < 0.0 {
                let reason = format!("holds a negative variance ({lowest}): running variances are >= 0");
                return Err(state.bad_weights(&format!("{prefix}.running_var"), reason));
            }
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(Error::InvalidGraph(format!(
                    "BatchNorm2d `{name}` has eps {eps}; it must be a finite number >= 0"
                )));
            }
            Op::BatchNorm2d(BatchNorm2d::new(&weight, &bias, &mean, &var, eps).map_err(|e| named(name, e))?)
        }
        OpSpec::ReLU => Op::Activation(Activation::Relu),
        OpSpec::ReLU6 => Op::Activation(Activation::Relu6),
        OpSpec::LeakyReLU { negative_slope } => Op::Activation(Activation::LeakyRelu {
            negative_slope: negative_slope as f32,
        }),
        OpSpec::MaxPool2d { .. } => Op::MaxPool2d(MaxPool2d {
            window: spec.pool_window(name)?.expect("a pooling spec has a window"),
        }),
        OpSpec::AvgPool2d {
            count_include_pad,
            divisor_override,
            ..
        } => {
            let window = spec.pool_window(name)?.expect("a pooling spec has a window");
            Op::AvgPool2d(AvgPool2d {
                window,
                count_include_pad,
                divisor_override,
            })
        }
        OpSpec::AdaptiveAvgPool2d { output_size } => {
            let output = output_size.hw();
            if output.0 == 0 || output.1 == 0 {
                return Err(unsupported("output size 0"));
            }
            Op::AdaptiveAvgPool2d(AdaptiveAvgPool2d { output })
        }
        OpSpec::AdaptiveMaxPool2d { output_size } => {
            let output = output_size.hw();
            if output.0 == 0 || output.1 == 0 {
                return Err(unsupported("output size 0"));
            }
            Op::AdaptiveMaxPool2d(AdaptiveMaxPool2d { output })
        }
        OpSpec::Flatten => Op::Flatten(Flatten),
        OpSpec::Reshape { ref shape } => {
            if shape.iter().any(|&d| d < -1) || shape.iter().filter(|&&d| d == -1).count() > 1 {
                return Err(unsupported(&format!(
                    "shape {shape:?}: sizes are >= 0, with at most one -1"
                )));
            }
            Op::Reshape(Reshape { shape: shape.clone() })
        }
        OpSpec::Mean { ref dim, keepdim } if !dim.0.is_empty() => Op::Mean(Mean {
            dims: dim.0.clone(),
            keepdim,
        }),
        OpSpec::Mean { .. } => return Err(unsupported("no dimension to average over")),
        OpSpec::Softmax { dim } => Op::Softmax(Softmax { dim }),
        OpSpec::MatMul { transpose_rhs } => Op::MatMul(MatMul {
            rhs_transposed: transpose_rhs,
        }),
        OpSpec::Scale { factor } if factor.is_finite() => Op::Scale(Scale { factor: factor as f32 }),
        OpSpec::Scale { factor } => return Err(unsupported(&format!("factor {factor}"))),
        OpSpec::PrependTokens { ref tensors } if !tensors.is_empty() => {
            let tokens = tensors
                .iter()
                .map(|name| {
                    used.insert(name.clone());
                    Tensor::from_candle(state.require(name, 3)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Op::PrependTokens(PrependTokens::new(tokens).map_err(|e| named(name, e))?)
        }
        OpSpec::PrependTokens { .. } => return Err(unsupported("no token tensors named")),
        OpSpec::PositionEmbedding { ref tensor } => {
            used.insert(tensor.clone());
            let embedding = Tensor::from_candle(state.require(tensor, 3)?)?;
            Op::PositionEmbedding(PositionEmbedding::new(embedding).map_err(|e| named(name, e))?)
        }
        OpSpec::Transpose { dim0, dim1 } => Op::Transpose(Transpose { dims: (dim0, dim1) }),
        OpSpec::Upsample {
            size,
            scale_factor,
            mode,
            align_corners,
        } => {
            let size = match (size, scale_factor) {
                (Some(size), None) if size.hw().0 > 0 && size.hw().1 > 0 => {
                    UpsampleSize::Size(size.hw().0, size.hw().1)
                }
                (None, Some(Factors::Same(f))) => UpsampleSize::Scale(f, f),
                (None, Some(Factors::Each([h, w]))) => UpsampleSize::Scale(h, w),
                _ => return Err(unsupported("give either `size` (sides >= 1) or `scale_factor`")),
            };
            let mode = match (mode, align_corners) {
                (InterpolationMode::Bilinear, align_corners) => UpsampleMode::Bilinear { align_corners },
                (_, true) => return Err(unsupported("align_corners applies to the bilinear mode only")),
                (InterpolationMode::Nearest, false) => UpsampleMode::Nearest,
                (InterpolationMode::NearestExact, false) => UpsampleMode::NearestExact,
            };
            Op::Upsample(Upsample { mode, size })
        }
        OpSpec::Dropout | OpSpec::Identity | OpSpec::StochasticDepth => Op::Identity,
        OpSpec::Add => Op::Add(Add),
        OpSpec::Mul => Op::Mul(Mul),
        OpSpec::SiLU => Op::Activation(Activation::Silu),
        OpSpec::GELU { approximate } => Op::Activation(match approximate {
            GeluApproximation::None => Activation::Gelu,
            GeluApproximation::Tanh => Activation::GeluTanh,
        }),
        OpSpec::Sigmoid => Op::Activation(Activation::Sigmoid),
        OpSpec::Tanh => Op::Activation(Activation::Tanh),
        OpSpec::Hardswish => Op::Activation(Activation::Hardswish),
        OpSpec::Hardsigmoid => Op::Activation(Activation::Hardsigmoid),
        OpSpec::LayerNorm { eps, axis } => {
            layer_norm(name, axis, eps, optional("weight", used)?, optional_bias(used)?)?
        }
        OpSpec::LayerNorm2d { eps } => layer_norm(
            name,
            NormAxis::Channels,
            eps,
            optional("weight", used)?,
            optional_bias(used)?,
        )?,
        OpSpec::GroupNorm { num_groups, eps } => layer_norm(
            name,
            NormAxis::Groups(num_groups),
            eps,
            optional("weight", used)?,
            optional_bias(used)?,
        )?,
        OpSpec::LayerScale { ref tensor } => {
            let key = format!("{prefix}.{tensor}");
            let gamma = state.require_vector(&key)?;
            used.insert(key);
            Op::LayerScale(LayerScale::new(Tensor::from_candle(gamma)?)?)
        }
        OpSpec::Concat { dim } => Op::Concat(Concat { axis: dim }),
        OpSpec::Narrow { dim, start, length } => Op::Narrow(Narrow {
            axis: dim,
            start,
            len: length,
        }),
        OpSpec::ChannelShuffle { groups } if groups > 0 => Op::ChannelShuffle(ChannelShuffle { groups }),
        OpSpec::ChannelShuffle { .. } => return Err(unsupported("0 groups")),
        OpSpec::Permute { ref dims } => {
            let mut sorted = dims.clone();
            sorted.sort_unstable();
            if sorted.iter().enumerate().any(|(i, &d)| i != d) {
                return Err(unsupported(&format!(
                    "{dims:?} is not a permutation of 0..{}",
                    dims.len()
                )));
            }
            Op::Permute(Permute { order: dims.clone() })
        }
    })
}

fn layer_norm(name: &str, axis: NormAxis, eps: f64, weight: Option<Tensor>, bias: Option<Tensor>) -> Result<Op> {
    Ok(Op::LayerNorm(
        LayerNorm::new(axis, eps, weight, bias).map_err(|e| named(name, e))?,
    ))
}

fn named(name: &str, error: Error) -> Error {
    match error {
        Error::InvalidGraph(msg) => Error::InvalidGraph(format!("layer `{name}`: {msg}")),
        other => other,
    }
}
