//! Replays every committed fuzz input (`fuzz/corpus/<target>/`: what the fuzzers found
//! interesting, and the crash regressions they found) through the code each target runs
//! (`fuzz/bodies.rs`): a quick check, in every test run, that none of them panics again.
//! Fuzzing itself needs nightly: `cargo +nightly fuzz run <target>` (fuzz/README.md).

#[path = "../../fuzz/bodies.rs"]
mod bodies;

#[test]
fn every_committed_fuzz_input_runs_without_a_panic() {
    for (target, body) in bodies::TARGETS {
        let dir = crate::common::repository_root().join("fuzz/corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("fuzz target {target} panics on {}", file.display());
            }
        }
    }
}
