//! `reformer import`: a transformers `ReformerModelWithLMHead` folder (the released
//! `google/reformer-enwik8`, or any byte-level one) turned into a run folder of this
//! project, which `generate`, `eval`, `train --init-from` and `train --resume` accept.
//! The configuration is translated by `hf_config`, the weights by `hf_weights`.

pub mod hf_config;
pub mod hf_weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Device};

use crate::model::ReformerLm;
use crate::optimizer::AdamW;
use crate::run_config::RunConfig;
use crate::run_dir::RunDir;
use crate::tasks::TaskKind;
use crate::train::TrainState;

/// Import a transformers Reformer language model (config.json plus model.safetensors or
/// pytorch_model.bin) as a run folder.
#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The transformers model folder.
    #[arg(long = "from", value_name = "DIR")]
    pub from: PathBuf,
    /// The run folder to write (must not exist yet).
    #[arg(long, value_name = "RUN")]
    pub out: PathBuf,
    /// Fix the hash rotations with this seed (transformers' `hash_seed`), replacing the
    /// file's; without one anywhere, each forward draws fresh rotations from the run's seed.
    #[arg(long)]
    pub hash_seed: Option<u64>,
}

/// `reformer import`.
pub fn run(opts: ImportArgs) -> Result<()> {
    let cfg = import(&opts.from, &opts.out, opts.hash_seed)?;
    let model = &cfg.model;
    eprintln!(
        "imported {} layers ({}), d_model {}, {} heads × {}, into {}",
        model.n_layers,
        model.attention.iter().map(|k| format!("{k:?}").to_lowercase()).collect::<Vec<_>>().join(" "),
        model.d_model,
        model.n_heads,
        model.d_head(),
        opts.out.display()
    );
    Ok(())
}

/// Writes the run folder `out` holding the transformers model in `from`; returns its
/// configuration.
pub fn import(from: &Path, out: &Path, hash_seed: Option<u64>) -> Result<RunConfig> {
    if out.exists() {
        bail!("{} exists already: give --out a new folder", out.display());
    }
    let config_path = from.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {} (is --from a transformers model folder?)", config_path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config_path.display()))?;
    let model = hf_config::model_config(&json, hash_seed)?;
    crate::bench::memory_model::check_parameters_fit(&model).with_context(|| config_path.display().to_string())?;
    let dropout = |key: &str| json.get(key).and_then(serde_json::Value::as_f64);
    let (lsh_dropout, local_dropout) =
        (dropout("lsh_attention_probs_dropout_prob"), dropout("local_attention_probs_dropout_prob"));
    if local_dropout.is_some() && local_dropout != lsh_dropout {
        eprintln!(
            "note: local attention dropout {} differs from LSH attention dropout {}; reformer has one \
             (model.dropout_attention = {}) for both: it matters only when fine-tuning",
            local_dropout.unwrap_or(0.0),
            lsh_dropout.unwrap_or(0.0),
            model.dropout_attention
        );
    }
    let state = hf_weights::read_folder(from)?;

    let vs = nn::VarStore::new(Device::Cpu);
    let _lm = ReformerLm::new(vs.root(), &model);
    hf_weights::load_into(&vs, &model, state)?;

    let mut cfg = RunConfig { task: TaskKind::Enwik8, data: None, model, ..Default::default() };
    cfg.train.seq_len = cfg.train.seq_len.min(cfg.model.max_seq_len);
    cfg.validate()?;
    let run = RunDir::create(out, &cfg)?;
    let optimizer = AdamW::new(&vs, &cfg.train);
    let state = TrainState::new(0);
    run.save(state.step, &vs, &optimizer.state(), &state, true, cfg.train.keep_last)?;
    Ok(cfg)
}
