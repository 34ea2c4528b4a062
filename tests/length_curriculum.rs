//! A length curriculum: a model trained short continues long (`train --init-from` with a
//! longer `max_seq_len`). Every weight is kept, and the position tables grow by the rule of
//! `model::weight_transfer`: the positions the source knew keep their embeddings.

mod common;

use common::{assert_fails_saying, assert_success, read_json, scratch, train, write_tiny_config};
use reformer::model::weight_transfer::load_into;
use reformer::model::{ForwardMode, ModelConfig, PositionalConfig, ReformerLm};
use tch::{nn, Device, Kind, Tensor};

fn build(cfg: &ModelConfig) -> (nn::VarStore, ReformerLm) {
    cfg.validate().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ReformerLm::new(vs.root(), cfg);
    (vs, model)
}

fn with_positions(max_seq_len: i64, positional: PositionalConfig) -> ModelConfig {
    ModelConfig { max_seq_len, positional, ..common::tiny_model_config() }
}

fn axial(shape: [i64; 2]) -> PositionalConfig {
    PositionalConfig::Axial { shape, dims: [16, 16] }
}

/// Every variable of `vs` by name, copied (so that later loads do not change them).
fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<_> = vs.variables().into_iter().map(|(name, t)| (name, t.detach().copy())).collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

fn get<'a>(variables: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &variables.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
}

/// Saves a short model (`source`), builds a longer one (`target`) and loads the short
/// one's weights into it; returns both models' variables (the target's before and after).
type Transfer = (Vec<(String, Tensor)>, Vec<(String, Tensor)>, Vec<(String, Tensor)>, String, ReformerLm, ReformerLm);
fn transfer(name: &str, source: &ModelConfig, target: &ModelConfig) -> anyhow::Result<Transfer> {
    let dir = scratch(name);
    let weights = dir.join("model.safetensors");
    let (short_vs, short) = build(source);
    short_vs.save(&weights).unwrap();
    let (mut long_vs, long) = build(target);
    let fresh = snapshot(&long_vs);
    let change = load_into(
        &mut long_vs,
        &weights,
        (&source.positional, source.max_seq_len),
        (&target.positional, target.max_seq_len),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((snapshot(&short_vs), fresh, snapshot(&long_vs), change, short, long))
}

fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}");
    assert!(a.equal(b), "{what} differs");
}

fn assert_non_positional_copied(source: &[(String, Tensor)], loaded: &[(String, Tensor)]) {
    let mut checked = 0;
    for (name, tensor) in loaded.iter().filter(|(name, _)| !name.starts_with("positional.")) {
        assert_same(tensor, get(source, name), name);
        checked += 1;
    }
    assert!(checked > 10, "only {checked} variables compared");
}

#[test]
fn more_axial_rows_keep_every_known_position_and_every_other_weight() {
    let (source, fresh, loaded, change, short, long) =
        transfer("rows", &with_positions(64, axial([8, 8])), &with_positions(256, axial([32, 8]))).unwrap();
    assert_non_positional_copied(&source, &loaded);
    assert_same(get(&loaded, "positional.axial_cols"), get(&source, "positional.axial_cols"), "columns");
    let rows = get(&loaded, "positional.axial_rows");
    assert_same(&rows.narrow(0, 0, 8), get(&source, "positional.axial_rows"), "the source's 8 rows");
    assert_same(&rows.narrow(0, 8, 24), &get(&fresh, "positional.axial_rows").narrow(0, 8, 24), "new rows");
    assert_eq!(change, "axial positions [8, 8] -> [32, 8]: columns and rows 0..8 kept, 24 new rows");

    // Positions 0..64 embed exactly as in the short model; the new ones are drawn as at
    // initialisation (the scale of the known ones, not zeros).
    let tokens = Tensor::randint(32, [2, 256], (Kind::Int64, Device::Cpu));
    let known = tokens.narrow(1, 0, 64);
    let short_embedding = short.embed(&known, ForwardMode::eval(0));
    let long_embedding = long.embed(&tokens, ForwardMode::eval(0));
    assert_same(&long_embedding.narrow(1, 0, 64), &short_embedding, "embeddings of positions 0..64");
    let new_rows_std = rows.narrow(0, 8, 24).std(true).double_value(&[]);
    assert!((0.7..1.3).contains(&new_rows_std), "new rows drawn N(0, 1): std {new_rows_std}");
}

#[test]
fn a_new_column_layout_starts_both_position_tables_fresh() {
    let (source, fresh, loaded, change, _, _) =
        transfer("columns", &with_positions(64, axial([8, 8])), &with_positions(256, axial([4, 64]))).unwrap();
    assert_non_positional_copied(&source, &loaded);
    for table in ["positional.axial_rows", "positional.axial_cols"] {
        assert_same(get(&loaded, table), get(&fresh, table), table);
    }
    assert!(change.contains("the column layout changed, both tables start fresh"), "{change}");

    // Rows of the same shape under other columns mean other positions: fresh too.
    let (source, fresh, loaded, _, _, _) =
        transfer("same-row-shape", &with_positions(64, axial([8, 8])), &with_positions(128, axial([8, 16]))).unwrap();
    assert_non_positional_copied(&source, &loaded);
    assert_eq!(get(&source, "positional.axial_rows").size(), get(&loaded, "positional.axial_rows").size());
    assert_same(get(&loaded, "positional.axial_rows"), get(&fresh, "positional.axial_rows"), "rows");
}

#[test]
fn learned_positions_keep_their_rows_and_shorter_models_keep_a_prefix() {
    let (source, fresh, loaded, change, _, _) = transfer(
        "learned",
        &with_positions(64, PositionalConfig::Learned),
        &with_positions(96, PositionalConfig::Learned),
    )
    .unwrap();
    assert_non_positional_copied(&source, &loaded);
    let table = get(&loaded, "positional.learned");
    assert_same(&table.narrow(0, 0, 64), get(&source, "positional.learned"), "known rows");
    assert_same(&table.narrow(0, 64, 32), &get(&fresh, "positional.learned").narrow(0, 64, 32), "new rows");
    assert_eq!(change, "learned positions 64 -> 96: rows 0..64 kept, 32 new rows");

    let (source, _, loaded, _, _, _) =
        transfer("shorter", &with_positions(64, axial([8, 8])), &with_positions(32, axial([4, 8]))).unwrap();
    assert_same(
        get(&loaded, "positional.axial_rows"),
        &get(&source, "positional.axial_rows").narrow(0, 0, 4),
        "a shorter model keeps the first rows",
    );
}

#[test]
fn other_shapes_and_architectures_are_refused_by_name() {
    let wider = ModelConfig { d_ff: 128, ..with_positions(256, axial([32, 8])) };
    let error = transfer("d_ff", &with_positions(64, axial([8, 8])), &wider).err().expect("d_ff differs").to_string();
    assert!(error.contains("only the positional tables may change shape"), "{error}");
    assert!(error.contains(".ff."), "names the tensor: {error}");

    let deeper = ModelConfig { n_layers: 4, ..with_positions(64, axial([8, 8])) };
    let error = transfer("layers", &with_positions(64, axial([8, 8])), &deeper).err().expect("more layers").to_string();
    assert!(error.contains("lacks layers.3"), "{error}");
}

/// The curriculum through the binary: a short duplication run, then a longer one that
/// starts from it and takes its length settings (positions, hash rounds, buckets) from its
/// own configuration.
#[test]
fn train_init_from_continues_a_short_run_at_a_longer_length() {
    let dir = scratch("binary");
    let short_config = write_tiny_config(dir.join("short.json"), serde_json::json!({"train": {"steps": 2}}));
    let short_run = dir.join("short");
    assert_success(&train(&short_config, &short_run, &[]));

    let long_config = write_tiny_config(
        dir.join("long.json"),
        serde_json::json!({
            "model": {"max_seq_len": 128, "positional": {"kind": "axial", "shape": [16, 8], "dims": [16, 16]},
                      "lsh": {"n_hashes": 4, "chunk_len": 8}},
            "train": {"steps": 2, "duplication": {"n_symbols": 16, "copy_len": 63}}
        }),
    );
    let long_run = dir.join("long");
    let out = train(&long_config, &long_run, &["--init-from", short_run.to_str().unwrap()]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("columns and rows 0..8 kept, 8 new rows"), "{stderr}");
    let model = &read_json(&long_run.join("config.json"))["model"];
    assert_eq!(model["max_seq_len"], 128);
    assert_eq!(model["positional"]["shape"], serde_json::json!([16, 8]));
    assert_eq!(model["lsh"]["n_hashes"], 4, "the longer run's hash rounds");
    assert_eq!(model["lsh"]["n_buckets"], 32, "buckets derived for 128 positions (the source had 16)");
    assert_eq!(read_json(&short_run.join("config.json"))["model"]["lsh"]["n_buckets"], 16);

    // A run the source's positions cover keeps the source's model whole.
    let same_length_run = dir.join("same-length");
    let out = train(
        &long_config,
        &same_length_run,
        &["--init-from", short_run.to_str().unwrap(), "--set", "train.duplication.copy_len=15"],
    );
    assert_success(&out);
    let model = &read_json(&same_length_run.join("config.json"))["model"];
    assert_eq!(model["max_seq_len"], 64);
    assert_eq!(model["positional"]["shape"], serde_json::json!([8, 8]));
    assert_eq!(model["lsh"]["n_hashes"], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("positions kept"));

    // A longer run whose positions cannot hold it is one line.
    let out = train(
        &long_config,
        &dir.join("too-long"),
        &["--init-from", short_run.to_str().unwrap(), "--set", "train.duplication.copy_len=100"],
    );
    assert_fails_saying(&out, "max_seq_len");
    let _ = std::fs::remove_dir_all(&dir);
}
