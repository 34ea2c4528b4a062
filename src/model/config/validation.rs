//! `ModelConfig::validate`: every setting checked once, before anything is built; each
//! error is one line that says what to change.

use anyhow::{bail, Result};

use super::{ModelConfig, PositionalConfig};

impl ModelConfig {
    /// Checks every setting once; the error says what to change.
    pub fn validate(&self) -> Result<()> {
        self.check_sizes()?;
        self.check_rates()?;
        self.check_hashing()?;
        self.check_windows()?;
        self.check_compat()?;
        self.check_positions()
    }

    fn check_sizes(&self) -> Result<()> {
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
        let execution = &self.execution;
        for (name, chunk) in
            [("execution.ff_chunk_len", execution.ff_chunk_len), ("execution.loss_chunk_len", execution.loss_chunk_len)]
        {
            if let Some(c) = chunk.filter(|&c| c <= 0) {
                bail!("{name} = {c} must be positive (or null to disable chunking)");
            }
        }
        for (name, rows) in [
            ("execution.micro_batch_rows", execution.micro_batch_rows),
            ("execution.scoring_rows", execution.scoring_rows),
        ] {
            if let Some(r) = rows.filter(|&r| r <= 0) {
                bail!("{name} = {r} must be positive (or null for whole batches)");
            }
        }
        if self.attention.is_empty() {
            bail!("attention is empty: give at least one of \"lsh\", \"local\", \"full\"");
        }
        Ok(())
    }

    fn check_rates(&self) -> Result<()> {
        for (name, p) in [
            ("dropout_hidden", self.dropout_hidden),
            ("dropout_attention", self.dropout_attention),
            ("dropout_ff", self.dropout_ff),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} = {p} must be in [0, 1)");
            }
        }
        Ok(())
    }

    fn check_hashing(&self) -> Result<()> {
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
        Ok(())
    }

    fn check_windows(&self) -> Result<()> {
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
        self.lsh.window.check(self.causal, self.lsh.n_chunks_before)
    }

    fn check_compat(&self) -> Result<()> {
        let compat = &self.compat;
        if compat.token_offset < 0 || (compat.token_offset > 0 && compat.token_offset + 256 > self.vocab_size) {
            bail!(
                "compat.token_offset {} and vocab_size {} leave no room for 256 bytes (need token_offset + 256 <= vocab_size)",
                compat.token_offset,
                self.vocab_size
            );
        }
        if compat.layer_norm_eps.is_nan() || compat.layer_norm_eps <= 0.0 {
            bail!("compat.layer_norm_eps = {} must be positive", compat.layer_norm_eps);
        }
        Ok(())
    }

    fn check_positions(&self) -> Result<()> {
        let PositionalConfig::Axial { shape, dims } = &self.positional else { return Ok(()) };
        if shape.iter().chain(dims.iter()).any(|&v| v <= 0) {
            bail!("positional axial shape {shape:?} and dims {dims:?} must be positive");
        }
        let covered = shape[0] as f64 * shape[1] as f64;
        if covered < self.max_seq_len as f64 {
            bail!(
                "axial shape {shape:?} covers {covered} positions, fewer than max_seq_len {}: enlarge the shape",
                self.max_seq_len
            );
        }
        if dims[0] + dims[1] != self.d_model {
            bail!("axial dims {:?} sum to {}, not d_model {}", dims, dims[0] + dims[1], self.d_model);
        }
        Ok(())
    }
}
