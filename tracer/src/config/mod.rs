//! The agent's configuration file (TOML), validated at start: unknown keys and bad values
//! are rejected with the file, line and field.
mod journey;

use std::{fs, path::Path};

pub use journey::{
    glob_match, ConsistencyRule, Glob, JourneyConfig, SlaRule, StatusAt, StatusRule,
};
// Protocol sections are owned by their protocol's folder.
pub use crate::protocols::{amqp::AmqpConfig, http::HttpConfig};

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
    #[serde(default)]
    pub extract: ExtractConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub sampling: SamplingConfig,
    #[serde(default)]
    pub journey: JourneyConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
}

/// Kubernetes metadata from the node's kubelet log directories (no API access).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `<namespace>_<pod>_<uid>/<container>/` per pod.
    #[serde(default = "pod_log_dir")]
    pub pod_log_dir: std::path::PathBuf,
    /// `<pod>_<namespace>_<container>-<container id>.log` per container.
    #[serde(default = "container_log_dir")]
    pub container_log_dir: std::path::PathBuf,
}

fn pod_log_dir() -> std::path::PathBuf {
    crate::export::LogDirs::default().pods
}

fn container_log_dir() -> std::path::PathBuf {
    crate::export::LogDirs::default().containers
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            pod_log_dir: pod_log_dir(),
            container_log_dir: container_log_dir(),
        }
    }
}

impl KubernetesConfig {
    pub fn log_dirs(&self) -> crate::export::LogDirs {
        crate::export::LogDirs {
            pods: self.pod_log_dir.clone(),
            containers: self.container_log_dir.clone(),
        }
    }
}

/// Encrypted connections: plaintext from uprobes on TLS libraries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Hook TLS libraries (OpenSSL `libssl`, Node, .NET, Mono BTLS) with uprobes.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// More file names to hook as OpenSSL (programs linking it statically under other
    /// names); executables exporting `SSL_read`/`SSL_write` are found without this.
    #[serde(default)]
    pub extra_libraries: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            extra_libraries: Vec::new(),
        }
    }
}

impl TlsConfig {
    /// The options for the capture side; `--no-tls` on the command line wins.
    pub fn options(&self, no_tls: bool) -> Self {
        Self {
            enabled: self.enabled && !no_tls,
            ..self.clone()
        }
    }
}

/// Business attributes from exchanges.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// Also apply the built-in rules (order_id/orderId/order-id, /orders/{id}, and the same
    /// for user ids) after the configured ones.
    #[serde(default = "yes")]
    pub defaults: bool,
    #[serde(default, rename = "rule")]
    pub rules: Vec<ExtractRule>,
    /// Errors a service reports inside a body rather than by failing the exchange.
    #[serde(default, rename = "error")]
    pub errors: Vec<ErrorRule>,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            defaults: true,
            rules: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// An error reported inside a message or response (`{"error": "model rejected"}`): the
/// span of the side that wrote it fails, with the value as its status message.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// A body source (`amqp_body`, `http_response_body`, …) or any source a rule can read.
    pub source: toml::Spanned<String>,
    pub name: Option<String>,
    pub pointer: Option<String>,
    pub key: Option<String>,
    /// Only spans of this kind: the writer of the body (`producer` for a message,
    /// `server` for a response). Default: every span that carries it.
    pub kind: Option<String>,
}

impl ErrorRule {
    /// The same lookup as an extraction rule (its attribute is never exported).
    pub fn as_extract_rule(&self) -> ExtractRule {
        ExtractRule {
            attribute: "app.error".into(),
            source: self.source.clone(),
            template: None,
            name: self.name.clone(),
            pointer: self.pointer.clone(),
            key: self.key.clone(),
        }
    }
}

/// One extraction rule: where to look, and how to find the value there.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractRule {
    /// `app.order.id`, `app.user.id`, `app.order.status`, or any other `app.*` name.
    pub attribute: String,
    /// An extraction source a protocol offers: `http_path`, `http_query`, `http_header`,
    /// `http_request_body`, `http_response_body` (HTTP/1 and HTTP/2), `amqp_routing_key`,
    /// `amqp_header`, `amqp_message_id`, `amqp_correlation_id`, `amqp_body`,
    /// `postgres_param`, `grpc_request_field`, `grpc_response_field`.
    pub source: toml::Spanned<String>,
    /// For paths and routing keys: `/orders/{order_id}/files`, `order.{id}.submitted`.
    pub template: Option<String>,
    /// For headers and query parameters.
    pub name: Option<String>,
    /// For JSON bodies: a JSON pointer (`/order/id`).
    pub pointer: Option<String>,
    /// For JSON or form bodies: a key name, matched at any depth.
    pub key: Option<String>,
}

/// What leaves the agent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Replace order and user ids by their keyed pseudonyms everywhere in exported spans,
    /// logs and the journey store. Default: on whenever a key is configured.
    #[serde(default)]
    pub pseudonymise_ids: Option<bool>,
    /// File holding the HMAC key (else the TRACER_HMAC_KEY environment variable). The same
    /// key on every agent puts the same order in the same trace.
    pub hmac_key_file: Option<String>,
    /// Mask e-mail addresses, phone numbers, card numbers and secrets in the free text
    /// that is exported (the second line: the allow-list comes first).
    #[serde(default = "yes")]
    pub mask_personal_data: bool,
    /// Query keys whose values are exported (masked and pseudonymised); every other
    /// query value is exported as `REDACTED`.
    #[serde(default = "default_allowed_query_keys")]
    pub allowed_query_keys: Vec<String>,
    /// Executables (file name or comm) never traced: they carry staff credentials.
    #[serde(default = "default_untraced")]
    pub untraced_executables: Vec<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            pseudonymise_ids: None,
            hmac_key_file: None,
            mask_personal_data: true,
            allowed_query_keys: default_allowed_query_keys(),
            untraced_executables: default_untraced(),
        }
    }
}

fn default_allowed_query_keys() -> Vec<String> {
    [
        "page", "per_page", "limit", "offset", "sort", "lang", "format",
    ]
    .map(String::from)
    .to_vec()
}

/// The Jaeger UI's auth proxy and Jaeger itself: their traffic is staff sessions.
fn default_untraced() -> Vec<String> {
    [
        "oauth2-proxy",
        "jaeger",
        "jaeger-query",
        "jaeger-all-in-one",
        "jaeger-collector",
    ]
    .map(String::from)
    .to_vec()
}

impl PrivacyConfig {
    /// Pseudonymisation as configured, else on when a key is configured.
    pub fn pseudonymise(&self, key_configured: bool) -> bool {
        self.pseudonymise_ids.unwrap_or(key_configured)
    }
}

/// Per-trace sampling, identical on every agent (keyed by the trace id).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Share of successful traces without an order kept.
    #[serde(default = "default_success_ratio")]
    pub success_ratio: f64,
    /// Share of order traces kept.
    #[serde(default = "one")]
    pub order_ratio: f64,
    /// Spans at least this slow are always kept.
    #[serde(default = "default_slow_ms")]
    pub slow_threshold_ms: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            success_ratio: default_success_ratio(),
            order_ratio: 1.0,
            slow_threshold_ms: default_slow_ms(),
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

fn default_success_ratio() -> f64 {
    0.1
}

fn default_slow_ms() -> u64 {
    2000
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
        config.http.validate().map_err(invalid)?;
        config.amqp.validate().map_err(invalid)?;
        for (name, ratio) in [
            ("success_ratio", config.sampling.success_ratio),
            ("order_ratio", config.sampling.order_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(invalid(format!(
                    "sampling.{name} must be between 0 and 1, not {ratio}"
                )));
            }
        }
        if let Err(e) = crate::extract::Extractor::new(&config.extract) {
            let at = match &e {
                crate::extract::ExtractorError::Rule { index, .. } => {
                    config.extract.rules[index - 1].source.span().start
                }
                crate::extract::ExtractorError::Error { index, .. } => {
                    config.extract.errors[index - 1].source.span().start
                }
            };
            let line = text[..at.min(text.len())].matches('\n').count() + 1;
            return Err(invalid(format!("line {line}: {e}")));
        }
        if let Err(e) = crate::journey::StoreLocation::parse(&config.journey.store) {
            return Err(invalid(format!("journey.store: {e}")));
        }
        const KINDS: [&str; 5] = ["server", "client", "producer", "consumer", "internal"];
        let kinds = config
            .journey
            .status_rules
            .iter()
            .map(|r| ("status", &r.status, &r.kind))
            .enumerate()
            .chain(
                config
                    .journey
                    .consistency
                    .iter()
                    .map(|r| ("consistency", &r.status, &r.kind))
                    .enumerate(),
            );
        for (i, (table, status, kind)) in kinds {
            if let Some(kind) = kind.as_ref().filter(|k| !KINDS.contains(&k.as_str())) {
                return Err(invalid(format!(
                    "[[journey.{table}]] #{} (status = {status:?}): kind {kind:?} is not one of server, client, producer, consumer, internal",
                    i + 1,
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

    #[test]
    fn consistency_rules_are_read_and_a_bad_kind_is_rejected() {
        let config = Config::parse(
            "[[journey.consistency]]\nstatus = \"PRICE_CALCULATED\"\nafter = \"deliver crm.prices\"\nkind = \"consumer\"\n",
            "a.toml",
        )
        .unwrap();
        let rule = &config.journey.consistency[0];
        assert_eq!(
            (rule.after.as_str(), rule.grace),
            ("deliver crm.prices", std::time::Duration::from_secs(30))
        );
        let error = Config::parse(
            "[[journey.consistency]]\nstatus = \"X\"\nafter = \"y\"\nkind = \"reader\"\n",
            "a.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("[[journey.consistency]] #1") && error.contains("\"reader\""),
            "{error}"
        );
    }
}
