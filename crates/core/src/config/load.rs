//! Reading a configuration file: syntax, types, unknown keys, validation, secrets.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::Config;
use super::path::{KeyPath, line_of_offset, locate};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `cameras[2].url`, or `(document)` for a syntax error.
    pub path: String,
    /// 1-based line in the file, when it could be found.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one file; `Display` prints one per line as `FILE:LINE: PATH: MESSAGE`.
#[derive(Clone, Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.line {
                Some(l) => write!(f, "{}:{}: {}: {}", self.file, l, e.path, e.message)?,
                None => write!(f, "{}: {}: {}", self.file, e.path, e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where `XUELIANG_*` secrets come from; injected so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// No environment at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads and validates `path`. Relative `*_file` paths are taken from the file's directory.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError {
            path: "(document)".into(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, &file, base, env)
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn load_str(
    text: &str,
    file: &str,
    base_dir: &Path,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_owned(),
        errors,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        fail(vec![ConfigError {
            path: "(document)".into(),
            line: e.span().map(|s| line_of_offset(text, s.start)),
            message: format!("TOML syntax: {}", e.message().trim()),
        }])
    })?;
    let mut unknown: Vec<KeyPath> = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(KeyPath::from_ignored(&p));
    let ignoring = serde_ignored::Deserializer::new(de, &mut on_unknown);
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(ignoring);
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut cfg = match parsed {
        Ok(c) => Some(c),
        Err(e) => {
            let path = KeyPath::parse(&e.path().to_string());
            let line = e
                .inner()
                .span()
                .map(|s| line_of_offset(text, s.start))
                .or_else(|| locate(text, &path));
            errors.push(ConfigError {
                path: path.to_string(),
                line,
                message: e.inner().message().trim().to_owned(),
            });
            None
        }
    };
    for p in unknown {
        errors.push(ConfigError {
            line: locate(text, &p),
            path: p.to_string(),
            message: "unknown key".into(),
        });
    }
    if let Some(cfg) = cfg.as_mut() {
        let mut problems = Vec::new();
        super::validate::validate(cfg, env, base_dir, &mut problems);
        for (p, message) in problems {
            errors.push(ConfigError {
                line: locate(text, &p),
                path: p.to_string(),
                message,
            });
        }
    }
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    match cfg {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(fail(errors)),
    }
}
