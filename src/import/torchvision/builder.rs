//! Writing a torchvision model down as a `GraphSpec`, one module at a time.
//!
//! Naming: every node is named as torchvision names the module it runs (`layer1.0.conv1`,
//! `features.3`). A module that torchvision applies more than once (a ResNet block's `relu`)
//! gives its first use the module's name and its k-th further use the name `<module>_<k>`
//! (`layer1.0.relu`, `layer1.0.relu_1`, `layer1.0.relu_2`), as `torch.fx` names repeated
//! calls. Such a repeated use reads the first use's tensors (`params`) when the module has any;
//! the repeated ReLUs here have none, so `params` stays unset.

use std::collections::HashMap;

use crate::import::graph_json::{GraphSpec, NodeSpec, OpSpec, Pair, INPUT};

/// The largest input side `min_input_size` looks at.
const MAX_SIDE: usize = 4096;

#[derive(Default)]
pub(super) struct Builder {
    nodes: Vec<NodeSpec>,
    /// How often each module has been used so far.
    uses: HashMap<String, usize>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a node running `module`; returns it so callers can set inputs or aliases.
    pub fn node(&mut self, module: &str, op: OpSpec) -> &mut NodeSpec {
        let uses = self.uses.entry(module.to_string()).or_insert(0);
        let (name, params) = match *uses {
            0 => (module.to_string(), None),
            k => (format!("{module}_{k}"), has_params(&op).then(|| module.to_string())),
        };
        *uses += 1;
        self.nodes.push(NodeSpec {
            name,
            op,
            inputs: None,
            aliases: Vec::new(),
            params,
        });
        self.nodes.last_mut().expect("just pushed")
    }

    /// The name of the last node (the graph input before any).
    pub fn last(&self) -> String {
        self.nodes.last().map_or_else(|| INPUT.to_string(), |n| n.name.clone())
    }

    /// Adds aliases to the last node.
    pub fn alias_last<S: Into<String>>(&mut self, aliases: impl IntoIterator<Item = S>) {
        let node = self.nodes.last_mut().expect("aliases go on an existing node");
        node.aliases.extend(aliases.into_iter().map(Into::into));
    }

    /// `nn.Conv2d` with square kernel, stride and padding.
    pub fn conv(&mut self, module: &str, kernel: usize, stride: usize, padding: usize, groups: usize) -> &mut NodeSpec {
        let op = OpSpec::Conv2d {
            kernel_size: Pair::Same(kernel),
            stride: Pair::Same(stride),
            padding: Pair::Same(padding),
            dilation: Pair::Same(1),
            groups,
        };
        self.node(module, op)
    }

    /// `nn.BatchNorm2d` with torchvision's eps.
    pub fn bn(&mut self, module: &str) -> &mut NodeSpec {
        self.bn_eps(module, 1e-5)
    }

    /// `nn.BatchNorm2d(eps=...)`.
    pub fn bn_eps(&mut self, module: &str, eps: f64) -> &mut NodeSpec {
        self.node(module, OpSpec::BatchNorm2d { eps })
    }

    pub fn relu(&mut self, module: &str) -> &mut NodeSpec {
        self.node(module, OpSpec::ReLU)
    }

    pub fn max_pool(&mut self, module: &str, kernel: usize, stride: usize, padding: usize) -> &mut NodeSpec {
        self.max_pool_with(module, kernel, stride, padding, false)
    }

    /// `nn.MaxPool2d(kernel, stride, padding, ceil_mode=...)`.
    pub fn max_pool_with(
        &mut self,
        module: &str,
        kernel: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
    ) -> &mut NodeSpec {
        let op = OpSpec::MaxPool2d {
            kernel_size: Pair::Same(kernel),
            stride: Some(Pair::Same(stride)),
            padding: Pair::Same(padding),
            dilation: Pair::Same(1),
            ceil_mode,
        };
        self.node(module, op)
    }

    pub fn adaptive_avg_pool(&mut self, module: &str, output: usize) -> &mut NodeSpec {
        self.node(
            module,
            OpSpec::AdaptiveAvgPool2d {
                output_size: Pair::Same(output),
            },
        )
    }

    pub fn flatten(&mut self, module: &str) -> &mut NodeSpec {
        self.node(module, OpSpec::Flatten)
    }

    pub fn dropout(&mut self, module: &str) -> &mut NodeSpec {
        self.node(module, OpSpec::Dropout)
    }

    pub fn linear(&mut self, module: &str) -> &mut NodeSpec {
        self.node(
            module,
            OpSpec::Linear {
                weight: None,
                bias: None,
            },
        )
    }

    /// A residual sum of the named nodes.
    pub fn add(&mut self, name: &str, inputs: [&str; 2]) -> &mut NodeSpec {
        let node = self.node(name, OpSpec::Add);
        node.inputs = Some(inputs.iter().map(|s| s.to_string()).collect());
        node
    }

    /// torchvision's `Conv2dNormActivation` named `p`: `p.0` conv (padding (k - 1) / 2), `p.1`
    /// BatchNorm, `p.2` the activation when there is one; the last also answers to `p`.
    pub fn conv_norm_act(
        &mut self,
        p: &str,
        kernel: usize,
        stride: usize,
        groups: usize,
        eps: f64,
        activation: Option<OpSpec>,
    ) {
        self.conv(&format!("{p}.0"), kernel, stride, (kernel - 1) / 2, groups);
        self.bn_eps(&format!("{p}.1"), eps);
        if let Some(activation) = activation {
            self.node(&format!("{p}.2"), activation);
        }
        self.alias_last([p]);
    }

    /// A concatenation of the named nodes along the channels.
    pub fn concat<S: AsRef<str>>(&mut self, name: &str, inputs: &[S]) -> &mut NodeSpec {
        let node = self.node(name, OpSpec::Concat { dim: 1 });
        node.inputs = Some(inputs.iter().map(|s| s.as_ref().to_string()).collect());
        node
    }

    /// torchvision's `SqueezeExcitation` named `p` on the last node: `activation` between its
    /// two 1x1 convs and `gate` squashing the scale (SiLU and Sigmoid in EfficientNet, ReLU and
    /// Hardsigmoid in MobileNetV3, ReLU and Sigmoid in RegNet); `scale * input` is `p.mul`.
    pub fn squeeze_excitation(&mut self, p: &str, activation: OpSpec, gate: OpSpec) {
        let input = self.last();
        self.adaptive_avg_pool(&format!("{p}.avgpool"), 1);
        self.conv(&format!("{p}.fc1"), 1, 1, 0, 1);
        self.node(&format!("{p}.activation"), activation);
        self.conv(&format!("{p}.fc2"), 1, 1, 0, 1);
        self.node(&format!("{p}.scale_activation"), gate);
        let scale = self.last();
        self.mul(&format!("{p}.mul"), [&input, &scale]);
        self.alias_last([p]);
    }

    /// An element-wise product of the named nodes.
    pub fn mul(&mut self, name: &str, inputs: [&str; 2]) -> &mut NodeSpec {
        let node = self.node(name, OpSpec::Mul);
        node.inputs = Some(inputs.iter().map(|s| s.to_string()).collect());
        node
    }

    /// The finished description of an RGB model.
    pub fn finish(self, default_cam_layer: &str) -> GraphSpec {
        let mut spec = GraphSpec {
            input_channels: 3,
            min_input_size: None,
            input_size: None,
            default_cam_layer: Some(default_cam_layer.to_string()),
            nodes: self.nodes,
        };
        spec.min_input_size = Some(min_input_size(&spec));
        spec
    }
}

/// Whether a node of this kind reads tensors from the state dict.
pub(super) fn has_params(op: &OpSpec) -> bool {
    matches!(
        op,
        OpSpec::Conv2d { .. }
            | OpSpec::Linear { .. }
            | OpSpec::BatchNorm2d { .. }
            | OpSpec::LayerNorm { .. }
            | OpSpec::LayerNorm2d { .. }
            | OpSpec::GroupNorm { .. }
            | OpSpec::LayerScale { .. }
            | OpSpec::PrependTokens { .. }
            | OpSpec::PositionEmbedding { .. }
    )
}

/// The smallest square input side for which every window of the graph fits (and residual
/// branches agree in size).
pub(super) fn min_input_size(spec: &GraphSpec) -> usize {
    (1..=MAX_SIDE).find(|&side| runs_at(spec, side)).unwrap_or(MAX_SIDE)
}

/// Follows the spatial size of a `side` x `side` input through the graph.
fn runs_at(spec: &GraphSpec, side: usize) -> bool {
    let mut sizes: Vec<(usize, usize)> = vec![(side, side)];
    let mut names: HashMap<&str, usize> = HashMap::from([(INPUT, 0)]);
    for node in &spec.nodes {
        let inputs: Option<Vec<(usize, usize)>> = match &node.inputs {
            Some(list) => list.iter().map(|n| names.get(n.as_str()).map(|&i| sizes[i])).collect(),
            None => Some(vec![*sizes.last().expect("the input is there")]),
        };
        let Some(inputs) = inputs else { return false };
        let Some(&hw) = inputs.first() else { return false };
        let out = match node.op {
            OpSpec::Conv2d { .. } => match node.op.conv_geometry(&node.name) {
                Ok(Some(geometry)) => geometry.output_hw(hw),
                _ => None,
            },
            OpSpec::MaxPool2d { .. } | OpSpec::AvgPool2d { .. } => match node.op.pool_window(&node.name) {
                Ok(Some(window)) => window.output_hw(hw),
                _ => None,
            },
            OpSpec::AdaptiveAvgPool2d { output_size } | OpSpec::AdaptiveMaxPool2d { output_size } => {
                Some(output_size.hw())
            }
            OpSpec::Add | OpSpec::Concat { .. } => inputs.iter().all(|&s| s == hw).then_some(hw),
            _ => Some(hw),
        };
        let Some(out) = out.filter(|&(h, w)| h > 0 && w > 0) else {
            return false;
        };
        names.insert(node.name.as_str(), sizes.len());
        for alias in &node.aliases {
            names.insert(alias.as_str(), sizes.len());
        }
        sizes.push(out);
    }
    true
}
