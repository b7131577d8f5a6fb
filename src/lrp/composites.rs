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
}

impl Composite {
    pub const ALL: [Composite; 7] = [
        Composite::UniformEpsilon,
        Composite::EpsilonGammaBox,
        Composite::EpsilonPlus,
        Composite::EpsilonAlpha2Beta1,
        Composite::EpsilonPlusFlat,
        Composite::EpsilonAlpha2Beta1Flat,
        Composite::GammaIdentity,
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
}

impl CompositeParams {
    pub fn defaults(composite: Composite) -> Self {
        Self {
            epsilon: composite.default_epsilon(),
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
                Composite::UniformEpsilon => epsilon.clone(),
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
            if composite == Composite::GammaIdentity {
                return identity_rules(&node.op, p);
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

fn first_node(graph: &Graph, wanted: impl Fn(&Op) -> bool) -> Option<NodeId> {
    graph.nodes().iter().position(|n| wanted(&n.op))
}
