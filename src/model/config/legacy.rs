//! Model configs written before the settings were grouped by meaning (`compat`,
//! `execution`, `lsh.window`): their keys moved to where they now live, so that every
//! config.json and preset of an earlier release loads and builds the same model, and
//! `--set` accepts the old names.

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Old key (its path under `model`) → where it lives now.
const MOVED: [(&str, &str); 11] = [
    ("token_offset", "compat.token_offset"),
    ("activation", "compat.activation"),
    ("layer_norm_eps", "compat.layer_norm_eps"),
    ("attention_output_bias", "compat.attention_output_bias"),
    ("lsh.scale_logits", "compat.scale_lsh_logits"),
    ("lsh.hash_seed", "compat.lsh_hash_seed"),
    ("reversible", "execution.reversible"),
    ("sliced_attention", "execution.sliced_attention"),
    ("ff_chunk_len", "execution.ff_chunk_len"),
    ("loss_chunk_len", "execution.loss_chunk_len"),
    ("lsh.fused", "execution.fused_lsh"),
];
/// The two booleans that `lsh.window` replaces.
const STRICT_CAUSAL: &str = "strict_causal";
const WRAP_AROUND: &str = "wrap_around";

/// The current name of a setting under `model` given by its old name (a `--set` key
/// without the `model.` prefix), or None when the name is current.
pub fn current_key(old: &str) -> Option<&'static str> {
    MOVED.iter().find(|(from, _)| *from == old).map(|(_, to)| *to)
}

/// A `--set` of a model setting (its key without the `model.` prefix) by its current
/// name and value: old names are renamed, and a window boolean becomes `lsh.window`
/// (`lsh.strict_causal=true` is `lsh.window=strict`; false, the paper's rule).
pub fn current_setting(key: &str, value: Value) -> (String, Value) {
    let window = |on: &'static str| if value.as_bool() == Some(true) { on } else { "paper" };
    match key.strip_prefix("lsh.") {
        Some(STRICT_CAUSAL) => ("lsh.window".into(), Value::String(window("strict").into())),
        Some(WRAP_AROUND) => ("lsh.window".into(), Value::String(window("released").into())),
        _ => (current_key(key).unwrap_or(key).to_string(), value),
    }
}

/// Rewrites a model config in the current layout; a config that names a setting in both
/// its old and its new place, or both window booleans, is refused in one line.
pub fn migrate(model: &mut Value) -> Result<()> {
    let Some(root) = model.as_object_mut() else { return Ok(()) };
    migrate_window(root)?;
    for (from, to) in MOVED {
        if let Some(value) = take(root, from) {
            if get(root, to).is_some() {
                bail!("model config names both {from} (its old name) and {to}: keep {to}");
            }
            put(root, to, value);
        }
    }
    Ok(())
}

/// `lsh.strict_causal` / `lsh.wrap_around` → `lsh.window`.
fn migrate_window(root: &mut Map<String, Value>) -> Result<()> {
    let Some(Value::Object(lsh)) = root.get_mut("lsh") else { return Ok(()) };
    let strict = lsh.remove(STRICT_CAUSAL);
    let wrap = lsh.remove(WRAP_AROUND);
    let on = |flag: &Option<Value>| flag.as_ref().and_then(Value::as_bool).unwrap_or(false);
    let window = match (on(&strict), on(&wrap)) {
        (true, true) => bail!("lsh.strict_causal and lsh.wrap_around exclude each other: set lsh.window instead"),
        (true, false) => "strict",
        (false, true) => "released",
        (false, false) if strict.is_none() && wrap.is_none() => return Ok(()),
        (false, false) => "paper",
    };
    if lsh.contains_key("window") {
        bail!("model config names both lsh.window and its old booleans lsh.{STRICT_CAUSAL}/{WRAP_AROUND}: keep lsh.window");
    }
    lsh.insert("window".into(), Value::String(window.into()));
    Ok(())
}

fn take(root: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => root.remove(path),
        Some((group, key)) => root.get_mut(group)?.as_object_mut()?.remove(key),
    }
}

fn get<'a>(root: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    match path.split_once('.') {
        None => root.get(path),
        Some((group, key)) => root.get(group)?.get(key),
    }
}

fn put(root: &mut Map<String, Value>, path: &str, value: Value) {
    let (group, key) = path.split_once('.').expect("moved keys live in a group");
    let group = root.entry(group).or_insert_with(|| Value::Object(Map::new()));
    if !group.is_object() {
        *group = Value::Object(Map::new());
    }
    group.as_object_mut().expect("an object").insert(key.into(), value);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn old_keys_move_to_their_sections() {
        let mut old = json!({
            "d_model": 64, "reversible": false, "token_offset": 2, "ff_chunk_len": 16,
            "lsh": {"n_hashes": 2, "fused": false, "scale_logits": false, "hash_seed": 7, "wrap_around": true}
        });
        migrate(&mut old).unwrap();
        let expected = json!({
            "d_model": 64,
            "lsh": {"n_hashes": 2, "window": "released"},
            "compat": {"token_offset": 2, "scale_lsh_logits": false, "lsh_hash_seed": 7},
            "execution": {"reversible": false, "ff_chunk_len": 16, "fused_lsh": false}
        });
        assert_eq!(old, expected);
    }

    #[test]
    fn the_window_booleans_become_one_rule() {
        for (strict, wrap, window) in [(true, false, "strict"), (false, true, "released"), (false, false, "paper")] {
            let mut old = json!({"lsh": {"strict_causal": strict, "wrap_around": wrap}});
            migrate(&mut old).unwrap();
            assert_eq!(old, json!({"lsh": {"window": window}}));
        }
        let mut both = json!({"lsh": {"strict_causal": true, "wrap_around": true}});
        assert!(migrate(&mut both).unwrap_err().to_string().contains("exclude each other"));
    }

    #[test]
    fn a_setting_in_both_places_is_refused() {
        let mut twice = json!({"reversible": false, "execution": {"reversible": true}});
        let error = migrate(&mut twice).unwrap_err().to_string();
        assert!(error.contains("both reversible") && error.contains("keep execution.reversible"), "{error}");
    }

    #[test]
    fn current_configs_are_unchanged() {
        let current = json!({"d_model": 8, "lsh": {"window": "strict"}, "execution": {"reversible": false}});
        let mut migrated = current.clone();
        migrate(&mut migrated).unwrap();
        assert_eq!(migrated, current);
        assert_eq!(current_key("lsh.fused"), Some("execution.fused_lsh"));
        assert_eq!(current_key("d_model"), None);
    }

    #[test]
    fn old_settings_on_the_command_line_take_their_new_names() {
        assert_eq!(current_setting("reversible", json!(false)), ("execution.reversible".into(), json!(false)));
        assert_eq!(current_setting("lsh.strict_causal", json!(true)), ("lsh.window".into(), json!("strict")));
        assert_eq!(current_setting("lsh.wrap_around", json!(true)), ("lsh.window".into(), json!("released")));
        assert_eq!(current_setting("lsh.wrap_around", json!(false)), ("lsh.window".into(), json!("paper")));
        assert_eq!(current_setting("lsh.n_hashes", json!(2)), ("lsh.n_hashes".into(), json!(2)));
    }
}
