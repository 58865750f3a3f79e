//! How messages look on the wire and on disk: the versioned postcard envelope, hex ids and
//! millisecond timestamps.

use serde::{Serialize, de::DeserializeOwned};

use crate::crypto::Hash32;

/// Version of every postcard encoding this build writes: 2, whose batch bodies carry
/// object dependency edges after the transactions. (1 had no edges; its bytes are refused,
/// never misread.)
pub const WIRE_VERSION: u16 = 2;

/// Errors decoding bytes from the network or disk.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "unsupported wire version {0} (this build reads only {WIRE_VERSION}; version 1 batches had no object dependency edges)"
    )]
    Version(u16),
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
}

/// A versioned postcard envelope.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<T> {
    version: u16,
    body: T,
}

/// Encodes `body` in a versioned envelope. postcard is deterministic, so these bytes can be
/// hashed and signed.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    postcard::to_stdvec(&Wire {
        version: WIRE_VERSION,
        body,
    })
    .expect("postcard encoding of owned data cannot fail")
}

/// Decodes bytes written by [`encode`], refusing other versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let version: u16 = match postcard::take_from_bytes::<u16>(bytes) {
        Ok((v, _)) => v,
        Err(e) => return Err(WireError::Malformed(e)),
    };
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let wire: Wire<T> = postcard::from_bytes(bytes)?;
    Ok(wire.body)
}

/// Lowercase hex of a hash, the form ids take in JSON and URLs.
pub fn hex32(h: &Hash32) -> String {
    hex::encode(h)
}

/// Parses a lowercase or uppercase hex id of 32 bytes.
pub fn parse_hex32(s: &str) -> Option<Hash32> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Milliseconds since the Unix epoch, the time unit on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_refuses_other_versions() {
        let bytes = encode(&("abc".to_string(), 7u64));
        let back: (String, u64) = decode(&bytes).unwrap();
        assert_eq!(back, ("abc".to_string(), 7));
        let mut other = postcard::to_stdvec(&Wire {
            version: 9,
            body: ("abc".to_string(), 7u64),
        })
        .unwrap();
        assert!(matches!(
            decode::<(String, u64)>(&other),
            Err(WireError::Version(9))
        ));
        other.truncate(2);
        assert!(decode::<(String, u64)>(&other).is_err());
    }
}
