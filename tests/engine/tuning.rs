//! Tuning and ranking on the MNIST ResNet: the optimizer's best trial is what it says (the
//! method it returns scores that objective), it never reports worse than the defaults, a seed
//! reproduces a search, and `recommend` ranks by the objective it reports.

use candle_xai::metrics::{evaluate, EvaluationRequest, Metric, Pooling};
use candle_xai::tuning::{optimize, recommend, Objective, OptimizeRequest};
use candle_xai::{Method, Progress, Request, Targets};

fn mean_abpc(
    model: &candle_xai::Model,
    inputs: &candle_core::Tensor,
    targets: &[i64],
    method: &Method,
    pooling: Pooling,
) -> f64 {
    let explainer = Request {
        targets: Targets::Classes(targets.to_vec()),
        ..Request::new(method.clone())
    };
    let attributions = candle_xai::explain(model, inputs, &explainer, &mut Progress::none())
        .unwrap()
        .attributions;
    let request = EvaluationRequest {
        metrics: vec![Metric::from_name("abpc").unwrap()],
        targets: Targets::Classes(targets.to_vec()),
        explainer: Some(explainer),
        memory_limit: None,
        pooling,
    };
    let values = evaluate(model, inputs, &attributions, &request, &mut Progress::none())
        .unwrap()
        .scores
        .remove(0)
        .values;
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn optimize_finds_what_it_reports_and_a_seed_reproduces_it() {
    let (model, refs) = crate::common::mnist_model("resnet", &candle_xai::Device::cpu());
    let inputs = refs.f32("inputs");
    let targets = refs.targets();
    let request = |seed| OptimizeRequest {
        method: Method::from_name("lrp-epsilon-gamma-box").unwrap(),
        objective: Objective::parse("abpc").unwrap(),
        n_trials: 14,
        seed,
        targets: Targets::Classes(targets.clone()),
        prune: true,
        tune_pooling: true,
        memory_limit: None,
    };
    let found = optimize(&model, &inputs, &request(5), &mut Progress::none()).unwrap();
    let completed: Vec<f64> = found.trials.iter().filter_map(|t| t.objective).collect();
    let best = found.best.objective.unwrap();
    assert!(best >= found.defaults.objective.unwrap());
    assert!(completed.iter().all(|&o| o <= best));
    assert!(found.trials.iter().all(|t| ["complete", "pruned"].contains(&t.state)));
    // The best method and pooling, scored on the whole batch, give the best objective (one
    // explanation per sample in the search, one batch here: float rounding apart).
    let pooling = Pooling::try_from(found.best.params["pooling"].as_str().unwrap().to_string()).unwrap();
    let again = mean_abpc(&model, &inputs, &targets, &found.best_method, pooling);
    assert!(
        (again - best).abs() < 1e-5,
        "best trial {best}, its method scores {again}"
    );
    // The same seed, the same search; another seed, another.
    let repeated = optimize(&model, &inputs, &request(5), &mut Progress::none()).unwrap();
    let params = |o: &candle_xai::tuning::Optimization| -> Vec<String> {
        o.trials
            .iter()
            .map(|t| serde_json::Value::Object(t.params.clone()).to_string())
            .collect()
    };
    assert_eq!(params(&found), params(&repeated));
    let other = optimize(&model, &inputs, &request(6), &mut Progress::none()).unwrap();
    assert_ne!(params(&found), params(&other));
}

#[test]
fn recommend_ranks_by_the_objective() {
    let (model, refs) = crate::common::mnist_model("resnet", &candle_xai::Device::cpu());
    let inputs = refs.f32("inputs");
    let targets = refs.targets();
    let methods: Vec<Method> = ["gradient", "input-x-gradient", "grad-cam", "lrp-epsilon-plus"]
        .iter()
        .map(|name| Method::from_name(name).unwrap())
        .collect();
    let ranked = recommend(
        &model,
        &inputs,
        &Targets::Classes(targets.clone()),
        &methods,
        &Objective::parse("abpc").unwrap(),
        &mut Progress::none(),
    )
    .unwrap();
    assert_eq!(ranked.len(), methods.len());
    let objectives: Vec<f64> = ranked.iter().map(|r| r.objective.unwrap()).collect();
    assert!(objectives.windows(2).all(|w| w[0] >= w[1]), "{objectives:?}");
    let top = Method::from_name(&ranked[0].method).unwrap();
    let again = mean_abpc(&model, &inputs, &targets, &top, Pooling::None);
    assert!((again - objectives[0]).abs() < 1e-5, "{} {again}", objectives[0]);
}
