//! `reformer generate`: sampling bytes from a trained checkpoint, streamed to stdout as
//! they are produced. By default the prompt runs through the model once and each new
//! token goes through an incremental-decoding cache (`model::decoding`); `--no-cache`
//! re-runs the forward pass over the context window for every token instead.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::arg_values::{at_least_one, non_negative, probability};
use crate::device::RunArgs;
use crate::memory_plan::{self, parse_budget, MemoryBudget};
use crate::model::{Decoder, ForwardMode, ReformerLm};
use crate::precision::Precision;
use crate::run_dir::load_model;
use crate::sampling::Sampling;
use crate::score::EVAL_SEED;

/// Sample text from a trained checkpoint, streamed to stdout.
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// A run folder (its best checkpoint is used) or one checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// File whose bytes are the prompt.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Bytes to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Softmax temperature, at least 0 (0 means greedy).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample among the k most likely bytes only (k at least 1).
    #[arg(long, value_name = "K", value_parser = at_least_one::<i64>, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Sample among the most likely bytes covering probability p, in (0, 1] (nucleus).
    #[arg(long, value_name = "P", value_parser = probability, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Always take the most likely byte.
    #[arg(long)]
    pub greedy: bool,
    /// Re-run the forward pass over the whole context for every token instead of
    /// decoding through the cache. The cache gives the same tokens for full, local
    /// and strict-causal LSH attention; for LSH layers trained with the paper's rule
    /// (attend within the query's chunk of the bucket-sorted sequence and one back)
    /// it applies the strict rule, an approximation: use --no-cache for the exact model.
    #[arg(long)]
    pub no_cache: bool,
    /// Arithmetic of the forward passes: f32, or bf16 / f16 autocast (default: the run's
    /// train.precision).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Independent samples to draw.
    #[arg(long, default_value_t = 1, value_parser = at_least_one::<usize>)]
    pub num_samples: usize,
    /// Check first that sampling fits in this much memory (8GiB, 512MiB, 8G, or auto):
    /// one sequence is drawn at a time, so there is nothing to plan; a budget the
    /// prompt's forward pass is predicted to exceed is refused in one line.
    #[arg(long, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<MemoryBudget>,
    /// Print one JSON object with the samples and statistics instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

impl GenerateArgs {
    /// The bytes of `--prompt` or `--prompt-file` (none without either).
    fn prompt_bytes(&self) -> Result<Vec<u8>> {
        match (&self.prompt, &self.prompt_file) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(path)) => {
                std::fs::read(path).with_context(|| format!("cannot read prompt file {}", path.display()))
            }
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The rule `--greedy`, `--temperature`, `--top-k` and `--top-p` describe.
    pub fn sampling(&self) -> Result<Sampling> {
        Sampling::new(self.temperature, self.top_k, self.top_p, self.greedy)
    }
}

/// Writes complete UTF-8 characters as they form, holding back a partial one.
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, byte: u8, out: &mut impl Write) -> Result<()> {
        self.pending.push(byte);
        match std::str::from_utf8(&self.pending) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => return Ok(()), // an incomplete sequence: wait
            Err(_) => {}                                        // invalid: write the bytes as they are
        }
        out.write_all(&self.pending)?;
        out.flush()?;
        self.pending.clear();
        Ok(())
    }
}

/// Next-token logits of one growing sequence: through the decoding cache, or (with
/// `--no-cache`) by re-running the forward pass over the last `max_seq_len` tokens, under
/// `precision`.
struct NextLogits<'a> {
    model: &'a ReformerLm,
    use_cache: bool,
    decoder: Option<Decoder<'a>>,
    device: Device,
    precision: Precision,
}

impl<'a> NextLogits<'a> {
    /// The logits after the last token of `context`, in float32 (sampling's softmax and
    /// ranking stay in float32 whatever the forward computed in). Between calls `context`
    /// grows by one token. When the cache is full it starts over from the last half of the
    /// window.
    ///
    /// # Shapes
    /// returns (V)
    fn after(&mut self, context: &[i64]) -> Result<Tensor> {
        let (precision, device) = (self.precision, self.device);
        let logits = precision.autocast(device, || self.forward(context))??;
        Ok(logits.to_kind(Kind::Float))
    }

    /// `after`'s forward pass, in the autocast dtype.
    ///
    /// # Shapes
    /// returns (V)
    fn forward(&mut self, context: &[i64]) -> Result<Tensor> {
        let max_len = self.model.cfg.max_seq_len as usize;
        let mode = ForwardMode::eval(EVAL_SEED);
        let tensor = |tokens: &[i64]| Tensor::from_slice(tokens).unsqueeze(0).to(self.device); // (1, T)
        if !self.use_cache {
            let window = &context[context.len().saturating_sub(max_len)..];
            // Only the last position's logits are needed.
            let hidden = tch::no_grad(|| self.model.hidden(&tensor(window), mode)); // (1, T, 2D)
            return Ok(tch::no_grad(|| self.model.logits(&hidden.get(0).get(-1))));
            // (V)
        }
        match &mut self.decoder {
            Some(decoder) if !decoder.is_full() => Ok(decoder.step(&tensor(&context[context.len() - 1..])).get(0)),
            decoder => {
                let keep = if decoder.is_none() { context.len().min(max_len) } else { (max_len / 2).max(1) };
                let (fresh, logits) = Decoder::prefill(self.model, &tensor(&context[context.len() - keep..]), mode)?;
                *decoder = Some(fresh);
                Ok(logits.get(0))
            }
        }
    }
}

/// What `generate --json` prints: the samples and how fast they came.
#[derive(Debug, Serialize, Deserialize)]
pub struct GenerateReport {
    pub samples: Vec<String>,
    /// Whether the tokens went through the decoding cache (not `--no-cache`).
    pub cache: bool,
    pub precision: Precision,
    pub prompt_tokens: usize,
    /// Tokens generated over all samples.
    pub new_tokens: usize,
    /// All tokens over all the time spent generating them.
    pub tokens_per_sec: f64,
    /// Tokens after each sample's first, over the time after the first: the per-token
    /// decoding rate.
    pub decode_tokens_per_sec: f64,
    /// Mean over samples of the time until the first token (the prompt's forward pass).
    pub time_to_first_token_secs: f64,
}

/// One sample's tokens and times.
struct Drawn {
    bytes: Vec<u8>,
    first_token_secs: f64,
    total_secs: f64,
}

/// The prompt as tokens: `--prompt` or `--prompt-file` (a newline without either), each
/// byte checked against the model's vocabulary, and only the last `max_seq_len` kept.
fn prompt_tokens(opts: &GenerateArgs, model: &ReformerLm) -> Result<Vec<i64>> {
    let mut prompt: Vec<i64> = opts.prompt_bytes()?.into_iter().map(i64::from).collect();
    if prompt.is_empty() {
        prompt.push(b'\n' as i64);
    }
    let vocab = model.cfg.vocab_size - model.cfg.compat.token_offset;
    if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
        bail!("the prompt holds byte {bad}, outside this model's {vocab}-symbol vocabulary");
    }
    let max_len = model.cfg.max_seq_len;
    if prompt.len() as i64 > max_len {
        eprintln!(
            "warning: the prompt has {} tokens; keeping the last {max_len} (the model's max_seq_len)",
            prompt.len()
        );
        prompt.drain(..prompt.len() - max_len as usize);
    }
    Ok(prompt)
}

/// Draws `max_new_tokens` after `prompt` with `sampling`, streaming them to `out` unless
/// `out` is `None`.
fn draw(
    next_logits: &mut NextLogits,
    prompt: &[i64],
    sampling: Sampling,
    max_new_tokens: usize,
    mut out: Option<&mut dyn Write>,
) -> Result<Drawn> {
    let mut context = prompt.to_vec();
    let mut drawn = Drawn { bytes: Vec::new(), first_token_secs: 0.0, total_secs: 0.0 };
    let mut stream = Utf8Stream { pending: Vec::new() };
    let started = Instant::now();
    for i in 0..max_new_tokens {
        let last = next_logits.after(&context)?; // (V)
        if last.isfinite().all().int64_value(&[]) == 0 {
            bail!("the model produced non-finite logits: the checkpoint's weights are damaged or diverged");
        }
        let next = sampling.next_token(&last);
        if i == 0 {
            drawn.first_token_secs = started.elapsed().as_secs_f64();
        }
        context.push(next);
        drawn.bytes.push(next as u8);
        if let Some(out) = out.as_mut() {
            stream.push(next as u8, out)?;
        }
    }
    if let Some(out) = out {
        out.write_all(&stream.pending)?;
        writeln!(out)?;
    }
    drawn.total_secs = started.elapsed().as_secs_f64();
    Ok(drawn)
}

impl GenerateReport {
    /// The report of `draws` after a prompt of `prompt_tokens`.
    fn new(draws: &[Drawn], prompt_tokens: usize, cache: bool, precision: Precision) -> Self {
        let new_tokens: usize = draws.iter().map(|d| d.bytes.len()).sum();
        let total_secs: f64 = draws.iter().map(|d| d.total_secs).sum();
        let first_token_secs: f64 = draws.iter().map(|d| d.first_token_secs).sum();
        let later_tokens = new_tokens.saturating_sub(draws.len());
        Self {
            samples: draws.iter().map(|d| String::from_utf8_lossy(&d.bytes).into_owned()).collect(),
            cache,
            precision,
            prompt_tokens,
            new_tokens,
            tokens_per_sec: new_tokens as f64 / total_secs.max(1e-9),
            decode_tokens_per_sec: later_tokens as f64 / (total_secs - first_token_secs).max(1e-9),
            time_to_first_token_secs: first_token_secs / draws.len().max(1) as f64,
        }
    }

    /// The statistics in one line, for a terminal.
    fn describe(&self) -> String {
        format!(
            "{} tokens at {:.1} tokens/s ({:.1} tokens/s after the first); first token after {:.3}s ({} prompt \
             tokens, {})",
            self.new_tokens,
            self.tokens_per_sec,
            self.decode_tokens_per_sec,
            self.time_to_first_token_secs,
            self.prompt_tokens,
            if self.cache { "cached" } else { "no cache" }
        )
    }
}

pub fn run(opts: GenerateArgs) -> Result<()> {
    let sampling = opts.sampling()?;
    let device = opts.run.setup()?;
    tch::manual_seed(opts.run.seed as i64);
    let (_vs, model, cfg) = load_model(&opts.checkpoint, device)?;
    let precision = opts.precision.unwrap_or(cfg.train.precision).resolve(device);
    let prompt = prompt_tokens(&opts, &model)?;
    if !opts.no_cache {
        crate::model::decoding::check_decodable(&model.cfg)?;
    }
    if let Some(budget) = opts.memory_budget {
        let len = (prompt.len() + opts.max_new_tokens).min(model.cfg.max_seq_len as usize) as i64;
        eprintln!("{}", memory_plan::check_one_sequence(&model.cfg, budget, device, len, precision)?);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut draws = Vec::new();
    for sample_index in 0..opts.num_samples {
        let mut next_logits = NextLogits { model: &model, use_cache: !opts.no_cache, decoder: None, device, precision };
        let stream: Option<&mut dyn Write> = if opts.json { None } else { Some(&mut out) };
        draws.push(draw(&mut next_logits, &prompt, sampling, opts.max_new_tokens, stream)?);
        if !opts.json && sample_index + 1 < opts.num_samples {
            writeln!(out, "---")?;
        }
    }
    let report = GenerateReport::new(&draws, prompt.len(), !opts.no_cache, precision);
    if opts.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!("{}", report.describe());
    }
    Ok(())
}
