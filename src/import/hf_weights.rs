//! The weights of a transformers `ReformerModelWithLMHead` folder (`model.safetensors`,
//! else `pytorch_model.bin`, read through libtorch's own unpickler) copied into this
//! project's variables, every name and shape checked.
//!
//! transformers → reformer, per layer i (`reformer.encoder.layers.{i}.` → `layers.{i}.`):
//! ```text
//! attention.layer_norm.{weight,bias}                  attn_norm.{weight,bias}
//! attention.self_attention.query_key.weight (LSH)     attn.qk.weight
//! attention.self_attention.value.weight (LSH)         attn.v.weight
//! attention.self_attention.{query,key,value}.weight   attn.qkv.weight (stacked in that order)
//! attention.output.dense.weight                       attn.out.weight
//! feed_forward.layer_norm.{weight,bias}               ff_norm.{weight,bias}
//! feed_forward.dense.dense.{weight,bias}              ff.up.{weight,bias}
//! feed_forward.output.dense.{weight,bias}             ff.down.{weight,bias}
//! ```
//! and `reformer.embeddings.word_embeddings.weight` → `embedding.weight`, the axial
//! tables `position_embeddings.weights.{0,1}` (A1, 1, d1), (1, A2, d2) →
//! `positional.axial_{rows,cols}`, `reformer.encoder.layer_norm` → `final_norm`,
//! `lm_head.decoder.{weight,bias}` → `head` (the bias is `lm_head.bias` in files written
//! by transformers 4.x).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn, Kind, Tensor};
use torch_sys::C_tensor;

use crate::ffi::checked;
use crate::model::config::{AttentionKind, ModelConfig, PositionalConfig};

/// Named tensors of a checkpoint file.
pub type StateDict = BTreeMap<String, Tensor>;

/// The tensors of the folder's `model.safetensors`, or else its `pytorch_model.bin`.
pub fn read_folder(dir: &Path) -> Result<StateDict> {
    let safetensors = dir.join("model.safetensors");
    let pickled = dir.join("pytorch_model.bin");
    let tensors = if safetensors.exists() {
        Tensor::read_safetensors(&safetensors)
            .map_err(|e| anyhow::anyhow!("{}", crate::error::first_line(&e.to_string())))
            .with_context(|| format!("cannot read {} (truncated or not safetensors?)", safetensors.display()))?
    } else if pickled.exists() {
        read_pickled(&pickled)?
    } else {
        bail!("{} holds no weights: expected model.safetensors or pytorch_model.bin beside config.json", dir.display());
    };
    Ok(tensors.into_iter().collect())
}

/// The state dict in a file written by Python's `torch.save` (zip format).
fn read_pickled(path: &Path) -> Result<Vec<(String, Tensor)>> {
    extern "C" fn collect(context: *mut c_void, name: *const c_char, tensor: *mut C_tensor) {
        // SAFETY: `context` is the Vec passed below, alive for the call; `name` is a NUL-
        // terminated string and `tensor` a tensor handed over to us, both from C++.
        let tensors = unsafe { &mut *context.cast::<Vec<(String, Tensor)>>() };
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        tensors.push((name, unsafe { Tensor::from_ptr(tensor) }));
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).context("the path holds a NUL byte")?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let context = (&mut tensors as *mut Vec<(String, Tensor)>).cast::<c_void>();
    // SAFETY: `collect` matches the callback type; `context` outlives the call.
    checked(|err, len| unsafe { reformer_load_pickled_tensors(c_path.as_ptr(), collect, context, err, len) })
        .with_context(|| {
            format!(
                "cannot read {} as a torch.save state dict (a file from torch < 1.6, not a zip archive, needs converting to safetensors)",
                path.display()
            )
        })?;
    Ok(tensors)
}

/// Copies `state` into the variables of a model built from `cfg` under `vs`. Fails,
/// naming them, on missing tensors, tensors of the wrong shape and tensors left over.
pub fn load_into(vs: &nn::VarStore, cfg: &ModelConfig, mut state: StateDict) -> Result<()> {
    // (our variable, the checkpoint's name for it, its value)
    let mut sources: Vec<(String, String, Tensor)> = Vec::new();
    let mut take = |name: &str| -> Result<(String, Tensor)> {
        let tensor = state.remove(name).with_context(|| format!("the checkpoint lacks {name}"))?;
        Ok((name.to_string(), tensor))
    };
    let mut copy = |ours: &str, theirs: Result<(String, Tensor)>| -> Result<()> {
        let (name, tensor) = theirs?;
        sources.push((ours.to_string(), name, tensor));
        Ok(())
    };
    copy("embedding.weight", take("reformer.embeddings.word_embeddings.weight"))?;
    copy("final_norm.weight", take("reformer.encoder.layer_norm.weight"))?;
    copy("final_norm.bias", take("reformer.encoder.layer_norm.bias"))?;
    copy("head.weight", take("lm_head.decoder.weight"))?;
    let head_bias = match take("lm_head.decoder.bias") {
        Ok(bias) => {
            // transformers 5.x also keeps an unused `lm_head.bias`.
            let _ = take("lm_head.bias");
            Ok(bias)
        }
        Err(_) => take("lm_head.bias").context("the checkpoint lacks lm_head.decoder.bias and lm_head.bias"),
    };
    copy("head.bias", head_bias)?;
    match &cfg.positional {
        PositionalConfig::Axial { .. } => {
            let prefix = "reformer.embeddings.position_embeddings.weights";
            // (A1, 1, d1) and (1, A2, d2): the tables broadcast over the other axis.
            copy("positional.axial_rows", take(&format!("{prefix}.0")).map(|(n, t)| (n, t.squeeze_dim(1))))?;
            copy("positional.axial_cols", take(&format!("{prefix}.1")).map(|(n, t)| (n, t.squeeze_dim(0))))?;
        }
        PositionalConfig::Learned => {
            copy("positional.learned", take("reformer.embeddings.position_embeddings.embedding.weight"))?
        }
        PositionalConfig::None => {}
    }
    for i in 0..cfg.n_layers {
        let from = format!("reformer.encoder.layers.{i}");
        let to = format!("layers.{i}");
        let pairs = [
            ("attention.layer_norm.weight", "attn_norm.weight"),
            ("attention.layer_norm.bias", "attn_norm.bias"),
            ("attention.output.dense.weight", "attn.out.weight"),
            ("feed_forward.layer_norm.weight", "ff_norm.weight"),
            ("feed_forward.layer_norm.bias", "ff_norm.bias"),
            ("feed_forward.dense.dense.weight", "ff.up.weight"),
            ("feed_forward.dense.dense.bias", "ff.up.bias"),
            ("feed_forward.output.dense.weight", "ff.down.weight"),
            ("feed_forward.output.dense.bias", "ff.down.bias"),
        ];
        for (theirs, ours) in pairs {
            copy(&format!("{to}.{ours}"), take(&format!("{from}.{theirs}")))?;
        }
        let attention = format!("{from}.attention.self_attention");
        match cfg.attention_of_layer(i) {
            AttentionKind::Lsh => {
                copy(&format!("{to}.attn.qk.weight"), take(&format!("{attention}.query_key.weight")))?;
                copy(&format!("{to}.attn.v.weight"), take(&format!("{attention}.value.weight")))?;
            }
            AttentionKind::Local => {
                let parts = ["query", "key", "value"].map(|name| take(&format!("{attention}.{name}.weight")));
                let [q, k, v] = parts;
                let (q, k, v) = (q?, k?, v?);
                let stacked = Tensor::cat(&[&q.1, &k.1, &v.1], 0); // (3·H·Dh, D)
                copy(
                    &format!("{to}.attn.qkv.weight"),
                    Ok((format!("{attention}.{{query,key,value}}.weight"), stacked)),
                )?;
            }
            AttentionKind::Full => bail!("layer {i} is full attention, which transformers' Reformer does not have"),
        }
    }
    if !state.is_empty() {
        let names: Vec<&str> = state.keys().map(String::as_str).collect();
        bail!("the checkpoint holds tensors this model has no place for: {}", names.join(", "));
    }

    copy_sources(vs, &sources)
}

/// Copies each (our variable, the checkpoint's name, value) into `vs`, refusing a shape
/// that differs and variables that received no value.
fn copy_sources(vs: &nn::VarStore, sources: &[(String, String, Tensor)]) -> Result<()> {
    let mut variables = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (ours, theirs, source) in sources {
            let mut variable =
                variables.remove(ours).with_context(|| format!("the model has no variable {ours} (a bug)"))?;
            if source.size() != variable.size() {
                bail!(
                    "{theirs} has shape {:?} in the checkpoint, but the model that config.json describes needs {:?}",
                    source.size(),
                    variable.size()
                );
            }
            variable.copy_(&source.to_kind(Kind::Float));
        }
        Ok(())
    })?;
    if !variables.is_empty() {
        let names: Vec<&String> = variables.keys().collect();
        bail!("the checkpoint gave no values for {names:?} (a bug in the name mapping)");
    }
    Ok(())
}

extern "C" {
    fn reformer_load_pickled_tensors(
        path: *const c_char,
        visit: extern "C" fn(*mut c_void, *const c_char, *mut C_tensor),
        context: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}
