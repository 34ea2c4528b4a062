//! How many buckets each LSH round hashes into, and their factors: the configured
//! values, or the defaults derived from the model's length (about 2·T/chunk_len buckets,
//! as the paper sizes them, factorised in two above `lsh.factorise_above` so that the
//! rotation's cost per token does not grow with the length). A run folder's config
//! records what they resolved to, and configs saved before that keep the hashing they
//! were trained with.

use super::config::ModelConfig;

/// Default of `lsh.factorise_above`.
pub const FACTORISE_ABOVE: i64 = 128;

impl ModelConfig {
    /// Buckets per LSH round: the configured value, the product of `bucket_factors`, or
    /// about 2·max_seq_len/chunk_len rounded to an even number (at least 2), as the paper
    /// sizes them.
    pub fn n_buckets(&self) -> i64 {
        if self.lsh.n_buckets.is_none() && !self.lsh.bucket_factors.is_empty() {
            return self.lsh.bucket_factors.iter().product();
        }
        self.lsh.n_buckets.unwrap_or_else(|| self.derived_n_buckets())
    }

    /// The factors of each round's hash (empty: one hash of `n_buckets()`): the
    /// configured ones, or the default's factorisation (see `lsh.factorise_above`).
    pub fn bucket_factors(&self) -> Vec<i64> {
        if self.lsh.n_buckets.is_some() || !self.lsh.bucket_factors.is_empty() {
            return self.lsh.bucket_factors.clone();
        }
        let n_buckets = self.n_buckets();
        match self.lsh.factorise_above {
            Some(limit) if n_buckets > limit => two_even_factors(n_buckets).map_or_else(Vec::new, |f| f.to_vec()),
            _ => Vec::new(),
        }
    }

    /// Writes the bucket count and factors the defaults resolve to into the settings, so
    /// that a saved config hashes the same way whatever later releases default to.
    pub fn resolve_hashing(&mut self) {
        let (n_buckets, factors) = (self.n_buckets(), self.bucket_factors());
        self.lsh.n_buckets = Some(n_buckets);
        self.lsh.bucket_factors = factors;
    }

    /// For a config saved before `resolve_hashing` existed (`"n_buckets": null` without
    /// factors): the hashing it was trained with, one unfactorised hash of the derived
    /// count.
    pub fn pin_hashing_of_earlier_releases(&mut self) {
        if self.lsh.n_buckets.is_none() && self.lsh.bucket_factors.is_empty() {
            self.lsh.n_buckets = Some(self.derived_n_buckets());
        }
    }

    /// About 2·max_seq_len/chunk_len, even, at least 2.
    fn derived_n_buckets(&self) -> i64 {
        let per_round = 2 * self.max_seq_len / self.lsh.chunk_len.max(1);
        (per_round / 2 * 2).max(2)
    }
}

/// Two even factors of `n` as close to each other as possible (the smaller first), or
/// None when there are none (n/2 odd).
fn two_even_factors(n: i64) -> Option<[i64; 2]> {
    let mut f = (n as f64).sqrt() as i64;
    while f >= 2 {
        if f % 2 == 0 && n % f == 0 && (n / f) % 2 == 0 {
            return Some([f, n / f]);
        }
        f -= 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsh_model(max_seq_len: i64) -> ModelConfig {
        ModelConfig { max_seq_len, ..ModelConfig::default() }
    }

    #[test]
    fn even_factors_are_as_close_as_possible() {
        assert_eq!(two_even_factors(512), Some([16, 32]));
        assert_eq!(two_even_factors(2048), Some([32, 64]));
        assert_eq!(two_even_factors(256), Some([16, 16]));
        assert_eq!(two_even_factors(24), Some([4, 6]));
        assert_eq!(two_even_factors(2 * 7), None);
    }

    #[test]
    fn the_default_factorises_only_above_the_threshold() {
        // Chunks of 64: 4,096 tokens give 128 buckets, 16,384 give 512.
        assert_eq!((lsh_model(4096).n_buckets(), lsh_model(4096).bucket_factors()), (128, vec![]));
        assert_eq!((lsh_model(16384).n_buckets(), lsh_model(16384).bucket_factors()), (512, vec![16, 32]));
        let mut never = lsh_model(16384);
        never.lsh.factorise_above = None;
        assert_eq!(never.bucket_factors(), Vec::<i64>::new());
        let mut explicit = lsh_model(16384);
        explicit.lsh.n_buckets = Some(512);
        assert_eq!(explicit.bucket_factors(), Vec::<i64>::new(), "a configured count is not factorised");
        explicit.lsh.n_buckets = None;
        explicit.lsh.bucket_factors = vec![8, 64];
        assert_eq!((explicit.n_buckets(), explicit.bucket_factors()), (512, vec![8, 64]));
    }

    #[test]
    fn resolving_pins_what_the_defaults_give() {
        let mut cfg = lsh_model(16384);
        cfg.resolve_hashing();
        assert_eq!((cfg.lsh.n_buckets, cfg.lsh.bucket_factors.clone()), (Some(512), vec![16, 32]));
        cfg.lsh.factorise_above = Some(100_000);
        assert_eq!(cfg.bucket_factors(), vec![16, 32], "a resolved config keeps its factors");
    }

    #[test]
    fn a_config_saved_before_resolution_keeps_one_unfactorised_hash() {
        let mut old = serde_json::to_value(lsh_model(16384)).unwrap();
        let lsh = old["lsh"].as_object_mut().unwrap();
        lsh.remove("factorise_above");
        assert!(lsh["n_buckets"].is_null());
        let mut cfg: ModelConfig = serde_json::from_value(old).unwrap();
        cfg.pin_hashing_of_earlier_releases();
        assert_eq!((cfg.n_buckets(), cfg.bucket_factors()), (512, vec![]));
    }
}
