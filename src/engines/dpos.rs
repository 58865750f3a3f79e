//! DPoS approval of continent batches: the rules, without I/O.
//!
//! A continent's representatives are configured (`[dpos]`), each with a stake. A
//! representative signs at most one vote per (continent, slot), where the slot is the
//! continent batch's sequence number. A continent batch is **approved** when the
//! representatives that signed a valid vote for exactly that batch id hold at least two
//! thirds of the stake in force: `3 * voted >= 2 * total`, in integers (u128, so no sum
//! overflows), where each representative counts with its stake after slashing and `total`
//! is the sum of those stakes. Two thirds exactly approves: with three equal
//! representatives two suffice, as in the BFT quorums the upstream design borrows.
//!
//! Two valid votes of one representative for the same (continent, slot) and different
//! batch ids are **equivocation**: the pair is the evidence, and the representative loses
//! `slash_fraction` of its remaining stake, once per offence (per slot). Identical votes
//! seen twice are harmless.
//!
//! The engine decides; the continent's store keeps the votes, the evidence, the stake
//! ledger and the approvals (`storage::continent_dpos`).

use crate::config::{ApprovalEngineName, DposConfig, decode_public_key};
use crate::messages::dpos::SignedVote;

/// A representative as the engine sees it: its key and the stake it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Representative {
    pub id: String,
    pub public_key: Vec<u8>,
    /// Configured stake.
    pub stake: u64,
}

/// Why a vote is refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    /// 403: not one of this continent's representatives.
    #[error("{0:?} is not a representative of this continent")]
    UnknownRepresentative(String),
    /// 401: the signature does not verify with the representative's key.
    #[error("the vote's signature does not verify with {0}'s key")]
    BadSignature(String),
    /// 400: a vote for another continent.
    #[error("the vote is for continent {got:?}; this is {want:?}")]
    WrongContinent { got: String, want: String },
}

/// The stake behind one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Stake in force of the representatives that voted for it.
    pub voted: u64,
    /// Stake in force of all representatives.
    pub total: u64,
    pub approved: bool,
}

/// The rules a continent applies to votes. Pure: no I/O, no clock.
pub trait ApprovalEngine: Send + Sync {
    /// Whether continent batches are sent to representatives at all.
    fn enabled(&self) -> bool;

    /// Checks a vote against the representatives of `continent`.
    fn check_vote<'r>(
        &self,
        representatives: &'r [Representative],
        continent: &str,
        vote: &SignedVote,
    ) -> Result<&'r Representative, VoteError> {
        if vote.continent != continent {
            return Err(VoteError::WrongContinent {
                got: vote.continent.clone(),
                want: continent.to_owned(),
            });
        }
        let rep = representatives
            .iter()
            .find(|r| r.id == vote.representative)
            .ok_or_else(|| VoteError::UnknownRepresentative(vote.representative.clone()))?;
        vote.verify(&rep.public_key)
            .map_err(|_| VoteError::BadSignature(rep.id.clone()))?;
        Ok(rep)
    }

    /// The stake behind a batch: `stakes` holds every representative's stake in force,
    /// `voters` those that signed a valid vote for it (duplicates count once).
    fn tally(&self, stakes: &[(String, u64)], voters: &[String]) -> Tally;

    /// Whether two valid votes of one representative are equivocation.
    fn equivocation(&self, a: &SignedVote, b: &SignedVote) -> bool {
        a.representative == b.representative
            && a.continent == b.continent
            && a.slot == b.slot
            && a.batch_id != b.batch_id
    }

    /// The stake an offence takes from a representative holding `stake`.
    fn slash(&self, stake: u64) -> u64;
}

/// The default rules: two thirds of the stake in force, `slash_fraction` per offence.
#[derive(Debug, Clone)]
pub struct StakeTwoThirds {
    pub slash_fraction: f64,
}

impl ApprovalEngine for StakeTwoThirds {
    fn enabled(&self) -> bool {
        true
    }

    fn tally(&self, stakes: &[(String, u64)], voters: &[String]) -> Tally {
        let total: u128 = stakes.iter().map(|(_, s)| u128::from(*s)).sum();
        let voted: u128 = stakes
            .iter()
            .filter(|(id, _)| voters.contains(id))
            .map(|(_, s)| u128::from(*s))
            .sum();
        Tally {
            voted: voted.min(u128::from(u64::MAX)) as u64,
            total: total.min(u128::from(u64::MAX)) as u64,
            // No stake in force approves nothing.
            approved: total > 0 && 3 * voted >= 2 * total,
        }
    }

    fn slash(&self, stake: u64) -> u64 {
        let fraction = self.slash_fraction.clamp(0.0, 1.0);
        ((stake as f64) * fraction).round().min(stake as f64) as u64
    }
}

/// Approval switched off: batches are never proposed, nothing is ever approved.
#[derive(Debug, Clone, Default)]
pub struct Off;

impl ApprovalEngine for Off {
    fn enabled(&self) -> bool {
        false
    }

    fn tally(&self, stakes: &[(String, u64)], _voters: &[String]) -> Tally {
        Tally {
            voted: 0,
            total: stakes.iter().map(|(_, s)| *s).sum(),
            approved: false,
        }
    }

    fn slash(&self, _stake: u64) -> u64 {
        0
    }
}

/// The engine `[dpos]` names.
pub fn from_config(config: &DposConfig) -> Box<dyn ApprovalEngine> {
    match config.engine() {
        ApprovalEngineName::StakeTwoThirds => Box::new(StakeTwoThirds {
            slash_fraction: config.slash_fraction,
        }),
        ApprovalEngineName::Off => Box::new(Off),
    }
}

/// The representatives `[dpos]` lists (entries whose key does not decode are left out;
/// config validation refuses them before a node starts).
pub fn representatives(config: &DposConfig) -> Vec<Representative> {
    config
        .representatives
        .iter()
        .filter_map(|r| {
            Some(Representative {
                id: r.id.clone(),
                public_key: decode_public_key(&r.public_key)?,
                stake: r.stake,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;
    use crate::messages::dpos::Vote;

    fn engine() -> StakeTwoThirds {
        StakeTwoThirds {
            slash_fraction: 1.0,
        }
    }

    fn stakes(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    fn voters(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32]).unwrap()
    }

    fn vote(key: &SigningKey, rep: &str, slot: u64, batch: u8) -> SignedVote {
        SignedVote::sign(
            key,
            Vote {
                continent: "asia".into(),
                slot,
                batch_id: [batch; 32],
                representative: rep.into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn two_thirds_exactly_approves_and_one_unit_less_does_not() {
        let e = engine();
        let equal = stakes(&[("a", 100), ("b", 100), ("c", 100)]);
        let t = e.tally(&equal, &voters(&["a", "b"]));
        assert_eq!((t.voted, t.total, t.approved), (200, 300, true));
        assert!(!e.tally(&equal, &voters(&["a"])).approved);
        // 200 of 301 is just under two thirds; 200 of 300 is exactly.
        let odd = stakes(&[("a", 100), ("b", 100), ("c", 101)]);
        assert!(!e.tally(&odd, &voters(&["a", "b"])).approved);
        assert!(e.tally(&odd, &voters(&["a", "c"])).approved);
        assert!(!e.tally(&stakes(&[]), &voters(&[])).approved);
    }

    #[test]
    fn unequal_stakes_count_by_stake_not_by_head() {
        let e = engine();
        let s = stakes(&[("big", 650), ("small1", 175), ("small2", 175)]);
        // Two of three representatives, but only 35% of the stake.
        assert!(!e.tally(&s, &voters(&["small1", "small2"])).approved);
        // 65% is short of two thirds.
        assert!(!e.tally(&s, &voters(&["big"])).approved);
        assert!(e.tally(&s, &voters(&["big", "small1"])).approved);
    }

    #[test]
    fn slashed_stake_is_excluded_from_both_sides() {
        let e = engine();
        // c was slashed to zero: a and b alone are the whole stake in force.
        let s = stakes(&[("a", 100), ("b", 100), ("c", 0)]);
        let t = e.tally(&s, &voters(&["a", "c"]));
        assert_eq!((t.voted, t.total, t.approved), (100, 200, false));
        assert!(e.tally(&s, &voters(&["a", "b"])).approved);
        // Unknown voters and duplicates add nothing.
        let t = e.tally(&s, &voters(&["a", "a", "zed"]));
        assert_eq!(t.voted, 100);
    }

    #[test]
    fn slashing_takes_the_configured_fraction() {
        assert_eq!(engine().slash(100), 100);
        let half = StakeTwoThirds {
            slash_fraction: 0.5,
        };
        assert_eq!(half.slash(100), 50);
        assert_eq!(half.slash(0), 0);
        assert_eq!(
            StakeTwoThirds {
                slash_fraction: 0.0
            }
            .slash(100),
            0
        );
        assert_eq!(Off.slash(100), 0);
    }

    #[test]
    fn equivocation_is_same_slot_different_batch_only() {
        let e = engine();
        let k = key(1);
        let a = vote(&k, "a", 5, 1);
        assert!(e.equivocation(&a, &vote(&k, "a", 5, 2)));
        assert!(!e.equivocation(&a, &vote(&k, "a", 6, 2)), "another slot");
        assert!(!e.equivocation(&a, &a.clone()), "the same vote twice");
        assert!(!e.equivocation(&a, &vote(&k, "b", 5, 2)), "another voter");
    }

    #[test]
    fn votes_are_checked_for_continent_representative_and_signature() {
        let e = engine();
        let reps = vec![Representative {
            id: "a".into(),
            public_key: key(1).public_key().to_vec(),
            stake: 100,
        }];
        let good = vote(&key(1), "a", 0, 1);
        assert_eq!(e.check_vote(&reps, "asia", &good).unwrap().id, "a");
        assert!(matches!(
            e.check_vote(&reps, "europe", &good),
            Err(VoteError::WrongContinent { .. })
        ));
        assert!(matches!(
            e.check_vote(&reps, "asia", &vote(&key(1), "b", 0, 1)),
            Err(VoteError::UnknownRepresentative(_))
        ));
        let forged = vote(&key(2), "a", 0, 1);
        assert!(matches!(
            e.check_vote(&reps, "asia", &forged),
            Err(VoteError::BadSignature(_))
        ));
        let mut tampered = good.clone();
        tampered.batch_id = [2; 32];
        assert!(e.check_vote(&reps, "asia", &tampered).is_err());
    }
}
