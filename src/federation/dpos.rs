//! The continent's side of DPoS approval: the engine's rules (`engines::dpos`) applied to
//! the continent's store (`storage::continent_dpos`). Shared by the Approver (votes its
//! representatives answer) and the HTTP layer (votes anyone hands in), so a vote is
//! counted the same way whoever brings it.
//!
//! Recording a vote: check it (continent, known representative, signature), check that a
//! vote for a batch this continent holds names that batch's slot, record it (with evidence
//! and a slash on equivocation, in the same transaction), then tally the batch it votes
//! for with every representative's stake in force, and record the approval once it
//! reaches two thirds. Approvals already recorded stand when a voter is later slashed:
//! the evidence is public, and the approval said what held when it was made.

use std::sync::Arc;

use crate::config::DposConfig;
use crate::crypto::Hash32;
use crate::engines::dpos::{self, ApprovalEngine, Representative, Tally, VoteError};
use crate::messages::dpos::SignedVote;
use crate::messages::now_ms;
use crate::storage::continent_dpos::{Approval, Recorded};
use crate::storage::continent_store::ContinentStore;
use crate::storage::ledger::LedgerError;

/// Why a vote was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum VoteRefusal {
    #[error(transparent)]
    Invalid(#[from] VoteError),
    /// 400: it names a batch of this continent under another slot.
    #[error("continent batch {batch} is slot {want}, not {got}")]
    WrongSlot { batch: String, want: u64, got: u64 },
    /// 400: a slot past the continent's last batch (the next one is `next`): nothing there
    /// to vote on yet, and not kept, so votes cannot pile up ahead of the continent.
    #[error("slot {slot} is past this continent's batches (the next is slot {next})")]
    FutureSlot { slot: u64, next: u64 },
    /// 503: the store failed; nothing was recorded.
    #[error("the vote store failed: {0}")]
    Store(#[from] LedgerError),
}

/// What became of a valid vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteOutcome {
    pub recorded: Recorded,
    /// The batch it votes for was approved by this vote.
    pub approved_now: bool,
}

/// One representative's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub id: String,
    pub configured_stake: u64,
    /// Stake in force (configured minus slashed).
    pub stake: u64,
    pub slashed: u64,
    pub votes_cast: u64,
}

pub struct DposBook {
    pub continent: String,
    pub engine: Box<dyn ApprovalEngine>,
    pub representatives: Vec<Representative>,
    pub store: Arc<ContinentStore>,
}

impl DposBook {
    pub fn new(continent: String, config: &DposConfig, store: Arc<ContinentStore>) -> Self {
        Self {
            continent,
            engine: dpos::from_config(config),
            representatives: dpos::representatives(config),
            store,
        }
    }

    pub fn enabled(&self) -> bool {
        self.engine.enabled() && !self.representatives.is_empty()
    }

    /// Every representative's stake in force. Blocks.
    pub fn stakes(&self) -> Result<Vec<(String, u64)>, LedgerError> {
        let slashed = self.store.dpos_slashed()?;
        Ok(self
            .representatives
            .iter()
            .map(|r| {
                let taken = slashed
                    .iter()
                    .find(|(id, _)| *id == r.id)
                    .map_or(0, |(_, s)| *s);
                (r.id.clone(), r.stake.saturating_sub(taken))
            })
            .collect())
    }

    /// The representatives' standing, in config order. Blocks.
    pub fn standings(&self) -> Result<Vec<Standing>, LedgerError> {
        let slashed = self.store.dpos_slashed()?;
        let cast = self.store.dpos_votes_cast()?;
        let of = |list: &[(String, u64)], id: &str| {
            list.iter().find(|(k, _)| k == id).map_or(0, |(_, v)| *v)
        };
        Ok(self
            .representatives
            .iter()
            .map(|r| {
                let s = of(&slashed, &r.id);
                Standing {
                    id: r.id.clone(),
                    configured_stake: r.stake,
                    stake: r.stake.saturating_sub(s),
                    slashed: s,
                    votes_cast: of(&cast, &r.id),
                }
            })
            .collect())
    }

    /// The stake behind a batch now. Blocks.
    pub fn tally(&self, batch: &Hash32) -> Result<(Tally, Vec<String>), LedgerError> {
        let voters = self.store.dpos_voters(batch)?;
        Ok((self.engine.tally(&self.stakes()?, &voters), voters))
    }

    /// Checks and records a vote, and approves its batch if it now has two thirds.
    /// Blocks (signature check and fsyncs).
    pub fn accept(&self, vote: &SignedVote) -> Result<VoteOutcome, VoteRefusal> {
        let outcome = self.record(vote);
        let label = match &outcome {
            Ok(o) => match o.recorded {
                Recorded::New => "recorded",
                Recorded::Duplicate => "duplicate",
                Recorded::Conflict { .. } => "equivocation",
            },
            Err(VoteRefusal::Invalid(VoteError::BadSignature(_))) => "bad_signature",
            Err(VoteRefusal::Invalid(VoteError::UnknownRepresentative(_))) => "unknown",
            Err(VoteRefusal::Invalid(VoteError::WrongContinent { .. }))
            | Err(VoteRefusal::WrongSlot { .. })
            | Err(VoteRefusal::FutureSlot { .. }) => "invalid",
            Err(VoteRefusal::Store(_)) => "store_failed",
        };
        metrics::counter!(crate::metrics::DPOS_VOTES, "outcome" => label).increment(1);
        outcome
    }

    fn record(&self, vote: &SignedVote) -> Result<VoteOutcome, VoteRefusal> {
        let rep = self
            .engine
            .check_vote(&self.representatives, &self.continent, vote)?;
        let batch = self.store.continent_batch(&vote.batch_id)?;
        if let Some((info, _)) = &batch
            && info.header.seq != vote.slot
        {
            return Err(VoteRefusal::WrongSlot {
                batch: crate::messages::hex32(&vote.batch_id),
                want: info.header.seq,
                got: vote.slot,
            });
        }
        let (next, _) = self.store.resume_point()?;
        if vote.slot >= next {
            return Err(VoteRefusal::FutureSlot {
                slot: vote.slot,
                next,
            });
        }
        let recorded =
            self.store
                .dpos_record_vote(vote, rep.stake, |s| self.engine.slash(s), now_ms())?;
        if let Recorded::Conflict {
            offence: Some(ev), ..
        } = &recorded
        {
            tracing::warn!(
                representative = %ev.representative,
                slot = ev.slot,
                slashed = ev.slashed,
                "equivocation: two votes for one slot; evidence recorded, stake slashed"
            );
            self.publish_slashed()?;
        }
        let approved_now = batch.is_some() && self.approve_if_due(&vote.batch_id)?;
        Ok(VoteOutcome {
            recorded,
            approved_now,
        })
    }

    /// Records the batch's approval if its voters hold two thirds; true if recorded now.
    /// Blocks.
    pub fn approve_if_due(&self, batch: &Hash32) -> Result<bool, LedgerError> {
        if !self.engine.enabled() || self.store.dpos_approval(batch)?.is_some() {
            return Ok(false);
        }
        let (tally, voters) = self.tally(batch)?;
        if !tally.approved {
            return Ok(false);
        }
        let stakes = self.stakes()?;
        let voters = voters
            .into_iter()
            .filter(|v| stakes.iter().any(|(id, s)| id == v && *s > 0))
            .collect();
        let approval = Approval {
            stake: tally.voted,
            total_stake: tally.total,
            voters,
            approved_at_ms: now_ms(),
        };
        let now = self.store.dpos_approve(batch, &approval)?;
        if now {
            metrics::counter!(crate::metrics::DPOS_APPROVED).increment(1);
            tracing::debug!(
                batch = %crate::messages::hex32(batch),
                stake = tally.voted,
                total = tally.total,
                "continent batch approved"
            );
        }
        Ok(now)
    }

    /// Sets the slashed-stake gauge from the ledger. Blocks.
    pub fn publish_slashed(&self) -> Result<(), LedgerError> {
        let total: u64 = self.store.dpos_slashed()?.iter().map(|(_, s)| *s).sum();
        metrics::gauge!(crate::metrics::DPOS_SLASHED).set(total as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::config::RepresentativeEntry;
    use crate::crypto::SigningKey;
    use crate::messages::dpos::Vote;
    use crate::messages::federation::{
        ContinentBatch, ContinentBatchHeader, ContinentRecord, SignedContinentBatch,
    };
    use crate::storage::immutable_log::ImmutableLog;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32]).unwrap()
    }

    fn vote(n: u8, slot: u64, batch_id: Hash32) -> SignedVote {
        SignedVote::sign(
            &key(n),
            Vote {
                continent: "asia".into(),
                slot,
                batch_id,
                representative: format!("rep-{n}"),
            },
        )
        .unwrap()
    }

    async fn book(dir: &std::path::Path) -> (DposBook, Hash32) {
        let log = Arc::new(ImmutableLog::open(&dir.join("log")).unwrap());
        let store = Arc::new(ContinentStore::open(dir, 1 << 20, log).unwrap());
        let batch = ContinentBatch {
            header: ContinentBatchHeader {
                continent: "asia".into(),
                seq: 0,
                parents: vec![],
                entries_root: [0; 32],
                entry_count: 0,
                created_at_ms: 1,
            },
            entries: vec![],
        };
        let signed = SignedContinentBatch::sign(&key(9), "continent-asia", batch).unwrap();
        let id = signed.id();
        store
            .append(&ContinentRecord {
                batch: signed,
                certified: vec![],
            })
            .await
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let config = DposConfig {
            representatives: (1..=3)
                .map(|n| RepresentativeEntry {
                    id: format!("rep-{n}"),
                    public_key: b64.encode(key(n).public_key()),
                    stake: 100,
                    url: "http://127.0.0.1:9".into(),
                })
                .collect(),
            ..DposConfig::default()
        };
        (DposBook::new("asia".into(), &config, store), id)
    }

    #[tokio::test]
    async fn approval_is_recorded_once_at_two_thirds_and_stands_after_a_slash() {
        let dir = tempfile::tempdir().unwrap();
        let (book, id) = book(dir.path()).await;
        assert!(!book.accept(&vote(1, 0, id)).unwrap().approved_now);
        assert!(matches!(
            book.accept(&vote(2, 5, id)),
            Err(VoteRefusal::WrongSlot { .. })
        ));
        assert!(book.accept(&vote(2, 0, id)).unwrap().approved_now);
        assert!(!book.accept(&vote(3, 0, id)).unwrap().approved_now, "once");
        let approved = book.store.dpos_approval(&id).unwrap().unwrap();
        assert_eq!((approved.stake, approved.total_stake), (200, 300));
        // rep-2 equivocates: slashed to 0; the approval stands.
        let out = book.accept(&vote(2, 0, [7; 32])).unwrap();
        assert!(matches!(
            out.recorded,
            Recorded::Conflict {
                offence: Some(_),
                ..
            }
        ));
        let standing = book.standings().unwrap();
        assert_eq!((standing[1].stake, standing[1].slashed), (0, 100));
        assert_eq!(book.store.dpos_approval(&id).unwrap().unwrap(), approved);
        assert_eq!(book.tally(&id).unwrap().0.total, 200);
        // Forged and unknown votes change nothing.
        let mut forged = vote(1, 0, [8; 32]);
        forged.representative = "rep-3".into();
        assert!(matches!(
            book.accept(&forged),
            Err(VoteRefusal::Invalid(VoteError::BadSignature(_)))
        ));
        assert!(matches!(
            book.accept(&vote(4, 0, id)),
            Err(VoteRefusal::Invalid(VoteError::UnknownRepresentative(_)))
        ));
        assert_eq!(book.store.dpos_evidence().unwrap().len(), 1);
        // Votes for slots this continent has not produced are refused and not kept, so a
        // representative cannot fill the store with votes for slots to come.
        let cast = book.store.dpos_votes_cast().unwrap();
        for slot in [1, 2, 1_000, u64::MAX] {
            assert!(
                matches!(
                    book.accept(&vote(1, slot, [9; 32])),
                    Err(VoteRefusal::FutureSlot { next: 1, .. })
                ),
                "{slot}"
            );
            assert_eq!(book.store.dpos_vote("rep-1", slot).unwrap(), None);
        }
        assert_eq!(book.store.dpos_votes_cast().unwrap(), cast);
    }
}
