//! The vocabulary of DPoS approval of continent batches (see `engines::dpos`): the
//! proposal a continent sends its representatives, and the vote a representative signs.
//!
//! ```text
//! continent ──DposProposal (header + the continent's signature)──▶ representative
//!           ◀──SignedVote {continent, slot = seq, batch_id, representative}──
//! anyone    ──SignedVote (JSON)──▶ continent  POST /v1/dpos/votes
//! ```
//!
//! A vote is self-authenticating: its signature, by the representative's ML-DSA-65 key,
//! covers `DPOS_VOTE_TAG ‖ 0 ‖ encode((continent, slot, batch_id, representative))`, so
//! anyone may carry it. In JSON the batch id is hex and the signature base64.

use serde::{Deserialize, Serialize};

use super::federation::{CONTINENT_BATCH_TAG, ContinentBatchHeader};
use crate::crypto::{self, Hash32, SigningKey};

/// Domain tag of a representative's signature over a vote.
pub const DPOS_VOTE_TAG: &str = "citychain/dpos-vote/v1";
/// Where a continent sends a continent batch to a representative (signed requests).
pub const PROPOSALS_PATH: &str = "/internal/v1/dpos/proposals";
/// Where anyone may hand a continent a signed vote (JSON).
pub const VOTES_PATH: &str = "/v1/dpos/votes";
/// Largest proposal or vote body a node reads, in bytes.
pub const MAX_DPOS_BODY_BYTES: usize = 64 * 1024;

/// What a representative approves: one continent batch in one slot of its continent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub continent: String,
    /// The continent batch's sequence number: one vote per representative per slot.
    pub slot: u64,
    #[serde(with = "hex_hash")]
    pub batch_id: Hash32,
    pub representative: String,
}

impl Vote {
    /// The bytes a representative signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        crypto::tagged(
            DPOS_VOTE_TAG,
            &super::encode(&(
                &self.continent,
                self.slot,
                &self.batch_id,
                &self.representative,
            )),
        )
    }
}

/// A vote and its representative's signature (the vote's fields, then `signature`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedVote {
    pub continent: String,
    pub slot: u64,
    #[serde(with = "hex_hash")]
    pub batch_id: Hash32,
    pub representative: String,
    /// ML-DSA-65 signature over [`Vote::signed_bytes`].
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

impl SignedVote {
    pub fn sign(key: &SigningKey, vote: Vote) -> crypto::Result<Self> {
        let signature = key.sign(&vote.signed_bytes())?;
        Ok(Self {
            continent: vote.continent,
            slot: vote.slot,
            batch_id: vote.batch_id,
            representative: vote.representative,
            signature,
        })
    }

    /// The vote it signs.
    pub fn vote(&self) -> Vote {
        Vote {
            continent: self.continent.clone(),
            slot: self.slot,
            batch_id: self.batch_id,
            representative: self.representative.clone(),
        }
    }

    pub fn verify(&self, key: &[u8]) -> crypto::Result<()> {
        crypto::verify(key, &self.vote().signed_bytes(), &self.signature)
    }
}

/// The body of `POST /internal/v1/dpos/proposals`: a continent batch's header and the
/// continent's signature over it (the entries stay on the continent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DposProposal {
    pub header: ContinentBatchHeader,
    /// The continent node's id.
    pub signer: String,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl DposProposal {
    /// Checks the continent's signature, as [`super::federation::SignedContinentBatch`]
    /// does.
    pub fn verify(&self, continent_key: &[u8]) -> crypto::Result<()> {
        crypto::verify(
            continent_key,
            &crypto::tagged(CONTINENT_BATCH_TAG, &self.header.id()),
            &self.signature,
        )
    }
}

/// A representative's answer to a proposal (JSON): its vote for this batch (200), or its
/// earlier vote for another batch of the same slot (409, under `"vote"` too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteReply {
    pub vote: SignedVote,
    /// The vote was signed before (a retry, or another batch: the 409 case).
    pub earlier: bool,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        crate::messages::parse_hex32(&s)
            .ok_or_else(|| serde::de::Error::custom("batch_id must be 64 hex characters"))
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("signature must be base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_round_trips_through_json_and_postcard_and_verifies() {
        let key = SigningKey::from_seed([3; 32]).unwrap();
        let vote = Vote {
            continent: "asia".into(),
            slot: 7,
            batch_id: [9; 32],
            representative: "rep-1".into(),
        };
        let signed = SignedVote::sign(&key, vote).unwrap();
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedVote = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        let bin: SignedVote = crate::messages::decode(&crate::messages::encode(&signed)).unwrap();
        assert_eq!(bin, signed);
        back.verify(key.public_key()).unwrap();
        let mut other = back.clone();
        other.slot = 8;
        assert!(other.verify(key.public_key()).is_err());
    }
}
