//! The `[amqp]` section of the agent's configuration.
use serde::Deserialize;

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

impl AmqpConfig {
    pub fn validate(&self) -> Result<(), String> {
        let stuck_after = self.stuck_after_seconds;
        if stuck_after.is_nan() || stuck_after <= 0.0 {
            return Err("amqp.stuck_after_seconds must be a positive number of seconds".into());
        }
        Ok(())
    }
}
