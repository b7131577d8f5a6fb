//! Which parameters, and which method: a method's tunable parameters searched to maximise an
//! objective made of the metrics, as pnpxai's optimizer does with optuna's TPE ([`optimize`]),
//! with a median pruner; and every applicable method ranked by the objective ([`recommend`]).

mod tpe;

use std::collections::BTreeMap;

use candle_core::Tensor as HostTensor;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::methods::{explain_async, Method, Progress, Request, Scale, Targets, Tunable};
use crate::metrics::{evaluate_async, EvaluationRequest, Metric, Pooling};
use crate::model::Model;
use tpe::Tpe;

/// What a trial maximises: the weighted sum of the metrics' means over the samples, each
/// signed so that higher is better (pnpxai's directions).
#[derive(Debug, Clone)]
pub struct Objective {
    pub terms: Vec<(Metric, f64)>,
    /// How attributions are pooled over channels before scoring.
    pub pooling: Pooling,
}

impl Objective {
    /// From `abpc` or `abpc:1,complexity:0.2` (metric names with optional weights, default 1).
    pub fn parse(text: &str) -> Result<Self> {
        let terms = text
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|term| {
                let (name, weight) = match term.split_once(':') {
                    Some((name, w)) => (
                        name,
                        w.trim().parse::<f64>().ok().filter(|w| w.is_finite()).ok_or_else(|| {
                            Error::invalid_parameter("objective", format!("`{w}` is not a weight (a finite number)"))
                        })?,
                    ),
                    None => (term, 1.0),
                };
                Ok((Metric::from_name(name)?, weight))
            })
            .collect::<Result<Vec<_>>>()?;
        if terms.is_empty() {
            return Err(Error::invalid_parameter("objective", "name at least one metric"));
        }
        Ok(Self {
            terms,
            pooling: Pooling::None,
        })
    }

    fn request(&self, targets: &[usize], explainer: &Request, memory_limit: Option<u64>) -> EvaluationRequest {
        EvaluationRequest {
            metrics: self.terms.iter().map(|(m, _)| m.clone()).collect(),
            targets: Targets::Classes(targets.iter().map(|&t| t as i64).collect()),
            explainer: Some(explainer.clone()),
            memory_limit,
            pooling: self.pooling,
        }
    }
}

/// What to tune.
#[derive(Debug, Clone)]
pub struct OptimizeRequest {
    /// The method; its parameters that are not tuned keep these values.
    pub method: Method,
    pub objective: Objective,
    pub n_trials: usize,
    pub seed: u64,
    pub targets: Targets,
    /// Median pruning over the samples: a trial whose running objective after a sample is
    /// below the median of the finished trials' at that sample stops there (needs 2+ samples).
    pub prune: bool,
    /// Also search the pooling over channels (pnpxai tunes its post-processor's pooling with
    /// the explainer); the defaults trial uses the objective's pooling.
    pub tune_pooling: bool,
    pub memory_limit: Option<u64>,
}

/// One trial: the tuned parameters, the objective and each metric's mean.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub number: usize,
    pub params: Map<String, Value>,
    /// None when pruned or failed.
    pub objective: Option<f64>,
    pub scores: BTreeMap<String, f64>,
    /// "complete", "pruned" or "failed".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome: the best parameters against the defaults, and every trial.
#[derive(Debug, Clone, Serialize)]
pub struct Optimization {
    pub method: String,
    pub defaults: Trial,
    pub best: Trial,
    /// The method with the best parameters.
    pub best_method: Method,
    pub trials: Vec<Trial>,
}

/// Searches `request.method`'s tunable parameters (their ranges from the method's parameter
/// list) for the largest objective on `input`, `n_trials` trials after the defaults.
pub async fn optimize_async(
    model: &Model,
    input: &HostTensor,
    request: &OptimizeRequest,
    progress: &mut Progress<'_>,
) -> Result<Optimization> {
    let mut space = request.method.tunables();
    if request.tune_pooling {
        space.push(Tunable {
            name: POOLING,
            scale: Scale::Choice,
            min: 0.0,
            max: 0.0,
            default: 0.0,
            choices: Pooling::ALL[1..].iter().map(|p| p.name()).collect(),
            default_choice: Some(request.objective.pooling.name().to_string()),
        });
    }
    if space.is_empty() {
        return Err(Error::invalid_parameter(
            "method",
            format!("{} has no tunable parameters", request.method.name()),
        ));
    }
    if request.n_trials == 0 || request.n_trials > crate::metrics::MAX_PERTURBATIONS {
        return Err(Error::invalid_parameter(
            "n_trials",
            format!("must be between 1 and {}", crate::metrics::MAX_PERTURBATIONS),
        ));
    }
    let targets = request.targets.resolve(&logits_of(model, input).await?)?;
    let samples = split_samples(input)?;
    let mut trials: Vec<Trial> = Vec::new();
    // Running objective after each sample, per finished trial (the pruner's record).
    let mut running: Vec<Vec<f64>> = Vec::new();
    let mut history: Vec<(Vec<tpe::Value>, Option<f64>)> = Vec::new();
    let mut tpe = Tpe::new(request.seed);
    let mut default_params = parameters_of(&request.method, &space);
    if request.tune_pooling {
        default_params.insert(POOLING.into(), Value::from(request.objective.pooling.name()));
    }
    let defaults = run_trial(
        model,
        &samples,
        &targets,
        &request.method,
        &request.objective,
        request.memory_limit,
        &[],
    )
    .await
    .into_trial(0, default_params);
    for number in 1..=request.n_trials {
        progress.report(number - 1, request.n_trials)?;
        let values = tpe.suggest(&space, &history);
        let params = suggestion(&space, &values);
        let trial = match configuration(&request.method, &request.objective, &params) {
            Ok((method, objective)) => {
                let prune_against = if request.prune && running.len() >= 5 {
                    running.as_slice()
                } else {
                    &[]
                };
                run_trial(
                    model,
                    &samples,
                    &targets,
                    &method,
                    &objective,
                    request.memory_limit,
                    prune_against,
                )
                .await
            }
            Err(e) => Outcome::Failed(e),
        };
        if let Outcome::Complete { running: r, .. } = &trial {
            running.push(r.clone());
        }
        let trial = trial.into_trial(number, params);
        history.push((values, trial.objective));
        trials.push(trial);
    }
    progress.report(request.n_trials, request.n_trials)?;
    let best = trials
        .iter()
        .chain(std::iter::once(&defaults))
        .filter(|t| t.objective.is_some())
        .max_by(|a, b| a.objective.unwrap().total_cmp(&b.objective.unwrap()))
        .cloned()
        .ok_or_else(|| Error::invalid_parameter("optimize", "every trial failed"))?;
    Ok(Optimization {
        method: request.method.name(),
        best_method: configuration(&request.method, &request.objective, &best.params)?.0,
        defaults,
        best,
        trials,
    })
}

/// [`optimize_async`], blocking.
#[cfg(not(target_arch = "wasm32"))]
pub fn optimize(
    model: &Model,
    input: &HostTensor,
    request: &OptimizeRequest,
    progress: &mut Progress<'_>,
) -> Result<Optimization> {
    pollster::block_on(optimize_async(model, input, request, progress))
}

/// One method's place in a ranking.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    pub method: String,
    /// None when the method failed on this model (the error says why).
    pub objective: Option<f64>,
    pub scores: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every method of `methods` explained and scored on `input`, best first.
pub async fn recommend_async(
    model: &Model,
    input: &HostTensor,
    targets: &Targets,
    methods: &[Method],
    objective: &Objective,
    progress: &mut Progress<'_>,
) -> Result<Vec<Ranked>> {
    if methods.is_empty() {
        return Err(Error::invalid_parameter("methods", "none given"));
    }
    let targets = targets.resolve(&logits_of(model, input).await?)?;
    let samples = split_samples(input)?;
    let mut ranked = Vec::with_capacity(methods.len());
    for (i, method) in methods.iter().enumerate() {
        progress.report(i, methods.len())?;
        let trial = run_trial(model, &samples, &targets, method, objective, None, &[])
            .await
            .into_trial(i, Map::new());
        ranked.push(Ranked {
            method: method.name(),
            objective: trial.objective,
            scores: trial.scores,
            error: trial.error,
        });
    }
    progress.report(methods.len(), methods.len())?;
    ranked.sort_by(|a, b| match (a.objective, b.objective) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(ranked)
}

/// [`recommend_async`], blocking.
#[cfg(not(target_arch = "wasm32"))]
pub fn recommend(
    model: &Model,
    input: &HostTensor,
    targets: &Targets,
    methods: &[Method],
    objective: &Objective,
    progress: &mut Progress<'_>,
) -> Result<Vec<Ranked>> {
    pollster::block_on(recommend_async(model, input, targets, methods, objective, progress))
}

enum Outcome {
    Complete {
        objective: f64,
        scores: BTreeMap<String, f64>,
        running: Vec<f64>,
    },
    Pruned {
        scores: BTreeMap<String, f64>,
    },
    Failed(Error),
}

impl Outcome {
    fn into_trial(self, number: usize, params: Map<String, Value>) -> Trial {
        let (objective, scores, state, error) = match self {
            Outcome::Complete { objective, scores, .. } => (Some(objective), scores, "complete", None),
            Outcome::Pruned { scores } => (None, scores, "pruned", None),
            Outcome::Failed(e) => (None, BTreeMap::new(), "failed", Some(e.to_string())),
        };
        Trial {
            number,
            params,
            objective,
            scores,
            state,
            error,
        }
    }
}

/// Explains and scores the samples one by one (all at once when not pruning), stopping when
/// the running objective falls below the median of `prune_against`'s at the same sample.
async fn run_trial(
    model: &Model,
    samples: &[HostTensor],
    targets: &[usize],
    method: &Method,
    objective: &Objective,
    memory_limit: Option<u64>,
    prune_against: &[Vec<f64>],
) -> Outcome {
    let explainer = Request {
        memory_limit,
        ..Request::new(method.clone())
    };
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut running = Vec::with_capacity(samples.len());
    for (b, sample) in samples.iter().enumerate() {
        let scored = async {
            let request_b = Request {
                targets: Targets::Classes(vec![targets[b] as i64]),
                ..explainer.clone()
            };
            let explanation = explain_async(model, sample, &request_b, &mut Progress::none()).await?;
            let evaluation = objective.request(&targets[b..=b], &explainer, memory_limit);
            evaluate_async(
                model,
                sample,
                &explanation.attributions,
                &evaluation,
                &mut Progress::none(),
            )
            .await
        }
        .await;
        let evaluation = match scored {
            Ok(e) => e,
            Err(e) => return Outcome::Failed(e),
        };
        for score in evaluation.scores {
            let entry = sums.entry(score.metric).or_insert((0.0, 0));
            for v in score.values.into_iter().filter(|v| v.is_finite()) {
                entry.0 += v;
                entry.1 += 1;
            }
        }
        let means = means(&sums);
        let value = objective
            .terms
            .iter()
            .map(|(metric, weight)| {
                let mean = means.get(metric.name()).copied().unwrap_or(f64::NAN);
                weight * if metric.higher_is_better() { mean } else { -mean }
            })
            .sum::<f64>();
        running.push(value);
        let step = running.len() - 1;
        let earlier: Vec<f64> = prune_against.iter().filter_map(|r| r.get(step).copied()).collect();
        if b + 1 < samples.len() && earlier.len() >= 5 && value < median(&earlier) {
            return Outcome::Pruned { scores: means };
        }
    }
    let objective = *running.last().expect("at least one sample");
    match objective.is_finite() {
        true => Outcome::Complete {
            objective,
            scores: means(&sums),
            running,
        },
        false => Outcome::Failed(Error::invalid_parameter(
            "objective",
            "a metric is undefined for every sample (NaN)",
        )),
    }
}

fn means(sums: &BTreeMap<String, (f64, usize)>) -> BTreeMap<String, f64> {
    sums.iter()
        .map(|(k, &(s, n))| (k.clone(), if n > 0 { s / n as f64 } else { f64::NAN }))
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The logits of `input` on the host, awaiting the device rather than blocking (the browser).
async fn logits_of(model: &Model, input: &HostTensor) -> Result<HostTensor> {
    model
        .graph()
        .predict(&model.prepare_input(input)?)?
        .to_host_async()
        .await
}

/// The [1, C, H, W] rows of a batch.
fn split_samples(input: &HostTensor) -> Result<Vec<HostTensor>> {
    let n = input.dim(0)?;
    Ok((0..n)
        .map(|b| input.narrow(0, b, 1))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// The suggested values as the method's JSON parameters.
fn suggestion(space: &[Tunable], values: &[tpe::Value]) -> Map<String, Value> {
    space
        .iter()
        .zip(values)
        .map(|(t, v)| {
            let value = match (t.scale, v) {
                (_, tpe::Value::Choice(i)) => Value::from(t.choices[*i]),
                (Scale::Integer, tpe::Value::Number(x)) => Value::from(*x as u64),
                (_, tpe::Value::Number(x)) => Value::from(*x),
            };
            (t.name.to_string(), value)
        })
        .collect()
}

/// The tuned parameters' current values in `method`.
fn parameters_of(method: &Method, space: &[Tunable]) -> Map<String, Value> {
    let all = serde_json::to_value(method).unwrap_or_default();
    space
        .iter()
        .filter_map(|t| all.get(t.name).map(|v| (t.name.to_string(), v.clone())))
        .collect()
}

/// The search space's name for the pooling over channels.
const POOLING: &str = "pooling";

/// `method` with the method parameters of `params` set, and `objective` with their pooling.
fn configuration(method: &Method, objective: &Objective, params: &Map<String, Value>) -> Result<(Method, Objective)> {
    let Value::Object(mut all) =
        serde_json::to_value(method).map_err(|e| Error::invalid_parameter("method", e.to_string()))?
    else {
        unreachable!("a method serialises as an object")
    };
    all.remove("method");
    let mut objective = objective.clone();
    for (key, value) in params {
        match (key.as_str(), value) {
            (POOLING, Value::String(name)) => objective.pooling = Pooling::try_from(name.clone())?,
            _ => {
                all.insert(key.clone(), value.clone());
            }
        }
    }
    Ok((Method::from_json(&method.name(), &Value::Object(all))?, objective))
}
