//! Another model's weights into this one (`train --init-from`): every tensor of the same
//! name and shape is copied; the positional tables, the only ones whose shape follows
//! the sequence length, grow (or shrink) by the rule below; any other difference is an
//! error naming the tensor.
//!
//! The rule keeps every position the source knew where its meaning survives:
//! - **learned** positions: rows 0..min(T_source, T) are copied, later rows keep their
//!   fresh initialisation;
//! - **axial** positions, p = (p / A2, p % A2): when the column count A2 and both widths
//!   are unchanged, the column table is copied and the row table's first
//!   min(A1_source, A1) rows too (positions below A1_source·A2 keep their embedding
//!   exactly; the new rows start as at initialisation, N(0, 1)); when A2 or a width
//!   changes, a position lands on another column, so no row or column keeps its
//!   meaning: both tables start fresh.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn, Tensor};

use super::config::PositionalConfig;

/// The variable names of the positional tables (see `positional.rs`).
const AXIAL_ROWS: &str = "positional.axial_rows";
const AXIAL_COLS: &str = "positional.axial_cols";
const LEARNED: &str = "positional.learned";

/// Loads the weights saved at `weights` (a safetensors file of a model whose positions
/// were `source`, up to `source_len`) into `vs` (a freshly initialised model whose
/// positions are `target`, up to `target_len`); returns what happened to the position
/// tables, in words for the log.
pub fn load_into(
    vs: &mut nn::VarStore,
    weights: &Path,
    (source, source_len): (&PositionalConfig, i64),
    (target, target_len): (&PositionalConfig, i64),
) -> Result<String> {
    let saved: HashMap<String, Tensor> = Tensor::read_safetensors(weights)
        .with_context(|| format!("cannot read weights {}", weights.display()))?
        .into_iter()
        .collect();
    let variables = vs.variables();
    for name in saved.keys() {
        if !variables.contains_key(name) && !is_positional(name) {
            bail!("{} holds {name}, which this model does not have (another architecture?)", weights.display());
        }
    }
    let change = positions_change((source, source_len), (target, target_len));
    tch::no_grad(|| -> Result<()> {
        for (name, mut variable) in variables {
            let transfer = transfer_of(&name, source, target);
            if transfer == Transfer::Fresh {
                continue; // the fresh initialisation stays
            }
            let stored = saved
                .get(&name)
                .with_context(|| format!("{} lacks {name} (another architecture?)", weights.display()))?;
            match transfer {
                Transfer::Whole if stored.size() == variable.size() => {
                    variable.copy_(stored);
                }
                Transfer::LeadingRows if stored.size()[1..] == variable.size()[1..] => {
                    let rows = stored.size()[0].min(variable.size()[0]);
                    variable.narrow(0, 0, rows).copy_(&stored.narrow(0, 0, rows));
                }
                _ => bail!(
                    "{name} has shape {:?} in {} but {:?} in this model: only the positional tables may change shape",
                    stored.size(),
                    weights.display(),
                    variable.size()
                ),
            }
        }
        Ok(())
    })?;
    Ok(change)
}

/// How one tensor of the source reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// Copied as it is (same shape required).
    Whole,
    /// The leading rows that both have are copied, the rest stays fresh.
    LeadingRows,
    /// Not copied: the table's rows mean other positions in the model.
    Fresh,
}

fn transfer_of(name: &str, source: &PositionalConfig, target: &PositionalConfig) -> Transfer {
    if !is_positional(name) {
        return Transfer::Whole;
    }
    match (source, target) {
        (PositionalConfig::Learned, PositionalConfig::Learned) => Transfer::LeadingRows,
        (PositionalConfig::Axial { .. }, PositionalConfig::Axial { .. }) if same_columns(source, target) => {
            Transfer::LeadingRows
        }
        _ => Transfer::Fresh,
    }
}

fn is_positional(name: &str) -> bool {
    [AXIAL_ROWS, AXIAL_COLS, LEARNED].contains(&name)
}

/// Whether two axial layouts put every position on the same column (same A2, same widths).
fn same_columns(source: &PositionalConfig, target: &PositionalConfig) -> bool {
    match (source, target) {
        (
            PositionalConfig::Axial { shape: [_, cols], dims },
            PositionalConfig::Axial { shape: [_, target_cols], dims: target_dims },
        ) => cols == target_cols && dims == target_dims,
        _ => false,
    }
}

/// The positional change in words ("positions kept" when the layouts are the same).
fn positions_change(
    (source, source_len): (&PositionalConfig, i64),
    (target, target_len): (&PositionalConfig, i64),
) -> String {
    match (source, target) {
        (PositionalConfig::Learned, PositionalConfig::Learned) if source_len != target_len => format!(
            "learned positions {source_len} -> {target_len}: rows 0..{} kept, {} new rows",
            source_len.min(target_len),
            (target_len - source_len).max(0)
        ),
        _ if source == target => "positions kept".to_string(),
        (PositionalConfig::Axial { shape: from, .. }, PositionalConfig::Axial { shape: to, .. }) => {
            if same_columns(source, target) {
                format!(
                    "axial positions {from:?} -> {to:?}: columns and rows 0..{} kept, {} new rows",
                    from[0].min(to[0]),
                    (to[0] - from[0]).max(0)
                )
            } else {
                format!("axial positions {from:?} -> {to:?}: the column layout changed, both tables start fresh")
            }
        }
        _ => format!("positions {} -> {}: start fresh", positional_name(source), positional_name(target)),
    }
}

fn positional_name(cfg: &PositionalConfig) -> &'static str {
    match cfg {
        PositionalConfig::Axial { .. } => "axial",
        PositionalConfig::Learned => "learned",
        PositionalConfig::None => "none",
    }
}
