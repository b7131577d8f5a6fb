//! `candle-xai optimize` (tune a method's parameters against the metrics, pnpxai's optimizer)
//! and `candle-xai recommend` (rank the methods by the metrics), over an input tensor file, a
//! photo or a folder of photos (stacked into one batch).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use clap::Args;

use candle_xai::files::read_inputs;
use candle_xai::metrics::Pooling;
use candle_xai::tuning::{optimize, recommend, Objective, OptimizeRequest};
use candle_xai::{Method, Model, Progress, Targets};

use super::method_flags::MethodFlags;
use super::{
    bar_progress, load_model, photos_in, progress_bar, read, targets_from, write, CliError, CliResult, ModelArgs,
};

/// What `optimize` and `recommend` both take: the model, the samples, the objective and where
/// the report goes.
#[derive(Args)]
struct TuningArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with `inputs` (and `targets`), a photo, or a folder of photos
    #[arg(long, value_name = "X.safetensors|PHOTO|DIR")]
    input: PathBuf,
    /// The objective: metrics with optional weights, maximised (lower-is-better metrics
    /// count negatively): `abpc`, `abpc:1,complexity:0.1`
    #[arg(long, value_name = "METRIC[:W],...", default_value = "abpc")]
    metric: String,
    /// Pooling of the attributions before scoring, as for `evaluate` (optimize: the defaults
    /// trial's, searched unless --fixed-pooling): none, sumpos, sumabs, l1norm, maxnorm, l2norm,
    /// l2normsq, possum, posmaxnorm, posl2norm, posl2normsq
    #[arg(long, value_name = "NAME", default_value = "none", value_parser = super::evaluate::parse_pooling)]
    pooling: Pooling,
    /// This class for every sample (default: `targets` from the file, else the top-1)
    #[arg(long, value_name = "N")]
    target: Option<i64>,
    /// cpu; wgpu; or cuda (cuda:N) when built with the `cuda` feature
    #[arg(long, value_name = "cpu|wgpu|cuda", default_value = "cpu")]
    device: String,
    /// R.json: optimize writes the defaults, the best trial, its method JSON and every trial;
    /// recommend the methods best first, each with its objective and metric means
    #[arg(long, value_name = "R.json")]
    out: PathBuf,
}

impl TuningArgs {
    /// The objective, the model on its device, and the batch with its classes.
    fn load(&self) -> CliResult<(Objective, Model, Tensor, Targets)> {
        let objective = Objective {
            pooling: self.pooling,
            ..Objective::parse(&self.metric)?
        };
        let model = load_model(&self.model, &candle_xai::Device::open(&self.device)?)?;
        let (inputs, targets) = batch(&model, &self.input, self.target)?;
        Ok((objective, model, inputs, targets))
    }

    fn write_report(&self, report: &impl serde::Serialize) -> CliResult<()> {
        write(
            &self.out,
            format!("{}\n", serde_json::to_string_pretty(report).unwrap_or_default()).as_bytes(),
        )
    }
}

#[derive(Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    common: TuningArgs,
    /// The method to tune; method options given here stay fixed
    #[arg(long, value_name = "NAME")]
    method: String,
    /// Trials after the defaults
    #[arg(long, value_name = "N", default_value_t = 50)]
    n_trials: usize,
    /// No median pruning of trials that fall behind after some samples
    #[arg(long)]
    no_prune: bool,
    /// Keep the pooling over channels fixed (--pooling) instead of searching it too
    #[arg(long)]
    fixed_pooling: bool,
    #[command(flatten)]
    method_flags: MethodFlags,
}

#[derive(Args)]
pub struct RecommendArgs {
    #[command(flatten)]
    common: TuningArgs,
    /// Comma-separated methods to rank, with their defaults [default: every method that applies to the model]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    methods: Vec<String>,
}

/// The batch to tune on and its classes: a tensor file's, or the photos preprocessed and stacked.
fn batch(model: &Model, input: &Path, target: Option<i64>) -> CliResult<(Tensor, Targets)> {
    let (inputs, targets) = if input.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        let file = read_inputs(&read(input)?, &input.display().to_string())?;
        (file.inputs, file.targets)
    } else {
        let rows = photos_in(input)?
            .iter()
            .map(|path| {
                let photo = candle_xai::image::decode(&read(path)?, &path.display().to_string())?;
                Ok(candle_xai::image::imagenet_preprocess_at(&photo, model.input_size())?.tensor)
            })
            .collect::<CliResult<Vec<_>>>()?;
        (Tensor::cat(&rows, 0)?, None)
    };
    Ok((inputs, targets_from(target, targets)))
}

pub fn run_optimize(args: &OptimizeArgs) -> CliResult<()> {
    let mut method_flags = args.method_flags.clone();
    let seed = match method_flags.take("seed") {
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| CliError::Usage(format!("--seed {text}: expected a whole number >= 0")))?,
        None => 0,
    };
    let method = method_flags.method(&args.method)?;
    let (objective, model, inputs, targets) = args.common.load()?;
    let request = OptimizeRequest {
        method,
        objective,
        n_trials: args.n_trials,
        seed,
        targets,
        prune: !args.no_prune,
        tune_pooling: !args.fixed_pooling,
        memory_limit: None,
    };
    let bar = progress_bar(
        args.n_trials as u64,
        "{spinner} trials [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
    );
    let mut report = bar_progress(&bar);
    let found = optimize(&model, &inputs, &request, &mut Progress::new(&mut report))?;
    bar.finish_and_clear();
    args.common.write_report(&found)?;
    let shown = |o: Option<f64>| o.map_or("failed".to_string(), |v| format!("{v:.6}"));
    let pruned = found.trials.iter().filter(|t| t.state == "pruned").count();
    println!(
        "{}: objective {} with the defaults {}; best {} with {} (trial {} of {}, {pruned} pruned)",
        found.method,
        shown(found.defaults.objective),
        serde_json::Value::Object(found.defaults.params.clone()),
        shown(found.best.objective),
        serde_json::Value::Object(found.best.params.clone()),
        found.best.number,
        found.trials.len(),
    );
    println!("wrote {}", args.common.out.display());
    Ok(())
}

pub fn run_recommend(args: &RecommendArgs) -> CliResult<()> {
    let (objective, model, inputs, targets) = args.common.load()?;
    let names: Vec<String> = match args.methods.is_empty() {
        true => Method::applicable_to(&model).into_iter().map(String::from).collect(),
        false => args.methods.clone(),
    };
    let methods = names
        .iter()
        .map(|name| Method::from_name(name))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = progress_bar(
        methods.len() as u64,
        "{spinner} methods [{bar:40}] {pos}/{len} ({elapsed})",
    );
    let mut report = bar_progress(&bar);
    let ranked = recommend(
        &model,
        &inputs,
        &targets,
        &methods,
        &objective,
        &mut Progress::new(&mut report),
    )?;
    bar.finish_and_clear();
    args.common.write_report(&ranked)?;
    for (rank, r) in ranked.iter().enumerate() {
        match (r.objective, &r.error) {
            (Some(o), _) => println!("{:2}. {:32} {o:.6}", rank + 1, r.method),
            (None, e) => println!("    {:32} failed: {}", r.method, e.as_deref().unwrap_or("")),
        }
    }
    println!("wrote {}", args.common.out.display());
    Ok(())
}
