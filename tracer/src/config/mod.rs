//! The agent's configuration file (TOML), validated at start: unknown keys and bad values
//! are rejected with the file, line and field.
use std::{fs, path::Path};

use serde::Deserialize;
use thiserror::Error;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rules naming the services behind processes (first match wins).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceRule>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub amqp: AmqpConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// A message published and not delivered within this many seconds is reported as
    /// stuck or lost.
    #[serde(default = "default_stuck_after")]
    pub stuck_after_seconds: f64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            stuck_after_seconds: default_stuck_after(),
        }
    }
}

fn default_stuck_after() -> f64 {
    300.0
}

/// `service.name` for processes matching every given condition.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    pub name: String,
    /// Executable: its file name (`python3`) or full path (`/usr/bin/python3`).
    pub exe: Option<String>,
    /// A substring of the command line (`shop_api.py`).
    pub cmdline_contains: Option<String>,
    /// A TCP port the process listens on.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Route templates that win over automatic templating: `/orders/{order_id}/files/{file}`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Body bytes kept per message for business rules.
    #[serde(default = "default_body_prefix")]
    pub body_prefix_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            body_prefix_bytes: default_body_prefix(),
        }
    }
}

fn default_body_prefix() -> usize {
    4096
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            });
            invalid(format!("{}{}", at.unwrap_or_default(), e.message()))
        })?;
        for (i, rule) in config.services.iter().enumerate() {
            if rule.exe.is_none() && rule.cmdline_contains.is_none() && rule.port.is_none() {
                return Err(invalid(format!(
                    "[[service]] #{} (name = {:?}) needs at least one of exe, cmdline_contains, port",
                    i + 1,
                    rule.name
                )));
            }
        }
        let stuck_after = config.amqp.stuck_after_seconds;
        if stuck_after.is_nan() || stuck_after <= 0.0 {
            return Err(invalid(
                "amqp.stuck_after_seconds must be a positive number of seconds".into(),
            ));
        }
        for route in &config.http.routes {
            if !route.starts_with('/') {
                return Err(invalid(format!(
                    "http.routes: {route:?} must start with '/'"
                )));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let config = Config::parse(
            r#"
[[service]]
name = "shop-api"
cmdline_contains = "shop_api.py"

[http]
routes = ["/orders/{order_id}"]
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(config.services[0].name, "shop-api");
        assert_eq!(config.http.body_prefix_bytes, 4096);
    }

    #[test]
    fn unknown_field_is_rejected_with_its_line() {
        let error = Config::parse("[http]\nroutes = []\nbody_prefix = 3\n", "agent.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("agent.toml")
                && error.contains("line 3")
                && error.contains("body_prefix"),
            "{error}"
        );
    }

    #[test]
    fn service_rule_without_condition_is_rejected() {
        let error = Config::parse("[[service]]\nname = \"x\"\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs at least one"), "{error}");
    }
}
