//! How `generate` picks each next token from the model's logits: the most likely one
//! (greedy), or one drawn from the softmax at a temperature, among the k most likely
//! (top-k) and the most likely covering probability p (top-p, "nucleus" sampling).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The rule that turns the last position's logits into the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (ties: the lowest index).
    Greedy,
    /// A token drawn from softmax(logits / `temperature`) after the cuts below.
    Random {
        /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it.
        temperature: f64,
        /// Only the `top_k` most likely tokens can be drawn (all when `None`).
        top_k: Option<i64>,
        /// Only the smallest set of most likely tokens whose probabilities sum to at
        /// least `top_p` can be drawn (all when `None`).
        top_p: Option<f64>,
    },
}

impl Sampling {
    /// The rule the settings of `generate` describe: greedy when `greedy` is set or the
    /// temperature is 0, random otherwise. A setting out of range is refused in one line
    /// naming it; a `top_p` of 1 cuts nothing and is dropped.
    pub fn new(temperature: f64, top_k: Option<i64>, top_p: Option<f64>, greedy: bool) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            bail!("temperature {temperature} is not a finite number >= 0 (0 means greedy)");
        }
        if let Some(k) = top_k.filter(|&k| k < 1) {
            bail!("top-k {k} is below 1: keep at least the most likely token");
        }
        if let Some(p) = top_p.filter(|&p| !(p > 0.0 && p <= 1.0)) {
            bail!("top-p {p} is not a probability in (0, 1]");
        }
        if greedy || temperature == 0.0 {
            return Ok(Self::Greedy);
        }
        Ok(Self::Random { temperature, top_k, top_p: top_p.filter(|&p| p < 1.0) })
    }

    /// The next token after `logits`, drawn from libtorch's global generator (seeded by
    /// `--seed`).
    ///
    /// # Shapes
    /// `logits`: (V); returns a token index in 0..V.
    pub fn next_token(&self, logits: &Tensor) -> i64 {
        match self {
            Self::Greedy => logits.argmax(-1, false).int64_value(&[]),
            Self::Random { .. } => {
                self.candidate_logits(logits).softmax(-1, Kind::Float).multinomial(1, false).int64_value(&[0])
            }
        }
    }

    /// The logits the token is drawn from: scaled by the temperature, with every token
    /// the cuts exclude at −∞ (probability 0). Greedy keeps only the most likely token
    /// (and any tied with it).
    ///
    /// # Shapes
    /// `logits`: (V); returns (V) float32.
    pub fn candidate_logits(&self, logits: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        match *self {
            Self::Greedy => keep_top_k(&logits, 1),
            Self::Random { temperature, top_k, top_p } => {
                let mut logits = logits / temperature;
                if let Some(k) = top_k {
                    logits = keep_top_k(&logits, k);
                }
                if let Some(p) = top_p {
                    logits = keep_top_p(&logits, p);
                }
                logits
            }
        }
    }
}

/// `logits` with all but the `k` largest at −∞ (tokens tied with the k-th stay).
///
/// # Shapes
/// `logits`: (V); returns (V).
fn keep_top_k(logits: &Tensor, k: i64) -> Tensor {
    let k = k.min(logits.size()[0]);
    let kth = logits.topk(k, -1, true, true).0.get(k - 1); // ()
    logits.masked_fill(&logits.lt_tensor(&kth), f64::NEG_INFINITY)
}

/// `logits` with every token outside the smallest most-likely set whose probability
/// reaches `p` at −∞: a token stays while the more likely ones hold less than `p` (so the
/// most likely always stays).
///
/// # Shapes
/// `logits`: (V); returns (V).
fn keep_top_p(logits: &Tensor, p: f64) -> Tensor {
    let (sorted, order) = logits.sort(-1, true); // (V) in descending order, (V) their indices
    let probs = sorted.softmax(-1, Kind::Float);
    let mass_before = probs.cumsum(-1, Kind::Float) - &probs; // (V) in sorted order
    let drop_sorted = mass_before.ge(p);
    let drop = drop_sorted.scatter(0, &order, &drop_sorted); // (V) in token order
    logits.masked_fill(&drop, f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is `probs`.
    fn logits_of(probs: &[f64]) -> Tensor {
        Tensor::from_slice(probs).log().to_kind(Kind::Float)
    }

    /// The tokens `sampling` can draw after `logits` (probability above 0), in order.
    fn support(sampling: Sampling, logits: &Tensor) -> Vec<i64> {
        let probs = sampling.candidate_logits(logits).softmax(-1, Kind::Float);
        Vec::<i64>::try_from(probs.gt(0.0).nonzero().view(-1)).unwrap()
    }

    fn random(top_k: Option<i64>, top_p: Option<f64>) -> Sampling {
        Sampling::new(1.0, top_k, top_p, false).unwrap()
    }

    #[test]
    fn greedy_takes_the_most_likely_token_and_temperature_zero_means_greedy() {
        let logits = logits_of(&[0.1, 0.2, 0.6, 0.1]);
        assert_eq!(Sampling::new(1.0, None, None, true).unwrap(), Sampling::Greedy);
        assert_eq!(Sampling::new(0.0, Some(3), Some(0.5), false).unwrap(), Sampling::Greedy);
        assert_eq!(Sampling::Greedy.next_token(&logits), 2);
    }

    #[test]
    fn top_k_of_one_draws_what_greedy_takes() {
        tch::manual_seed(0);
        let logits = Tensor::randn([50], (Kind::Float, tch::Device::Cpu));
        let greedy = Sampling::Greedy.next_token(&logits);
        for _ in 0..20 {
            assert_eq!(random(Some(1), None).next_token(&logits), greedy);
        }
        assert_eq!(support(random(Some(1), None), &logits), vec![greedy]);
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_tokens() {
        let logits = logits_of(&[0.05, 0.4, 0.1, 0.3, 0.15]);
        assert_eq!(support(random(Some(3), None), &logits), vec![1, 3, 4]);
        assert_eq!(support(random(Some(99), None), &logits), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn top_p_keeps_the_smallest_most_likely_set_reaching_p() {
        let logits = logits_of(&[0.05, 0.4, 0.1, 0.3, 0.15]);
        // 0.4 alone reaches 0.35; 0.4 + 0.3 reach 0.6; 0.4 + 0.3 + 0.15 reach 0.8.
        assert_eq!(support(random(None, Some(0.35)), &logits), vec![1]);
        assert_eq!(support(random(None, Some(0.6)), &logits), vec![1, 3]);
        assert_eq!(support(random(None, Some(0.8)), &logits), vec![1, 3, 4]);
        assert_eq!(support(random(None, Some(1.0)), &logits), vec![0, 1, 2, 3, 4]);
        // Both cuts: the smaller set wins.
        assert_eq!(support(random(Some(2), Some(0.8)), &logits), vec![1, 3]);
    }

    #[test]
    fn a_low_temperature_sharpens_and_a_high_one_flattens() {
        let logits = logits_of(&[0.2, 0.8]);
        let top_prob = |temperature: f64| {
            let sampling = Sampling::new(temperature, None, None, false).unwrap();
            sampling.candidate_logits(&logits).softmax(-1, Kind::Float).double_value(&[1])
        };
        assert!((top_prob(1.0) - 0.8).abs() < 1e-6);
        assert!(top_prob(0.5) > 0.9 && top_prob(4.0) < 0.7);
    }

    #[test]
    fn settings_out_of_range_are_refused_in_one_line_naming_them() {
        let refused = |temperature, top_k, top_p| {
            let message = Sampling::new(temperature, top_k, top_p, false).unwrap_err().to_string();
            assert!(!message.contains('\n'), "{message}");
            message
        };
        assert!(refused(-0.5, None, None).starts_with("temperature -0.5"));
        assert!(refused(f64::NAN, None, None).starts_with("temperature NaN"));
        assert!(refused(1.0, Some(0), None).starts_with("top-k 0"));
        assert!(refused(1.0, None, Some(0.0)).starts_with("top-p 0"));
        assert!(refused(1.0, None, Some(1.5)).starts_with("top-p 1.5"));
        assert!(Sampling::new(1.0, None, None, true).is_ok());
    }
}
