//! The Table-2 sweep (paper §5, Table 2): one trained model scored once per setting of its
//! LSH layers, with j hash rounds for each j (trained with k), or as dense attention. Used
//! by `eval --n-hashes` and by the end of a duplication run.

use anyhow::Result;

use crate::model::ReformerLm;

/// Hash rounds at which a duplication model is evaluated at the end of training (the
/// columns of Table 2).
pub const TABLE2_ROUNDS: [i64; 4] = [1, 2, 4, 8];

/// Scores `model` once per setting of its LSH layers: `Some(j)` with j hash rounds, `None`
/// as dense shared-QK attention over windows of `seq_len` tokens. `score` gets the model
/// so set and the setting; its results come back in the settings' order. Afterwards the
/// layers have their trained rounds again, unless a setting was dense (which changes
/// their chunks too, and stays).
pub fn sweep<T>(
    model: &mut ReformerLm,
    settings: &[Option<i64>],
    seq_len: i64,
    mut score: impl FnMut(&ReformerLm, Option<i64>) -> Result<T>,
) -> Result<Vec<T>> {
    let trained = model.cfg.lsh.n_hashes;
    let mut results = Vec::with_capacity(settings.len());
    for &setting in settings {
        match setting {
            Some(rounds) => model.set_n_hashes(rounds)?,
            None => model.use_dense_lsh(seq_len)?,
        }
        results.push(score(model, setting)?);
    }
    if settings.iter().all(Option::is_some) {
        model.set_n_hashes(trained)?;
    }
    Ok(results)
}
