//! Named endpoints from configuration: a TOML file, overridden by the environment, overridden by
//! the command line.
//!
//! A service refers to its endpoints by name (`orders`, `events`) and the deployment decides the
//! transport:
//!
//! ```toml
//! [endpoints]
//! orders = "tcp://127.0.0.1:7000"
//! events = "mailslot://events"
//! ```
//!
//! Precedence, highest first:
//! 1. overrides given with [`Config::set_override`], typically from `--endpoint orders=shm://orders`;
//! 2. the environment variable `DUCTWORK_ENDPOINT_<NAME>` (name upper-cased, `-` and `.` as `_`),
//!    e.g. `DUCTWORK_ENDPOINT_ORDERS=unix:///run/orders.sock`;
//! 3. the `[endpoints]` table of the file (or of another table named with
//!    [`Config::from_toml_section`]).
//!
//! ```
//! let cfg = ductwork::Config::from_toml("[endpoints]\norders = \"tcp://127.0.0.1:7000\"").unwrap();
//! assert_eq!(cfg.endpoint("orders").unwrap().scheme(), "tcp");
//! ```

use crate::Endpoint;
use std::{collections::BTreeMap, fmt, path::Path};

/// A configuration problem: where it is and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    origin: String,
    message: String,
}

impl ConfigError {
    fn new(origin: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Named endpoints, with environment and command-line overrides. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Config {
    origin: String,
    file: BTreeMap<String, String>,
    overrides: BTreeMap<String, String>,
}

/// The environment variable that overrides endpoint `name`.
pub fn env_var_for(name: &str) -> String {
    let mut v = String::from("DUCTWORK_ENDPOINT_");
    v.extend(name.chars().map(|c| match c {
        '-' | '.' => '_',
        c => c.to_ascii_uppercase(),
    }));
    v
}

impl Config {
    /// An empty configuration (only environment and overrides apply).
    pub fn new() -> Self {
        Config {
            origin: "configuration".into(),
            ..Default::default()
        }
    }

    /// Parses the `[endpoints]` table of a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_section(text, "endpoints", "configuration")
    }

    /// Parses the table `section` of a TOML document; `origin` names the document in errors.
    pub fn from_toml_section(
        text: &str,
        section: &str,
        origin: &str,
    ) -> Result<Config, ConfigError> {
        let doc: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new(origin, format!("invalid TOML: {e}")))?;
        let mut file = BTreeMap::new();
        if let Some(table) = doc.get(section) {
            let table = table.as_table().ok_or_else(|| {
                ConfigError::new(
                    origin,
                    format!("`{section}` must be a table of name = \"endpoint\""),
                )
            })?;
            for (name, value) in table {
                let s = value.as_str().ok_or_else(|| {
                    ConfigError::new(
                        origin,
                        format!("{section}.{name} must be an endpoint string"),
                    )
                })?;
                Endpoint::parse(s)
                    .map_err(|e| ConfigError::new(origin, format!("{section}.{name}: {e}")))?;
                file.insert(name.clone(), s.to_string());
            }
        }
        Ok(Config {
            origin: origin.into(),
            file,
            overrides: BTreeMap::new(),
        })
    }

    /// Reads and parses the `[endpoints]` table of a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
        Config::from_toml_section(&text, "endpoints", &origin)
    }

    /// Overrides endpoint `name` (highest precedence).
    pub fn set_override(&mut self, name: &str, endpoint: &str) -> Result<(), ConfigError> {
        Endpoint::parse(endpoint)
            .map_err(|e| ConfigError::new("command line", format!("{name}: {e}")))?;
        self.overrides
            .insert(name.to_string(), endpoint.to_string());
        Ok(())
    }

    /// Applies `NAME=ENDPOINT` arguments, e.g. from a repeated `--endpoint` flag.
    pub fn apply_args<I, S>(&mut self, args: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in args {
            let a = a.as_ref();
            let (name, ep) = a.split_once('=').ok_or_else(|| {
                ConfigError::new("command line", format!("`{a}` is not NAME=ENDPOINT"))
            })?;
            self.set_override(name.trim(), ep.trim())?;
        }
        Ok(())
    }

    /// The endpoint called `name`, after overrides and the environment.
    pub fn endpoint(&self, name: &str) -> Result<Endpoint, ConfigError> {
        let (origin, text) = if let Some(o) = self.overrides.get(name) {
            ("command line".to_string(), o.clone())
        } else if let Ok(v) = std::env::var(env_var_for(name)) {
            (env_var_for(name), v)
        } else if let Some(f) = self.file.get(name) {
            (self.origin.clone(), f.clone())
        } else {
            return Err(ConfigError::new(
                &self.origin,
                format!(
                    "no endpoint `{name}` (set it under [endpoints], with {} or --endpoint {name}=...)",
                    env_var_for(name)
                ),
            ));
        };
        Endpoint::parse(&text).map_err(|e| ConfigError::new(origin, e.to_string()))
    }

    /// The names defined in the file and the overrides.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .file
            .keys()
            .chain(self.overrides.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
        [endpoints]
        orders = "tcp://127.0.0.1:7000"
        cfg-test-env = "unix:///tmp/a.sock"
    "#;

    #[test]
    fn file_env_and_override_precedence() {
        let mut c = Config::from_toml(DOC).unwrap();
        assert_eq!(
            c.endpoint("orders").unwrap().to_string(),
            "tcp://127.0.0.1:7000"
        );
        // The variable name is unique to this test, so parallel tests do not interfere.
        std::env::set_var(env_var_for("cfg-test-env"), "shm://from-env");
        assert_eq!(
            c.endpoint("cfg-test-env").unwrap().to_string(),
            "shm://from-env"
        );
        c.apply_args(["cfg-test-env=pipe://from-cli"]).unwrap();
        assert_eq!(
            c.endpoint("cfg-test-env").unwrap().to_string(),
            "pipe://from-cli"
        );
        std::env::remove_var(env_var_for("cfg-test-env"));
        assert_eq!(
            c.names().collect::<Vec<_>>(),
            vec!["cfg-test-env", "orders"]
        );
    }

    #[test]
    fn errors_say_where() {
        // A malformed endpoint (an unknown but well-formed scheme is the transports' call).
        let e = Config::from_toml_section("[endpoints]\nx = \"ftp:/a\"", "endpoints", "svc.toml")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("svc.toml: endpoints.x: ftp:/a"),
            "{e}"
        );
        let e = Config::from_toml("[endpoints]\nx = 3").unwrap_err();
        assert!(e.to_string().contains("must be an endpoint string"), "{e}");
        let e = Config::new().endpoint("nope").unwrap_err();
        assert!(e.to_string().contains("DUCTWORK_ENDPOINT_NOPE"), "{e}");
        assert!(Config::new().apply_args(["novalue"]).is_err());
        assert_eq!(env_var_for("a-b.c"), "DUCTWORK_ENDPOINT_A_B_C");
    }
}
