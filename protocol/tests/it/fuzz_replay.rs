//! Replays the saved fuzz inputs through the fuzz targets' own checks.
//!
//! Every file under `fuzz/corpus/<target>/` (the seeds) and
//! `fuzz/regressions/<target>/` (inputs that once failed) goes through the
//! check that `fuzz/fuzz_targets/<target>.rs` runs, so what the fuzzer found
//! stays fixed on a stable toolchain. See `fuzz/README.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/harness/mod.rs"]
mod harness;

/// The saved inputs of one target, corpus first, each folder in name order.
fn saved_inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let dir = fuzz.join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|entry| entry.expect("readable directory entry").path())
            .filter(|path| path.is_file())
            .filter(|path| {
                !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        inputs.extend(files);
    }
    inputs
}

/// Runs `check` on every saved input of `target`; fails naming each input
/// whose check panicked (the panic messages are printed above).
fn replay(target: &str, check: fn(&[u8])) {
    let inputs = saved_inputs(target);
    assert!(!inputs.is_empty(), "no saved inputs for {target}");
    let failed: Vec<&PathBuf> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("readable input file");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} saved {target} inputs fail: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

#[test]
fn saved_line_decoder_inputs_keep_their_properties() {
    replay("line_decoder", harness::line_decoder::check);
}

#[test]
fn saved_handshake_inputs_keep_their_properties() {
    replay("handshake", harness::handshake::check);
}

#[test]
fn saved_messages_inputs_keep_their_properties() {
    replay("messages", harness::messages::check);
}
