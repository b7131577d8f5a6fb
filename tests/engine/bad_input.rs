//! Bad input to the `candle-xai` command: every case exits with status 1 (never a panic's 101)
//! and an `error: ...` line that names the problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

use crate::common::{cli_binary, mnist_fixture as fixture, tiny_rgb_model, Scratch};

fn scratch(test: &str) -> Scratch {
    crate::common::scratch("bad-input", test)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs the command and checks it failed cleanly; returns stderr.
fn fails<S: AsRef<str>>(args: &[S]) -> String {
    failed(
        Command::new(cli_binary())
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .expect("the candle-xai binary runs"),
    )
}

/// Checks that a finished command failed cleanly; returns its stderr.
fn failed(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1; stderr:\n{err}");
    assert!(!err.contains("panicked"), "it panicked:\n{err}");
    assert!(err.contains("error: "), "no `error: ` line:\n{err}");
    err
}

fn assert_names(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` is not in:\n{err}");
    }
}

/// `explain` with the given model file (and the VGG graph), reference inputs, and `extra`.
fn explain_with_model(model: &Path, out_dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "explain".to_string(),
        "--model".into(),
        s(model),
        "--graph".into(),
        s(&fixture("vgg.graph.json")),
        "--out".into(),
        s(&out_dir.join("out.safetensors")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    if !extra.contains(&"--input") && !extra.contains(&"--image") {
        args.extend(["--input".into(), s(&fixture("vgg_refs.safetensors"))]);
    }
    if !extra.contains(&"--method") {
        args.extend(["--method".into(), "gradient".into()]);
    }
    fails(&args)
}

fn explain_vgg(dir: &Path, extra: &[&str]) -> String {
    explain_with_model(&fixture("vgg.safetensors"), dir, extra)
}

fn write_inputs(path: &Path, inputs: Tensor) {
    candle_core::safetensors::save(&HashMap::from([("inputs", inputs)]), path).unwrap();
}

#[test]
fn truncated_model() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(fixture("vgg.safetensors")).unwrap();
    let model = dir.join("truncated.safetensors");
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = explain_with_model(&model, &dir, &[]);
    assert_names(&err, &["truncated.safetensors", "not a valid safetensors file"]);
}

#[test]
fn corrupt_header() {
    let dir = scratch("corrupt-header");
    let mut bytes = std::fs::read(fixture("vgg.safetensors")).unwrap();
    bytes[8..24].copy_from_slice(b"@@ not json! @@@");
    let model = dir.join("corrupt.safetensors");
    std::fs::write(&model, &bytes).unwrap();
    let err = explain_with_model(&model, &dir, &[]);
    assert_names(&err, &["corrupt.safetensors", "not a valid safetensors file"]);
    // A header length that points past the end of the file.
    let mut bytes = std::fs::read(fixture("vgg.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&model, &bytes).unwrap();
    let err = explain_with_model(&model, &dir, &[]);
    assert_names(&err, &["corrupt.safetensors", "not a valid safetensors file"]);
}

/// A pickle candle's reader rejects is reported without the engine's backtrace, even with
/// RUST_BACKTRACE set.
#[test]
fn pickle_errors_without_backtraces() {
    let dir = scratch("pickle-backtrace");
    let model = dir.join("old.pth");
    // The legacy format's magic number, protocol 1001, then "system info" that sets an item
    // on a list.
    let magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
    let bytes = [&magic[..], b"\x80\x02M\xe9\x03.", b"\x80\x02]K\x01K\x02s."].concat();
    std::fs::write(&model, bytes).unwrap();
    let err = failed(
        Command::new(cli_binary())
            .args(["layers", "--model", &s(&model)])
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("the candle-xai binary runs"),
    );
    assert_names(&err, &["old.pth", "malformed pickle"]);
    assert_eq!(err.trim_end().lines().count(), 1, "one line, no backtrace:\n{err}");
}

/// An endless stream is read up to a limit, then refused.
#[test]
fn endless_model_file() {
    let dir = scratch("endless");
    let err = explain_with_model(Path::new("/dev/zero"), &dir, &[]);
    assert_names(&err, &["/dev/zero", "larger than the 512 MiB"]);
}

#[test]
fn empty_model_and_input_files() {
    let dir = scratch("empty");
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = explain_with_model(&empty, &dir, &[]);
    assert_names(&err, &["empty.safetensors", "is empty"]);
    let err = explain_vgg(&dir, &["--input", empty.to_str().unwrap()]);
    assert_names(&err, &["empty.safetensors", "is empty"]);
}

#[test]
fn missing_files() {
    let dir = scratch("missing");
    let err = explain_with_model(&dir.join("nope.safetensors"), &dir, &[]);
    assert_names(&err, &["could not read", "nope.safetensors"]);
    let err = explain_vgg(&dir, &["--input", dir.join("absent.safetensors").to_str().unwrap()]);
    assert_names(&err, &["could not read", "absent.safetensors"]);
    let err = fails(&[
        "explain",
        "--model",
        &s(&fixture("vgg.safetensors")),
        "--graph",
        &s(&fixture("vgg.graph.json")),
        "--input",
        &s(&fixture("vgg_refs.safetensors")),
        "--method",
        "gradient",
        "--out",
        &s(&dir.join("no/such/dir/out.safetensors")),
    ]);
    assert_names(&err, &["could not write", "out.safetensors"]);
}

#[test]
fn input_with_wrong_channel_count() {
    let dir = scratch("channels");
    let input = dir.join("rgb.safetensors");
    write_inputs(
        &input,
        Tensor::zeros((2, 3, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = explain_vgg(&dir, &["--input", input.to_str().unwrap()]);
    assert_names(&err, &["[2, 3, 28, 28]", "expects [N, 1, H, W]"]);
}

/// `explain` of `input` with the gradient by a model and its graph JSON; returns the failure.
fn explain_graph_model((model, graph): (PathBuf, PathBuf), input: &Path, dir: &Path) -> String {
    fails(&[
        "explain",
        "--model",
        &s(&model),
        "--graph",
        &s(&graph),
        "--input",
        &s(input),
        "--method",
        "gradient",
        "--out",
        &s(&dir.join("out.safetensors")),
    ])
}

/// A fixture model with one tensor replaced by zeros of `dims`, and its graph.
fn with_tensor_replaced(dir: &Path, model: &str, tensor: &str, dims: &[usize]) -> (PathBuf, PathBuf) {
    let mut weights = candle_core::safetensors::load(fixture(&format!("{model}.safetensors")), &Device::Cpu).unwrap();
    weights.insert(
        tensor.into(),
        Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.join(format!("{model}-{tensor}.safetensors"));
    candle_core::safetensors::save(&weights, &path).unwrap();
    (path, fixture(&format!("{model}.graph.json")))
}

/// A Linear weight of the wrong width is blamed on the weights where the width it receives
/// does not depend on the input's size (after another Linear, after global pooling), and on
/// the input's size where it does (the first Linear after a Flatten).
#[test]
fn linear_weights_of_the_wrong_width() {
    let dir = scratch("linear-width");
    let input = fixture("mlp_refs.safetensors");
    let explain = |model_and_graph| explain_graph_model(model_and_graph, &input, &dir);
    let err = explain(with_tensor_replaced(&dir, "mlp", "net.3.weight", &[64, 100]));
    assert_names(
        &err,
        &[
            "`net.3` (Linear) expects 100 features",
            "from `net.1` (Linear)",
            "weights do not fit",
        ],
    );
    let err = explain(with_tensor_replaced(&dir, "resnet", "fc.weight", &[10, 48]));
    assert_names(
        &err,
        &[
            "`fc` (Linear) expects 48 features",
            "at every input size",
            "weights do not fit",
        ],
    );
    let err = explain(with_tensor_replaced(&dir, "mlp", "net.1.weight", &[128, 700]));
    assert_names(
        &err,
        &["`net.1` (Linear) expects 700 features", "the input's size does not fit"],
    );
    assert!(!err.contains("weights do not fit"), "{err}");
}

#[test]
fn input_file_without_inputs_tensor() {
    let dir = scratch("no-inputs");
    let input = dir.join("other.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([(
            "pixels",
            Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]),
        &input,
    )
    .unwrap();
    let err = explain_vgg(&dir, &["--input", input.to_str().unwrap()]);
    assert_names(&err, &["`inputs`", "missing", "other.safetensors"]);
}

#[test]
fn target_out_of_range() {
    let dir = scratch("target");
    let err = explain_vgg(&dir, &["--target", "10"]);
    assert_names(&err, &["target class 10", "out of range", "10 classes"]);
    let err = explain_vgg(&dir, &["--target", "-1"]);
    assert_names(&err, &["target class -1", "out of range"]);
}

#[test]
fn unknown_method() {
    let dir = scratch("method");
    let err = explain_vgg(&dir, &["--method", "deeplift"]);
    assert_names(&err, &["unknown method", "deeplift", "integrated-gradients"]);
}

#[test]
fn unknown_layer_name() {
    let dir = scratch("layer");
    let err = explain_vgg(&dir, &["--layer", "features.99"]);
    assert_names(&err, &["no layer named `features.99`", "features.11"]);
}

#[test]
fn unknown_arch() {
    let dir = scratch("arch");
    let err = fails(&[
        "explain",
        "--model",
        &s(&fixture("vgg.safetensors")),
        "--arch",
        "resnet999",
        "--input",
        &s(&fixture("vgg_refs.safetensors")),
        "--method",
        "gradient",
        "--out",
        &s(&dir.join("out.safetensors")),
    ]);
    assert_names(&err, &["unknown architecture `resnet999`"]);
    let err = fails(&[
        "layers",
        "--model",
        &s(&fixture("vgg.safetensors")),
        "--arch",
        "resnet999",
    ]);
    assert_names(&err, &["unknown architecture `resnet999`"]);
}

#[test]
fn invalid_graph_json() {
    let dir = scratch("graph");
    let graph = dir.join("broken.graph.json");
    std::fs::write(
        &graph,
        r#"{"input_channels": 1, "nodes": [{"name": "x", "op": "Transformer"}]}"#,
    )
    .unwrap();
    let err = fails(&[
        "layers",
        "--model",
        &s(&fixture("vgg.safetensors")),
        "--graph",
        &s(&graph),
    ]);
    assert_names(&err, &["invalid model graph", "broken.graph.json"]);
    // A size that is neither a number nor a pair says what it expected and what it found.
    std::fs::write(
        &graph,
        r#"{"input_channels": 1, "nodes": [{"name": "c", "op": "Conv2d", "kernel_size": [3]}]}"#,
    )
    .unwrap();
    let model = s(&fixture("vgg.safetensors"));
    let err = fails(&["layers", "--model", &model, "--graph", &s(&graph)]);
    assert_names(&err, &["a [height, width] pair", "found [3]"]);
}

/// A header that names a tensor twice is reported as such, for models and inputs alike.
#[test]
fn duplicated_safetensors_header_key() {
    let dir = scratch("duplicate-key");
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let bytes = [&(header.len() as u64).to_le_bytes()[..], header, &[0; 8]].concat();
    let file = dir.join("twice.safetensors");
    std::fs::write(&file, bytes).unwrap();
    let err = explain_with_model(&file, &dir, &[]);
    assert_names(&err, &["twice.safetensors", "names tensor `w` twice"]);
    let err = explain_vgg(&dir, &["--input", &s(&file)]);
    assert_names(&err, &["twice.safetensors", "names tensor `w` twice"]);
}

#[test]
fn option_for_the_wrong_method() {
    let dir = scratch("wrong-option");
    let err = explain_vgg(&dir, &["--n-steps", "5"]);
    assert_names(&err, &["--n-steps", "gradient", "integrated-gradients"]);
    let err = explain_vgg(&dir, &["--method", "grad-cam", "--epsilon", "0.1"]);
    assert_names(&err, &["--epsilon", "grad-cam", "lrp-"]);
    let err = explain_vgg(&dir, &["--method", "lrp-epsilon-plus", "--gamma", "0.1"]);
    assert_names(&err, &["--gamma", "lrp-epsilon-plus", "lrp-epsilon-gamma-box"]);
    let err = explain_vgg(&dir, &["--method", "integrated-gradients", "--no-relu"]);
    assert_names(&err, &["--no-relu", "integrated-gradients", "grad-cam"]);
    let err = explain_vgg(&dir, &["--colormap", "hot"]);
    assert_names(&err, &["--colormap", "--image"]);
}

#[test]
fn bad_option_values() {
    let dir = scratch("bad-values");
    let err = explain_vgg(&dir, &["--method", "integrated-gradients", "--ig-method", "simpson"]);
    assert_names(&err, &["--ig-method", "simpson", "riemann-trapezoid"]);
    let err = explain_vgg(&dir, &["--method", "integrated-gradients", "--baseline", "blur:x"]);
    assert_names(&err, &["--baseline", "blur:x"]);
    let err = explain_vgg(&dir, &["--method", "smoothgrad", "--smoothgrad-type", "median"]);
    assert_names(&err, &["--smoothgrad-type", "median"]);
    let err = explain_vgg(&dir, &["--method", "smoothgrad", "--n-iter", "0"]);
    assert_names(&err, &["n_samples"]);
    let err = explain_vgg(&dir, &["--method", "lrp-epsilon-plus", "--epsilon", "-1"]);
    assert_names(&err, &["epsilon"]);
    let err = explain_vgg(&dir, &["--method", "lrp-epsilon-plus", "--bn-merge", "fold"]);
    assert_names(&err, &["--bn-merge", "fold"]);
    let err = explain_vgg(&dir, &["--method", "integrated-gradients", "--batch-size", "0"]);
    assert_names(&err, &["--batch-size"]);
    let err = explain_vgg(
        &dir,
        &[
            "--method",
            "integrated-gradients",
            "--ig-method",
            "riemann-left",
            "--n-steps",
            "1",
        ],
    );
    assert_names(&err, &["--n-steps", "at least 2"]);
    // Past the range `methods` advertises: refused with that range.
    let methods: serde_json::Value = serde_json::from_slice(
        &Command::new(cli_binary())
            .arg("methods")
            .output()
            .expect("the candle-xai binary runs")
            .stdout,
    )
    .unwrap();
    let ig = methods
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "integrated-gradients")
        .unwrap();
    let n_steps = ig["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "n_steps")
        .unwrap();
    let max = n_steps["max"].as_f64().expect("n_steps has a maximum") as u64;
    let err = explain_vgg(
        &dir,
        &["--method", "integrated-gradients", "--n-steps", &(max + 1).to_string()],
    );
    assert_names(&err, &["--n-steps", &format!("from 1 to {max}")]);
    let err = explain_vgg(&dir, &["--method", "integrated-gradients", "--memory-limit", "1"]);
    assert_names(&err, &["needs about", "more than the 1 MiB"]);
    // clap's own errors exit 1 as well
    let err = fails(&["explain", "--model", "m.safetensors"]);
    assert_names(&err, &["--method"]);
    let err = explain_vgg(&dir, &["--target", "three"]);
    assert_names(&err, &["three"]);
}

/// conv -> bn -> relu -> pool -> fc on 3-channel inputs, with `running_var` and `eps` as given
/// and a NaN in the conv weight when `nan` is set; returns (model, graph).
fn batch_norm_model(dir: &Path, running_var: f32, eps: f64, nan: bool) -> (PathBuf, PathBuf) {
    let filled = |n: usize, shape: &[usize], v: f32| Tensor::from_vec(vec![v; n], shape, &Device::Cpu).unwrap();
    let mut conv = vec![0.1f32; 4 * 3 * 3 * 3];
    if nan {
        conv[17] = f32::NAN;
    }
    let weights = HashMap::from([
        (
            "conv.weight",
            Tensor::from_vec(conv, (4, 3, 3, 3), &Device::Cpu).unwrap(),
        ),
        ("bn.weight", filled(4, &[4], 1.0)),
        ("bn.bias", filled(4, &[4], 0.0)),
        ("bn.running_mean", filled(4, &[4], 0.0)),
        ("bn.running_var", filled(4, &[4], running_var)),
        ("fc.weight", filled(12, &[3, 4], 0.5)),
    ]);
    let model = dir.join("bn.safetensors");
    candle_core::safetensors::save(&weights, &model).unwrap();
    let graph = dir.join("bn.graph.json");
    let nodes = format!(
        r#"{{"input_channels": 3, "nodes": [
            {{"name": "conv", "op": "Conv2d", "kernel_size": 3}},
            {{"name": "bn", "op": "BatchNorm2d", "eps": {eps:?}}},
            {{"name": "relu", "op": "ReLU"}},
            {{"name": "pool", "op": "AdaptiveAvgPool2d", "output_size": 1}},
            {{"name": "flatten", "op": "Flatten"}},
            {{"name": "fc", "op": "Linear"}}]}}"#
    );
    std::fs::write(&graph, nodes).unwrap();
    (model, graph)
}

/// Weights that load but cannot give meaningful attributions are refused at load, naming the
/// tensor, instead of "succeeding" with NaN heatmaps.
#[test]
fn implausible_weights() {
    let dir = scratch("implausible");
    let input = dir.join("input.safetensors");
    write_inputs(
        &input,
        Tensor::ones((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let run = |model_and_graph| explain_graph_model(model_and_graph, &input, &dir);
    let err = run(batch_norm_model(&dir, 1.0, 1e-5, true));
    assert_names(&err, &["`conv.weight`", "NaN", "corrupt"]);
    let err = run(batch_norm_model(&dir, -0.5, 1e-5, false));
    assert_names(&err, &["`bn.running_var`", "negative variance"]);
    let err = run(batch_norm_model(&dir, 1.0, -1e-5, false));
    assert_names(&err, &["`bn`", "eps", ">= 0"]);
}

#[test]
fn non_finite_inputs() {
    let dir = scratch("nan");
    let input = dir.join("nan.safetensors");
    let mut values = vec![0f32; 2 * 28 * 28];
    values[5] = f32::NAN;
    values[700] = f32::INFINITY;
    write_inputs(&input, Tensor::from_vec(values, (2, 1, 28, 28), &Device::Cpu).unwrap());
    let err = explain_vgg(&dir, &["--input", input.to_str().unwrap()]);
    assert_names(&err, &["2 non-finite values"]);
}

#[test]
fn unknown_device() {
    let dir = scratch("device");
    let err = explain_vgg(&dir, &["--device", "tpu"]);
    assert_names(&err, &["unknown device `tpu`"]);
}

/// Only a build without CUDA can refuse it (a `--features cuda` run shows this test as absent).
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature() {
    let dir = scratch("cuda");
    let err = explain_vgg(&dir, &["--device", "cuda"]);
    assert_names(&err, &["CUDA", "--features cuda"]);
}

fn explain_photo(dir: &Path, photo: &Path, extra: &[&str]) -> String {
    let (model, graph) = tiny_rgb_model(dir);
    let mut args = vec![
        "explain".to_string(),
        "--model".into(),
        s(&model),
        "--graph".into(),
        s(&graph),
        "--image".into(),
        s(photo),
        "--method".into(),
        "gradient".into(),
        "--out".into(),
        s(&dir.join("heat.png")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    fails(&args)
}

#[test]
fn text_file_named_png() {
    let dir = scratch("text-png");
    let photo = dir.join("notes.png");
    std::fs::write(&photo, "shopping list: eggs, milk\n").unwrap();
    let err = explain_photo(&dir, &photo, &[]);
    assert_names(&err, &["notes.png", "not a PNG, JPEG or WebP image"]);
}

#[test]
fn truncated_and_unsupported_photos() {
    let dir = scratch("bad-photos");
    let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 7]));
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    let photo = dir.join("cut.png");
    std::fs::write(&photo, &png[..png.len() / 2]).unwrap();
    let err = explain_photo(&dir, &photo, &[]);
    assert_names(&err, &["cut.png", "PNG"]);
    let gif = dir.join("anim.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let err = explain_photo(&dir, &gif, &[]);
    assert_names(&err, &["anim.gif", "GIF"]);
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let err = explain_photo(&dir, &empty, &[]);
    assert_names(&err, &["empty.jpg", "is empty"]);
}

/// An output file gets the format its name says, or the command refuses it before working.
#[test]
fn output_files_follow_their_extension() {
    let dir = scratch("out-format");
    let photo = dir.join("photo.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 9]))
        .save(&photo)
        .unwrap();
    let (model, graph) = tiny_rgb_model(&dir);
    let run = |source: &str, input: &Path, out: &Path| {
        Command::new(cli_binary())
            .args([
                "explain",
                "--model",
                &s(&model),
                "--graph",
                &s(&graph),
                "--method",
                "gradient",
            ])
            .args([source, &s(input), "--out", &s(out)])
            .output()
            .expect("the candle-xai binary runs")
    };
    for (name, magic) in [
        ("heat.jpg", &b"\xff\xd8"[..]),
        ("heat.webp", b"RIFF"),
        ("heat.png", b"\x89PNG"),
    ] {
        let out = dir.join(name);
        let done = run("--image", &photo, &out);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        assert!(std::fs::read(&out).unwrap().starts_with(magic), "{name}");
    }
    let err = failed(run("--image", &photo, &dir.join("heat.gif")));
    assert_names(&err, &["heat.gif", ".png, .jpg or .webp"]);
    assert!(!dir.join("heat.gif").exists());
    let inputs = dir.join("inputs.safetensors");
    write_inputs(
        &inputs,
        Tensor::ones((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = failed(run("--input", &inputs, &dir.join("attributions.png")));
    assert_names(&err, &["attributions.png", ".safetensors"]);
}

#[test]
fn bad_heatmap_options_and_grey_models() {
    let dir = scratch("heatmap-options");
    let photo = dir.join("photo.png");
    image::RgbImage::new(40, 40).save(&photo).unwrap();
    let err = explain_photo(&dir, &photo, &["--colormap", "jet"]);
    assert_names(&err, &["jet", "bwr"]);
    let err = explain_photo(&dir, &photo, &["--alpha", "2"]);
    assert_names(&err, &["--alpha"]);
    let err = explain_photo(&dir, &photo, &["--scaling", "level:0"]);
    assert_names(&err, &["scaling", "level", "above 0"]);
    let err = explain_photo(&dir, &photo, &["--scaling", "percentile:99"]);
    assert_names(&err, &["percentile:99", "outliers:P", "level:L"]);
    // The MNIST models take one channel: a photo cannot go in.
    let err = fails(&[
        "explain",
        "--model",
        &s(&fixture("vgg.safetensors")),
        "--graph",
        &s(&fixture("vgg.graph.json")),
        "--image",
        &s(&photo),
        "--method",
        "gradient",
        "--out",
        &s(&dir.join("heat.png")),
    ]);
    assert_names(&err, &["3 input channels", "takes 1"]);
    let folder = dir.join("no-photos");
    std::fs::create_dir_all(&folder).unwrap();
    let err = explain_photo(&dir, &folder, &[]);
    assert_names(&err, &["no-photos", "no png, jpg, jpeg or webp images"]);
}

#[test]
fn convert_refuses_non_checkpoints() {
    let dir = scratch("convert");
    let err = fails(&[
        "convert",
        &s(&fixture("vgg.safetensors")),
        &s(&dir.join("out.safetensors")),
    ]);
    assert_names(&err, &["vgg.safetensors", "not a PyTorch checkpoint"]);
    let empty = dir.join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let err = fails(&["convert", &s(&empty), &s(&dir.join("out.safetensors"))]);
    assert_names(&err, &["empty.pth", "is empty"]);
}
