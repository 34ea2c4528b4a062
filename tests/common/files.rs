//! Scratch folders, the tiny run that the tests of the binary train, and what a run
//! folder holds.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A path under the system's temporary folder, named after the test file, `name` and this
/// test process, where nothing is (anything left there by an earlier run is removed).
pub fn fresh_path(name: &str) -> PathBuf {
    let file = env!("CARGO_CRATE_NAME");
    let path = std::env::temp_dir().join(format!("reformer-{file}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    path
}

/// An empty folder at [`fresh_path`]`(name)`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = fresh_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A duplication run of a tiny model, written to `path` (returned): 2 layers (LSH, then
/// local attention) of width 32 over at most 64 tokens of a 16-symbol vocabulary, 2 heads,
/// 2 hash rounds, chunks of 8, axial positions. In `overrides`, a key of a section
/// ("model", "train") replaces that section's key whole; any other key (the task, its
/// data) is added at the top.
pub fn write_tiny_config(path: PathBuf, overrides: Value) -> PathBuf {
    let mut config = serde_json::json!({
        "model": {
            "vocab_size": 16, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_seq_len": 64,
            "positional": {"kind": "axial", "shape": [8, 8], "dims": [16, 16]},
            "attention": ["lsh", "local"], "lsh": {"n_hashes": 2, "chunk_len": 8}, "local": {"chunk_len": 8}
        },
        "train": {"duplication": {"n_symbols": 16, "copy_len": 15}}
    });
    let config_object = config.as_object_mut().unwrap();
    for (key, value) in overrides.as_object().expect("overrides are a JSON object") {
        match (config_object.get_mut(key).and_then(Value::as_object_mut), value.as_object()) {
            (Some(section), Some(changes)) => section.extend(changes.clone()),
            _ => {
                config_object.insert(key.clone(), value.clone());
            }
        }
    }
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The records of a run folder's metrics.jsonl.
pub fn metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
