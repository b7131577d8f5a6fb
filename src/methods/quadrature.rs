//! Integration points and weights on [0, 1], exactly as captum's `approximation_methods`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum Quadrature {
    RiemannLeft,
    RiemannRight,
    RiemannMiddle,
    RiemannTrapezoid,
    /// Named as captum names it (`gausslegendre`); `gauss-legendre` is accepted too.
    #[default]
    #[serde(rename = "gausslegendre")]
    GaussLegendre,
}

impl Quadrature {
    pub const ALL: [Quadrature; 5] = [
        Quadrature::GaussLegendre,
        Quadrature::RiemannLeft,
        Quadrature::RiemannRight,
        Quadrature::RiemannMiddle,
        Quadrature::RiemannTrapezoid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quadrature::RiemannLeft => "riemann-left",
            Quadrature::RiemannRight => "riemann-right",
            Quadrature::RiemannMiddle => "riemann-middle",
            Quadrature::RiemannTrapezoid => "riemann-trapezoid",
            Quadrature::GaussLegendre => "gausslegendre",
        }
    }

    /// (step sizes, alphas) for `n` steps, in captum's order.
    pub fn points(self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let nf = n as f64;
        let linspace = |start: f64, end: f64| torch_linspace_f32(start, end, n);
        match self {
            Quadrature::RiemannLeft => (vec![1.0 / nf; n], linspace(0.0, 1.0 - 1.0 / nf)),
            Quadrature::RiemannRight => (vec![1.0 / nf; n], linspace(1.0 / nf, 1.0)),
            Quadrature::RiemannMiddle => (vec![1.0 / nf; n], linspace(1.0 / (2.0 * nf), 1.0 - 1.0 / (2.0 * nf))),
            Quadrature::RiemannTrapezoid => {
                // captum halves the end weights of 1/n (so they sum to (n-1)/n, not 1).
                let mut steps = vec![1.0 / nf; n];
                steps[0] /= 2.0;
                steps[n - 1] /= 2.0;
                (steps, linspace(0.0, 1.0))
            }
            Quadrature::GaussLegendre => {
                let (nodes, weights) = gauss_legendre(n);
                let alphas = nodes.iter().map(|x| 0.5 * (x + 1.0)).collect();
                let steps = weights.iter().map(|w| 0.5 * w).collect();
                (steps, alphas)
            }
        }
    }

    /// The fewest steps the rule is defined for.
    pub fn min_steps(self) -> usize {
        match self {
            Quadrature::GaussLegendre => 1,
            // captum asserts n > 1 for every Riemann rule
            _ => 2,
        }
    }
}

/// Any case, `_` for `-`, and `gauss-legendre` for captum's `gausslegendre`.
impl std::str::FromStr for Quadrature {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let name = match name.trim().to_ascii_lowercase().as_str() {
            "gauss-legendre" | "gauss_legendre" => "gausslegendre",
            _ => name,
        };
        Error::choose(name, "a quadrature rule", &Self::ALL, Self::name)
    }
}

impl TryFrom<String> for Quadrature {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

/// `torch.linspace(start, end, n).tolist()`: captum's Riemann alphas are float32 values,
/// computed as PyTorch's CPU kernel does (from the start for the first half, from the end for
/// the second).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start as f64];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 } as f64)
        .collect()
}

/// Gauss-Legendre nodes (ascending, as numpy's `leggauss`) and weights on [-1, 1], by Newton's
/// method on the Legendre recurrence.
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        for _ in 0..100 {
            let (p, dp) = legendre(n, x);
            let dx = p / dp;
            x -= dx;
            if dx.abs() < 1e-16 {
                break;
            }
        }
        let (_, dp) = legendre(n, x);
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        nodes[i] = -x;
        nodes[n - 1 - i] = x;
        weights[i] = w;
        weights[n - 1 - i] = w;
    }
    (nodes, weights)
}

/// P_n(x) and P_n'(x).
fn legendre(n: usize, x: f64) -> (f64, f64) {
    if n == 0 {
        return (1.0, 0.0);
    }
    let (mut p0, mut p1) = (1.0, x);
    for k in 2..=n {
        let kf = k as f64;
        let p2 = ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf;
        p0 = p1;
        p1 = p2;
    }
    let dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        for n in [1, 2, 5, 16, 50] {
            let (steps, alphas) = Quadrature::GaussLegendre.points(n);
            // exact for degree 2n-1: the integral of a^(2n-1) over [0, 1] is 1/(2n)
            let deg = 2 * n - 1;
            let approx: f64 = steps.iter().zip(&alphas).map(|(w, a)| w * a.powi(deg as i32)).sum();
            assert!((approx - 1.0 / (deg as f64 + 1.0)).abs() < 1e-12, "n={n}: {approx}");
            assert!(alphas.windows(2).all(|w| w[0] < w[1]), "ascending");
        }
    }

    #[test]
    fn json_names_are_the_listed_names() {
        for q in Quadrature::ALL {
            let json = serde_json::to_string(&q).unwrap();
            assert_eq!(json, format!("\"{}\"", q.name()));
            assert_eq!(serde_json::from_str::<Quadrature>(&json).unwrap(), q);
        }
        assert_eq!(
            serde_json::from_str::<Quadrature>("\"gauss-legendre\"").unwrap(),
            Quadrature::GaussLegendre
        );
    }

    #[test]
    fn riemann_rules_match_captum() {
        let (s, a) = Quadrature::RiemannTrapezoid.points(5);
        assert_eq!(a, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(s, vec![0.1, 0.2, 0.2, 0.2, 0.1]);
        let (_, a) = Quadrature::RiemannMiddle.points(4);
        assert_eq!(a, vec![0.125, 0.375, 0.625, 0.875]);
    }
}
