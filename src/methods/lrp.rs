//! Layer-wise Relevance Propagation as a method: canonize (merge BatchNorm), run forward
//! once, then walk back applying each node's rule where the gradient walk would apply its
//! input-VJP. Relevance starts one-hot on the target (pnpxai, zennit's usual call) or at the
//! target's logit value.

use serde::{Deserialize, Serialize};

use super::probe::{one_hot, Probe, Progress};
use super::{Attribution, Parameter, Scale};
use crate::error::{Error, Result};
use crate::layers::Layer;
use crate::lrp::{
    assign_rules, merge_batch_norms, nonnegative_outputs, Bound, Composite, CompositeParams, MergeConvention, Rule,
    Selector,
};
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrpParams {
    pub composite: Composite,
    #[serde(flatten)]
    pub params: CompositeParams,
    /// Rules that override the composite, by layer kind or by layer name.
    #[serde(default)]
    pub rules: Vec<(Selector, Rule)>,
    /// Start from the target's logit value instead of 1.
    #[serde(default)]
    pub start_from_logit: bool,
    #[serde(default)]
    pub merge_convention: MergeConvention,
}

impl LrpParams {
    pub fn new(composite: Composite) -> Self {
        Self {
            composite,
            params: CompositeParams::defaults(composite),
            rules: Vec::new(),
            start_from_logit: false,
            merge_convention: MergeConvention::default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let p = &self.params;
        for (name, v) in [
            ("epsilon", p.epsilon),
            ("gamma", p.gamma),
            ("linear_gamma", p.linear_gamma),
            ("stabilizer", p.stabilizer),
            ("alpha", p.alpha),
            ("beta", p.beta),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid_parameter(
                    name,
                    format!("{v} is not a finite number >= 0"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        let number = |key, label, help| Parameter::number(key, label, help).at_least(0.0);
        let mut parameters = Vec::new();
        if self.composite != Composite::GammaIdentity {
            parameters.push(
                number(
                    "epsilon",
                    "ε (stabiliser)",
                    "epsilon of the Epsilon rule (linear layers; every layer for lrp-uniform-epsilon)",
                )
                .tuned(Scale::Log, 1e-6, 1.0),
            );
        }
        match self.composite {
            Composite::GammaIdentity => parameters.push(
                number(
                    "gamma",
                    "γ (positive boost)",
                    "gamma of the Gamma rule on every conv and linear layer",
                )
                .tuned(Scale::Log, 1e-6, 1.0),
            ),
            Composite::EpsilonGammaBox => parameters.extend([
                number(
                    "gamma",
                    "γ (positive boost)",
                    "gamma of the Gamma rule on the convolutions",
                )
                .tuned(Scale::Log, 1e-6, 1.0),
                Parameter::text::<Bound>(
                    "low",
                    "ZBox lower bound",
                    "the input's lowest value (normalised space) for ZBox on the first layer",
                    "a number, or one per channel: v1,v2,v3",
                ),
                Parameter::text::<Bound>(
                    "high",
                    "ZBox upper bound",
                    "the input's highest value (normalised space) for ZBox on the first layer",
                    "a number, or one per channel: v1,v2,v3",
                ),
            ]),
            Composite::EpsilonAlpha2Beta1 | Composite::EpsilonAlpha2Beta1Flat => parameters.extend([
                number("alpha", "α", "weight of the positive contributions (AlphaBeta rule)"),
                number("beta", "β", "weight of the negative contributions (AlphaBeta rule)"),
            ]),
            Composite::CpLrp => parameters.extend([
                number(
                    "gamma",
                    "γ on convolutions",
                    "gamma of the Gamma rule on the convolutions (the patch embedding)",
                )
                .tuned(Scale::Log, 1e-6, 1.0),
                number(
                    "linear_gamma",
                    "γ on linear layers",
                    "gamma of the Gamma rule on the linear layers outside attention (lxt's ViT recipe: 0.05)",
                )
                .tuned(Scale::Log, 1e-6, 1.0),
            ]),
            Composite::UniformEpsilon | Composite::EpsilonPlus | Composite::EpsilonPlusFlat | Composite::AttnLrp => {}
        }
        parameters.extend([
            number("stabilizer", "Stabiliser", "the stabiliser of every rule but Epsilon (zennit's 1e-6)"),
            Parameter::bool(
                "start_from_logit",
                "Start from the logit",
                "start from the target's logit value instead of 1",
            ),
            Parameter::choice::<MergeConvention>(
                "merge_convention",
                "BatchNorm merge",
                "what remains of a BatchNorm merged into the layer before it: exact (zennit >= 1.0) or keep-eps (zennit 0.5)",
                MergeConvention::ALL.map(MergeConvention::name).to_vec(),
            ),
            Parameter::json::<Vec<(Selector, Rule)>>(
                "rules",
                "Rule overrides",
                "rules that override the composite, by layer kind or name: [[{\"kind\": \"Linear\"}, {\"rule\": \"epsilon\", \"epsilon\": 0.1}]]",
            ),
        ]);
        parameters
    }
}

pub(crate) async fn relevance(
    probe: &Probe<'_>,
    input: &Tensor,
    params: &LrpParams,
    progress: &mut Progress<'_>,
) -> Result<Attribution> {
    progress.report(0, 1)?;
    let graph = merge_batch_norms(probe.model.graph(), params.merge_convention)?;
    let rules = assign_rules(&graph, params.composite, &params.params, &params.rules);
    let nonnegative = nonnegative_outputs(&graph);
    let activations = graph.forward(input, None)?;
    let logits = activations.output();
    let classes = logits.dim(1)?;
    let mut seed = one_hot(probe.targets, classes, &logits.device())?;
    if params.start_from_logit {
        seed = seed.mul(logits)?;
    }
    let relevance = graph.backward(
        &activations,
        graph.output_id(),
        seed,
        probe.at,
        &mut |id, node, inputs, output, r| match &rules[id] {
            Some(rule) => rule.apply(
                &node.op,
                inputs,
                output,
                r,
                node.inputs.first().is_some_and(|&i| nonnegative[i]),
            ),
            None => node.op.input_vjp(inputs, output, r),
        },
    )?;
    input.device().settle().await?;
    progress.report(1, 1)?;
    Ok(Attribution {
        attributions: relevance,
        convergence_delta: None,
    })
}
