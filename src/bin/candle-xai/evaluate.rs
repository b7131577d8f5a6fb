//! `candle-xai evaluate`: scores attributions with the metrics, from an explanation file or
//! from a method run here, over an input tensor file, a photo or a folder of photos; writes
//! `{"metrics": {"abpc": [one value per sample], ...}}` (or CSV).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::{json, Map, Value};

use candle_xai::files::{read_attributions, read_inputs};
use candle_xai::metrics::{evaluate, Evaluation, EvaluationRequest, Metric, Pooling};
use candle_xai::{explain, Error, Progress, Request, Targets};

use super::method_flags::MethodFlags;
use super::{
    bar_progress, load_model, photos_in, progress_bar, read, targets_from, write, CliError, CliResult, ModelArgs,
};

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with `inputs` [N,C,H,W] (normalised) and optionally `targets`; or a photo,
    /// or a folder of photos (ImageNet preprocessing; needs --method)
    #[arg(long, value_name = "X.safetensors|PHOTO|DIR")]
    input: PathBuf,
    /// The attributions to score, as `explain` writes them (`attributions`, `targets`)
    #[arg(long, value_name = "A.safetensors", conflicts_with = "method")]
    attributions: Option<PathBuf>,
    /// Explain with this method here and score its attributions (see `candle-xai methods`)
    #[arg(long, value_name = "NAME", required_unless_present = "attributions")]
    method: Option<String>,
    /// With --attributions: the method that made them, for the metrics that explain again
    /// themselves (sensitivity, randomisation)
    #[arg(long, value_name = "NAME", requires = "attributions")]
    made_by: Option<String>,
    /// Comma-separated metrics: abpc, morf, lerf, mu-fidelity, sensitivity, complexity,
    /// randomisation (the model-parameter randomisation sanity check)
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true)]
    metric: Vec<String>,
    /// Explain and score this class for every sample (default: `targets` from the files, else
    /// the top-1 prediction)
    #[arg(long, value_name = "N")]
    target: Option<i64>,
    /// cpu; wgpu; or cuda (cuda:N) when built with the `cuda` feature
    #[arg(long, value_name = "cpu|wgpu|cuda", default_value = "cpu")]
    device: String,
    /// The most memory (MiB) a pass of perturbed inputs may hold on the CPU or CUDA
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..))]
    memory_limit: Option<u64>,
    /// Pool the attributions over the channels before scoring (pnpxai's post-processing):
    /// none, sumpos, sumabs, l1norm, maxnorm, l2norm, l2normsq, possum, posmaxnorm, posl2norm,
    /// posl2normsq
    #[arg(long, value_name = "NAME", default_value = "none", value_parser = parse_pooling)]
    pooling: Pooling,
    /// Print one JSON line with the load, explain and scoring times on stderr
    #[arg(long)]
    timings: bool,
    /// Score a tensor file N times in this process (for benchmarks: a process's first scoring
    /// also pays for faulting in its fresh memory); the report holds the last, --timings lists
    /// each call's time as `evaluate_ms_calls`
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// R.json (`{"metrics": {name: [per sample]}}`) or R.csv (one row per sample)
    #[arg(long, value_name = "R.json|R.csv")]
    out: PathBuf,
    #[command(flatten)]
    metric_flags: MetricFlags,
    #[command(flatten)]
    method_flags: MethodFlags,
}

pub(super) fn parse_pooling(name: &str) -> Result<Pooling, String> {
    Pooling::try_from(name.to_string()).map_err(|e| e.to_string())
}

/// One `--<metric>-<key>` flag per metric parameter (`--abpc-n-steps`, `--mu-fidelity-n-perturb`),
/// derived from the metrics' parameter lists; the seed is the command's `--seed`.
#[derive(Debug, Clone, Default)]
pub struct MetricFlags {
    /// (metric, key, value as written)
    given: Vec<(&'static str, &'static str, String)>,
}

fn metric_flags() -> Vec<(&'static str, &'static str, String, String)> {
    let mut flags = Vec::new();
    for name in Metric::NAMES {
        let metric = Metric::from_name(name).expect("listed metrics exist");
        let defaults = serde_json::to_value(&metric).unwrap_or_default();
        for p in metric.parameters().into_iter().filter(|p| p.key != "seed") {
            let default = defaults.get(p.key).filter(|v| !v.is_null());
            let help = match default {
                Some(d) => format!("{}: {} [default: {d}]", metric.name(), p.help),
                None => format!("{}: {}", metric.name(), p.help),
            };
            flags.push((name, p.key, format!("{name}-{}", p.key.replace('_', "-")), help));
        }
    }
    flags
}

impl Args for MetricFlags {
    fn augment_args(mut command: Command) -> Command {
        for (_, _, flag, help) in metric_flags() {
            command = command.arg(
                Arg::new(flag.clone())
                    .long(flag)
                    .help(help)
                    .value_name("X")
                    .action(ArgAction::Set)
                    .allow_negative_numbers(true)
                    .help_heading("Metric options"),
            );
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for MetricFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for (metric, key, flag, _) in metric_flags() {
            if let Some(text) = matches.get_one::<String>(&flag) {
                self.given.push((metric, key, text.clone()));
            }
        }
        Ok(())
    }
}

impl MetricFlags {
    /// The metrics named in `names` with these options and `seed`; an option for a metric
    /// not asked for is an error.
    fn metrics(&self, names: &[String], seed: Option<&str>) -> Result<Vec<Metric>, Error> {
        let mut metrics = Vec::new();
        for name in names {
            let metric = Metric::from_name(name)?;
            let parameters = metric.parameters();
            let mut overrides = Map::new();
            for (_, key, text) in self.given.iter().filter(|(m, ..)| *m == metric.name()) {
                let parameter = parameters
                    .iter()
                    .find(|p| p.key == *key)
                    .expect("flags come from the parameters");
                overrides.insert(key.to_string(), parameter.value_from_text(text)?);
            }
            if let (Some(seed), Some(parameter)) = (seed, parameters.iter().find(|p| p.key == "seed")) {
                overrides.insert("seed".into(), parameter.value_from_text(seed)?);
            }
            metrics.push(Metric::from_json(metric.name(), &Value::Object(overrides))?);
        }
        if let Some((metric, key, _)) = self
            .given
            .iter()
            .find(|(m, ..)| !metrics.iter().any(|x| x.name() == *m))
        {
            return Err(Error::InvalidParameter {
                parameter: format!("--{metric}-{}", key.replace('_', "-")),
                reason: format!("sets a parameter of {metric}, which --metric does not ask for"),
            });
        }
        Ok(metrics)
    }
}

/// One scored sample: where it came from, the metrics' values in the order asked, and what
/// the metrics found on the way (pixel-flipping curves, the randomisation check's curve).
struct Row {
    sample: String,
    target: usize,
    values: Vec<f64>,
    details: Map<String, Value>,
}

pub fn run_evaluate(args: &EvaluateArgs) -> CliResult<()> {
    let mut method_flags = args.method_flags.clone();
    let seed = method_flags.take("seed");
    let metrics = args.metric_flags.metrics(&args.metric, seed.as_deref())?;
    let explainer = match (&args.method, &args.made_by) {
        (Some(name), _) | (None, Some(name)) => {
            let method = match seed.as_deref() {
                Some(seed)
                    if method_flags
                        .method(name)
                        .is_ok_and(|m| m.parameters().iter().any(|p| p.key == "seed")) =>
                {
                    method_flags.set("seed", seed);
                    method_flags.method(name)?
                }
                _ => method_flags.method(name)?,
            };
            Some(Request {
                memory_limit: args.memory_limit.map(|mib| mib.saturating_mul(1 << 20)),
                ..Request::new(method)
            })
        }
        (None, None) if method_flags.is_empty() => None,
        (None, None) => {
            return Err(CliError::Usage(
                "method options need the method: give --made-by NAME with --attributions".into(),
            ))
        }
    };
    let device = candle_xai::Device::open(&args.device)?;
    let started = Instant::now();
    let model = load_model(&args.model, &device)?;
    let mut times = Times {
        load_ms: started.elapsed().as_secs_f64() * 1e3,
        ..Times::default()
    };
    let mut request = EvaluationRequest {
        metrics,
        targets: Targets::TopPrediction,
        explainer,
        memory_limit: args.memory_limit.map(|mib| mib.saturating_mul(1 << 20)),
        pooling: args.pooling,
    };
    let names: Vec<&str> = request.metrics.iter().map(|m| m.name()).collect();
    let bar = progress_bar(1, "{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})");
    let mut report = bar_progress(&bar);
    let mut rows = Vec::new();
    if args.input.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        let file = read_inputs(&read(&args.input)?, &args.input.display().to_string())?;
        let (attributions, file_targets) = match &args.attributions {
            Some(path) => {
                let a = read_attributions(&read(path)?, &path.display().to_string())?;
                (Some(a.attributions), a.targets.or(file.targets))
            }
            None => (None, file.targets),
        };
        request.targets = targets_from(args.target, file_targets);
        bar.set_message("scoring");
        let targets = request.targets.clone();
        let mut evaluation = None;
        for _ in 0..args.repeat {
            // Each call from the same targets: `score` pins the top-1 classes it explained.
            request.targets = targets.clone();
            evaluation = Some(score(
                &model,
                &file.inputs,
                attributions.clone(),
                &mut request,
                &mut times,
                &mut Progress::new(&mut report),
            )?);
        }
        let evaluation = evaluation.expect("--repeat is at least 1");
        rows.extend(sample_rows(&evaluation, |b| format!("{}[{b}]", args.input.display())));
    } else {
        let photos = photos_in(&args.input)?;
        if args.attributions.is_some() {
            return Err(CliError::Usage(
                "--attributions scores a tensor file's explanations: give --input X.safetensors, or --method with photos"
                    .into(),
            ));
        }
        for path in &photos {
            bar.set_message(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
            let photo = candle_xai::image::decode(&read(path)?, &path.display().to_string())?;
            let prepared = candle_xai::image::imagenet_preprocess_at(&photo, model.input_size())?;
            request.targets = args
                .target
                .map_or(Targets::TopPrediction, |t| Targets::Classes(vec![t]));
            let evaluation = score(
                &model,
                &prepared.tensor,
                None,
                &mut request,
                &mut times,
                &mut Progress::new(&mut report),
            )?;
            rows.extend(sample_rows(&evaluation, |_| path.display().to_string()));
        }
    }
    bar.finish_and_clear();
    let text = match args.out.extension().and_then(|e| e.to_str()) {
        Some("json") => report_json(&names, &request.metrics, &rows),
        Some("csv") => report_csv(&names, &rows),
        _ => {
            return Err(CliError::Usage(format!(
                "--out {}: the report is written as .json or .csv",
                args.out.display()
            )))
        }
    };
    write(&args.out, text.as_bytes())?;
    for (k, name) in names.iter().enumerate() {
        let values: Vec<String> = rows.iter().map(|r| format_score(r.values[k])).collect();
        println!("{name}: {}", values.join(", "));
    }
    println!("wrote {}", args.out.display());
    if args.timings {
        let line = json!({
            "load_ms": times.load_ms,
            "explain_ms": times.explain_ms,
            "evaluate_ms": times.evaluate_calls_ms.iter().sum::<f64>(),
            "evaluate_ms_calls": times.evaluate_calls_ms,
            "metrics": names,
            "device": device.describe(),
        });
        eprintln!("{line}");
    }
    Ok(())
}

/// Milliseconds spent loading, explaining (without --attributions) and scoring (in all, and
/// per scoring call).
#[derive(Default)]
struct Times {
    load_ms: f64,
    explain_ms: f64,
    evaluate_calls_ms: Vec<f64>,
}

/// Explains `input` first when no attributions are given, then scores them.
fn score(
    model: &candle_xai::Model,
    input: &candle_core::Tensor,
    attributions: Option<candle_core::Tensor>,
    request: &mut EvaluationRequest,
    times: &mut Times,
    progress: &mut Progress<'_>,
) -> CliResult<Evaluation> {
    let started = Instant::now();
    let attributions = match attributions {
        Some(a) => a,
        None => {
            let explainer = request
                .explainer
                .as_ref()
                .expect("--method is required without --attributions");
            let explainer = Request {
                targets: request.targets.clone(),
                ..explainer.clone()
            };
            let explanation = explain(model, input, &explainer, &mut Progress::none())?;
            request.targets = Targets::Classes(explanation.targets.iter().map(|&t| t as i64).collect());
            explanation.attributions
        }
    };
    let explained = Instant::now();
    times.explain_ms += (explained - started).as_secs_f64() * 1e3;
    let evaluation = evaluate(model, input, &attributions, request, progress)?;
    times.evaluate_calls_ms.push(explained.elapsed().as_secs_f64() * 1e3);
    Ok(evaluation)
}

fn sample_rows(evaluation: &Evaluation, name: impl Fn(usize) -> String) -> Vec<Row> {
    (0..evaluation.targets.len())
        .map(|b| {
            let mut details = Map::new();
            for score in &evaluation.scores {
                let mut found = Map::new();
                if let Some(curves) = &score.morf_curves {
                    found.insert("morf_curve".into(), curves[b].iter().map(|&v| json_number(v)).collect());
                }
                if let Some(curves) = &score.lerf_curves {
                    found.insert("lerf_curve".into(), curves[b].iter().map(|&v| json_number(v)).collect());
                }
                if let Some(curve) = &score.randomisation {
                    found.insert("layers".into(), json!(curve.layers));
                    found.insert("randomised".into(), json!(curve.randomised));
                    let similarity: Vec<Value> = curve.similarity.iter().map(|s| json_number(s[b])).collect();
                    found.insert("similarity".into(), Value::Array(similarity));
                }
                if !found.is_empty() {
                    details.insert(score.metric.clone(), Value::Object(found));
                }
            }
            Row {
                sample: name(b),
                target: evaluation.targets[b],
                values: evaluation.scores.iter().map(|s| s.values[b]).collect(),
                details,
            }
        })
        .collect()
}

/// NaN (an undefined value) is written as null.
fn json_number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn report_json(names: &[&str], metrics: &[Metric], rows: &[Row]) -> String {
    let mut values = Map::new();
    let mut parameters = Map::new();
    let mut higher_is_better = Map::new();
    for (k, (name, metric)) in names.iter().zip(metrics).enumerate() {
        values.insert(
            name.to_string(),
            rows.iter().map(|r| json_number(r.values[k])).collect(),
        );
        parameters.insert(name.to_string(), serde_json::to_value(metric).unwrap_or_default());
        higher_is_better.insert(name.to_string(), Value::Bool(metric.higher_is_better()));
    }
    let report = json!({
        "metrics": values,
        "higher_is_better": higher_is_better,
        "parameters": parameters,
        "samples": rows.iter().map(|r| r.sample.clone()).collect::<Vec<_>>(),
        "targets": rows.iter().map(|r| r.target).collect::<Vec<_>>(),
        "details": rows.iter().map(|r| Value::Object(r.details.clone())).collect::<Vec<_>>(),
    });
    format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default())
}

fn report_csv(names: &[&str], rows: &[Row]) -> String {
    let mut text = format!("sample,target,{}\n", names.join(","));
    for row in rows {
        let values: Vec<String> = row.values.iter().map(|v| format_score(*v)).collect();
        text.push_str(&format!(
            "\"{}\",{},{}\n",
            row.sample.replace('"', "\"\""),
            row.target,
            values.join(",")
        ));
    }
    text
}

fn format_score(v: f64) -> String {
    match v.is_nan() {
        true => "nan".into(),
        false => format!("{v}"),
    }
}
