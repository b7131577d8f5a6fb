//! A loaded model: its graph on a device, and the checks an input must pass before it runs.

use std::sync::OnceLock;

use candle_core::DType;

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::import::graph_json::{GraphSpec, METADATA_KEY};
use crate::import::{torchvision, StateDict};
use crate::layers::Op;
use crate::tensor::{Device, Tensor};

pub use crate::limits::MAX_INPUT_PIXELS;

/// How to interpret a state dict.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Force a torchvision architecture (`resnet50`, `vgg16_bn`, ...).
    pub arch: Option<String>,
    /// A custom graph description (takes precedence over one embedded in the file).
    pub graph: Option<GraphSpec>,
}

#[derive(Debug, Clone)]
pub struct Model {
    graph: Graph,
    /// [`Model::fused_graph`], built on first use.
    fused: OnceLock<Graph>,
    architecture: String,
    input_channels: usize,
    min_input_size: usize,
    /// The one side the model takes, where it takes one only.
    input_size: Option<usize>,
    default_cam_layer: Option<NodeId>,
    device: Device,
}

impl Model {
    /// Builds a model from safetensors bytes. `source` names them in error messages.
    pub fn from_safetensors(
        bytes: &[u8],
        source: &str,
        options: &LoadOptions,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let (state, metadata) = StateDict::from_safetensors(bytes, source, device)?;
        let embedded = metadata
            .get(METADATA_KEY)
            .map(|json| GraphSpec::from_json(json))
            .transpose()?;
        Self::from_state_dict(
            &state,
            options.graph.clone().or(embedded),
            options.arch.as_deref(),
            device,
        )
    }

    /// Builds a model from the bytes of a `.safetensors` file or a PyTorch `.pth` checkpoint,
    /// told apart by their contents. `source` names them in error messages.
    pub fn from_bytes(bytes: &[u8], source: &str, options: &LoadOptions, device: &candle_core::Device) -> Result<Self> {
        if crate::import::pth::looks_like_pth(bytes) {
            let state = crate::import::pth::state_dict_from_pth(bytes, source, device)?;
            return Self::from_state_dict(&state, options.graph.clone(), options.arch.as_deref(), device);
        }
        Self::from_safetensors(bytes, source, options, device)
    }

    /// Reads a `.safetensors` file (or a PyTorch `.pth` checkpoint) from disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path, options: &LoadOptions, device: &candle_core::Device) -> Result<Self> {
        let bytes = crate::limits::read_file(path)?;
        Self::from_bytes(&bytes, &path.display().to_string(), options, device)
    }

    /// Builds the graph from a state dict: an explicit graph first, then a forced torchvision
    /// architecture, then recognition from tensor names and shapes.
    pub fn from_state_dict(
        state: &StateDict,
        graph: Option<GraphSpec>,
        arch: Option<&str>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let (architecture, spec, strict) = match (graph, arch) {
            (Some(spec), _) => ("custom".to_string(), spec, false),
            (None, Some(arch)) => (arch.to_string(), torchvision::spec_for(arch, state)?, true),
            (None, None) => {
                let (arch, spec) = torchvision::recognise(state)?;
                (arch, spec, true)
            }
        };
        let (graph, used) = spec.build(state).map_err(|e| match e {
            Error::MissingTensor { .. } | Error::TensorShape { .. } if strict => Error::ArchitectureMismatch {
                arch: architecture.clone(),
                reason: e.to_string(),
            },
            other => other,
        })?;
        if strict {
            let mut unused: Vec<&str> = state.names().filter(|n| !used.contains(*n)).collect();
            if !unused.is_empty() {
                unused.sort();
                return Err(Error::ArchitectureMismatch {
                    arch: architecture,
                    reason: format!("tensors not used by it: {}", unused.join(", ")),
                });
            }
        }
        let default_cam_layer = match &spec.default_cam_layer {
            Some(name) => Some(graph.find(name)?),
            None => last_spatial_layer(&graph),
        };
        Ok(Self {
            graph,
            fused: OnceLock::new(),
            architecture,
            input_channels: spec.input_channels,
            min_input_size: spec.min_input_size.unwrap_or(1),
            input_size: spec.input_size,
            default_cam_layer,
            device: Device::Candle(device.clone()),
        })
    }

    /// The same model with its weights on `device`: uploaded once, here.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            graph: self.graph.to_device(device)?,
            fused: OnceLock::new(),
            architecture: self.architecture.clone(),
            device: device.clone(),
            ..*self
        })
    }

    /// The one input side the model takes, where it takes one only (a vision transformer's).
    pub fn input_size(&self) -> Option<usize> {
        self.input_size
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The same model with another graph of the same interface (the randomisation check's
    /// models with some layers' parameters drawn afresh).
    pub(crate) fn with_graph(&self, graph: Graph) -> Model {
        Model {
            graph,
            fused: OnceLock::new(),
            ..self.clone()
        }
    }

    /// [`Graph::with_fused_activations`] of the model's graph: the same values, one pass less
    /// over each BatchNorm's output each way. Built on first use and kept (it shares the
    /// parameters).
    pub fn fused_graph(&self) -> Result<&Graph> {
        if let Some(fused) = self.fused.get() {
            return Ok(fused);
        }
        let fused = self.graph.with_fused_activations()?;
        Ok(self.fused.get_or_init(|| fused))
    }

    /// The graph to take gradients at node `at` on: [`Model::fused_graph`], unless `at` is a
    /// BatchNorm it fused (whose own output it no longer keeps).
    pub fn graph_for_gradients_at(&self, at: NodeId) -> Result<&Graph> {
        let fused = self.fused_graph()?;
        let fused_away = matches!(&fused.node(at).op, Op::BatchNorm2d(bn) if bn.activation().is_some());
        Ok(if fused_away { &self.graph } else { fused })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `resnet18`, `vgg11_bn`, ..., or `custom`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    pub fn input_channels(&self) -> usize {
        self.input_channels
    }

    /// The number of classes, when the graph ends in a linear layer.
    pub fn num_classes(&self) -> Option<usize> {
        if let Op::Linear(l) = &self.graph.node(self.graph.output_id()).op {
            return Some(l.out_features());
        }
        // A convolutional classifier (SqueezeNet): the output's width at the smallest input.
        let side = self.input_size.unwrap_or(self.min_input_size);
        match self
            .graph
            .output_dims(&[1, self.input_channels, side, side])?
            .as_slice()
        {
            [_, classes] => Some(*classes),
            _ => None,
        }
    }

    /// Names of the layers, in order, that layer methods and Grad-CAM accept.
    pub fn layer_names(&self) -> Vec<&str> {
        self.graph.nodes()[1..].iter().map(|n| n.name.as_str()).collect()
    }

    /// The layer Grad-CAM explains when none is named: the last one with a spatial output.
    pub fn default_cam_layer(&self) -> Result<NodeId> {
        self.default_cam_layer
            .ok_or_else(|| Error::invalid_parameter("layer", "this model has no convolutional layer; name one"))
    }

    /// Checks a [N, C, H, W] batch against the model and moves it to the model's device as f32.
    pub fn prepare_input(&self, x: &candle_core::Tensor) -> Result<Tensor> {
        self.device.upload(&self.check_input(x)?)
    }

    /// Checks a [N, C, H, W] batch against the model; returns it as f32 on the host.
    pub fn check_input(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let dims = x.dims();
        let bad_shape = || Error::InputShape {
            found: dims.to_vec(),
            channels: self.input_channels,
        };
        let &[n, c, h, w] = dims else { return Err(bad_shape()) };
        if n == 0 || c != self.input_channels {
            return Err(bad_shape());
        }
        if let Some(size) = self.input_size.filter(|&s| (h, w) != (s, s)) {
            return Err(Error::InputSizeFixed {
                height: h,
                width: w,
                size,
            });
        }
        if h < self.min_input_size || w < self.min_input_size {
            return Err(Error::InputTooSmall {
                height: h,
                width: w,
                min: self.min_input_size,
            });
        }
        if h * w > MAX_INPUT_PIXELS {
            return Err(Error::invalid_parameter(
                "input",
                format!(
                    "{h}x{w} pixels is more than the {MAX_INPUT_PIXELS} a model input may have; resize the image first"
                ),
            ));
        }
        let x = x.to_dtype(DType::F32)?;
        let finite = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        if finite > 0 {
            return Err(Error::NonFiniteInput(finite));
        }
        Ok(x)
    }

    /// Logits [N, classes] for a batch, on the host.
    pub fn predict(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        self.check_forward_memory(x.dims())?;
        self.graph.predict(&self.prepare_input(x)?)?.to_host()
    }

    /// Refuses, before anything is allocated, a forward pass that does not fit the device's
    /// memory budget ([`crate::tensor::Device::memory_budget`]; wgpu bounds its tensors
    /// itself).
    pub(crate) fn check_forward_memory(&self, dims: &[usize]) -> Result<()> {
        let Some(budget) = self.device().memory_budget() else {
            return Ok(());
        };
        let Some(needed) = self.graph.forward_bytes(dims, dims.first().copied().unwrap_or(1)) else {
            return Ok(());
        };
        if needed > budget {
            return Err(Error::OverMemoryBudget {
                what: format!("classifying {} input(s) of {:?}", dims[0], &dims[1..]),
                needed_mib: needed.div_ceil(1 << 20),
                budget_mib: budget >> 20,
            });
        }
        Ok(())
    }
}

fn last_spatial_layer(graph: &Graph) -> Option<NodeId> {
    let nodes = graph.nodes();
    let head = nodes
        .iter()
        .position(|n| {
            matches!(
                n.op,
                Op::Flatten(_) | Op::Linear(_) | Op::AdaptiveAvgPool2d(_) | Op::AdaptiveMaxPool2d(_) | Op::Mean(_)
            )
        })
        .unwrap_or(nodes.len());
    (1..head)
        .rev()
        .find(|&i| !matches!(nodes[i].op, Op::MaxPool2d(_) | Op::AvgPool2d(_) | Op::Identity))
}
