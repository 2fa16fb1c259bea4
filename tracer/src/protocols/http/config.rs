//! The `[http]` section of the agent's configuration (HTTP/1 and HTTP/2).
use serde::Deserialize;

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

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.routes.iter().find(|route| !route.starts_with('/')) {
            Some(route) => Err(format!("http.routes: {route:?} must start with '/'")),
            None => Ok(()),
        }
    }
}
