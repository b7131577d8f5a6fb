//! The `candle-xai` command end to end: the MNIST fixtures against captum's references, the
//! output tensors and their shapes, `--timings`, the photo path on a tiny RGB model, folders,
//! and the `layers` / `methods` subcommands.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

mod common;

use common::{cli_binary, mnist_fixture as fixture, tiny_rgb_model, Scratch};

fn scratch(test: &str) -> Scratch {
    common::scratch("cli", test)
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(cli_binary())
        .args(args)
        .output()
        .expect("the candle-xai binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// `explain` on the MNIST VGG with the reference inputs and targets, plus `extra` arguments.
fn explain_vgg(dir: &Path, method: &str, extra: &[&str]) -> HashMap<String, Tensor> {
    let out = dir.join(format!("{method}.safetensors"));
    let mut args = vec![
        "explain".to_string(),
        "--model".into(),
        fixture("vgg.safetensors").display().to_string(),
        "--graph".into(),
        fixture("vgg.graph.json").display().to_string(),
        "--input".into(),
        fixture("vgg_refs.safetensors").display().to_string(),
        "--method".into(),
        method.into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let result = run(&args);
    assert_ok(&result);
    load(&out)
}

/// max |ours - ref| <= 1e-4 * max |ref|
fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_close_within(what, ours, reference, 1e-4)
}

/// Integrated Gradients sums gradients over path points where a ReLU may sit within float32
/// rounding of its kink; see `PATH_TOL` in tests/common/mod.rs.
fn assert_close_path(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_close_within(what, ours, reference, 2e-3)
}

fn assert_close_within(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    let err = common::relative_error(ours, reference);
    assert!(err <= tol, "{what}: max |ours - ref| / max |ref| = {err:e} > {tol:e}");
}

fn targets(t: &Tensor) -> Vec<i64> {
    assert_eq!(t.dtype(), DType::I64);
    t.to_vec1::<i64>().unwrap()
}

#[test]
fn saliency_matches_captum() {
    let dir = scratch("saliency");
    let refs = load(&fixture("vgg_refs.safetensors"));
    let out = explain_vgg(&dir, "gradient", &[]);
    assert_close("saliency", &out["attributions"], &refs["saliency"]);
    assert_close("logits", &out["logits"], &refs["logits"]);
    assert_eq!(out["attributions"].dims(), refs["inputs"].dims());
    assert_eq!(
        targets(&out["targets"]),
        refs["targets"].to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
    );
    assert!(!out.contains_key("convergence_delta"));
    // --abs is captum's default Saliency
    let abs = explain_vgg(&dir, "gradient", &["--abs"]);
    assert_close("saliency_abs", &abs["attributions"], &refs["saliency_abs"]);
}

#[test]
fn integrated_gradients_options_and_delta() {
    let dir = scratch("ig");
    let refs = load(&fixture("vgg_refs.safetensors"));
    let out = explain_vgg(&dir, "integrated-gradients", &[]);
    assert_close_path("ig", &out["attributions"], &refs["ig_gausslegendre"]);
    assert_eq!(out["convergence_delta"].dims(), &[4]);
    let out = explain_vgg(
        &dir,
        "integrated-gradients",
        &[
            "--ig-method",
            "riemann-trapezoid",
            "--n-steps",
            "50",
            "--batch-size",
            "7",
        ],
    );
    assert_close_path("ig trapezoid", &out["attributions"], &refs["ig_riemann_trapezoid"]);
    // the other baselines run
    for baseline in ["0.5", "-1", "blur:1.5", "uniform:-1:1"] {
        let out = explain_vgg(
            &dir,
            "integrated-gradients",
            &["--n-steps", "4", "--baseline", baseline],
        );
        assert_eq!(out["attributions"].dims(), &[4, 1, 28, 28], "baseline {baseline}");
    }
}

#[test]
fn input_x_gradient_and_lrp_match_references() {
    let dir = scratch("ixg-lrp");
    let refs = load(&fixture("vgg_refs.safetensors"));
    let out = explain_vgg(&dir, "input-x-gradient", &[]);
    assert_close("input_x_gradient", &out["attributions"], &refs["input_x_gradient"]);
    // the references were made with zennit 0.5.1, which keeps the merged BatchNorm's eps
    let out = explain_vgg(&dir, "lrp-epsilon-plus", &["--bn-merge", "keep-eps"]);
    assert_close("lrp_epsilon_plus", &out["attributions"], &refs["lrp_epsilon_plus"]);
    let out = explain_vgg(
        &dir,
        "lrp-epsilon-gamma-box",
        &[
            "--bn-merge",
            "keep-eps",
            "--low",
            "-3",
            "--high",
            "3",
            "--gamma",
            "0.25",
            "--epsilon",
            "1e-6",
        ],
    );
    assert_close(
        "lrp_epsilon_gamma_box",
        &out["attributions"],
        &refs["lrp_epsilon_gamma_box"],
    );
}

#[test]
fn smoothgrad_options() {
    let dir = scratch("smoothgrad");
    for kind in ["mean", "squared", "variance"] {
        let out = explain_vgg(
            &dir,
            "smoothgrad",
            &[
                "--n-iter",
                "3",
                "--stdev",
                "0.5",
                "--seed",
                "7",
                "--smoothgrad-type",
                kind,
                "--batch-size",
                "5",
            ],
        );
        assert_eq!(out["attributions"].dims(), &[4, 1, 28, 28]);
    }
    let a = explain_vgg(
        &dir,
        "smoothgrad",
        &["--n-iter", "2", "--noise-level", "0.2", "--seed", "3"],
    );
    let b = explain_vgg(
        &dir,
        "smoothgrad",
        &["--n-iter", "2", "--noise-level", "0.2", "--seed", "3"],
    );
    assert_close("same seed, same result", &a["attributions"], &b["attributions"]);
}

#[test]
fn timings_print_one_json_line() {
    let dir = scratch("timings");
    let out_path = dir.join("out.safetensors");
    let out = run(&[
        "explain",
        "--model",
        fixture("vgg.safetensors").to_str().unwrap(),
        "--graph",
        fixture("vgg.graph.json").to_str().unwrap(),
        "--input",
        fixture("vgg_refs.safetensors").to_str().unwrap(),
        "--method",
        "gradient",
        "--timings",
        "--device",
        "cpu",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    let json: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(json["load_ms"].as_f64().unwrap() >= 0.0);
    assert!(json["explain_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(json["method"], "gradient");
    assert_eq!(json["device"], "cpu");
}

#[test]
fn grad_cam_writes_one_channel_maps() {
    let dir = scratch("gradcam");
    let refs = load(&fixture("vgg_refs.safetensors"));
    let out = explain_vgg(&dir, "grad-cam", &[]);
    assert_eq!(out["attributions"].dims(), &[4, 1, 28, 28]);
    assert_close(
        "gradcam_relu_upsampled",
        &out["attributions"],
        &refs["gradcam_relu_upsampled"],
    );
    let out = explain_vgg(&dir, "grad-cam", &["--no-relu", "--no-upsample"]);
    assert_close("gradcam", &out["attributions"], &refs["gradcam"]);
    let out = explain_vgg(
        &dir,
        "grad-cam",
        &["--layer", "features.13", "--no-relu", "--no-upsample"],
    );
    assert_close(
        "gradcam_on_block_output",
        &out["attributions"],
        &refs["gradcam_on_block_output"],
    );
}

#[test]
fn layer_attribution_has_the_layer_shape() {
    let dir = scratch("layer");
    let out = explain_vgg(&dir, "gradient", &["--layer", "features.11"]);
    let dims = out["attributions"].dims().to_vec();
    assert_eq!(dims.len(), 4);
    assert_eq!(dims[0], 4);
    assert_ne!(dims, vec![4, 1, 28, 28]);
}

#[test]
fn targets_from_flag_file_or_top1() {
    let dir = scratch("targets");
    let out = explain_vgg(&dir, "gradient", &["--target", "3"]);
    assert_eq!(targets(&out["targets"]), vec![3, 3, 3, 3]);

    // No targets in the file and no --target: the top-1 prediction.
    let refs = load(&fixture("vgg_refs.safetensors"));
    let inputs_only = dir.join("inputs.safetensors");
    candle_core::safetensors::save(&HashMap::from([("inputs", refs["inputs"].clone())]), &inputs_only).unwrap();
    let out_path = dir.join("top1.safetensors");
    let model = fixture("vgg.safetensors");
    let graph = fixture("vgg.graph.json");
    let args = [
        "explain",
        "--model",
        model.to_str().unwrap(),
        "--graph",
        graph.to_str().unwrap(),
        "--input",
        inputs_only.to_str().unwrap(),
        "--method",
        "gradient",
        "--out",
        out_path.to_str().unwrap(),
    ];
    assert_ok(&run(&args));
    let out = load(&out_path);
    let top1: Vec<i64> = out["logits"]
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(targets(&out["targets"]), top1);

    // int32 targets are read too.
    let ts = refs["targets"].to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap();
    let ts32: Vec<u8> = ts.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
    let input_bytes: Vec<u8> = refs["inputs"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = vec![
        (
            "inputs",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, refs["inputs"].dims().to_vec(), &input_bytes)
                .unwrap(),
        ),
        (
            "targets",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![ts.len()], &ts32).unwrap(),
        ),
    ];
    let int32 = dir.join("int32.safetensors");
    std::fs::write(&int32, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    let out_path = dir.join("int32-out.safetensors");
    let mut args = args.map(String::from);
    args[6] = int32.display().to_string();
    args[10] = out_path.display().to_string();
    assert_ok(&run(&args));
    assert_eq!(targets(&load(&out_path)["targets"]), ts);
}

#[test]
fn layers_and_methods_subcommands() {
    let out = run(&[
        "layers",
        "--model",
        fixture("vgg.safetensors").to_str().unwrap(),
        "--graph",
        fixture("vgg.graph.json").to_str().unwrap(),
    ]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(text.lines().next(), Some("architecture: custom"));
    assert!(text.lines().any(|l| l.starts_with("features.11\tConv2d")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("classifier.3\tLinear")), "{text}");

    let out = run(&["methods"]);
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(names, candle_xai::Method::NAMES.to_vec());
    let ig = &json[3];
    assert!(ig["tunables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "n_steps"));
}

// ---------------------------------------------------------------------------------------------
// Photos

/// A 300x200 colour gradient, as JPEG bytes.
fn gradient_jpeg() -> Vec<u8> {
    let image = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x * 255 / 299) as u8, (y * 255 / 199) as u8, 128])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    bytes.into_inner()
}

fn photo_args<'a>(model: &'a Path, graph: &'a Path, image: &'a Path, out: &'a Path, method: &'a str) -> Vec<&'a str> {
    vec![
        "explain",
        "--model",
        model.to_str().unwrap(),
        "--graph",
        graph.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--method",
        method,
        "--out",
        out.to_str().unwrap(),
    ]
}

#[test]
fn photo_becomes_a_heatmap_png() {
    let dir = scratch("photo");
    let (model, graph) = tiny_rgb_model(&dir);
    let photo = dir.join("photo.jpg");
    std::fs::write(&photo, gradient_jpeg()).unwrap();
    for (method, extra) in [
        ("gradient", vec![]),
        (
            "integrated-gradients",
            vec!["--n-steps", "5", "--colormap", "positive", "--alpha", "0.7"],
        ),
        ("grad-cam", vec!["--colormap", "hot"]),
        ("lrp-epsilon-plus", vec!["--colormap", "gray", "--target", "2"]),
    ] {
        let heat = dir.join(format!("{method}.png"));
        let mut args = photo_args(&model, &graph, &photo, &heat, method);
        args.extend(extra);
        let out = run(&args);
        assert_ok(&out);
        let text = stdout(&out);
        assert!(text.contains("predicted class") && text.contains("p = "), "{text}");
        let png = image::open(&heat).unwrap().to_rgb8();
        assert_eq!(png.height(), 224, "{method}");
        assert!(png.width() > 224, "{method}: the colour bar is missing");
    }
}

/// The top of the colour bar's range as the summary line prints it: `heatmap range [low, high]`.
fn heatmap_high(summary: &str) -> f32 {
    let range = summary.split("heatmap range [").nth(1).expect(summary);
    let high = range
        .split(", ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect(summary);
    high.parse().expect(summary)
}

#[test]
fn scaling_sets_the_values_the_colour_bar_ends_stand_for() {
    let dir = scratch("scaling");
    let (model, graph) = tiny_rgb_model(&dir);
    let photo = dir.join("photo.jpg");
    std::fs::write(&photo, gradient_jpeg()).unwrap();
    let high = |method: &str, extra: &[&str]| {
        let heat = dir.join(format!("{method}-{}.png", extra.join("")));
        let mut args = photo_args(&model, &graph, &photo, &heat, method);
        args.extend(extra.iter().copied());
        let out = run(&args);
        assert_ok(&out);
        heatmap_high(&stdout(&out))
    };
    // LRP: zennit's level 3 by default, so the ends are a third of level 1's (the largest |R|).
    let largest = high("lrp-epsilon-plus", &["--scaling", "level:1"]);
    let by_default = high("lrp-epsilon-plus", &[]);
    assert!(
        (by_default * 3.0 - largest).abs() <= 1e-2 * largest,
        "{by_default} vs {largest}"
    );
    // The gradient: captum's 2% outliers by default, which ends at or below the largest value.
    let outliers = high("gradient", &[]);
    assert_eq!(outliers, high("gradient", &["--scaling", "outliers:2"]));
    assert!(outliers <= high("gradient", &["--scaling", "level:1"]));
}

#[test]
fn folder_of_photos_continues_past_a_bad_one() {
    let dir = scratch("folder");
    let (model, graph) = tiny_rgb_model(&dir);
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::write(photos.join("good.jpg"), gradient_jpeg()).unwrap();
    std::fs::write(photos.join("bad.png"), b"this is not an image").unwrap();
    std::fs::write(photos.join("readme.txt"), b"ignored").unwrap();
    let out_dir = dir.join("heatmaps");
    let out = run(&photo_args(&model, &graph, &photos, &out_dir, "gradient"));
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bad.png") && err.contains("not a PNG, JPEG or WebP"),
        "{err}"
    );
    assert!(err.contains("1 of 2 images failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&out).contains("good.jpg"));
    assert!(out_dir.join("good.png").is_file());
    assert!(!out_dir.join("bad.png").exists());

    // Without the bad one, the folder succeeds.
    std::fs::remove_file(photos.join("bad.png")).unwrap();
    let out = run(&photo_args(&model, &graph, &photos, &out_dir, "smoothgrad"));
    assert_ok(&out);
}

/// `--device wgpu` gives the CPU's results (and names its adapter in `--timings`).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_device_matches_cpu() {
    let dir = scratch("wgpu");
    for method in ["gradient", "lrp-epsilon-gamma-box", "grad-cam"] {
        let cpu = explain_vgg(&dir, method, &["--device", "cpu"]);
        let gpu = explain_vgg(&dir, method, &["--device", "wgpu"]);
        assert_close(
            &format!("{method} wgpu vs cpu"),
            &gpu["attributions"],
            &cpu["attributions"],
        );
        assert_close(&format!("{method} logits"), &gpu["logits"], &cpu["logits"]);
    }
    let out = run(&[
        "explain",
        "--model",
        &fixture("mlp.safetensors").display().to_string(),
        "--graph",
        &fixture("mlp.graph.json").display().to_string(),
        "--input",
        &fixture("mlp_refs.safetensors").display().to_string(),
        "--method",
        "gradient",
        "--device",
        "wgpu",
        "--timings",
        "--out",
        &dir.join("timed.safetensors").display().to_string(),
    ]);
    assert_ok(&out);
    let err = stderr(&out);
    let json = err.lines().find(|l| l.starts_with('{'));
    let line: serde_json::Value = serde_json::from_str(json.unwrap_or_else(|| panic!("no timings in {err}"))).unwrap();
    let device = line["device"].as_str().unwrap();
    assert!(device != "cpu" && !device.is_empty(), "the adapter is named: {device}");
}

/// `evaluate` in the form outside checks use: an explanation file written by `explain`, scored
/// with the metrics into `{"metrics": {name: [one value per sample]}}`; AbPC equals pnpxai's
/// (the metric fixtures' `abpc_gradient` for the MNIST VGG's signed saliency); options for a
/// metric not asked for, and a report that is not .json/.csv, are refused.
#[test]
fn evaluate_scores_an_explanation_file() {
    let dir = scratch("evaluate_scores_an_explanation_file");
    explain_vgg(&dir, "gradient", &[]);
    let report = dir.join("r.json");
    let args = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut args: Vec<String> = [
            "evaluate",
            "--model",
            &fixture("vgg.safetensors").display().to_string(),
            "--graph",
            &fixture("vgg.graph.json").display().to_string(),
            "--input",
            &fixture("vgg_refs.safetensors").display().to_string(),
            "--attributions",
            &dir.join("gradient.safetensors").display().to_string(),
            "--metric",
            "abpc,morf,lerf,mu-fidelity,complexity",
            "--seed",
            "0",
            "--out",
            &out.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    assert_ok(&run(&args(&[], &report)));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let metrics = json["metrics"].as_object().unwrap();
    assert_eq!(metrics.len(), 5);
    for values in metrics.values() {
        assert_eq!(values.as_array().unwrap().len(), 4, "one value per sample");
    }
    let reference = common::Refs::load(&common::fixture("metrics/mnist_vgg_metrics.safetensors"));
    let pnpxai = reference
        .get("abpc_gradient")
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (ours, theirs) in metrics["abpc"].as_array().unwrap().iter().zip(&pnpxai) {
        assert!((ours.as_f64().unwrap() - theirs).abs() < 1e-4, "{ours} vs {theirs}");
    }
    let unasked = run(&args(&["--sensitivity-epsilon", "0.1"], &report));
    assert!(!unasked.status.success());
    assert!(
        stderr(&unasked).contains("--sensitivity-epsilon"),
        "{}",
        stderr(&unasked)
    );
    let wrong = run(&args(&[], &dir.join("r.txt")));
    assert!(!wrong.status.success());
    assert!(stderr(&wrong).contains(".json or .csv"), "{}", stderr(&wrong));
}
