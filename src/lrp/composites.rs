//! Composites: which rule each layer gets. The named ones are zennit's (as pnpxai ships them);
//! a user rule map can override by layer type or by layer name (zennit's NameMapComposite).

use serde::{Deserialize, Serialize};

use super::rules::{Bound, Rule, STABILIZER};
use crate::graph::{Graph, NodeId};
use crate::layers::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Composite {
    /// Epsilon (default 0.25) on every conv and linear layer (pnpxai LRPUniformEpsilon).
    UniformEpsilon,
    /// ZBox on the first conv, Gamma on other convs, Epsilon on linear layers.
    EpsilonGammaBox,
    /// ZPlus on convs, Epsilon on linear layers.
    EpsilonPlus,
    /// AlphaBeta(2, 1) on convs, Epsilon on linear layers.
    EpsilonAlpha2Beta1,
    /// EpsilonPlus with Flat on the first conv or linear layer.
    EpsilonPlusFlat,
    /// EpsilonAlpha2Beta1 with Flat on the first conv or linear layer.
    EpsilonAlpha2Beta1Flat,
    /// AttnLRP's rules outside attention, as lxt 2.1 applies them to vision models: Gamma on
    /// every conv and linear layer, the identity rule on activations, LayerNorm and layer
    /// scales, the uniform rule on element-wise products.
    GammaIdentity,
    /// AttnLRP (Achtibat et al. 2024) as lxt 2.1 computes it: Epsilon on every conv and linear
    /// layer, the identity rule on activations and LayerNorm, the uniform rule on attention's
    /// two matrix products (and on element-wise products), relevance through the softmax in
    /// proportion to its gradient.
    AttnLrp,
    /// CP-LRP (Ali et al. 2022) with the rules lxt 2.1 ships for torchvision's ViT: the
    /// attention weights held constant (no relevance through query and key), Gamma on the
    /// convolutions (`gamma`) and on the linear layers outside attention (`linear_gamma`),
    /// attention's own projections Epsilon, the identity rule on activations and LayerNorm.
    CpLrp,
}

impl Composite {
    pub const ALL: [Composite; 9] = [
        Composite::UniformEpsilon,
        Composite::EpsilonGammaBox,
        Composite::EpsilonPlus,
        Composite::EpsilonAlpha2Beta1,
        Composite::EpsilonPlusFlat,
        Composite::EpsilonAlpha2Beta1Flat,
        Composite::GammaIdentity,
        Composite::AttnLrp,
        Composite::CpLrp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Composite::UniformEpsilon => "lrp-uniform-epsilon",
            Composite::EpsilonGammaBox => "lrp-epsilon-gamma-box",
            Composite::EpsilonPlus => "lrp-epsilon-plus",
            Composite::EpsilonAlpha2Beta1 => "lrp-epsilon-alpha2-beta1",
            Composite::EpsilonPlusFlat => "lrp-epsilon-plus-flat",
            Composite::EpsilonAlpha2Beta1Flat => "lrp-epsilon-alpha2-beta1-flat",
            Composite::GammaIdentity => "lrp-gamma-identity",
            Composite::AttnLrp => "lrp-attn",
            Composite::CpLrp => "lrp-cp",
        }
    }

    /// The composite's name for people.
    pub fn label(self) -> &'static str {
        match self {
            Composite::UniformEpsilon => "LRP: uniform ε",
            Composite::EpsilonGammaBox => "LRP: ε + γ + z-box",
            Composite::EpsilonPlus => "LRP: ε + z⁺",
            Composite::EpsilonAlpha2Beta1 => "LRP: ε + α2β1",
            Composite::EpsilonPlusFlat => "LRP: ε + z⁺ + flat",
            Composite::EpsilonAlpha2Beta1Flat => "LRP: ε + α2β1 + flat",
            Composite::GammaIdentity => "LRP: γ + identity (lxt)",
            Composite::AttnLrp => "AttnLRP (lxt)",
            Composite::CpLrp => "CP-LRP (lxt)",
        }
    }

    /// One sentence on which rule goes where.
    pub fn help(self) -> &'static str {
        match self {
            Composite::UniformEpsilon => "Layer-wise Relevance Propagation with the ε rule on every layer.",
            Composite::EpsilonGammaBox => {
                "LRP: z-box on the first layer, γ on the other convolutions, ε on the dense layers."
            }
            Composite::EpsilonPlus => "LRP: z⁺ on convolutions, ε on dense layers (zennit EpsilonPlus).",
            Composite::EpsilonAlpha2Beta1 => "LRP: α2β1 on convolutions, ε on dense layers.",
            Composite::EpsilonPlusFlat => "LRP ε + z⁺ with the flat rule on the first layer.",
            Composite::EpsilonAlpha2Beta1Flat => "LRP ε + α2β1 with the flat rule on the first layer.",
            Composite::GammaIdentity => {
                "LRP as lxt (AttnLRP) does it: γ on every layer with weights, relevance passed through activations, \
                 LayerNorm's deviation held constant, products split evenly. For EfficientNets, ConvNeXts and ViTs."
            }
            Composite::AttnLrp => {
                "Attention-aware LRP for transformers: ε on layers with weights, relevance passed through activations \
                 and LayerNorm, attention's products split evenly between their factors."
            }
            Composite::CpLrp => {
                "Conservative propagation for transformers: attention weights held constant, so relevance flows \
                 through the values only; γ on layers with weights outside attention."
            }
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name || c.name().trim_start_matches("lrp-") == name)
    }

    /// The epsilon of the linear layers (and of everything for UniformEpsilon) by default.
    pub fn default_epsilon(self) -> f64 {
        match self {
            Composite::UniformEpsilon => 0.25,
            // lxt takes the plain gradient there: epsilon only keeps 0 / 0 away.
            Composite::AttnLrp | Composite::CpLrp => LXT_STABILIZER,
            _ => 1e-6,
        }
    }
}

/// Which layers a user rule applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// A layer kind: `Conv2d`, `Linear`, `ReLU`, `AvgPool2d`, `Add`, ...
    Kind(String),
    /// One layer by name (or alias).
    Name(String),
}

/// The composite's knobs, with pnpxai's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositeParams {
    pub epsilon: f64,
    pub gamma: f64,
    pub alpha: f64,
    pub beta: f64,
    pub low: Bound,
    pub high: Bound,
    pub stabilizer: f64,
    /// CP-LRP's Gamma on linear layers outside attention (lxt's ViT recipe: 0.05).
    #[serde(default = "linear_gamma")]
    pub linear_gamma: f64,
}

const fn linear_gamma() -> f64 {
    0.05
}

impl CompositeParams {
    pub fn defaults(composite: Composite) -> Self {
        Self {
            epsilon: composite.default_epsilon(),
            linear_gamma: linear_gamma(),
            gamma: 0.25,
            alpha: 2.0,
            beta: 1.0,
            low: Bound::Scalar(-3.0),
            high: Bound::Scalar(3.0),
            stabilizer: STABILIZER,
        }
    }
}

/// Assigns a rule to every node of `graph`; None means "plain gradient" (max pooling routes
/// relevance to the argmax, flatten reshapes, identities pass), as zennit does for modules
/// without a rule.
pub fn assign_rules(
    graph: &Graph,
    composite: Composite,
    params: &CompositeParams,
    overrides: &[(Selector, Rule)],
) -> Vec<Option<Rule>> {
    let first_conv = first_node(graph, |op| matches!(op, Op::Conv2d(_)));
    let first_linear_type = first_node(graph, |op| matches!(op, Op::Conv2d(_) | Op::Linear(_)));
    let projections = attention_projections(graph);
    let p = params;
    graph
        .nodes()
        .iter()
        .enumerate()
        .map(|(id, node)| {
            // A name beats a kind, and later entries beat earlier ones.
            let by_name = overrides
                .iter()
                .rev()
                .find(|(s, _)| matches!(s, Selector::Name(n) if node.answers_to(n)));
            let by_kind = overrides
                .iter()
                .rev()
                .find(|(s, _)| matches!(s, Selector::Kind(k) if k.eq_ignore_ascii_case(node.op.kind())));
            if let Some((_, rule)) = by_name.or(by_kind) {
                return Some(rule.clone());
            }
            let epsilon = Rule::Epsilon { epsilon: p.epsilon };
            let conv_rule = || match composite {
                Composite::UniformEpsilon | Composite::AttnLrp | Composite::CpLrp => epsilon.clone(),
                Composite::EpsilonGammaBox if Some(id) == first_conv => Rule::ZBox {
                    low: p.low.clone(),
                    high: p.high.clone(),
                    stabilizer: p.stabilizer,
                },
                Composite::EpsilonGammaBox | Composite::GammaIdentity => Rule::Gamma {
                    gamma: p.gamma,
                    stabilizer: p.stabilizer,
                },
                Composite::EpsilonPlus | Composite::EpsilonPlusFlat => Rule::ZPlus {
                    stabilizer: p.stabilizer,
                },
                Composite::EpsilonAlpha2Beta1 | Composite::EpsilonAlpha2Beta1Flat => Rule::AlphaBeta {
                    alpha: p.alpha,
                    beta: p.beta,
                    stabilizer: p.stabilizer,
                },
            };
            let flat_first = matches!(
                composite,
                Composite::EpsilonPlusFlat | Composite::EpsilonAlpha2Beta1Flat
            );
            match composite {
                Composite::GammaIdentity => return identity_rules(&node.op, p),
                Composite::AttnLrp | Composite::CpLrp => {
                    return transformer_rules(&node.op, composite, p, projections.contains(&id))
                }
                _ => {}
            }
            match &node.op {
                Op::Conv2d(_) | Op::Linear(_) if flat_first && Some(id) == first_linear_type => Some(Rule::Flat {
                    stabilizer: p.stabilizer,
                }),
                Op::Conv2d(_) => Some(conv_rule()),
                Op::Linear(_) => Some(epsilon),
                Op::Activation(_) | Op::BatchNorm2d(_) => Some(Rule::Pass),
                Op::AvgPool2d(_) | Op::AdaptiveAvgPool2d(_) | Op::Add(_) => Some(Rule::Norm {
                    stabilizer: p.stabilizer,
                }),
                // zennit has no rule for these: the gradient (a gate's product, LayerNorm,
                // layer scale and permutations included).
                Op::Input
                | Op::MaxPool2d(_)
                | Op::AdaptiveMaxPool2d(_)
                | Op::Flatten(_)
                | Op::Reshape(_)
                | Op::Mean(_)
                | Op::Softmax(_)
                | Op::Upsample(_)
                | Op::MatMul(_)
                | Op::Scale(_)
                | Op::PrependTokens(_)
                | Op::PositionEmbedding(_)
                | Op::Identity
                | Op::Mul(_)
                | Op::LayerScale(_)
                | Op::LayerNorm(_)
                | Op::Permute(_)
                | Op::Transpose(_)
                | Op::Concat(_)
                | Op::Narrow(_)
                | Op::ChannelShuffle(_) => None,
            }
        })
        .collect()
}

/// What lxt divides by where it divides outside zennit's rules: the identity rule's input
/// (`x + 1e-10`); sums, pools and products are plain gradients there, which this matches
/// wherever their output is not within 1e-10 of 0.
pub const LXT_STABILIZER: f64 = 1e-10;

/// `Composite::GammaIdentity`'s rule for `op`: zennit's Gamma (with the composite's
/// stabiliser) on layers with weights, lxt's rules with lxt's stabiliser elsewhere.
fn identity_rules(op: &Op, p: &CompositeParams) -> Option<Rule> {
    let stabilizer = LXT_STABILIZER;
    match op {
        Op::Conv2d(_) | Op::Linear(_) => Some(Rule::Gamma {
            gamma: p.gamma,
            stabilizer: p.stabilizer,
        }),
        Op::Activation(_) | Op::LayerNorm(_) | Op::LayerScale(_) | Op::BatchNorm2d(_) => {
            Some(Rule::Identity { stabilizer })
        }
        Op::Mul(_) => Some(Rule::Uniform { stabilizer }),
        Op::AvgPool2d(_) | Op::AdaptiveAvgPool2d(_) | Op::Add(_) => Some(Rule::Norm { stabilizer }),
        _ => None,
    }
}

/// `Composite::AttnLrp`'s and `Composite::CpLrp`'s rule for `op`; `projection`: a linear
/// layer that computes attention's queries, keys or values or projects its output.
fn transformer_rules(op: &Op, composite: Composite, p: &CompositeParams, projection: bool) -> Option<Rule> {
    let stabilizer = LXT_STABILIZER;
    let cp = composite == Composite::CpLrp;
    match op {
        Op::Conv2d(_) if cp => Some(Rule::Gamma {
            gamma: p.gamma,
            stabilizer: p.stabilizer,
        }),
        Op::Linear(_) if cp && !projection => Some(Rule::Gamma {
            gamma: p.linear_gamma,
            stabilizer: p.stabilizer,
        }),
        Op::Conv2d(_) | Op::Linear(_) => Some(Rule::Epsilon { epsilon: p.epsilon }),
        Op::Activation(_) | Op::LayerNorm(_) | Op::LayerScale(_) | Op::BatchNorm2d(_) => {
            Some(Rule::Identity { stabilizer })
        }
        Op::MatMul(_) if cp => Some(Rule::ConstantWeights { stabilizer }),
        Op::MatMul(_) | Op::Mul(_) => Some(Rule::Uniform { stabilizer }),
        Op::Softmax(_)
        | Op::Scale(_)
        | Op::PositionEmbedding(_)
        | Op::Mean(_)
        | Op::AvgPool2d(_)
        | Op::AdaptiveAvgPool2d(_)
        | Op::Add(_) => Some(Rule::Norm { stabilizer }),
        _ => None,
    }
}

/// Linear layers that feed attention's products through reshapes only (query, key and value
/// projections, packed or not) or read its mixed values through reshapes only (the output
/// projection).
fn attention_projections(graph: &Graph) -> std::collections::HashSet<NodeId> {
    let nodes = graph.nodes();
    let reshaping = |op: &Op| {
        matches!(
            op,
            Op::Narrow(_) | Op::Reshape(_) | Op::Transpose(_) | Op::Permute(_) | Op::Scale(_)
        )
    };
    let mut readers: Vec<Vec<NodeId>> = vec![Vec::new(); nodes.len()];
    for (id, node) in nodes.iter().enumerate() {
        for &input in &node.inputs {
            readers[input].push(id);
        }
    }
    // Whether node `id` reaches a MatMul downstream through reshaping nodes only.
    fn feeds_product(
        id: NodeId,
        nodes: &[crate::graph::Node],
        readers: &[Vec<NodeId>],
        reshaping: &dyn Fn(&Op) -> bool,
    ) -> bool {
        readers[id].iter().any(|&r| {
            matches!(nodes[r].op, Op::MatMul(_))
                || (reshaping(&nodes[r].op) && feeds_product(r, nodes, readers, reshaping))
        })
    }
    // Whether node `id` is read from a MatMul upstream through reshaping nodes only.
    let reads_product = |id: NodeId| {
        let mut at = id;
        loop {
            match nodes[at].inputs.as_slice() {
                [input] if matches!(nodes[*input].op, Op::MatMul(_)) => return true,
                [input] if reshaping(&nodes[*input].op) => at = *input,
                _ => return false,
            }
        }
    };
    (0..nodes.len())
        .filter(|&id| matches!(nodes[id].op, Op::Linear(_)))
        .filter(|&id| feeds_product(id, nodes, &readers, &reshaping) || reads_product(id))
        .collect()
}

fn first_node(graph: &Graph, wanted: impl Fn(&Op) -> bool) -> Option<NodeId> {
    graph.nodes().iter().position(|n| wanted(&n.op))
}
