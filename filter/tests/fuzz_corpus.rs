//! Replays the fuzzing corpus (`fuzz/corpus/<target>/`, grown by `make fuzz`
//! and minimized) through the same entry points the fuzz targets call, so
//! that every input that once found a new path keeps passing in `make test`.

#![allow(clippy::panic)]

use std::path::Path;

use celroute::engine::testing::fuzz;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut count = 0;
    for entry in entries.flatten() {
        if let Ok(data) = std::fs::read(entry.path()) {
            run(&data);
            count += 1;
        }
    }
    assert!(count > 0, "{} holds no input", dir.display());
    count
}

#[test]
fn the_load_corpus_passes() {
    replay("load", fuzz::load);
}

#[test]
fn the_expression_corpus_passes() {
    replay("expression", fuzz::expression);
}

#[test]
fn the_decide_corpus_passes() {
    replay("decide", fuzz::decide);
}

#[test]
fn the_inference_corpus_passes() {
    replay("inference", fuzz::inference);
}

#[test]
fn the_signals_corpus_passes() {
    replay("signals", fuzz::signals);
}
