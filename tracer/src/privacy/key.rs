//! The agent's HMAC key: order id → trace id (the same on every agent that shares the
//! key), and pseudonyms for order and user ids. Two keys come from the one secret: order
//! ids are keyed with the secret itself (DESIGN.md's trace id derivation), user ids with
//! HMAC(secret, "tracer user pseudonym v1"), so an order's and a user's pseudonyms
//! cannot be joined by anyone who does not hold the secret.
use hmac::{Hmac, Mac};
use opentelemetry::trace::{SpanId, TraceId};
use sha2::Sha256;
use thiserror::Error;

use crate::config::PrivacyConfig;

/// Used when no key is configured: traces still group by order on every agent, but the
/// pseudonyms are not secret. Configure your own key for pseudonymisation.
const DEFAULT_KEY: &[u8] = b"tracer-default-order-key-v1";
pub const KEY_ENV: &str = "TRACER_HMAC_KEY";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read the HMAC key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the HMAC key file {0} is empty")]
    Empty(String),
    #[error("pseudonymise_ids is on but no HMAC key is configured (set privacy.hmac_key_file or {KEY_ENV})")]
    Missing,
}

/// Label of the user key's derivation from the secret.
const USER_KEY_LABEL: &[u8] = b"tracer user pseudonym v1";

#[derive(Clone)]
pub struct IdKey {
    /// Keyed once: each id then costs the message's blocks, not the key's two as well.
    key: Hmac<Sha256>,
    user_key: Hmac<Sha256>,
    /// False for the built-in default key.
    secret: bool,
}

impl std::fmt::Debug for IdKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdKey")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl IdKey {
    /// From `privacy.hmac_key_file`, else `TRACER_HMAC_KEY`, else the built-in default
    /// (refused when pseudonymisation is on).
    pub fn load(config: &PrivacyConfig) -> Result<Self, KeyError> {
        let key = match &config.hmac_key_file {
            Some(path) => {
                let raw = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                let trimmed = raw.trim_ascii().to_vec();
                if trimmed.is_empty() {
                    return Err(KeyError::Empty(path.clone()));
                }
                Some(trimmed)
            }
            None => std::env::var(KEY_ENV)
                .ok()
                .filter(|k| !k.is_empty())
                .map(String::into_bytes),
        };
        match key {
            Some(key) => Ok(Self::new(key, true)),
            None if config.pseudonymise_ids == Some(true) => Err(KeyError::Missing),
            None => Ok(Self::new(DEFAULT_KEY.to_vec(), false)),
        }
    }

    pub fn from_bytes(key: &[u8]) -> Self {
        Self::new(key.to_vec(), true)
    }

    fn new(key: Vec<u8>, secret: bool) -> Self {
        let key = keyed(&key);
        let user_key = keyed(&hmac(&key, USER_KEY_LABEL));
        Self {
            key,
            user_key,
            secret,
        }
    }

    /// Whether the key was configured (pseudonyms made with the built-in key are not secret).
    pub fn is_secret(&self) -> bool {
        self.secret
    }

    fn mac(&self, id: &str) -> [u8; 32] {
        hmac(&self.key, id.as_bytes())
    }

    /// The order's trace: the first 16 bytes of HMAC-SHA256(key, order id).
    pub fn order_trace(&self, order_id: &str) -> TraceId {
        TraceId::from_bytes(self.mac(order_id)[..16].try_into().expect("16 bytes"))
    }

    /// A span id standing for "the order" inside its trace, for links from other traces.
    pub fn order_anchor(&self, order_id: &str) -> SpanId {
        SpanId::from_bytes(self.mac(order_id)[16..24].try_into().expect("8 bytes"))
    }

    /// Both of the above from one HMAC.
    pub fn order_trace_and_anchor(&self, order_id: &str) -> (TraceId, SpanId) {
        let mac = self.mac(order_id);
        (
            TraceId::from_bytes(mac[..16].try_into().expect("16 bytes")),
            SpanId::from_bytes(mac[16..24].try_into().expect("8 bytes")),
        )
    }

    /// The pseudonym exported instead of an order id: its trace id as hex, so support
    /// staff can paste it into Jaeger directly.
    pub fn pseudonym(&self, order_id: &str) -> String {
        hex(&self.mac(order_id)[..16])
    }

    /// The pseudonym exported instead of a user id (keyed apart from orders).
    pub fn user_pseudonym(&self, user_id: &str) -> String {
        hex(&hmac(&self.user_key, user_id.as_bytes())[..16])
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn hmac(key: &Hmac<Sha256>, data: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_the_documented_hmac_derivation() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let key = IdKey::from_bytes(b"Jefe");
        assert_eq!(
            key.order_trace("what do ya want for nothing?").to_string(),
            "5bdcc146bf60754e6a042426089575c7"
        );
        assert_eq!(
            key.pseudonym("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
        assert_eq!(
            key.order_anchor("what do ya want for nothing?").to_string(),
            "5a003f089d273983"
        );
        // The user key is HMAC(secret, label); a user's pseudonym is not its order twin.
        let user = key.user_pseudonym("what do ya want for nothing?");
        assert_eq!(
            user,
            hex(&hmac(
                &keyed(&hmac(&keyed(b"Jefe"), USER_KEY_LABEL)),
                b"what do ya want for nothing?"
            )[..16])
        );
        assert_ne!(user, key.pseudonym("what do ya want for nothing?"));
    }

    #[test]
    fn pseudonymisation_without_a_key_is_refused() {
        std::env::remove_var(KEY_ENV);
        let config = PrivacyConfig {
            pseudonymise_ids: Some(true),
            ..PrivacyConfig::default()
        };
        assert!(matches!(IdKey::load(&config), Err(KeyError::Missing)));
        let debug = format!("{:?}", IdKey::from_bytes(b"super-secret"));
        assert!(!debug.contains("super-secret"));
    }
}
