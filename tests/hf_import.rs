//! Imported transformers Reformers against transformers' own outputs: small random
//! `ReformerModelWithLMHead` models and their buckets, logits and losses, written by
//! `scripts/hf-reformer-fixtures.py` into `tests/fixtures/hf-reformer/` (no Python here).
//! Also: the imported model through the project's own reversible training path, and
//! what `reformer import` says about folders it cannot import.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::scratch;
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

/// The fixture `case` imported into a run folder under `scratch`, and loaded from there.
fn imported(case: &Path, scratch: &Path) -> (nn::VarStore, ReformerLm) {
    let run = scratch.join(case.file_name().unwrap());
    import(case, &run, None).unwrap_or_else(|e| panic!("import of {}: {e:#}", case.display()));
    let (vs, model, _) = load_model(&run, Device::Cpu).unwrap();
    (vs, model)
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// The bytes of vocabulary ids (id = byte + token_offset).
fn bytes_of(ids: &Tensor, model: &ReformerLm) -> Tensor {
    ids - model.cfg.compat.token_offset
}

/// Calls `check(model, file, reference tensors, input bytes)` for every reference file of
/// every fixture case, the case imported under a scratch folder named `name`.
fn for_each_reference(name: &str, check: impl Fn(&ReformerLm, &Path, &HashMap<String, Tensor>, &Tensor)) {
    let dir = scratch(name);
    for case in cases() {
        let (_vs, model) = imported(&case, &dir);
        for file in references(&case) {
            let reference = read(&file);
            let tokens = bytes_of(&reference["input_ids"], &model);
            check(&model, &file, &reference, &tokens);
        }
    }
}

#[test]
fn imported_models_hash_into_transformers_buckets() {
    for_each_reference("buckets", |model, file, reference, tokens| {
        let mode = ForwardMode::eval(0);
        let x = model.embed(tokens, mode);
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
    });
}

#[test]
fn imported_models_give_transformers_logits_and_loss() {
    for_each_reference("logits", |model, file, reference, tokens| {
        let mode = ForwardMode::eval(0);
        let logits = tch::no_grad(|| model.vocab_logits(&model.hidden(tokens, mode)));
        let diff = max_abs_diff(&logits, &reference["logits"]);
        assert!(diff <= LOGIT_TOLERANCE, "{}: max |logit difference| {diff:.2e}", file.display());

        // transformers' loss: every position predicts the next; the last predicts nothing.
        let (b, t) = tokens.size2().unwrap();
        let targets = Tensor::cat(&[tokens.narrow(1, 1, t - 1), tokens.narrow(1, 0, 1)], 1);
        let weights = Tensor::ones([b, t], (Kind::Float, Device::Cpu));
        let _ = weights.narrow(1, t - 1, 1).fill_(0.0);
        let loss = tch::no_grad(|| model.loss(tokens, &targets, Some(&weights), mode)).loss.double_value(&[]);
        let want = reference["loss"].double_value(&[]);
        assert!((loss - want).abs() <= LOSS_TOLERANCE, "{}: loss {loss} against {want}", file.display());
    });
}

#[test]
fn a_pickled_checkpoint_imports_like_its_safetensors_twin() {
    let dir = scratch("pickled");
    let (_a, from_safetensors) = imported(&fixtures().join("lsh-only"), &dir);
    let (_b, from_pickle) = imported(&fixtures().join("pickled/lsh-only"), &dir.join("pickled"));
    let tokens = Tensor::arange(96, (Kind::Int64, Device::Cpu)).view([1, 96]) + 40;
    let mode = ForwardMode::eval(0);
    let a = tch::no_grad(|| from_safetensors.vocab_logits(&from_safetensors.hidden(&tokens, mode)));
    let b = tch::no_grad(|| from_pickle.vocab_logits(&from_pickle.hidden(&tokens, mode)));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

/// The loss and every gradient of an imported model (wrap-around windows, per-head
/// rotations, dropout on) through the project's reversible stack, through the reversible
/// stack with sliced attention, and through the reversible stack whose forward (run
/// without autograd) slices attention by its size, equal ordinary autograd's.
#[test]
fn imported_weights_train_alike_through_the_reversible_and_sliced_paths() {
    use reformer::run_dir::{load_weights, RunDir};
    let dir = scratch("train");
    let case = fixtures().join("enwik8-like");
    let run = dir.join("run");
    let cfg = import(&case, &run, None).unwrap().model;
    assert!(cfg.dropout_hidden > 0.0 && cfg.dropout_attention > 0.0, "the fixture should train with dropout");
    let checkpoint = RunDir::open(&run).unwrap().0.best().unwrap();
    let text = b"Dropout masks are drawn from the step's seed, so every path draws the same ones. ";
    let bytes: Vec<i64> = text.iter().cycle().take(2 * 129).map(|&b| b as i64).collect();
    let batch = Tensor::from_slice(&bytes).view([2, 129]);
    let (tokens, targets) = (batch.narrow(1, 0, 128), batch.narrow(1, 1, 128));
    let run_path = |reversible: bool, sliced: bool, sliced_by_size: bool| {
        let mut cfg = cfg.clone();
        cfg.execution.reversible = reversible;
        cfg.execution.sliced_attention = sliced;
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut model = ReformerLm::new(vs.root(), &cfg);
        if sliced_by_size {
            for block in std::sync::Arc::get_mut(&mut model.blocks).unwrap() {
                if let Attention::Lsh(lsh) = &mut block.attention {
                    lsh.params.max_logits_at_once = 1;
                }
            }
        }
        load_weights(&mut vs, &checkpoint).unwrap();
        let loss = model.loss(&tokens, &targets, None, ForwardMode::train(21)).loss;
        loss.backward();
        let grads: std::collections::HashMap<String, Tensor> =
            vs.variables().into_iter().map(|(name, var)| (name, var.grad())).collect();
        (loss.double_value(&[]), grads)
    };
    let (plain_loss, plain_grads) = run_path(false, false, false);
    for (reversible, sliced, by_size) in
        [(true, false, false), (true, true, false), (false, true, false), (true, false, true)]
    {
        let (loss, grads) = run_path(reversible, sliced, by_size);
        assert!(
            (loss - plain_loss).abs() <= 1e-5,
            "reversible {reversible} sliced {sliced}: loss {loss} vs {plain_loss}"
        );
        for (name, expected) in &plain_grads {
            let error = (&grads[name] - expected).norm().double_value(&[]) / expected.norm().double_value(&[]);
            assert!(error <= 1e-4, "reversible {reversible} sliced {sliced}: {name} relative error {error:e}");
        }
    }
}

/// A copy of the fixture `case` under `dir`, changed by `edit` (on the folder).
fn broken_copy(case: &str, dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let target = dir.join(format!("broken-{n}-{case}"));
    let _ = fs::remove_dir_all(&target);
    fs::create_dir_all(&target).unwrap();
    for file in ["config.json", "model.safetensors"] {
        fs::copy(fixtures().join(case).join(file), target.join(file)).unwrap();
    }
    edit(&target);
    target
}

fn edit_config(folder: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let path = folder.join("config.json");
    let mut json = common::read_json(&path);
    change(&mut json);
    fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

/// The one-line reason `reformer import` gives for the folder.
fn import_error(folder: &Path, dir: &Path) -> String {
    let out = dir.join(format!("out-{}", folder.file_name().unwrap().to_string_lossy()));
    let error = import(folder, &out, None).expect_err("the import should fail");
    assert!(!out.exists(), "a failed import left {}", out.display());
    format!("{error:#}")
}

#[test]
fn folders_that_cannot_be_imported_are_refused_with_the_reason() {
    let dir = scratch("refused");
    let cases: Vec<(PathBuf, &str)> = vec![
        (broken_copy("lsh-only", &dir, |f| fs::remove_file(f.join("model.safetensors")).unwrap()), "holds no weights"),
        (broken_copy("lsh-only", &dir, |f| edit_config(f, |j| j["model_type"] = "bert".into())), "'bert' model"),
        (
            broken_copy("crime-like", &dir, |f| edit_config(f, |j| j["vocab_size"] = 320.into())),
            "needs its own tokenizer",
        ),
        (broken_copy("crime-like", &dir, |f| edit_config(f, |j| j["is_decoder"] = false.into())), "is_decoder false"),
        (
            broken_copy("enwik8-like", &dir, |f| {
                let path = f.join("model.safetensors");
                let bytes = fs::read(&path).unwrap();
                fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "truncated",
        ),
        (
            broken_copy("enwik8-like", &dir, |f| edit_config(f, |j| j["feed_forward_size"] = 96.into())),
            "feed_forward.dense.dense.weight",
        ),
        (
            broken_copy("lsh-only", &dir, |f| edit_config(f, |j| j["attn_layers"] = serde_json::json!(["lsh"]))),
            "no place for: reformer.encoder.layers.1",
        ),
        (
            broken_copy("lsh-only", &dir, |f| {
                let path = f.join("model.safetensors");
                let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
                    .unwrap()
                    .into_iter()
                    .filter(|(name, _)| name != "reformer.encoder.layer_norm.bias")
                    .collect();
                Tensor::write_safetensors(&kept, &path).unwrap();
            }),
            "lacks reformer.encoder.layer_norm.bias",
        ),
    ];
    for (folder, expected) in cases {
        let message = import_error(&folder, &dir);
        assert!(message.contains(expected), "{}: {message:?} does not say {expected:?}", folder.display());
    }
}

/// A config with a giant size is refused in one line before any allocation (it once
/// grew until the kernel killed the process).
#[test]
fn a_model_larger_than_the_memory_is_refused_before_it_is_built() {
    let dir = scratch("giant");
    let from = dir.join("giant-model");
    fs::create_dir_all(&from).unwrap();
    let case = fixtures().join("lsh-only");
    for entry in fs::read_dir(&case).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, from.join(path.file_name().unwrap())).unwrap();
    }
    let mut config = common::read_json(&case.join("config.json"));
    config["feed_forward_size"] = serde_json::json!(10_000_000_000i64);
    fs::write(from.join("config.json"), config.to_string()).unwrap();
    let started = std::time::Instant::now();
    let error = format!("{:#}", import(&from, &dir.join("run"), None).unwrap_err());
    assert!(error.contains("parameters") && error.contains("GiB available"), "{error}");
    assert!(started.elapsed().as_secs() < 10, "refused only after {:?}", started.elapsed());
    assert!(!dir.join("run").exists());
    let _ = fs::remove_dir_all(&dir);
}
