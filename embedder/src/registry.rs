//! The set of models a server serves, from a models file (YAML) or the single default model.
//!
//! ```yaml
//! models:
//!   - name: all-MiniLM-L6-v2
//!     path: models/all-MiniLM-L6-v2   # relative paths are resolved against the working directory
//!     default: true
//!   - name: all-MiniLM-L6-v2-int8
//!     path: models/all-MiniLM-L6-v2
//!     quantization: int8
//! ```
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelError, ModelOptions, Pooling, Quantization};

/// The models file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub models: Vec<ModelEntry>,
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    /// A sentence-transformers directory.
    pub path: PathBuf,
    /// `mean`, `cls` or `max`; overrides 1_Pooling/config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    /// Overrides sentence_bert_config.json's max_seq_length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Activation dtype; only `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// `none` (default), `int8` (our INT8 kernel) or `q8_0` (candle's ggml blocks); both
    /// quantise the linear layers at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default = "yes")]
    pub normalize: bool,
    #[serde(default)]
    pub default: bool,
}

fn yes() -> bool {
    true
}

impl ModelEntry {
    /// An f32 entry with the directory's own settings.
    pub fn new(name: &str, path: &Path) -> Self {
        Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            pooling: None,
            max_tokens: None,
            dtype: None,
            quantization: None,
            normalize: true,
            default: false,
        }
    }

    /// Checks the enum-like fields and turns them into load options.
    pub fn options(&self) -> Result<ModelOptions, ModelError> {
        if let Some(dtype) = &self.dtype {
            if !dtype.trim().eq_ignore_ascii_case("f32") {
                return Err(ModelError::UnknownDtype(dtype.clone()));
            }
        }
        Ok(ModelOptions {
            pooling: self
                .pooling
                .as_deref()
                .map(str::parse::<Pooling>)
                .transpose()?,
            max_tokens: self.max_tokens,
            quantization: self
                .quantization
                .as_deref()
                .map(str::parse::<Quantization>)
                .transpose()?
                .unwrap_or_default(),
            normalize: self.normalize,
        })
    }
}

impl ModelsConfig {
    pub fn parse(yaml: &str, origin: &Path) -> Result<Self, ModelError> {
        serde_yaml::from_str(yaml).map_err(|source| ModelError::BadYaml {
            path: origin.to_path_buf(),
            source,
        })
    }

    /// Structural checks that need no file access: names, defaults and option values.
    /// Returns the index of the default model.
    pub fn validate(&self) -> Result<usize, ModelError> {
        if self.models.is_empty() {
            return Err(ModelError::NoModels);
        }
        let mut seen = HashSet::new();
        for m in &self.models {
            if m.name.trim().is_empty() {
                return Err(ModelError::EmptyName);
            }
            if !seen.insert(m.name.as_str()) {
                return Err(ModelError::DuplicateName(m.name.clone()));
            }
            m.options()?;
        }
        let defaults: Vec<usize> = (0..self.models.len())
            .filter(|&i| self.models[i].default)
            .collect();
        match defaults.as_slice() {
            [] => Ok(0),
            [one] => Ok(*one),
            many => Err(ModelError::MultipleDefaults(
                many.iter().map(|&i| self.models[i].name.clone()).collect(),
            )),
        }
    }
}

/// The loaded models, in file order, with one default.
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    models: Vec<Arc<Model>>,
    default: usize,
}

impl ModelRegistry {
    /// Reads and loads a models file.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: path.to_path_buf(),
                }
            } else {
                ModelError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_config(ModelsConfig::parse(&text, path)?)
    }

    /// Validates the whole config first (so a typo in the last entry fails before any model
    /// loads), then loads every model.
    pub fn from_config(cfg: ModelsConfig) -> Result<Self, ModelError> {
        let default = cfg.validate()?;
        let models = cfg
            .models
            .iter()
            .map(|m| Ok(Arc::new(Model::load(&m.name, &m.path, &m.options()?)?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self { models, default })
    }

    /// The no-models-file default: one f32 model with the directory's own settings.
    pub fn single(name: &str, dir: &Path) -> Result<Self, ModelError> {
        Self::from_config(ModelsConfig {
            models: vec![ModelEntry::new(name, dir)],
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models.iter().find(|m| m.name() == name).cloned()
    }

    pub fn default_model(&self) -> Arc<Model> {
        self.models[self.default].clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name().to_string()).collect()
    }

    pub fn models(&self) -> Vec<Arc<Model>> {
        self.models.clone()
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ModelsConfig, ModelError> {
        ModelsConfig::parse(yaml, Path::new("models.yaml"))
    }

    #[test]
    fn defaults_are_f32_normalised_and_first_is_default() {
        let cfg = parse("models:\n  - name: a\n    path: /x\n  - name: b\n    path: /y\n").unwrap();
        assert_eq!(cfg.validate().unwrap(), 0);
        let opts = cfg.models[0].options().unwrap();
        assert_eq!(opts, ModelOptions::default());
    }

    #[test]
    fn explicit_default_and_overrides_are_read() {
        let cfg = parse(
            "models:\n  - name: a\n    path: /x\n  - name: b\n    path: /x\n    default: true\n    \
             quantization: q8_0\n    pooling: cls\n    max_tokens: 128\n    normalize: false\n    dtype: f32\n",
        )
        .unwrap();
        assert_eq!(cfg.validate().unwrap(), 1);
        let opts = cfg.models[1].options().unwrap();
        assert_eq!(opts.quantization, Quantization::Q8_0);
        assert_eq!(opts.pooling, Some(Pooling::Cls));
        assert_eq!(opts.max_tokens, Some(128));
        assert!(!opts.normalize);
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let cfg = parse("models:\n  - {name: a, path: /x}\n  - {name: a, path: /y}\n").unwrap();
        assert!(matches!(cfg.validate(), Err(ModelError::DuplicateName(n)) if n == "a"));
    }

    #[test]
    fn unknown_pooling_quantization_and_dtype_are_rejected() {
        let bad_pool = parse("models:\n  - {name: a, path: /x, pooling: avg}\n").unwrap();
        assert!(matches!(bad_pool.validate(), Err(ModelError::UnknownPooling(p)) if p == "avg"));
        let bad_q = parse("models:\n  - {name: a, path: /x, quantization: q4}\n").unwrap();
        assert!(matches!(
            bad_q.validate(),
            Err(ModelError::UnknownQuantization(_))
        ));
        let bad_d = parse("models:\n  - {name: a, path: /x, dtype: f16}\n").unwrap();
        assert!(matches!(bad_d.validate(), Err(ModelError::UnknownDtype(_))));
    }

    #[test]
    fn two_defaults_and_empty_lists_are_rejected() {
        let two = parse(
            "models:\n  - {name: a, path: /x, default: true}\n  - {name: b, path: /x, default: true}\n",
        )
        .unwrap();
        assert!(matches!(two.validate(), Err(ModelError::MultipleDefaults(v)) if v.len() == 2));
        assert!(matches!(
            parse("models: []\n").unwrap().validate(),
            Err(ModelError::NoModels)
        ));
    }

    #[test]
    fn bad_yaml_and_unknown_fields_are_typed_errors() {
        assert!(matches!(
            parse("models: [name: "),
            Err(ModelError::BadYaml { .. })
        ));
        assert!(matches!(
            parse("models:\n  - {name: a, path: /x, pooling_mode: mean}\n"),
            Err(ModelError::BadYaml { .. })
        ));
    }

    #[test]
    fn missing_models_file_is_reported_by_path() {
        let err = ModelRegistry::from_file(Path::new("/nonexistent/models.yaml")).unwrap_err();
        assert!(matches!(err, ModelError::MissingFile { .. }));
        assert!(err.to_string().contains("/nonexistent/models.yaml"));
    }

    #[test]
    fn missing_model_dir_is_reported_with_make_model_hint() {
        let err = ModelRegistry::single("m", Path::new("/nonexistent/model")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/model/config.json"), "{msg}");
        assert!(msg.contains("make model"), "{msg}");
    }
}
