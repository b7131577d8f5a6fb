//! A Tree-structured Parzen Estimator sampler (Bergstra et al. 2011), with optuna's defaults:
//! the first `startup` trials are drawn uniformly; after them each parameter is drawn on its
//! own from a Parzen estimator of the best `gamma(n) = min(ceil(0.1 n), 25)` trials, as the
//! candidate (of 24) with the largest ratio of its density under the good trials to that
//! under the others. Numbers on a log scale live in log space; integers are rounded;
//! choices get a categorical estimator with a uniform prior.

use crate::methods::{Scale, Tunable};
use crate::rng::SplitMix64;

/// A suggested value: a number, or the index of a choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Number(f64),
    Choice(usize),
}

/// Draws values for `space` given the trials so far (their values and objectives, higher
/// better; a failed or pruned trial has no objective).
pub struct Tpe {
    rng: SplitMix64,
    startup: usize,
    candidates: usize,
}

impl Tpe {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            startup: 10,
            candidates: 24,
        }
    }

    pub fn suggest(&mut self, space: &[Tunable], history: &[(Vec<Value>, Option<f64>)]) -> Vec<Value> {
        let mut done: Vec<(&Vec<Value>, f64)> = history
            .iter()
            .filter_map(|(values, objective)| objective.filter(|o| o.is_finite()).map(|o| (values, o)))
            .collect();
        if done.len() < self.startup {
            return space.iter().map(|t| self.uniform(t)).collect();
        }
        done.sort_by(|a, b| b.1.total_cmp(&a.1));
        let good = (done.len() as f64 * 0.1).ceil().clamp(1.0, 25.0) as usize;
        let (best, rest) = done.split_at(good);
        space
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let column = |trials: &[(&Vec<Value>, f64)]| trials.iter().map(|(v, _)| v[k]).collect::<Vec<_>>();
                self.draw(t, &column(best), &column(rest))
            })
            .collect()
    }

    fn uniform(&mut self, t: &Tunable) -> Value {
        match t.scale {
            Scale::Choice => {
                Value::Choice(((self.rng.uniform() * t.choices.len() as f64) as usize).min(t.choices.len() - 1))
            }
            _ => {
                let (low, high) = bounds(t);
                Value::Number(from_space(t, low + self.rng.uniform() * (high - low)))
            }
        }
    }

    /// The candidate from the good trials' estimator that the bad trials' explains least.
    fn draw(&mut self, t: &Tunable, good: &[Value], bad: &[Value]) -> Value {
        if t.scale == Scale::Choice {
            let n = t.choices.len();
            let weights = |trials: &[Value]| -> Vec<f64> {
                let mut w = vec![1.0 / n as f64; n];
                for v in trials {
                    if let Value::Choice(i) = v {
                        w[(*i).min(n - 1)] += 1.0;
                    }
                }
                let total: f64 = w.iter().sum();
                w.iter().map(|x| x / total).collect()
            };
            let (l, g) = (weights(good), weights(bad));
            let mut best = (f64::NEG_INFINITY, 0);
            for _ in 0..self.candidates {
                let i = sample_categorical(&l, self.rng.uniform());
                let score = l[i].ln() - g[i].ln();
                if score > best.0 {
                    best = (score, i);
                }
            }
            return Value::Choice(best.1);
        }
        let (low, high) = bounds(t);
        let points = |trials: &[Value]| -> Vec<f64> {
            trials
                .iter()
                .filter_map(|v| match v {
                    Value::Number(x) => Some(to_space(t, *x)),
                    Value::Choice(_) => None,
                })
                .collect()
        };
        let (l, g) = (
            Parzen::new(&points(good), low, high),
            Parzen::new(&points(bad), low, high),
        );
        let mut best = (f64::NEG_INFINITY, (low + high) / 2.0);
        for _ in 0..self.candidates {
            let x = l.sample(&mut self.rng);
            let score = l.log_density(x) - g.log_density(x);
            if score > best.0 {
                best = (score, x);
            }
        }
        Value::Number(from_space(t, best.1))
    }
}

/// The parameter's range in the space the estimators work in.
fn bounds(t: &Tunable) -> (f64, f64) {
    match t.scale {
        Scale::Log => (t.min.max(f64::MIN_POSITIVE).ln(), t.max.max(f64::MIN_POSITIVE).ln()),
        Scale::Integer => (t.min - 0.5, t.max + 0.5),
        _ => (t.min, t.max),
    }
}

fn to_space(t: &Tunable, x: f64) -> f64 {
    match t.scale {
        Scale::Log => x.max(f64::MIN_POSITIVE).ln(),
        _ => x,
    }
}

fn from_space(t: &Tunable, x: f64) -> f64 {
    match t.scale {
        Scale::Log => x.exp().clamp(t.min, t.max),
        Scale::Integer => x.round().clamp(t.min, t.max),
        _ => x.clamp(t.min, t.max),
    }
}

fn sample_categorical(weights: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

/// A mixture of Gaussians truncated to [low, high]: one at each observation (bandwidth: the
/// larger gap to its neighbours, clipped as optuna clips it) and a wide prior at the centre.
struct Parzen {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    low: f64,
    high: f64,
}

impl Parzen {
    fn new(points: &[f64], low: f64, high: f64) -> Self {
        let span = (high - low).max(f64::MIN_POSITIVE);
        let mut mus: Vec<f64> = points.to_vec();
        mus.push((low + high) / 2.0);
        let mut order: Vec<usize> = (0..mus.len()).collect();
        order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
        let mut sigmas = vec![span; mus.len()];
        let min_sigma = span / (100f64).min(1.0 + mus.len() as f64);
        for (rank, &i) in order.iter().enumerate() {
            if i == mus.len() - 1 {
                continue; // the prior keeps the full span
            }
            let left = if rank > 0 {
                mus[i] - mus[order[rank - 1]]
            } else {
                mus[i] - low
            };
            let right = if rank + 1 < order.len() {
                mus[order[rank + 1]] - mus[i]
            } else {
                high - mus[i]
            };
            sigmas[i] = left.max(right).clamp(min_sigma, span);
        }
        Self { mus, sigmas, low, high }
    }

    fn sample(&self, rng: &mut SplitMix64) -> f64 {
        let k = ((rng.uniform() * self.mus.len() as f64) as usize).min(self.mus.len() - 1);
        // Rejection into [low, high]; a kernel that rarely lands inside falls back to uniform.
        for _ in 0..64 {
            let z = rng.normals(1)[0] as f64;
            let x = self.mus[k] + self.sigmas[k] * z;
            if (self.low..=self.high).contains(&x) {
                return x;
            }
        }
        self.low + rng.uniform() * (self.high - self.low)
    }

    fn log_density(&self, x: f64) -> f64 {
        let n = self.mus.len() as f64;
        let density: f64 = self
            .mus
            .iter()
            .zip(&self.sigmas)
            .map(|(&mu, &sigma)| {
                let mass = normal_cdf((self.high - mu) / sigma) - normal_cdf((self.low - mu) / sigma);
                let z = (x - mu) / sigma;
                (-0.5 * z * z).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt() * mass.max(1e-12))
            })
            .sum::<f64>()
            / n;
        density.max(1e-300).ln()
    }
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(name: &'static str, scale: Scale, min: f64, max: f64) -> Tunable {
        Tunable {
            name,
            scale,
            min,
            max,
            default: min,
            choices: Vec::new(),
            default_choice: None,
        }
    }

    /// On a smooth one-dimensional objective, TPE's trials after the startup ones land
    /// nearer the optimum than uniform draws do.
    #[test]
    fn concentrates_near_the_optimum() {
        let space = [
            number("x", Scale::Linear, 0.0, 10.0),
            number("n", Scale::Integer, 1.0, 50.0),
        ];
        let objective = |v: &[Value]| match (v[0], v[1]) {
            (Value::Number(x), Value::Number(n)) => -(x - 7.3).powi(2) - ((n - 12.0) / 5.0).powi(2),
            _ => unreachable!(),
        };
        let mut tpe = Tpe::new(3);
        let mut history = Vec::new();
        for _ in 0..60 {
            let values = tpe.suggest(&space, &history);
            let o = objective(&values);
            history.push((values, Some(o)));
        }
        let mean_error = |trials: &[(Vec<Value>, Option<f64>)]| -> f64 {
            trials.iter().map(|(v, _)| -objective(v)).sum::<f64>() / trials.len() as f64
        };
        let (startup, guided) = history.split_at(10);
        assert!(
            mean_error(guided) < 0.3 * mean_error(startup),
            "{} vs {}",
            mean_error(guided),
            mean_error(startup)
        );
        let best = history
            .iter()
            .map(|(_, o)| o.unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(best > -0.1, "best {best}");
        for (v, _) in &history {
            let (Value::Number(x), Value::Number(n)) = (v[0], v[1]) else {
                unreachable!()
            };
            assert!((0.0..=10.0).contains(&x) && (1.0..=50.0).contains(&n) && n.fract() == 0.0);
        }
    }
}
