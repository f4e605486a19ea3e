//! Compiled modules kept on disk beside the `.wasm`, keyed by its hash and
//! size, so that each run does not compile the filter again.

use std::path::Path;

use wasmtime::{Engine, Module};

/// A module compiled earlier by this same engine configuration, if cached.
pub(crate) fn cached(engine: &Engine, path: &Path) -> Option<Module> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file is one this host wrote from `Module::serialize` for
    // the same module bytes (the name carries their hash); wasmtime itself
    // refuses files from another version or configuration, and those are
    // then recompiled.
    unsafe { Module::deserialize_file(engine, path) }.ok()
}

/// Best effort: a read-only directory only costs the next run a compilation.
pub(crate) fn store_cached(module: &Module, path: &Path) {
    let Ok(serialized) = module.serialize() else {
        return;
    };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Compilations of earlier builds are of no further use.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "cwasm") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    // Write then rename, so a concurrent run never reads half a file.
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&temporary, serialized).is_ok() && std::fs::rename(&temporary, path).is_err()
    {
        let _ = std::fs::remove_file(&temporary);
    }
}
