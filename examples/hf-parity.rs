//! Parity with transformers on a model of any size: imports a transformers Reformer
//! folder, runs the input of a reference file written by
//! `scripts/hf-reformer-reference.py --dump-logits` (input_ids, logits, loss), and prints
//! one JSON line: the largest logit difference and both sides' bits per byte.
//!
//! ```text
//! cargo run --release --example hf-parity -- MODEL_DIR REFERENCE.safetensors
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reformer::import::import;
use reformer::model::ForwardMode;
use reformer::run_dir::load_model;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, reference] = args.as_slice() else {
        bail!("usage: hf-parity MODEL_DIR REFERENCE.safetensors");
    };
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(reference).context("cannot read the reference file")?.into_iter().collect();
    let ids = reference.get("input_ids").context("the reference file lacks input_ids")?;
    let want = reference.get("logits").context("the reference file lacks logits")?;

    let run = std::env::temp_dir().join(format!("reformer-hf-parity-{}", std::process::id()));
    import(&PathBuf::from(model_dir), &run, None)?;
    let (_vs, model, _) = load_model(&run, Device::Cpu)?;
    let started = std::time::Instant::now();
    let logits = tch::no_grad(|| {
        model.vocab_logits(&model.hidden(&(ids - model.cfg.compat.token_offset), ForwardMode::eval(0)))
    });
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&run);

    let t = ids.size()[1];
    // Mean negative log-likelihood of byte t + 1 given bytes ..= t, in bits.
    let bits = |logits: &Tensor| {
        let log_probs = logits.narrow(1, 0, t - 1).log_softmax(-1, Kind::Double); // (B, T-1, V)
        let targets = ids.narrow(1, 1, t - 1).unsqueeze(-1); // (B, T-1, 1)
        -log_probs.gather(-1, &targets, false).mean(Kind::Double).double_value(&[]) / std::f64::consts::LN_2
    };
    let difference = (&logits.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    println!(
        "{}",
        serde_json::json!({
            "tokens": t,
            "max_abs_logit_difference": difference,
            "bits_per_byte": bits(&logits),
            "transformers_bits_per_byte": bits(want),
            "forward_secs": seconds,
        })
    );
    Ok(())
}
