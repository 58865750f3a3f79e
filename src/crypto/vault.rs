//! Envelope encryption primitives: AES-256-GCM data keys, and the key holder's ML-KEM-768
//! keys (FIPS 203) that data keys are wrapped for.
//!
//! Wrapping a data key for a holder: encapsulate to the holder's public key (a fresh
//! ML-KEM-768 ciphertext and shared secret), derive a one-time wrapping key from the shared
//! secret with HKDF-SHA256 (salted with [`WRAP_SALT`], bound to the key id and the KEM
//! ciphertext), and seal the data key under it with AES-256-GCM. Only the holder of the
//! decapsulation key can recover the shared secret, hence the data key.
//!
//! A key is named by its id: the first 16 hex characters of BLAKE3 over a tag and the
//! public key, so an id names exactly one public key and a config that pairs them wrongly
//! is caught.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// ML-KEM-768 public (encapsulation) key length in bytes.
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;
/// ML-KEM-768 ciphertext length in bytes.
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// AES-256 key length in bytes.
pub const DATA_KEY_LEN: usize = 32;
/// AES-GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// HKDF salt of every wrapping key.
pub const WRAP_SALT: &[u8] = b"citychain/vault/wrap/v1";
/// Domain tag of key ids.
const KEY_ID_TAG: &str = "citychain/vault/key/v1";
/// Hex characters of a key id.
pub const KEY_ID_LEN: usize = 16;

/// Errors of envelope encryption and of key-holder key files.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("not an ML-KEM-768 public key")]
    BadPublicKey,
    #[error("the crypto library failed")]
    Library,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    /// The wrapped key does not open: another holder's key, or a changed capsule.
    #[error("the data key does not unwrap with key {0} (another key, or a changed capsule)")]
    Unwrap(String),
    /// The sealed bytes do not open: changed ciphertext or associated data, or another key.
    #[error("the ciphertext does not open (changed bytes, changed header, or another key)")]
    Open,
}

pub type Result<T> = std::result::Result<T, VaultError>;

/// The id of an ML-KEM-768 public key (16 hex characters).
pub fn key_id_of(public_key: &[u8]) -> String {
    let digest = super::hash(&super::tagged(KEY_ID_TAG, public_key));
    hex::encode(&digest[..KEY_ID_LEN / 2])
}

/// A fresh AES-256-GCM key for one batch. Zeroed when dropped; never serialized.
pub struct DataKey([u8; DATA_KEY_LEN]);

impl Drop for DataKey {
    fn drop(&mut self) {
        super::primitives::zeroize(&mut self.0);
    }
}

impl DataKey {
    pub fn generate() -> Result<Self> {
        let mut key = [0u8; DATA_KEY_LEN];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| VaultError::Library)?;
        Ok(Self(key))
    }

    /// The raw key, for tests that check it never appears where it must not.
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey> {
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| VaultError::Library)?,
        ))
    }

    /// Seals `plaintext` (in place, tag appended) with a random nonce, authenticating `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: Vec<u8>) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
        seal(&self.aead()?, aad, plaintext)
    }

    /// Opens what [`DataKey::seal`] produced under the same `aad`.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>> {
        open(&self.aead()?, nonce, aad, ciphertext).map_err(|()| VaultError::Open)
    }
}

fn seal(key: &LessSafeKey, aad: &[u8], mut data: Vec<u8>) -> Result<([u8; NONCE_LEN], Vec<u8>)> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| VaultError::Library)?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut data,
    )
    .map_err(|_| VaultError::Library)?;
    Ok((nonce, data))
}

fn open(
    key: &LessSafeKey,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    mut data: Vec<u8>,
) -> std::result::Result<Vec<u8>, ()> {
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| ())?
        .len();
    data.truncate(len);
    Ok(data)
}

/// A data key wrapped for one holder key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The ML-KEM-768 ciphertext the holder decapsulates.
    #[serde(with = "serde_bytes")]
    pub kem_ciphertext: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    /// The data key sealed under the wrapping key, tag appended.
    #[serde(with = "serde_bytes")]
    pub sealed_key: Vec<u8>,
}

/// The one-time wrapping key derived from a KEM shared secret.
fn wrapping_key(shared_secret: &[u8], key_id: &str, kem_ciphertext: &[u8]) -> Result<LessSafeKey> {
    let prk = Salt::new(HKDF_SHA256, WRAP_SALT).extract(shared_secret);
    let info = [key_id.as_bytes(), kem_ciphertext];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| VaultError::Library)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// A key holder's public key: what a city seals batches for.
#[derive(Clone)]
pub struct VaultPublicKey {
    id: String,
    key: Arc<EncapsulationKey>,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for VaultPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultPublicKey({})", self.id)
    }
}

impl VaultPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEM_PUBLIC_KEY_LEN {
            return Err(VaultError::BadPublicKey);
        }
        let key =
            EncapsulationKey::new(&ML_KEM_768, bytes).map_err(|_| VaultError::BadPublicKey)?;
        Ok(Self {
            id: key_id_of(bytes),
            key: Arc::new(key),
            bytes: bytes.into(),
        })
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = B64
            .decode(text.trim().as_bytes())
            .map_err(|_| VaultError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn to_base64(&self) -> String {
        B64.encode(&self.bytes)
    }

    /// Wraps `data_key` for this key's holder, authenticating `aad` with it.
    pub fn wrap(&self, data_key: &DataKey, aad: &[u8]) -> Result<WrappedKey> {
        let (ciphertext, secret) = self.key.encapsulate().map_err(|_| VaultError::Library)?;
        let kem_ciphertext = ciphertext.as_ref().to_vec();
        let wrapping = wrapping_key(secret.as_ref(), &self.id, &kem_ciphertext)?;
        let (nonce, sealed_key) = seal(&wrapping, aad, data_key.0.to_vec())?;
        Ok(WrappedKey {
            kem_ciphertext,
            nonce,
            sealed_key,
        })
    }
}

/// A key holder's ML-KEM-768 key pair: the only thing that unwraps data keys sealed for it.
pub struct VaultKey {
    public: VaultPublicKey,
    secret: DecapsulationKey,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultKey({})", self.public.id)
    }
}

/// On-disk form of a key holder's key (`citychain vault keygen --out FILE`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultKeyFile {
    pub algorithm: String,
    pub key_id: String,
    /// Base64 of the raw public (encapsulation) key.
    pub public_key: String,
    /// Base64 of the raw decapsulation key. Secret.
    pub secret_key: String,
}

impl VaultKeyFile {
    pub const ALGORITHM: &'static str = "ml-kem-768";
}

impl VaultKey {
    /// A fresh key pair from the system's secure random source.
    pub fn generate() -> Result<Self> {
        let secret = DecapsulationKey::generate(&ML_KEM_768).map_err(|_| VaultError::Library)?;
        let public = secret
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .map_err(|_| VaultError::Library)?;
        Ok(Self {
            public: VaultPublicKey::from_bytes(public.as_ref())?,
            secret,
        })
    }

    pub fn id(&self) -> &str {
        self.public.id()
    }

    pub fn public(&self) -> &VaultPublicKey {
        &self.public
    }

    /// Recovers a data key wrapped for this key under the same `aad`.
    pub fn unwrap(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey> {
        let failed = || VaultError::Unwrap(self.id().to_owned());
        if wrapped.kem_ciphertext.len() != KEM_CIPHERTEXT_LEN {
            return Err(failed());
        }
        // ML-KEM decapsulation never fails on a well-formed ciphertext (implicit
        // rejection: another key yields an unrelated secret), so a wrong key shows as the
        // wrapped key failing to open below.
        let secret = self
            .secret
            .decapsulate(Ciphertext::from(wrapped.kem_ciphertext.as_slice()))
            .map_err(|_| failed())?;
        let wrapping = wrapping_key(secret.as_ref(), self.id(), &wrapped.kem_ciphertext)?;
        let mut raw = open(&wrapping, &wrapped.nonce, aad, wrapped.sealed_key.clone())
            .map_err(|()| failed())?;
        let key: [u8; DATA_KEY_LEN] = raw.as_slice().try_into().map_err(|_| failed())?;
        raw.fill(0);
        Ok(DataKey(key))
    }

    /// Writes the key pair as JSON, readable by its owner only; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| VaultError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let secret = self.secret.key_bytes().map_err(|_| VaultError::Library)?;
        let file = VaultKeyFile {
            algorithm: VaultKeyFile::ALGORITHM.into(),
            key_id: self.id().to_owned(),
            public_key: self.public.to_base64(),
            secret_key: B64.encode(secret.as_ref()),
        };
        let text = serde_json::to_string_pretty(&file).expect("key file serializes");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write;
        let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err(e.to_string()))
    }

    /// Loads a key written by [`VaultKey::save`], checking that its halves belong together.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| VaultError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: VaultKeyFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if file.algorithm != VaultKeyFile::ALGORITHM {
            return Err(err(format!("unsupported algorithm {:?}", file.algorithm)));
        }
        let public = VaultPublicKey::from_base64(&file.public_key)
            .map_err(|_| err("public_key is not a base64 ML-KEM-768 key".into()))?;
        if public.id() != file.key_id {
            return Err(err(format!(
                "key_id {} does not match the public key (whose id is {})",
                file.key_id,
                public.id()
            )));
        }
        let raw = B64
            .decode(file.secret_key.as_bytes())
            .map_err(|_| err("secret_key is not base64".into()))?;
        let secret = DecapsulationKey::new(&ML_KEM_768, &raw)
            .map_err(|_| err("secret_key is not an ML-KEM-768 decapsulation key".into()))?;
        let key = Self { public, secret };
        // The file's halves must be one key pair: a data key wrapped for the public half
        // must unwrap with the secret half.
        let probe = DataKey::generate()?;
        let wrapped = key.public.wrap(&probe, b"key file check")?;
        match key.unwrap(&wrapped, b"key file check") {
            Ok(back) if back.0 == probe.0 => Ok(key),
            _ => Err(err("secret_key does not belong to public_key".into())),
        }
    }
}

/// Domain tag of what a [`ReadKey`] seals.
const READ_TAG: &str = "citychain/read/v1";

/// A city's own symmetric read key (AES-256-GCM, `DATA_DIR/read.key`, created on first
/// start, readable by its owner only): the city wraps each batch's data key under it as
/// well, so it can open exactly the batches it sealed itself when it reads them back from
/// a tier. It never leaves the city and is kept apart from `city.redb`, so the database
/// alone opens nothing. Zeroed when dropped.
pub struct ReadKey([u8; DATA_KEY_LEN]);

impl Drop for ReadKey {
    fn drop(&mut self) {
        super::primitives::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadKey(..)")
    }
}

/// A batch's data key wrapped under the city's [`ReadKey`], bound to the batch id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWrapped {
    pub nonce: [u8; NONCE_LEN],
    /// The data key sealed under the read key, tag appended.
    #[serde(with = "serde_bytes")]
    pub sealed_key: Vec<u8>,
}

impl ReadKey {
    pub fn generate() -> Result<Self> {
        let mut key = [0u8; DATA_KEY_LEN];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| VaultError::Library)?;
        Ok(Self(key))
    }

    fn aead(&self) -> Result<LessSafeKey> {
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| VaultError::Library)?,
        ))
    }

    fn aad(batch_id: &[u8; 32]) -> Vec<u8> {
        super::tagged(READ_TAG, batch_id)
    }

    /// Wraps `data_key` for batch `batch_id`.
    pub fn wrap(&self, batch_id: &[u8; 32], data_key: &DataKey) -> Result<ReadWrapped> {
        let (nonce, sealed_key) = seal(&self.aead()?, &Self::aad(batch_id), data_key.0.to_vec())?;
        Ok(ReadWrapped { nonce, sealed_key })
    }

    /// The data key of batch `batch_id`; fails for another batch's wrapping, a changed
    /// one, or another read key.
    pub fn unwrap(&self, batch_id: &[u8; 32], wrapped: &ReadWrapped) -> Result<DataKey> {
        let mut raw = open(
            &self.aead()?,
            &wrapped.nonce,
            &Self::aad(batch_id),
            wrapped.sealed_key.clone(),
        )
        .map_err(|()| VaultError::Unwrap("read".into()))?;
        let key: [u8; DATA_KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Unwrap("read".into()))?;
        raw.fill(0);
        Ok(DataKey(key))
    }

    /// Loads the key at `path`, or creates it there (mode 0600, fsynced) when there is
    /// no file yet.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let err = |reason: String| VaultError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| err("not text".into()))?;
                let key: [u8; DATA_KEY_LEN] = hex::decode(text.trim())
                    .ok()
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| err("a read key is 64 hex characters".into()))?;
                Ok(Self(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                use std::io::Write;
                let mut text = hex::encode(key.0);
                text.push('\n');
                let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| err(e.to_string()))?;
                }
                Ok(key)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_holder_key_and_aad() {
        let holder = VaultKey::generate().unwrap();
        let other = VaultKey::generate().unwrap();
        assert_eq!(holder.id().len(), KEY_ID_LEN);
        assert_ne!(holder.id(), other.id());
        let data = DataKey::generate().unwrap();
        let wrapped = holder.public().wrap(&data, b"batch 1").unwrap();
        assert_eq!(wrapped.kem_ciphertext.len(), KEM_CIPHERTEXT_LEN);
        let back = holder.unwrap(&wrapped, b"batch 1").unwrap();
        assert_eq!(back.expose(), data.expose());

        assert!(matches!(
            other.unwrap(&wrapped, b"batch 1"),
            Err(VaultError::Unwrap(_))
        ));
        assert!(holder.unwrap(&wrapped, b"batch 2").is_err(), "aad is bound");
        let mut changed = wrapped.clone();
        changed.kem_ciphertext[7] ^= 1;
        assert!(holder.unwrap(&changed, b"batch 1").is_err());
        let mut changed = wrapped.clone();
        changed.sealed_key[0] ^= 1;
        assert!(holder.unwrap(&changed, b"batch 1").is_err());
        // The data key never appears in what is wrapped.
        let bytes = serde_json::to_vec(&wrapped).unwrap();
        let raw = postcard::to_stdvec(&wrapped).unwrap();
        for haystack in [&bytes, &raw] {
            assert!(!haystack.windows(DATA_KEY_LEN).any(|w| w == data.expose()));
        }
    }

    #[test]
    fn data_keys_seal_and_open_under_their_aad_only() {
        let key = DataKey::generate().unwrap();
        let (nonce, sealed) = key.seal(b"header", b"secret body".to_vec()).unwrap();
        assert_eq!(sealed.len(), b"secret body".len() + TAG_LEN);
        assert_eq!(
            key.open(&nonce, b"header", sealed.clone()).unwrap(),
            b"secret body"
        );
        assert!(key.open(&nonce, b"headex", sealed.clone()).is_err());
        let mut changed = sealed.clone();
        changed[3] ^= 1;
        assert!(key.open(&nonce, b"header", changed).is_err());
        let other = DataKey::generate().unwrap();
        assert!(other.open(&nonce, b"header", sealed).is_err());
    }

    #[test]
    fn key_files_round_trip_are_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holder.key");
        let key = VaultKey::generate().unwrap();
        key.save(&path).unwrap();
        assert!(key.save(&path).is_err(), "never overwrites a key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = VaultKey::load(&path).unwrap();
        assert_eq!(back.id(), key.id());
        let data = DataKey::generate().unwrap();
        let wrapped = key.public().wrap(&data, b"x").unwrap();
        assert_eq!(back.unwrap(&wrapped, b"x").unwrap().expose(), data.expose());

        // A file whose halves come from two different keys is refused.
        let other = VaultKey::generate().unwrap();
        let mut file: VaultKeyFile =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file.public_key = other.public().to_base64();
        file.key_id = other.id().to_owned();
        let mixed = dir.path().join("mixed.key");
        std::fs::write(&mixed, serde_json::to_string(&file).unwrap()).unwrap();
        let e = VaultKey::load(&mixed).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
    }
    #[test]
    fn a_read_key_unwraps_only_its_own_batch_and_is_kept_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read.key");
        let key = ReadKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same key comes back from the file.
        let again = ReadKey::load_or_create(&path).unwrap();
        assert_eq!(key.0, again.0);

        let data = DataKey::generate().unwrap();
        let wrapped = key.wrap(&[1; 32], &data).unwrap();
        assert!(!wrapped.sealed_key.windows(32).any(|w| w == data.expose()));
        assert_eq!(
            again.unwrap(&[1; 32], &wrapped).unwrap().expose(),
            data.expose()
        );
        // Another batch id, a changed wrapping or another read key: nothing.
        assert!(key.unwrap(&[2; 32], &wrapped).is_err());
        let mut changed = wrapped.clone();
        changed.sealed_key[0] ^= 1;
        assert!(key.unwrap(&[1; 32], &changed).is_err());
        let other = ReadKey::generate().unwrap();
        assert!(other.unwrap(&[1; 32], &wrapped).is_err());
        // A damaged key file is refused, not replaced.
        std::fs::write(&path, "not a key").unwrap();
        assert!(ReadKey::load_or_create(&path).is_err());
    }
}
