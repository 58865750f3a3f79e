//! Post-quantum signatures (ML-DSA-65, FIPS 204) and the hashes everything is addressed by.
//!
//! Every signature in citychain is domain-separated: the signed bytes start with an ASCII
//! tag and a zero byte (`citychain/tx/v1\0…`, `citychain/poh/v1\0…`), so a signature made
//! for one purpose can never be replayed as another.
//!
//! [`vault`] holds the envelope-encryption primitives: per-batch AES-256-GCM data keys,
//! wrapped with ML-KEM-768 (FIPS 203) for a key holder. [`session`] holds the session keys
//! nodes authenticate their requests to each other with after one ML-KEM-768 exchange.

mod keys;
mod merkle;
mod primitives;
pub mod session;
pub mod vault;

pub use keys::{KeyFile, SigningKey, address_of, verify};
pub use merkle::merkle_root;
pub use primitives::{CryptoError, Hash32, PUBLIC_KEY_LEN, Result, SIGNATURE_LEN, hash, tagged};
