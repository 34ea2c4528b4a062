//! A transformers `ReformerConfig` (`config.json` of a `ReformerModelWithLMHead` folder)
//! read into this project's `ModelConfig`: the released checkpoints' behaviour becomes
//! the settings that express it (`lsh.window = "released"`, and in `compat`: unscaled
//! LSH logits, ReLU, LayerNorm ε, no attention output bias, reserved token ids).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::model::config::{
    Activation, AttentionKind, CompatConfig, ExecutionConfig, LocalConfig, LshConfig, ModelConfig, PositionalConfig,
    WindowRule,
};

/// Ids below this are the byte-level models' reserved ones (0 padding, 1 end of text);
/// byte b is id b + 2.
const BYTE_MODEL_OFFSET: i64 = 2;

/// Positions per chunk of the feed-forward and of the output layer when the config sets
/// none (transformers' 0): chunking computes the same numbers, and keeps a 64K-token
/// training step of the enwik8 model from holding (64K × d_ff) activations at once.
const DEFAULT_CHUNK_LEN: i64 = 4096;

/// The `ModelConfig` that computes what transformers computes with `json`, or a line
/// saying why this model cannot run here. `hash_seed` replaces the file's `hash_seed`.
pub fn model_config(json: &Value, hash_seed: Option<u64>) -> Result<ModelConfig> {
    let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("(none)");
    if model_type != "reformer" {
        bail!("config.json describes a '{model_type}' model, not a transformers Reformer (model_type \"reformer\")");
    }
    if let Some(architectures) = json.get("architectures").and_then(Value::as_array) {
        if !architectures.iter().any(|a| a.as_str() == Some("ReformerModelWithLMHead")) {
            bail!(
                "config.json's architectures {architectures:?} hold no ReformerModelWithLMHead: \
                 only the language model (with its LM head) can be imported"
            );
        }
    }
    let reader = Reader(json);
    if !reader.bool_or("is_decoder", false)? {
        bail!("config.json has is_decoder false: an encoder, not the causal language model reformer runs");
    }
    let vocab_size = reader.int("vocab_size")?;
    let token_offset = match vocab_size {
        256 => 0,
        258 => BYTE_MODEL_OFFSET,
        other => bail!(
            "vocab_size {other} is not byte-level (256, or 258 with ids byte + 2): this model needs its own \
             tokenizer (google/reformer-crime-and-punishment's is a sentencepiece model), which reformer does not have"
        ),
    };
    let attention = reader
        .array("attn_layers")?
        .iter()
        .map(|kind| match kind.as_str() {
            Some("lsh") => Ok(AttentionKind::Lsh),
            Some("local") => Ok(AttentionKind::Local),
            _ => bail!("attn_layers holds {kind}: only \"lsh\" and \"local\" exist in a Reformer"),
        })
        .collect::<Result<Vec<_>>>()?;
    let activation = match reader.str_or("hidden_act", "relu")? {
        "relu" => Activation::Relu,
        "gelu" => Activation::Gelu,
        other => bail!("hidden_act \"{other}\" is not supported: reformer has relu and gelu"),
    };
    let (n_buckets, bucket_factors) = match json.get("num_buckets") {
        Some(Value::Number(n)) => (Some(n.as_i64().context("num_buckets is not an integer")?), Vec::new()),
        Some(Value::Array(factors)) if factors.len() == 1 => {
            (Some(factors[0].as_i64().context("num_buckets holds a non-integer")?), Vec::new())
        }
        Some(Value::Array(factors)) => {
            let factors: Vec<i64> =
                factors.iter().map(|f| f.as_i64().context("num_buckets holds a non-integer")).collect::<Result<_>>()?;
            (Some(factors.iter().product()), factors)
        }
        _ => bail!(
            "num_buckets is not set: transformers then picks it from the first input's length; set it in \
             config.json (the paper's choice is about 2 × length / lsh_attn_chunk_length)"
        ),
    };
    let max_seq_len = reader.int("max_position_embeddings")?;
    let positional = if reader.bool_or("axial_pos_embds", true)? {
        let pair = |key: &str| -> Result<[i64; 2]> {
            let values = reader.array(key)?;
            match values.as_slice() {
                [a, b] => Ok([a.as_i64().context(key.to_string())?, b.as_i64().context(key.to_string())?]),
                _ => bail!("{key} has {} entries: reformer's axial embeddings have two", values.len()),
            }
        };
        PositionalConfig::Axial { shape: pair("axial_pos_shape")?, dims: pair("axial_pos_embds_dim")? }
    } else {
        PositionalConfig::Learned
    };
    let chunk = |key: &str| -> Result<Option<i64>> {
        let configured = reader.int_or(key, 0)?;
        Ok(Some(if configured > 0 { configured } else { DEFAULT_CHUNK_LEN }))
    };
    let cfg = ModelConfig {
        vocab_size,
        d_model: reader.int("hidden_size")?,
        n_layers: attention.len() as i64,
        n_heads: reader.int("num_attention_heads")?,
        d_head: Some(reader.int("attention_head_size")?),
        d_ff: reader.int("feed_forward_size")?,
        dropout_hidden: reader.float_or("hidden_dropout_prob", 0.0)?,
        dropout_attention: reader.float_or("lsh_attention_probs_dropout_prob", 0.0)?,
        dropout_ff: reader.float_or("hidden_dropout_prob", 0.0)?,
        causal: true,
        max_seq_len,
        positional,
        attention,
        lsh: LshConfig {
            n_hashes: reader.int("num_hashes")?,
            chunk_len: reader.int("lsh_attn_chunk_length")?,
            n_buckets,
            bucket_factors,
            n_chunks_before: reader.int_or("lsh_num_chunks_before", 1)?,
            n_chunks_after: reader.int_or("lsh_num_chunks_after", 0)?,
            window: WindowRule::Released,
            ..LshConfig::default()
        },
        local: LocalConfig {
            chunk_len: reader.int("local_attn_chunk_length")?,
            n_chunks_before: reader.int_or("local_num_chunks_before", 1)?,
            n_chunks_after: reader.int_or("local_num_chunks_after", 0)?,
        },
        compat: CompatConfig {
            token_offset,
            activation,
            layer_norm_eps: reader.float_or("layer_norm_eps", 1e-12)?,
            attention_output_bias: false,
            scale_lsh_logits: false,
            lsh_hash_seed: hash_seed.or(reader.u64_or_none("hash_seed")?),
        },
        execution: ExecutionConfig {
            ff_chunk_len: chunk("chunk_size_feed_forward")?,
            loss_chunk_len: chunk("chunk_size_lm_head")?,
            ..ExecutionConfig::default()
        },
    };
    cfg.validate().context("the imported configuration is not one reformer can run")?;
    Ok(cfg)
}

/// Typed reads of config.json's fields, each failure naming the field.
struct Reader<'a>(&'a Value);

impl Reader<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn int(&self, key: &str) -> Result<i64> {
        let value = self.field(key).with_context(|| format!("config.json lacks {key}"))?;
        value.as_i64().with_context(|| format!("config.json's {key} is {value}, not an integer"))
    }

    fn int_or(&self, key: &str, default: i64) -> Result<i64> {
        self.field(key).map_or(Ok(default), |_| self.int(key))
    }

    fn u64_or_none(&self, key: &str) -> Result<Option<u64>> {
        self.field(key)
            .map(|value| value.as_u64().with_context(|| format!("config.json's {key} is {value}, not a seed")))
            .transpose()
    }

    fn float_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.field(key) {
            None => Ok(default),
            Some(value) => value.as_f64().with_context(|| format!("config.json's {key} is {value}, not a number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.field(key) {
            None => Ok(default),
            Some(value) => value.as_bool().with_context(|| format!("config.json's {key} is {value}, not true/false")),
        }
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str> {
        match self.field(key) {
            None => Ok(default),
            Some(value) => value.as_str().with_context(|| format!("config.json's {key} is {value}, not a string")),
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        let value = self.field(key).with_context(|| format!("config.json lacks {key}"))?;
        value.as_array().with_context(|| format!("config.json's {key} is {value}, not a list"))
    }
}
