//! Positional embeddings: axial (paper §5, "axial positional embeddings" of the released
//! enwik8 model), learned, or none.

use tch::{nn, Tensor};

use super::config::{ModelConfig, PositionalConfig};

/// Positions start at the scale of the byte embeddings (libtorch's default N(0, 1)), so
/// that after the first LayerNorm position and content weigh alike; at 0.02 the position
/// signal is 2% of the input and offset-based attention (the duplication task) is slow
/// to learn.
const INIT_STDDEV: f64 = 1.0;

#[derive(Debug)]
pub enum PositionalEmbedding {
    /// Two tables: rows for p / A2 (width dims[0]) and for p % A2 (width dims[1]).
    Axial {
        rows: Tensor,
        cols: Tensor,
    },
    /// One row per position.
    Learned {
        table: Tensor,
    },
    None,
}

impl PositionalEmbedding {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let init = nn::Init::Randn { mean: 0.0, stdev: INIT_STDDEV };
        match &cfg.positional {
            PositionalConfig::Axial { shape, dims } => Self::Axial {
                rows: vs.var("axial_rows", &[shape[0], dims[0]], init),
                cols: vs.var("axial_cols", &[shape[1], dims[1]], init),
            },
            PositionalConfig::Learned => {
                Self::Learned { table: vs.var("learned", &[cfg.max_seq_len, cfg.d_model], init) }
            }
            PositionalConfig::None => Self::None,
        }
    }

    /// The embeddings of positions `start..start + len`, or None when the model has none.
    ///
    /// # Shapes
    /// returns (len, D)
    pub fn range(&self, start: i64, len: i64) -> Option<Tensor> {
        match self {
            Self::Axial { rows, cols } => {
                let (a1, d1) = rows.size2().unwrap();
                let (a2, d2) = cols.size2().unwrap();
                // Only the rows that positions start..start+len use.
                let first_row = start / a2;
                let n_rows = (start + len + a2 - 1) / a2 - first_row;
                let rows = rows.narrow(0, first_row, n_rows).unsqueeze(1).expand([n_rows, a2, d1], false); // (n_rows, A2, d1)
                let cols = cols.unsqueeze(0).expand([n_rows, a2, d2], false); // (n_rows, A2, d2)
                debug_assert!(first_row + n_rows <= a1);
                let table = Tensor::cat(&[rows, cols], -1); // (n_rows, A2, D)
                Some(table.view([n_rows * a2, d1 + d2]).narrow(0, start - first_row * a2, len))
                // (len, D)
            }
            Self::Learned { table } => Some(table.narrow(0, start, len)),
            Self::None => None,
        }
    }
}
