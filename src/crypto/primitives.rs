//! The types and functions every part of `crypto` builds on: digests, sizes, errors, and
//! domain-separated signed bytes.

/// A 32-byte BLAKE3 digest, used for transaction ids, batch ids and content hashes.
pub type Hash32 = [u8; 32];

/// ML-DSA-65 public key length in bytes (FIPS 204).
pub const PUBLIC_KEY_LEN: usize = 1952;
/// ML-DSA-65 signature length in bytes (FIPS 204).
pub const SIGNATURE_LEN: usize = 3309;

/// Errors from key handling and signature checks.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the public key is not a valid ML-DSA-65 key")]
    BadPublicKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the session offer is not an ML-KEM-768 encapsulation key")]
    BadSessionOffer,
    #[error("key generation or signing failed in the crypto library")]
    Library,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, CryptoError>;

/// Overwrites secret bytes with zeros in a way the compiler keeps (a volatile write per
/// byte, so it is not optimized away as a dead store): what every key type does on drop.
pub fn zeroize(secret: &mut [u8]) {
    for b in secret {
        // SAFETY: a plain write through a valid, aligned, exclusive &mut u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// The bytes to sign for `payload` under a domain-separation `tag`.
pub fn tagged(tag: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 1 + payload.len());
    out.extend_from_slice(tag.as_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// BLAKE3 of `bytes`.
pub fn hash(bytes: &[u8]) -> Hash32 {
    *blake3::hash(bytes).as_bytes()
}
