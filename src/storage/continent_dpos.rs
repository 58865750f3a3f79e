//! The continent's DPoS tables in `continent.redb` (the rules are `engines::dpos`):
//!
//! - `dpos_votes`: (representative, slot) → the first valid vote it signed for that slot;
//! - `dpos_batch_voters`: continent batch id → the representatives with a valid vote
//!   for it;
//! - `dpos_evidence`: (representative, slot) → both conflicting votes, once per offence;
//! - `dpos_slashed`: representative → stake taken from it (the stake ledger);
//! - `dpos_votes_cast`: representative → valid votes recorded;
//! - `dpos_approvals`: continent batch id → its approval (stake, voters, time), once.
//!
//! Every change is one fsynced transaction, so a vote, its evidence and its slash are
//! recorded together or not at all. Unlike the rest of the index these tables are not
//! rebuilt from the log (votes are not in it): they are the record themselves.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::continent_store::{
    BY_SEQ, CONTINENT_BATCHES, ContinentStore, DPOS_APPROVALS as APPROVALS,
    DPOS_BATCH_VOTERS as BATCH_VOTERS, DPOS_EVIDENCE as EVIDENCE, DPOS_SLASHED as SLASHED,
    DPOS_VOTES as VOTES, DPOS_VOTES_CAST as VOTES_CAST,
};
use super::ledger::Result;
use crate::crypto::Hash32;
use crate::messages::dpos::SignedVote;
use crate::messages::{decode, encode};

/// A continent batch's approval, as recorded (once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Stake in force of its voters when it was approved.
    pub stake: u64,
    /// Stake in force of all representatives then.
    pub total_stake: u64,
    pub voters: Vec<String>,
    pub approved_at_ms: u64,
}

/// Equivocation: two valid votes of one representative for one slot, different batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub representative: String,
    pub slot: u64,
    pub first: SignedVote,
    pub second: SignedVote,
    /// Stake taken for this offence.
    pub slashed: u64,
    pub recorded_at_ms: u64,
}

/// What recording a valid vote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A first vote for its slot.
    New,
    /// The same vote was recorded before.
    Duplicate,
    /// The representative had voted for another batch in this slot (`earlier`). The
    /// first such vote is recorded as well, with the evidence in `offence` (the stake was
    /// slashed now); any later one for that slot is answered the same, with no offence,
    /// and not kept.
    Conflict {
        earlier: Box<SignedVote>,
        offence: Option<Box<Evidence>>,
    },
}

/// Counts for `/v1/federation/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DposCounts {
    pub approved_batches: u64,
    pub evidence: u64,
    pub votes: u64,
}

fn add_voter(tx: &WriteTransaction, batch: &Hash32, rep: &str) -> Result<()> {
    let mut t = tx.open_table(BATCH_VOTERS)?;
    let mut voters: Vec<String> = match t.get(batch)? {
        Some(v) => decode(v.value())?,
        None => Vec::new(),
    };
    if !voters.iter().any(|v| v == rep) {
        voters.push(rep.to_owned());
        t.insert(batch, encode(&voters).as_slice())?;
    }
    Ok(())
}

fn bump(
    tx: &WriteTransaction,
    table: TableDefinition<&str, u64>,
    key: &str,
    by: u64,
) -> Result<u64> {
    let mut t = tx.open_table(table)?;
    let now = t.get(key)?.map_or(0, |v| v.value()).saturating_add(by);
    t.insert(key, now)?;
    Ok(now)
}

impl ContinentStore {
    /// Records a vote whose signature was checked. On a conflict with an earlier vote of
    /// the same slot, records the evidence and takes `slash(remaining stake)` from the
    /// representative, once per slot; `configured` is its configured stake. Fsynced.
    /// Blocks.
    pub fn dpos_record_vote(
        &self,
        vote: &SignedVote,
        configured: u64,
        slash: impl FnOnce(u64) -> u64,
        now_ms: u64,
    ) -> Result<Recorded> {
        self.ledger.write(|tx| {
            let key = (vote.representative.as_str(), vote.slot);
            let earlier: Option<SignedVote> = {
                let t = tx.open_table(VOTES)?;
                let v = t.get(key)?;
                match v {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                }
            };
            let recorded = match earlier {
                None => {
                    tx.open_table(VOTES)?.insert(key, encode(vote).as_slice())?;
                    Recorded::New
                }
                Some(e) if e.batch_id == vote.batch_id => return Ok(Recorded::Duplicate),
                Some(earlier) => {
                    let mut evidence = tx.open_table(EVIDENCE)?;
                    let offence = if evidence.get(key)?.is_none() {
                        let taken = tx.open_table(SLASHED)?.get(key.0)?.map_or(0, |v| v.value());
                        let amount = slash(configured.saturating_sub(taken));
                        let ev = Evidence {
                            representative: vote.representative.clone(),
                            slot: vote.slot,
                            first: earlier.clone(),
                            second: vote.clone(),
                            slashed: amount,
                            recorded_at_ms: now_ms,
                        };
                        evidence.insert(key, encode(&ev).as_slice())?;
                        bump(tx, SLASHED, key.0, amount)?;
                        Some(Box::new(ev))
                    } else {
                        // A third batch for a slot already proven: the offence is one,
                        // and the evidence holds what proves it. Nothing more is kept, so
                        // a representative cannot grow the store by signing batch ids.
                        return Ok(Recorded::Conflict {
                            earlier: Box::new(earlier),
                            offence: None,
                        });
                    };
                    let voters: Vec<String> =
                        match tx.open_table(BATCH_VOTERS)?.get(&vote.batch_id)? {
                            Some(v) => decode(v.value())?,
                            None => Vec::new(),
                        };
                    if voters.contains(&vote.representative) {
                        return Ok(Recorded::Duplicate);
                    }
                    Recorded::Conflict {
                        earlier: Box::new(earlier),
                        offence,
                    }
                }
            };
            add_voter(tx, &vote.batch_id, &vote.representative)?;
            bump(tx, VOTES_CAST, &vote.representative, 1)?;
            Ok(recorded)
        })
    }

    /// The vote a representative recorded for a slot, if any.
    pub fn dpos_vote(&self, representative: &str, slot: u64) -> Result<Option<SignedVote>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(VOTES)?;
            let v = t.get((representative, slot))?;
            Ok(match v {
                Some(v) => Some(decode(v.value())?),
                None => None,
            })
        })
    }

    /// The representatives with a valid vote for a batch.
    pub fn dpos_voters(&self, batch: &Hash32) -> Result<Vec<String>> {
        self.ledger.read(|tx| {
            Ok(match tx.open_table(BATCH_VOTERS)?.get(batch)? {
                Some(v) => decode(v.value())?,
                None => Vec::new(),
            })
        })
    }

    /// Stake taken from each representative (absent: none).
    pub fn dpos_slashed(&self) -> Result<Vec<(String, u64)>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(SLASHED)?;
            t.iter()?
                .map(|e| {
                    let (k, v) = e?;
                    Ok((k.value().to_owned(), v.value()))
                })
                .collect()
        })
    }

    /// Valid votes recorded per representative.
    pub fn dpos_votes_cast(&self) -> Result<Vec<(String, u64)>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(VOTES_CAST)?;
            t.iter()?
                .map(|e| {
                    let (k, v) = e?;
                    Ok((k.value().to_owned(), v.value()))
                })
                .collect()
        })
    }

    /// Every piece of evidence, by representative and slot.
    pub fn dpos_evidence(&self) -> Result<Vec<Evidence>> {
        self.ledger.read(|tx| {
            let t = tx.open_table(EVIDENCE)?;
            t.iter()?
                .map(|e| {
                    let (_, v) = e?;
                    Ok(decode(v.value())?)
                })
                .collect()
        })
    }

    pub fn dpos_approval(&self, batch: &Hash32) -> Result<Option<Approval>> {
        self.ledger.read(|tx| {
            Ok(match tx.open_table(APPROVALS)?.get(batch)? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            })
        })
    }

    /// Records a batch's approval unless it was recorded before; true if recorded now.
    /// Fsynced. Blocks.
    pub fn dpos_approve(&self, batch: &Hash32, approval: &Approval) -> Result<bool> {
        self.ledger.write(|tx| {
            let mut t = tx.open_table(APPROVALS)?;
            if t.get(batch)?.is_some() {
                return Ok(false);
            }
            t.insert(batch, encode(approval).as_slice())?;
            Ok(true)
        })
    }

    /// Up to `limit` continent batches from sequence `from` on that are not approved, in
    /// sequence order: (seq, id, record index).
    pub fn dpos_unapproved(&self, from: u64, limit: usize) -> Result<Vec<(u64, Hash32, u64)>> {
        self.ledger.read(|tx| {
            let by_seq = tx.open_table(BY_SEQ)?;
            let approvals = tx.open_table(APPROVALS)?;
            let batches = tx.open_table(CONTINENT_BATCHES)?;
            let mut out = Vec::new();
            for e in by_seq.range(from..)? {
                let (seq, id) = e?;
                let id = *id.value();
                if approvals.get(&id)?.is_some() {
                    continue;
                }
                let Some(v) = batches.get(&id)? else { continue };
                let info: super::continent_store::ContinentBatchInfo = decode(v.value())?;
                out.push((seq.value(), id, info.record_index));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    pub fn dpos_counts(&self) -> Result<DposCounts> {
        self.ledger.read(|tx| {
            Ok(DposCounts {
                approved_batches: tx.open_table(APPROVALS)?.len()?,
                evidence: tx.open_table(EVIDENCE)?.len()?,
                votes: tx.open_table(VOTES)?.len()?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::dpos::Vote;
    use crate::storage::immutable_log::ImmutableLog;

    fn vote(key: &SigningKey, slot: u64, batch: u8) -> SignedVote {
        SignedVote::sign(
            key,
            Vote {
                continent: "asia".into(),
                slot,
                batch_id: [batch; 32],
                representative: "rep-1".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn votes_evidence_and_slashes_are_recorded_once_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
            ContinentStore::open(dir.path(), 1 << 20, log).unwrap()
        };
        let key = SigningKey::from_seed([4; 32]).unwrap();
        let store = open();
        let half = |s: u64| s / 2;
        assert_eq!(
            store
                .dpos_record_vote(&vote(&key, 1, 1), 100, half, 5)
                .unwrap(),
            Recorded::New
        );
        assert_eq!(
            store
                .dpos_record_vote(&vote(&key, 1, 1), 100, half, 6)
                .unwrap(),
            Recorded::Duplicate
        );
        let Recorded::Conflict {
            offence: Some(ev), ..
        } = store
            .dpos_record_vote(&vote(&key, 1, 2), 100, half, 7)
            .unwrap()
        else {
            panic!("a conflict with evidence")
        };
        assert_eq!(ev.slashed, 50);
        // A third batch for the same slot is no second offence, and a representative
        // flooding one slot with batch ids adds nothing to the store: what proves the
        // offence is kept, the rest is not.
        let cast = store.dpos_votes_cast().unwrap();
        for batch in 3..=40 {
            assert!(matches!(
                store
                    .dpos_record_vote(&vote(&key, 1, batch), 100, half, 8)
                    .unwrap(),
                Recorded::Conflict { offence: None, .. }
            ));
            assert!(
                store.dpos_voters(&[batch; 32]).unwrap().is_empty(),
                "{batch}"
            );
        }
        assert_eq!(store.dpos_votes_cast().unwrap(), cast);
        drop(store);
        let store = open();
        assert_eq!(
            store.dpos_slashed().unwrap(),
            vec![("rep-1".to_string(), 50)]
        );
        assert_eq!(store.dpos_evidence().unwrap().len(), 1);
        assert_eq!(
            store.dpos_voters(&[2; 32]).unwrap(),
            vec!["rep-1".to_string()]
        );
        let a = Approval {
            stake: 1,
            total_stake: 1,
            voters: vec![],
            approved_at_ms: 9,
        };
        assert!(store.dpos_approve(&[1; 32], &a).unwrap());
        assert!(!store.dpos_approve(&[1; 32], &a).unwrap());
        assert_eq!(store.dpos_counts().unwrap().approved_batches, 1);
    }
}
