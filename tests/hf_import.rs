//! Imported transformers Reformers against transformers' own outputs: small random
//! `ReformerModelWithLMHead` models and their buckets, logits and losses, written by
//! `scripts/hf-reformer-fixtures.py` into `tests/fixtures/hf-reformer/` (no Python here).
//! Also: the imported model through the project's own reversible training path, and
//! what `reformer import` says about folders it cannot import.

use std::fs;
use std::path::{Path, PathBuf};

use reformer::import::import;
use reformer::model::attention::Attention;
use reformer::model::{ForwardMode, ReformerLm};
use reformer::run_dir::load_model;
use tch::{nn, Device, Kind, Tensor};

const LOGIT_TOLERANCE: f64 = 1e-4;
const LOSS_TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-reformer")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(fixtures())
        .expect("tests/fixtures/hf-reformer is missing")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("config.json").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "expected the fixture cases, found {cases:?}");
    cases
}

fn references(case: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(case)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("reference-"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no reference outputs", case.display());
    files
}

/// A fresh folder under the system's temporary one, for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reformer-hf-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fixture `case` imported into a run folder under `scratch`, and loaded from there.
fn imported(case: &Path, scratch: &Path) -> (nn::VarStore, ReformerLm) {
    let run = scratch.join(case.file_name().unwrap());
    import(case, &run, None).unwrap_or_else(|e| panic!("import of {}: {e:#}", case.display()));
    let (vs, model, _) = load_model(&run, Device::Cpu).unwrap();
    (vs, model)
}

fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// The bytes of vocabulary ids (id = byte + token_offset).
fn bytes_of(ids: &Tensor, model: &ReformerLm) -> Tensor {
    ids - model.cfg.token_offset
}

#[test]
fn imported_models_hash_into_transformers_buckets() {
    let dir = scratch("buckets");
    for case in cases() {
        let (_vs, model) = imported(&case, &dir);
        for file in references(&case) {
            let reference = read(&file);
            let tokens = bytes_of(&reference["input_ids"], &model);
            let mode = ForwardMode::eval(0);
            let x = model.embed(&tokens, mode);
            let mut streams = (x.shallow_clone(), x);
            let mut compared = 0;
            for (i, block) in model.blocks.iter().enumerate() {
                let block_mode = mode.child(i as u64);
                if let (Attention::Lsh(lsh), Some(want)) = (&block.attention, reference.get(&format!("buckets.{i}"))) {
                    let got = tch::no_grad(|| lsh.buckets(&block.attention_input(&streams.1), block_mode));
                    // transformers' buckets carry round offsets of r × (buckets per round,
                    // the padding bucket included when there is padding).
                    let per_round = got.max().int64_value(&[]).max(lsh.params.hash.n_buckets - 1) + 1;
                    let want = want.remainder(per_round);
                    assert_eq!(got.size(), want.size(), "{}: layer {i} bucket shape", file.display());
                    let differ = got.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(differ, 0, "{}: layer {i}: {differ} buckets differ", file.display());
                    compared += 1;
                }
                streams = tch::no_grad(|| block.forward(&streams.0, &streams.1, block_mode));
            }
            let dense = reference.keys().all(|k| !k.starts_with("buckets."));
            assert!(compared > 0 || dense, "{}: no bucket compared", file.display());
        }
    }
}

#[test]
fn imported_models_give_transformers_logits_and_loss() {
    let dir = scratch("logits");
    for case in cases() {
        let (_vs, model) = imported(&case, &dir);
        for file in references(&case) {
            let reference = read(&file);
            let tokens = bytes_of(&reference["input_ids"], &model);
            let mode = ForwardMode::eval(0);
            let logits = tch::no_grad(|| model.vocab_logits(&model.hidden(&tokens, mode)));
            let diff = max_abs_diff(&logits, &reference["logits"]);
            assert!(diff <= LOGIT_TOLERANCE, "{}: max |logit difference| {diff:.2e}", file.display());

            // transformers' loss: every position predicts the next; the last predicts nothing.
            let (b, t) = tokens.size2().unwrap();
            let targets = Tensor::cat(&[tokens.narrow(1, 1, t - 1), tokens.narrow(1, 0, 1)], 1);
            let weights = Tensor::ones([b, t], (Kind::Float, Device::Cpu));
            let _ = weights.narrow(1, t - 1, 1).fill_(0.0);
            let loss = tch::no_grad(|| model.loss(&tokens, &targets, Some(&weights), mode)).loss.double_value(&[]);
            let want = reference["loss"].double_value(&[]);
            assert!((loss - want).abs() <= LOSS_TOLERANCE, "{}: loss {loss} against {want}", file.display());
        }
    }
}
