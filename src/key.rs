//! State keys: every value an attempt is counted by (an account id, a
//! device fingerprint, an address, a network, a card's code hash) becomes a
//! 64-bit hash, the whole identity of that key in the engine's stores, the
//! decision book and the allowlists. Every layer hashes with this one
//! function, so the same value is the same key wherever it is looked up.

use std::hash::{BuildHasher, Hash};

/// The hasher that turns an attempt's values into state keys ([`key_of`])
/// until [`seed_keys`] is called: a seed written here, public. foldhash, not
/// ahash: on short strings (ids, addresses, fingerprints) it takes 150 fewer
/// instructions an attempt than ahash without AES-NI (BENCHMARKS.md).
pub type KeyHasher = foldhash::fast::FixedState;

pub fn key_hasher() -> KeyHasher {
    foldhash::fast::FixedState::with_seed(0x6b61_6d69_6775_6172)
}

/// The deployment's secret seed, once [`seed_keys`] set it.
static SEEDED: std::sync::OnceLock<foldhash::fast::SeedableRandomState> = std::sync::OnceLock::new();

/// Seeds every state key this process hashes from now on with a secret
/// (`kamiguard` derives it from the code key: [`crate::event::CodeHasher::state_key_seed`]).
///
/// A key's 64-bit hash is its whole identity in the stores. With a seed
/// anyone can read in this file, an attacker who chooses a key's value (a
/// device fingerprint, an IPv6 host part) could compute values that land on
/// one probe sequence, or on a victim's key, offline. With a secret one
/// that needs the secret. The same seed always gives the same keys, so a
/// replay with the same code key decides as before. Call it before any
/// rule set is compiled (allowlists hold key hashes); the first seed stays,
/// and `false` says a different one was asked for later.
pub fn seed_keys(seed: [u64; 2]) -> bool {
    let shared: &'static foldhash::SharedSeed = Box::leak(Box::new(foldhash::SharedSeed::from_u64(seed[0])));
    let state = foldhash::fast::SeedableRandomState::with_seed(seed[1], shared);
    let probe = state.hash_one(0u64);
    SEEDED.get_or_init(|| state).hash_one(0u64) == probe
}

/// Hashes any value into the 64-bit key the stores use.
#[inline]
pub fn key_of<T: Hash + ?Sized>(value: &T) -> u64 {
    match SEEDED.get() {
        Some(seeded) => seeded.hash_one(value),
        None => key_hasher().hash_one(value),
    }
}
