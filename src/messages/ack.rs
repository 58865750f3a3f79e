//! Proof-of-hold acknowledgements: a storage node's signed statement that it holds, on
//! disk, bytes with a given hash for a given batch.

use serde::{Deserialize, Serialize};

use super::batch::BatchId;
use crate::crypto::{self, Hash32, SigningKey};

/// Domain-separation tag of proof-of-hold signatures.
pub const POH_TAG: &str = "citychain/poh/v1";

/// How long an ack is accepted after it was made (upstream: one minute).
pub const ACK_VALIDITY_MS: u64 = 60_000;

/// Allowed clock difference between a holder and the city node checking its ack.
const CLOCK_TOLERANCE_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PohAck {
    pub holder_id: String,
    pub batch_id: BatchId,
    /// BLAKE3 of the exact bytes the holder stored.
    pub held_hash: Hash32,
    pub time_ms: u64,
    /// ML-DSA-65 signature by the holder's node key.
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error("ack is for another batch")]
    WrongBatch,
    #[error("ack names another holder")]
    WrongHolder,
    #[error("ack hash does not match the bytes sent")]
    WrongHash,
    #[error("ack signature does not verify with the holder's key")]
    BadSignature,
    #[error("ack is {age_ms} ms old or from the future")]
    Stale { age_ms: i64 },
}

impl PohAck {
    fn signed_bytes(
        holder_id: &str,
        batch_id: &BatchId,
        held_hash: &Hash32,
        time_ms: u64,
    ) -> Vec<u8> {
        let fields = postcard::to_stdvec(&(holder_id, batch_id, held_hash, time_ms))
            .expect("ack fields encode");
        crypto::tagged(POH_TAG, &fields)
    }

    /// Signs an ack for `held` (the bytes stored) as `holder_id`.
    pub fn sign(
        key: &SigningKey,
        holder_id: &str,
        batch_id: BatchId,
        held: &[u8],
        time_ms: u64,
    ) -> crypto::Result<Self> {
        let held_hash = crypto::hash(held);
        let signature = key.sign(&Self::signed_bytes(
            holder_id, &batch_id, &held_hash, time_ms,
        ))?;
        Ok(Self {
            holder_id: holder_id.to_owned(),
            batch_id,
            held_hash,
            time_ms,
            signature,
        })
    }

    /// Accepts the ack only if it is from `holder_id`, for `batch_id`, over bytes hashing to
    /// `expected_hash`, recent, and signed by `holder_key`.
    pub fn verify(
        &self,
        holder_id: &str,
        holder_key: &[u8],
        batch_id: &BatchId,
        expected_hash: &Hash32,
        now_ms: u64,
    ) -> Result<(), AckError> {
        if &self.batch_id != batch_id {
            return Err(AckError::WrongBatch);
        }
        if self.holder_id != holder_id {
            return Err(AckError::WrongHolder);
        }
        if &self.held_hash != expected_hash {
            return Err(AckError::WrongHash);
        }
        let age_ms = now_ms as i64 - self.time_ms as i64;
        if age_ms > ACK_VALIDITY_MS as i64 || age_ms < -(CLOCK_TOLERANCE_MS as i64) {
            return Err(AckError::Stale { age_ms });
        }
        let msg = Self::signed_bytes(
            &self.holder_id,
            &self.batch_id,
            &self.held_hash,
            self.time_ms,
        );
        crypto::verify(holder_key, &msg, &self.signature).map_err(|_| AckError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_verification_rejects_wrong_hash_signature_holder_and_age() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let batch = [7u8; 32];
        let held = b"batch bytes";
        let ack = PohAck::sign(&key, "light-1", batch, held, 1_000_000).unwrap();
        let h = crypto::hash(held);
        let now = 1_000_500;

        assert_eq!(
            ack.verify("light-1", key.public_key(), &batch, &h, now),
            Ok(())
        );
        assert_eq!(
            ack.verify(
                "light-1",
                key.public_key(),
                &batch,
                &crypto::hash(b"other"),
                now
            ),
            Err(AckError::WrongHash)
        );
        assert_eq!(
            ack.verify("light-1", other.public_key(), &batch, &h, now),
            Err(AckError::BadSignature)
        );
        let mut forged = ack.clone();
        forged.signature[100] ^= 0x40;
        assert_eq!(
            forged.verify("light-1", key.public_key(), &batch, &h, now),
            Err(AckError::BadSignature)
        );
        assert_eq!(
            ack.verify("light-2", key.public_key(), &batch, &h, now),
            Err(AckError::WrongHolder)
        );
        assert_eq!(
            ack.verify("light-1", key.public_key(), &[8u8; 32], &h, now),
            Err(AckError::WrongBatch)
        );
        assert!(matches!(
            ack.verify(
                "light-1",
                key.public_key(),
                &batch,
                &h,
                now + ACK_VALIDITY_MS
            ),
            Err(AckError::Stale { .. })
        ));
    }
}
