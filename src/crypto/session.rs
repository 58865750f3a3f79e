//! Session keys between two nodes: one ML-KEM-768 exchange (FIPS 203), then a 32-byte key
//! both ends derive, with which every later request is authenticated by a keyed BLAKE3
//! MAC instead of an ML-DSA-65 signature (a few microseconds instead of a fraction of a
//! millisecond on each side).
//!
//! The requester makes a fresh [`SessionOffer`] (an ephemeral decapsulation key) and sends
//! its encapsulation key in a request it *signs*; the server [`accept`]s it by encapsulating
//! to that key and answers with the ciphertext; both then [`derive`] the key from the shared
//! secret and a transcript that names both nodes, the session id, the encapsulation key and
//! the ciphertext. Only the holder of the ephemeral decapsulation key (the requester that
//! signed the offer) and the server ever know the key, so a valid MAC proves the request
//! comes from the node that signed the offer, as a signature would. The answer itself is
//! not signed: an attacker on the path who altered it only breaks the session (the
//! requester's MACs would not verify), which it could do by dropping packets anyway.

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};

use super::primitives::{CryptoError, Hash32, Result, hash};

/// Key-derivation context of session keys (BLAKE3 `derive_key`).
const KDF_CONTEXT: &str = "citychain 2026 node session key v1";

/// A 32-byte session key; zeroed when dropped.
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The keyed BLAKE3 hash of `bytes`: the MAC of a request's claim.
    pub fn mac(&self, bytes: &[u8]) -> Hash32 {
        *blake3::keyed_hash(&self.0, bytes).as_bytes()
    }

    /// Whether `mac` is the MAC of `bytes`, compared in constant time.
    pub fn verify(&self, bytes: &[u8], mac: &Hash32) -> bool {
        blake3::keyed_hash(&self.0, bytes) == blake3::Hash::from_bytes(*mac)
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        super::primitives::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// The requester's half of a session being opened: an ephemeral ML-KEM-768 key.
pub struct SessionOffer {
    secret: DecapsulationKey,
    public: Vec<u8>,
}

impl SessionOffer {
    pub fn new() -> Result<Self> {
        let secret = DecapsulationKey::generate(&ML_KEM_768).map_err(|_| CryptoError::Library)?;
        let public = secret
            .encapsulation_key()
            .and_then(|k| k.key_bytes().map(|b| b.as_ref().to_vec()))
            .map_err(|_| CryptoError::Library)?;
        Ok(Self { secret, public })
    }

    /// The encapsulation key to send (1,184 bytes).
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The session key, from the server's ciphertext.
    pub fn finish(&self, ciphertext: &[u8], transcript: &Transcript<'_>) -> Result<SessionKey> {
        let secret = self
            .secret
            .decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| CryptoError::Library)?;
        Ok(derive(
            secret.as_ref(),
            transcript,
            &self.public,
            ciphertext,
        ))
    }
}

/// What both ends bind the session key to.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    pub requester: &'a str,
    pub server: &'a str,
    pub session_id: &'a [u8; 16],
}

/// The server's half: encapsulates to the requester's key. Returns the ciphertext to send
/// back and the session key; an encapsulation key that does not decode is refused.
pub fn accept(offer: &[u8], transcript: &Transcript<'_>) -> Result<(Vec<u8>, SessionKey)> {
    let key =
        EncapsulationKey::new(&ML_KEM_768, offer).map_err(|_| CryptoError::BadSessionOffer)?;
    let (ciphertext, secret) = key.encapsulate().map_err(|_| CryptoError::Library)?;
    let ciphertext = ciphertext.as_ref().to_vec();
    let key = derive(secret.as_ref(), transcript, offer, &ciphertext);
    Ok((ciphertext, key))
}

fn derive(secret: &[u8], t: &Transcript<'_>, offer: &[u8], ciphertext: &[u8]) -> SessionKey {
    let mut kdf = blake3::Hasher::new_derive_key(KDF_CONTEXT);
    kdf.update(secret);
    for part in [t.requester.as_bytes(), t.server.as_bytes()] {
        kdf.update(&(part.len() as u64).to_le_bytes());
        kdf.update(part);
    }
    kdf.update(t.session_id);
    kdf.update(&hash(offer));
    kdf.update(&hash(ciphertext));
    SessionKey(*kdf.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(id: &[u8; 16]) -> Transcript<'_> {
        Transcript {
            requester: "city-1",
            server: "light-1",
            session_id: id,
        }
    }

    #[test]
    fn both_ends_derive_one_key_and_nobody_else_does() {
        let id = [7u8; 16];
        let offer = SessionOffer::new().unwrap();
        let (ciphertext, server) = accept(offer.public(), &transcript(&id)).unwrap();
        let client = offer.finish(&ciphertext, &transcript(&id)).unwrap();
        let mac = client.mac(b"claim");
        assert!(server.verify(b"claim", &mac));
        assert!(!server.verify(b"other claim", &mac));

        // Another offer, or the same secret bound to another transcript, gives another key.
        let other = SessionOffer::new().unwrap();
        let (_, stranger) = accept(other.public(), &transcript(&id)).unwrap();
        assert!(!stranger.verify(b"claim", &mac));
        let elsewhere = Transcript {
            server: "light-2",
            ..transcript(&id)
        };
        let rebound = offer.finish(&ciphertext, &elsewhere).unwrap();
        assert!(!server.verify(b"claim", &rebound.mac(b"claim")));
        let other_id = offer.finish(&ciphertext, &transcript(&[8u8; 16])).unwrap();
        assert!(!server.verify(b"claim", &other_id.mac(b"claim")));
    }

    #[test]
    fn a_key_that_is_no_encapsulation_key_is_refused() {
        let id = [1u8; 16];
        assert!(accept(&[0u8; 10], &transcript(&id)).is_err());
        assert!(accept(&[], &transcript(&id)).is_err());
    }
}
