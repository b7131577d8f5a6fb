//! Each method's tunable parameters with their ranges and defaults (pnpxai's `get_tunables`),
//! for the UI's controls and for hyper-parameter search.

use serde::Serialize;

use super::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    Linear,
    Log,
    Integer,
    Choice,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tunable {
    /// The parameter's field name in the method's JSON.
    pub name: &'static str,
    pub scale: Scale,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    /// For `Choice`: the allowed values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_choice: Option<&'static str>,
}

impl Tunable {
    const fn number(name: &'static str, scale: Scale, min: f64, max: f64, default: f64) -> Self {
        Self {
            name,
            scale,
            min,
            max,
            default,
            choices: Vec::new(),
            default_choice: None,
        }
    }

    fn choice(name: &'static str, choices: Vec<&'static str>, default: &'static str) -> Self {
        Self {
            name,
            scale: Scale::Choice,
            min: 0.0,
            max: 0.0,
            default: 0.0,
            choices,
            default_choice: Some(default),
        }
    }
}

/// The tunable parameters of `method`, with ranges; defaults are the method's current values.
pub fn tunables(method: &Method) -> Vec<Tunable> {
    use super::quadrature::Quadrature;
    match method {
        Method::Gradient(_) | Method::InputXGradient | Method::GradCam(_) => Vec::new(),
        Method::SmoothGrad(p) => vec![
            Tunable::number("n_samples", Scale::Integer, 1.0, 100.0, p.n_samples as f64),
            Tunable::number("noise_level", Scale::Linear, 0.0, 1.0, p.noise_level),
        ],
        Method::IntegratedGradients(p) => vec![
            Tunable::number("n_steps", Scale::Integer, 10.0, 100.0, p.n_steps as f64),
            Tunable::choice(
                "quadrature",
                Quadrature::ALL.iter().map(|q| q.name()).collect(),
                p.quadrature.name(),
            ),
        ],
        Method::Lrp(p) => p.tunables(),
    }
}
