//! ML-DSA-65 key pairs, key files and sender addresses.

use std::path::Path;

use aws_lc_rs::signature::{
    KeyPair, ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{CryptoError, Result, SIGNATURE_LEN};

/// An ML-DSA-65 signing key, rebuilt from its 32-byte seed.
pub struct SigningKey {
    pair: PqdsaKeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.address())
    }
}

impl SigningKey {
    /// A fresh key from the system's secure random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| CryptoError::Library)?;
        Self::from_seed(seed)
    }

    pub fn from_seed(seed: [u8; 32]) -> Result<Self> {
        let pair =
            PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).map_err(|_| CryptoError::Library)?;
        Ok(Self { pair, seed })
    }

    /// Raw public key bytes (1952 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The sender address of this key: hex of the first 20 bytes of BLAKE3(public key).
    pub fn address(&self) -> String {
        address_of(self.public_key())
    }

    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let mut sig = vec![0u8; SIGNATURE_LEN];
        let n = self
            .pair
            .sign(msg, &mut sig)
            .map_err(|_| CryptoError::Library)?;
        sig.truncate(n);
        Ok(sig)
    }

    /// Loads a key written by [`SigningKey::save`] (`citychain keygen`).
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if file.algorithm != KeyFile::ALGORITHM {
            return Err(err(format!("unsupported algorithm {:?}", file.algorithm)));
        }
        let seed: [u8; 32] = hex::decode(&file.seed)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| err("seed must be 64 hex characters".into()))?;
        let key = Self::from_seed(seed)?;
        if key.address() != file.address {
            return Err(err("address does not match the seed".into()));
        }
        Ok(key)
    }

    /// Writes the key as JSON, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |e: std::io::Error| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = KeyFile {
            algorithm: KeyFile::ALGORITHM.into(),
            address: self.address(),
            public_key: B64.encode(self.public_key()),
            seed: hex::encode(self.seed),
        };
        let text = serde_json::to_string_pretty(&file).expect("key file serializes");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write;
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

/// On-disk form of a key pair (`citychain keygen --out FILE`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub algorithm: String,
    pub address: String,
    /// Base64 of the raw public key.
    pub public_key: String,
    /// Hex of the 32-byte ML-DSA seed. Secret.
    pub seed: String,
}

impl KeyFile {
    pub const ALGORITHM: &'static str = "ml-dsa-65";
}

/// Sender address of a public key: hex of the first 20 bytes of its BLAKE3 hash.
pub fn address_of(public_key: &[u8]) -> String {
    hex::encode(&blake3::hash(public_key).as_bytes()[..20])
}

/// Verifies an ML-DSA-65 signature over `msg`.
pub fn verify(public_key: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    if public_key.len() != super::PUBLIC_KEY_LEN {
        return Err(CryptoError::BadPublicKey);
    }
    UnparsedPublicKey::new(&ML_DSA_65, public_key)
        .verify(msg, signature)
        .map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let key = SigningKey::generate().unwrap();
        assert_eq!(key.public_key().len(), super::super::PUBLIC_KEY_LEN);
        let sig = key.sign(b"hello").unwrap();
        verify(key.public_key(), b"hello", &sig).unwrap();
        assert!(verify(key.public_key(), b"hellp", &sig).is_err());
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(verify(key.public_key(), b"hello", &bad).is_err());
    }

    #[test]
    fn key_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let key = SigningKey::generate().unwrap();
        key.save(&path).unwrap();
        let back = SigningKey::load(&path).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.address().len(), 40);
    }
}
