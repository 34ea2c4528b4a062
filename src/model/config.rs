//! `ModelConfig`: every size and switch of the Reformer LM, with its default and unit,
//! validated once. Saved as `config.json` beside the weights.
//!
//! Where the released checkpoints (Trax, as transformers reproduces them) compute what
//! the paper leaves open or describes otherwise, their behaviour is a setting, and the
//! default stays the paper's reading (`reformer import` sets the released one):
//! `token_offset` (2: ids 0 and 1 reserved), `activation` (relu), `layer_norm_eps`
//! (1e-12), `attention_output_bias` (false), `lsh.scale_logits` (false: raw query · unit
//! key), `lsh.wrap_around` (true: the rounds' chunks form one ring, the same position
//! from another round is self-masked, short sequences attend densely, lengths pad to the
//! chunk lengths' lcm, and the softmax is exp(x − logsumexp x) with its float32 rounding),
//! `lsh.bucket_factors` (factorised hashing), `lsh.hash_seed` (per-head rotations, the
//! same draw from a seeded generator on every call). The released models match the paper in everything
//! else here: shared query/key with unit-length keys, the self-mask value (−1e5), no
//! duplicate-attention correction, keys of other buckets inside a window visible.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The attention of one layer; `ModelConfig::attention` cycles a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// LSH attention with shared query/key (paper §2-3).
    Lsh,
    /// Chunked local attention: a chunk attends to itself and chunks before it.
    Local,
    /// Dense attention over the whole sequence (libtorch SDPA); the baseline.
    Full,
}

/// The nonlinearity of the feed-forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Gelu,
    /// The released Reformer checkpoints' (transformers' `hidden_act: "relu"`).
    Relu,
}

/// How positions enter the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PositionalConfig {
    /// Axial embeddings: position p = (p / A2, p % A2) looks up two tables of A1 and A2
    /// rows whose widths `dims` sum to d_model (2·√T rows instead of T).
    Axial { shape: [i64; 2], dims: [i64; 2] },
    /// One learned row per position up to max_seq_len.
    Learned,
    /// No positional information.
    None,
}

/// Settings of the LSH attention layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LshConfig {
    /// Hash rounds (default 4).
    pub n_hashes: i64,
    /// Tokens per chunk of the sorted sequence (default 64).
    pub chunk_len: i64,
    /// Buckets per round, even; default derived from max_seq_len: about 2·T/chunk_len
    /// (or the product of `bucket_factors`).
    pub n_buckets: Option<i64>,
    /// When neither `n_buckets` nor `bucket_factors` is set and the derived bucket count
    /// is above this, the buckets are factorised into two even factors as close as
    /// possible (512 = 16 · 32), so that a round's rotation costs d_head · (f1 + f2)/2
    /// per token instead of d_head · n_buckets/2, which grows with the length (default
    /// 128: models up to 4,096 tokens with chunks of 64 hash as before). None: never. A
    /// run folder's config.json records the bucket count and factors it resolved to.
    pub factorise_above: Option<i64>,
    /// Factorised hashing (the released crime-and-punishment model's `[64, 128]`): one
    /// rotation of sum(factors)/2 columns, cut into a slice per factor; the bucket is the
    /// mixed-radix number of the slices' angular hashes, so n_buckets = product(factors).
    /// Empty: one hash of n_buckets.
    pub bucket_factors: Vec<i64>,
    /// Chunks before its own that a chunk attends to (default 1).
    pub n_chunks_before: i64,
    /// Chunks after its own that a chunk attends to (default 0; must be 0 when causal).
    pub n_chunks_after: i64,
    /// Strictly causal LSH: a query sees only keys of its own bucket among the
    /// `chunk_len` most recent such positions, so no output depends on a later token
    /// (default false: the paper's chunk rule).
    pub strict_causal: bool,
    /// Divide the logits by √d_head (default true). The released checkpoints (Trax,
    /// transformers) do not: their logits are raw query · unit-length key.
    pub scale_logits: bool,
    /// The released checkpoints' chunk windows (default false): the sorted rounds form one
    /// ring, so the first chunk of a round looks back at the previous round's last chunk
    /// (the first round's at the last round's), the causal mask removing later positions;
    /// a key at the query's own position from another round is self-masked too; a
    /// sequence no longer than a chunk attends densely; lengths are padded to the least
    /// common multiple of the model's chunk lengths. false: each round's first chunk has
    /// nothing before it, as the paper describes. (Lengths pad to the lcm only when longer
    /// than the shortest chunk length, as transformers pads its input.)
    pub wrap_around: bool,
    /// Rotations per head from a generator seeded with this value: the same draw in every
    /// LSH layer and every forward (transformers' `hash_seed`, drawn as it draws them on
    /// the CPU in float32; with it, a model computes the same function on every call).
    /// None (default): fresh rotations each forward, shared by the heads, derived from
    /// the run's seed and the step.
    pub hash_seed: Option<u64>,
    /// LSH attention through the fused CPU kernel (default true): the same function
    /// without the (rounds × positions × window) masks and probabilities. It applies on
    /// the CPU in float32/float64; CUDA, autocast's half precision, `wrap_around` and
    /// attention dropout while training take the batched path (`reformer bench` says which
    /// path each case ran). false: always the batched path.
    pub fused: bool,
}

impl Default for LshConfig {
    fn default() -> Self {
        Self {
            n_hashes: 4,
            chunk_len: 64,
            n_buckets: None,
            factorise_above: Some(super::hash_buckets::FACTORISE_ABOVE),
            n_chunks_before: 1,
            n_chunks_after: 0,
            strict_causal: false,
            bucket_factors: Vec::new(),
            scale_logits: true,
            wrap_around: false,
            hash_seed: None,
            fused: true,
        }
    }
}

/// Settings of the local attention layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Tokens per chunk (default 128).
    pub chunk_len: i64,
    /// Chunks before its own that a chunk attends to (default 1).
    pub n_chunks_before: i64,
    /// Chunks after its own that a chunk attends to (default 0; must be 0 when causal).
    pub n_chunks_after: i64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self { chunk_len: 128, n_chunks_before: 1, n_chunks_after: 0 }
    }
}

/// The whole model. Every field has a default, so a JSON file need only name changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary size (default 256: bytes).
    pub vocab_size: i64,
    /// Byte b is token b + token_offset; the ids below are reserved and never input nor
    /// sampled, though the loss is a softmax over the whole vocabulary (default 0; the
    /// released enwik8 model: 2, with 0 its padding).
    pub token_offset: i64,
    /// Width of each residual stream (default 256).
    pub d_model: i64,
    /// Number of two-stream blocks (default 2).
    pub n_layers: i64,
    /// Attention heads (default 4).
    pub n_heads: i64,
    /// Width of one head; default d_model / n_heads.
    pub d_head: Option<i64>,
    /// Hidden width of the feed-forward (default 1024).
    pub d_ff: i64,
    /// The feed-forward's nonlinearity (default gelu).
    pub activation: Activation,
    /// The ε of every LayerNorm (default 1e-5; the released checkpoints: 1e-12).
    pub layer_norm_eps: f64,
    /// A bias in the attention output projection (default true; the released
    /// checkpoints have none).
    pub attention_output_bias: bool,
    /// Positions per feed-forward chunk; None applies it to the whole sequence at once.
    pub ff_chunk_len: Option<i64>,
    /// Positions per chunk of the output layer and loss; None: all at once.
    pub loss_chunk_len: Option<i64>,
    /// Dropout on the embedding and on each residual branch's output (default 0).
    pub dropout_hidden: f64,
    /// Dropout on attention probabilities (default 0). Above 0, training LSH layers take
    /// the batched path instead of the fused kernel (`lsh.fused`).
    pub dropout_attention: f64,
    /// Dropout inside the feed-forward, after its activation (default 0).
    pub dropout_ff: f64,
    /// Causal (language model) masking (default true).
    pub causal: bool,
    /// Longest sequence the model accepts, in tokens (default 1024).
    pub max_seq_len: i64,
    /// Positional embedding (default axial (32, 32) with dims (128, 128)).
    pub positional: PositionalConfig,
    /// Attention kinds, cycled over the layers (default ["lsh"]).
    pub attention: Vec<AttentionKind>,
    /// LSH layer settings.
    pub lsh: LshConfig,
    /// Local layer settings.
    pub local: LocalConfig,
    /// Run the block stack through the memory-saving reversible backward (default true).
    pub reversible: bool,
    /// Attention one slice at a time under activation checkpointing: LSH one (head,
    /// round), local attention one head. Only one slice's attention tensors exist at
    /// once, in the forward and in the backward, at the price of computing each slice's
    /// forward once more (default false).
    pub sliced_attention: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            token_offset: 0,
            d_model: 256,
            n_layers: 2,
            n_heads: 4,
            d_head: None,
            d_ff: 1024,
            activation: Activation::Gelu,
            layer_norm_eps: 1e-5,
            attention_output_bias: true,
            ff_chunk_len: None,
            loss_chunk_len: None,
            dropout_hidden: 0.0,
            dropout_attention: 0.0,
            dropout_ff: 0.0,
            causal: true,
            max_seq_len: 1024,
            positional: PositionalConfig::Axial { shape: [32, 32], dims: [128, 128] },
            attention: vec![AttentionKind::Lsh],
            lsh: LshConfig::default(),
            local: LocalConfig::default(),
            reversible: true,
            sliced_attention: false,
        }
    }
}

impl ModelConfig {
    /// Width of one attention head.
    pub fn d_head(&self) -> i64 {
        self.d_head.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// The least common multiple of the chunk lengths of the model's chunked attention
    /// kinds, and the shortest of them (None without LSH or local layers): a sequence
    /// longer than the shortest is padded to a multiple of the first under
    /// `lsh.wrap_around`, as transformers pads its input.
    pub fn chunk_lengths(&self) -> Option<(i64, i64)> {
        let lengths: Vec<i64> = (0..self.n_layers)
            .filter_map(|i| match self.attention_of_layer(i) {
                AttentionKind::Lsh => Some(self.lsh.chunk_len),
                AttentionKind::Local => Some(self.local.chunk_len),
                AttentionKind::Full => None,
            })
            .collect();
        let shortest = *lengths.iter().min()?;
        Some((lengths.iter().fold(1, |lcm, &c| lcm / gcd(lcm, c) * c), shortest))
    }

    /// The attention kind of layer `i` (the pattern is cycled).
    pub fn attention_of_layer(&self, i: i64) -> AttentionKind {
        self.attention[i as usize % self.attention.len()]
    }

    /// Checks every setting once; the error says what to change.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
            ("lsh.n_hashes", self.lsh.n_hashes),
            ("lsh.chunk_len", self.lsh.chunk_len),
            ("local.chunk_len", self.local.chunk_len),
        ];
        for (name, value) in positive {
            if value <= 0 {
                bail!("{name} = {value} must be positive");
            }
        }
        match self.d_head {
            Some(d) if d <= 0 => bail!("d_head = {d} must be positive"),
            None if self.d_model % self.n_heads != 0 => bail!(
                "d_model {} is not divisible by n_heads {}: change one, or set d_head explicitly",
                self.d_model,
                self.n_heads
            ),
            _ => {}
        }
        for (name, chunk) in [("ff_chunk_len", self.ff_chunk_len), ("loss_chunk_len", self.loss_chunk_len)] {
            if let Some(c) = chunk {
                if c <= 0 {
                    bail!("{name} = {c} must be positive (or absent to disable chunking)");
                }
            }
        }
        for (name, p) in [
            ("dropout_hidden", self.dropout_hidden),
            ("dropout_attention", self.dropout_attention),
            ("dropout_ff", self.dropout_ff),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} = {p} must be in [0, 1)");
            }
        }
        if self.attention.is_empty() {
            bail!("attention is empty: give at least one of \"lsh\", \"local\", \"full\"");
        }
        let n_buckets = self.n_buckets();
        if n_buckets < 2 || n_buckets % 2 != 0 {
            bail!("lsh.n_buckets = {n_buckets} must be even and at least 2 (angular LSH uses ±rotations)");
        }
        if let Some(limit) = self.lsh.factorise_above.filter(|&l| l < 2) {
            bail!("lsh.factorise_above = {limit} must be at least 2 (or null: never factorise)");
        }
        let factors = &self.lsh.bucket_factors;
        if let Some(&bad) = factors.iter().find(|&&f| f < 2 || f % 2 != 0) {
            bail!("lsh.bucket_factors holds {bad}: each factor must be even and at least 2");
        }
        if !factors.is_empty() && factors.iter().product::<i64>() != n_buckets {
            bail!("lsh.n_buckets = {n_buckets} is not the product of lsh.bucket_factors {factors:?}: drop one of them");
        }
        if self.token_offset < 0 || (self.token_offset > 0 && self.token_offset + 256 > self.vocab_size) {
            bail!(
                "token_offset {} and vocab_size {} leave no room for 256 bytes (need token_offset + 256 <= vocab_size)",
                self.token_offset,
                self.vocab_size
            );
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            bail!("layer_norm_eps = {} must be positive", self.layer_norm_eps);
        }
        for (name, before, after) in [
            ("lsh", self.lsh.n_chunks_before, self.lsh.n_chunks_after),
            ("local", self.local.n_chunks_before, self.local.n_chunks_after),
        ] {
            if before < 0 || after < 0 {
                bail!("{name}.n_chunks_before/after must not be negative");
            }
            if self.causal && after != 0 {
                bail!("{name}.n_chunks_after = {after} looks at the future: set it to 0 for a causal model");
            }
        }
        if self.lsh.strict_causal {
            if !self.causal {
                bail!("lsh.strict_causal needs causal = true");
            }
            if self.lsh.n_chunks_before < 1 {
                bail!("lsh.strict_causal needs lsh.n_chunks_before >= 1 (a query's window reaches one chunk back)");
            }
            if self.lsh.wrap_around {
                bail!("lsh.strict_causal and lsh.wrap_around exclude each other: choose one chunk rule");
            }
        }
        match &self.positional {
            PositionalConfig::Axial { shape, dims } => {
                if shape.iter().chain(dims.iter()).any(|&v| v <= 0) {
                    bail!("positional axial shape {shape:?} and dims {dims:?} must be positive");
                }
                if shape[0] * shape[1] < self.max_seq_len {
                    bail!(
                        "axial shape {:?} covers {} positions, fewer than max_seq_len {}: enlarge the shape",
                        shape,
                        shape[0] * shape[1],
                        self.max_seq_len
                    );
                }
                if dims[0] + dims[1] != self.d_model {
                    bail!("axial dims {:?} sum to {}, not d_model {}", dims, dims[0] + dims[1], self.d_model);
                }
            }
            PositionalConfig::Learned | PositionalConfig::None => {}
        }
        Ok(())
    }
}

/// The greatest common divisor (Euclid).
fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
