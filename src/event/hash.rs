//! Keyed hashing of raw card codes (HMAC-SHA256), done once on arrival.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EventError;

/// Environment variable that holds the code-hash key; it wins over the config file.
pub const CODE_KEY_ENV: &str = "KAMIGUARD_CODE_KEY";

/// Hashes raw codes with the key the redemption service shares with us. The
/// keyed MAC state is built once and cloned per code, which skips re-deriving
/// the inner and outer pads for every event.
#[derive(Clone)]
pub struct CodeHasher {
    mac: Option<Hmac<Sha256>>,
}

impl CodeHasher {
    /// A hasher with no key: events carrying a raw code are refused.
    pub fn without_key() -> CodeHasher {
        CodeHasher { mac: None }
    }

    pub fn with_key(key: &[u8]) -> CodeHasher {
        CodeHasher {
            // HMAC accepts keys of any length, so this cannot fail.
            mac: Hmac::<Sha256>::new_from_slice(key).ok(),
        }
    }

    /// A hasher with `key` when one is given (the config resolves it from
    /// `KAMIGUARD_CODE_KEY`, its `_FILE` or `code_key`).
    pub fn from_key(key: Option<&str>) -> CodeHasher {
        match key.filter(|k| !k.is_empty()) {
            Some(key) => CodeHasher::with_key(key.as_bytes()),
            None => CodeHasher::without_key(),
        }
    }

    pub fn has_key(&self) -> bool {
        self.mac.is_some()
    }

    /// Lower-case hex HMAC-SHA256 of `code`.
    pub fn hash(&self, code: &str) -> Result<Box<str>, EventError> {
        self.digest(code.as_bytes()).ok_or(EventError::NoCodeKey)
    }

    /// The secret seed of state keys ([`crate::key::seed_keys`]): derived
    /// from the code key, so every instance of a deployment, and a replay
    /// with the same key, hashes keys alike; `None` without a key.
    pub fn state_key_seed(&self) -> Option<[u64; 2]> {
        let mut mac = self.mac.clone()?;
        mac.update(b"kamiguard state key seed v1");
        let bytes = mac.finalize().into_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Some([word(0), word(1)])
    }

    /// Lower-case hex HMAC-SHA256 of any bytes under the code key (a dead
    /// letter's body that cannot be shown); `None` without a key.
    pub fn digest(&self, bytes: &[u8]) -> Option<Box<str>> {
        let mut mac = self.mac.clone()?;
        mac.update(bytes);
        Some(hex::encode(mac.finalize().into_bytes()).into_boxed_str())
    }
}

impl std::fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CodeHasher").field("has_key", &self.has_key()).finish()
    }
}
