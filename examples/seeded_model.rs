//! Writes a model with the reference fixtures' seeded weights as `.safetensors` and as a
//! PyTorch `.pth` (torch.save's zip format), for the browser tests and for trying the page
//! with a family whose real weights no package ships:
//!
//! `cargo run --release --example seeded_model -- tests/fixtures/convnext_tiny_refs.safetensors out/convnext_tiny`
//!
//! writes `out/convnext_tiny.safetensors` and `out/convnext_tiny.pth`. The first argument is any
//! fixture whose `__metadata__["weights"]` lists the seeded tensors (tests/fixtures/README.md).

#[path = "../tests/common/seeded_weights.rs"]
mod seeded_weights;

use std::io::Write;
use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [fixture, out] = args.as_slice() else {
        eprintln!("usage: seeded_model <fixture.safetensors> <output path without extension>");
        std::process::exit(2);
    };
    let bytes = std::fs::read(fixture).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("a safetensors fixture");
    let metadata = header.metadata().clone().unwrap_or_default();
    let spec = metadata.get("weights").expect("the fixture lists its seeded weights");
    let weights = seeded_weights::weights_from_metadata(spec);
    let out = PathBuf::from(out);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("the output folder");
    }
    seeded_weights::write_safetensors(&weights, &out.with_extension("safetensors"));
    write_pth(&weights, &out.with_extension("pth"));
    println!(
        "wrote {} and .pth ({} tensors)",
        out.with_extension("safetensors").display(),
        weights.len()
    );
}

/// torch.save's format: a zip of `archive/data.pkl` (the state dict pickled, each tensor a
/// `torch._utils._rebuild_tensor_v2` call on a persistent storage id), `archive/data/<key>`
/// (each storage's little-endian bytes) and `archive/version`.
fn write_pth(weights: &[(String, Vec<usize>, Vec<f32>)], path: &Path) {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pickle(weights)).unwrap();
    for (key, (_, _, values)) in weights.iter().enumerate() {
        zip.start_file(format!("archive/data/{key}"), stored).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        zip.write_all(&bytes).unwrap();
    }
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

/// Pickle protocol 2 of `OrderedDict((name, tensor), ...)`.
fn pickle(weights: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut p = Pickle(vec![0x80, 2]);
    p.global("collections", "OrderedDict");
    p.0.extend_from_slice(b")R");
    for (key, (name, shape, values)) in weights.iter().enumerate() {
        p.text(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.push(b'(');
        // The storage: persistent id ('storage', torch.FloatStorage, key, 'cpu', numel).
        p.0.push(b'(');
        p.text("storage");
        p.global("torch", "FloatStorage");
        p.text(&key.to_string());
        p.text("cpu");
        p.int(values.len());
        p.0.extend_from_slice(b"tQ");
        p.int(0);
        p.ints(shape);
        let strides: Vec<usize> = (0..shape.len()).map(|k| shape[k + 1..].iter().product()).collect();
        p.ints(&strides);
        p.0.push(0x89); // requires_grad = False
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")R"); // no backward hooks
        p.0.extend_from_slice(b"tR");
        p.0.push(b's');
    }
    p.0.push(b'.');
    p.0
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn text(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, n: usize) {
        self.0.push(b'J');
        self.0.extend_from_slice(&(n as i32).to_le_bytes());
    }

    fn ints(&mut self, values: &[usize]) {
        self.0.push(b'(');
        values.iter().for_each(|&v| self.int(v));
        self.0.push(b't');
    }
}
