//! `adapter_config.json` as HF PEFT writes it, and which modules an adapter targets.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::PeftError;

/// The LoRA settings of an adapter. Fields PEFT writes that do not change a LoRA adapter's
/// numbers (`inference_mode`, `revision`, ...) are kept verbatim in `extra` and written back.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module names or suffixes (`q_proj`), a full-match regex, or `all-linear`.
    pub target_modules: TargetModules,
    pub exclude_modules: Option<TargetModules>,
    pub use_rslora: bool,
    /// Per-module rank overrides: PEFT pattern → r.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides: PEFT pattern → alpha.
    pub alpha_pattern: BTreeMap<String, f64>,
    pub base_model_name_or_path: Option<String>,
    pub task_type: String,
    /// Everything else PEFT wrote, preserved.
    pub extra: Map<String, Value>,
}

/// `target_modules` / `exclude_modules`.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Matches a module whose name is one of these or ends with `.` + one of these.
    Names(Vec<String>),
    /// A regular expression matched against the whole module name.
    Regex(String),
    /// Every linear layer but the output head.
    AllLinear,
}

impl TargetModules {
    /// PEFT's names of a LLaMA layer's seven projections (what `all-linear` reaches there).
    pub const LLAMA_PROJECTIONS: [&'static str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];

    /// The seven projections of every layer by name.
    pub fn llama_projections() -> Self {
        TargetModules::Names(Self::LLAMA_PROJECTIONS.map(String::from).to_vec())
    }

    fn matches(&self, module: &str) -> Result<bool, PeftError> {
        Ok(match self {
            TargetModules::Names(names) => names
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
            TargetModules::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| PeftError::Config(format!("target regex {re:?}: {e}")))?
                .is_match(module),
            TargetModules::AllLinear => true,
        })
    }

    fn from_json(value: &Value, key: &str) -> Result<Option<Self>, PeftError> {
        Ok(match value {
            Value::Null => None,
            Value::String(s) if s == "all-linear" => Some(TargetModules::AllLinear),
            Value::String(s) => Some(TargetModules::Regex(s.clone())),
            Value::Array(items) => Some(TargetModules::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        PeftError::Config(format!("`{key}` must be a list of strings"))
                    })?,
            )),
            _ => {
                return Err(PeftError::Config(format!(
                    "`{key}` must be a string or a list"
                )));
            }
        })
    }

    fn to_json(&self) -> Value {
        match self {
            TargetModules::Names(n) => json!(n),
            TargetModules::Regex(r) => json!(r),
            TargetModules::AllLinear => json!("all-linear"),
        }
    }
}

/// Options that change what a LoRA adapter computes and that this crate does not implement:
/// an adapter using one is refused rather than silently read wrong.
fn unsupported(map: &Map<String, Value>) -> Option<String> {
    let set = |k: &str| {
        map.get(k)
            .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
    };
    let non_empty = |k: &str| {
        map.get(k).is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        })
    };
    for key in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
        if set(key) {
            return Some(format!("`{key}: true`"));
        }
    }
    for key in [
        "modules_to_save",
        "layers_to_transform",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
        "alora_invocation_tokens",
    ] {
        if non_empty(key) {
            return Some(format!("`{key}` ({})", map[key]));
        }
    }
    if let Some(bias) = map.get("bias").and_then(Value::as_str)
        && bias != "none"
    {
        return Some(format!("`bias: {bias}` (bias training)"));
    }
    None
}

impl AdapterConfig {
    /// A new LoRA config for a causal LM.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        AdapterConfig {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            exclude_modules: None,
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: None,
            task_type: "CAUSAL_LM".into(),
            extra: Map::new(),
        }
    }

    /// Parse `adapter_config.json` text; `path` names the file in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Self, PeftError> {
        let bad = |m: String| PeftError::Config(format!("{path}: {m}"));
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let peft_type = map.get("peft_type").and_then(Value::as_str).unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {peft_type:?} is not supported (only LORA)"
            )));
        }
        if let Some(what) = unsupported(&map) {
            return Err(bad(format!("{what} is not supported")));
        }
        let number = |map: &Map<String, Value>, k: &str| map.get(k).and_then(Value::as_f64);
        let r = number(&map, "r").ok_or_else(|| bad("`r` missing".into()))? as usize;
        if r == 0 {
            return Err(bad("`r` must be positive".into()));
        }
        let lora_alpha = number(&map, "lora_alpha").unwrap_or(8.0);
        let target = map.get("target_modules").cloned().unwrap_or(Value::Null);
        let target_modules = TargetModules::from_json(&target, "target_modules")
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("`target_modules` missing".into()))?;
        let exclude = map.get("exclude_modules").cloned().unwrap_or(Value::Null);
        let exclude_modules = TargetModules::from_json(&exclude, "exclude_modules")
            .map_err(|e| bad(e.to_string()))?;
        let pattern =
            |map: &Map<String, Value>, k: &str| -> Result<BTreeMap<String, f64>, PeftError> {
                match map.get(k) {
                    None | Some(Value::Null) => Ok(BTreeMap::new()),
                    Some(Value::Object(o)) => o
                        .iter()
                        .map(|(key, v)| {
                            v.as_f64()
                                .map(|n| (key.clone(), n))
                                .ok_or_else(|| bad(format!("`{k}.{key}` is not a number")))
                        })
                        .collect(),
                    Some(_) => Err(bad(format!("`{k}` must be an object"))),
                }
            };
        let rank_pattern = pattern(&map, "rank_pattern")?
            .into_iter()
            .map(|(k, v)| (k, v as usize))
            .collect();
        let alpha_pattern = pattern(&map, "alpha_pattern")?;
        let config = AdapterConfig {
            r,
            lora_alpha,
            lora_dropout: number(&map, "lora_dropout").unwrap_or(0.0),
            target_modules,
            exclude_modules,
            use_rslora: map
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            rank_pattern,
            alpha_pattern,
            base_model_name_or_path: map
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            task_type: map
                .get("task_type")
                .and_then(Value::as_str)
                .unwrap_or("CAUSAL_LM")
                .to_string(),
            extra: Map::new(),
        };
        for key in [
            "peft_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "exclude_modules",
            "use_rslora",
            "rank_pattern",
            "alpha_pattern",
            "base_model_name_or_path",
            "task_type",
        ] {
            map.remove(key);
        }
        Ok(AdapterConfig {
            extra: map,
            ..config
        })
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        // Defaults of the fields PEFT always writes, overridden by what a loaded config had.
        for (k, v) in [
            ("bias", json!("none")),
            ("fan_in_fan_out", json!(false)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", json!(true)),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("modules_to_save", Value::Null),
            ("revision", Value::Null),
            ("use_dora", json!(false)),
        ] {
            map.insert(k.into(), v);
        }
        map.extend(self.extra.clone());
        map.insert("peft_type".into(), json!("LORA"));
        map.insert("task_type".into(), json!(self.task_type));
        map.insert("r".into(), json!(self.r));
        map.insert("lora_alpha".into(), json!(self.lora_alpha));
        map.insert("lora_dropout".into(), json!(self.lora_dropout));
        map.insert("target_modules".into(), self.target_modules.to_json());
        map.insert(
            "exclude_modules".into(),
            self.exclude_modules
                .as_ref()
                .map_or(Value::Null, TargetModules::to_json),
        );
        map.insert("use_rslora".into(), json!(self.use_rslora));
        map.insert("rank_pattern".into(), json!(self.rank_pattern));
        map.insert("alpha_pattern".into(), json!(self.alpha_pattern));
        map.insert(
            "base_model_name_or_path".into(),
            json!(self.base_model_name_or_path),
        );
        Value::Object(map)
    }

    /// Whether the adapter applies to the module of this HF name.
    pub fn targets(&self, module: &str) -> Result<bool, PeftError> {
        if let Some(exclude) = &self.exclude_modules
            && exclude.matches(module)?
        {
            return Ok(false);
        }
        self.target_modules.matches(module)
    }

    /// Rank and scale of the adapter on `module`, with `rank_pattern` / `alpha_pattern`
    /// resolved as PEFT does (first key equal to the name or matching `(.*\.)?KEY$`).
    pub fn rank_and_scale(&self, module: &str) -> Result<(usize, f64), PeftError> {
        let r = match pattern_key(self.rank_pattern.keys(), module)? {
            Some(k) => self.rank_pattern[&k],
            None => self.r,
        };
        let alpha = match pattern_key(self.alpha_pattern.keys(), module)? {
            Some(k) => self.alpha_pattern[&k],
            None => self.lora_alpha,
        };
        let scale = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        Ok((r, scale))
    }
}

fn pattern_key<'a>(
    keys: impl Iterator<Item = &'a String>,
    module: &str,
) -> Result<Option<String>, PeftError> {
    for key in keys {
        if key == module {
            return Ok(Some(key.clone()));
        }
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
            .map_err(|e| PeftError::Config(format!("pattern {key:?}: {e}")))?;
        if re.is_match(module) {
            return Ok(Some(key.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_patterns_follow_peft() {
        let text = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {"layers.1.self_attn.q_proj": 4}, "alpha_pattern": {"v_proj": 32},
            "inference_mode": true, "revision": null, "bias": "none", "use_dora": false}"#;
        let c = AdapterConfig::from_json(text, "adapter_config.json").unwrap();
        assert!(c.targets("model.layers.0.self_attn.q_proj").unwrap());
        assert!(!c.targets("model.layers.0.self_attn.k_proj").unwrap());
        assert_eq!(
            c.rank_and_scale("model.layers.0.self_attn.q_proj").unwrap(),
            (8, 2.0)
        );
        assert_eq!(
            c.rank_and_scale("model.layers.1.self_attn.q_proj").unwrap(),
            (4, 4.0)
        );
        assert_eq!(
            c.rank_and_scale("model.layers.1.self_attn.v_proj").unwrap(),
            (8, 4.0)
        );
        let regex = AdapterConfig {
            target_modules: TargetModules::Regex(r".*\.mlp\..*_proj".into()),
            ..c.clone()
        };
        assert!(regex.targets("model.layers.3.mlp.up_proj").unwrap());
        assert!(!regex.targets("model.layers.3.self_attn.q_proj").unwrap());
        // Written back with PEFT's fields, and read again to the same settings.
        let back = AdapterConfig::from_json(&c.to_json().to_string(), "x").unwrap();
        assert_eq!(back.to_json(), c.to_json());
        assert_eq!(
            (back.r, back.lora_alpha, &back.target_modules),
            (c.r, c.lora_alpha, &c.target_modules)
        );
    }

    #[test]
    fn unsupported_options_are_named() {
        for (field, value) in [
            ("use_dora", "true"),
            ("modules_to_save", r#"["lm_head"]"#),
            ("bias", r#""all""#),
        ] {
            let text = format!(
                r#"{{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "{field}": {value}}}"#
            );
            let err = AdapterConfig::from_json(&text, "a/adapter_config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(field) && err.contains("a/adapter_config.json"),
                "{err}"
            );
        }
        let err = AdapterConfig::from_json(r#"{"peft_type": "IA3"}"#, "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("IA3"), "{err}");
    }
}
