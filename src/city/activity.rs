//! What a city made durable since it started, kept in memory for its status page
//! (`GET /v1/status`): transactions and batches counted by the tier that acknowledged
//! them, and the most recent transactions in a small bounded ring.
//!
//! The Intake records each stored batch here as it answers its clients, so the status
//! page costs a few atomic loads and one short lock, never a scan of the store or of
//! `/metrics`. Nothing here is durable: the counts start at zero with the process (the
//! store's own totals are beside them in `GET /v1/status`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::messages::{BatchId, Tier, TxId, hex32, now_ms};

/// How many recent transactions the ring keeps.
pub const RECENT_TXS: usize = 20;

const TIERS: [Tier; 4] = [Tier::Light, Tier::Full, Tier::Mongo, Tier::Log];

fn slot(tier: Tier) -> usize {
    match tier {
        Tier::Light => 0,
        Tier::Full => 1,
        Tier::Mongo => 2,
        Tier::Log => 3,
    }
}

/// One transaction of the ring, as the city acknowledged it.
#[derive(Debug, Clone, Copy)]
struct Recent {
    tx_id: TxId,
    batch_id: BatchId,
    tier: Tier,
    stored_at_ms: u64,
}

/// Counts by tier and the recent ring; shared by the Intake (writer) and the HTTP layer.
#[derive(Debug)]
pub struct Activity {
    started_ms: u64,
    txs: [AtomicU64; 4],
    batches: [AtomicU64; 4],
    recent: Mutex<VecDeque<Recent>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started_ms: now_ms(),
            txs: Default::default(),
            batches: Default::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_TXS)),
        }
    }
}

/// Counts per tier, as `GET /v1/status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ByTier {
    pub light: u64,
    pub full: u64,
    pub mongo: u64,
    pub log: u64,
}

impl ByTier {
    fn of(counters: &[AtomicU64; 4]) -> Self {
        let [light, full, mongo, log] = TIERS.map(|t| counters[slot(t)].load(Ordering::Relaxed));
        Self {
            light,
            full,
            mongo,
            log,
        }
    }

    pub fn total(&self) -> u64 {
        self.light + self.full + self.mongo + self.log
    }
}

/// One recent transaction of `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RecentTxView {
    pub tx_id: String,
    pub tier: Tier,
    pub batch_id: String,
    pub stored_at_ms: u64,
}

/// What [`Activity::snapshot`] reads.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityView {
    pub started_ms: u64,
    pub txs: ByTier,
    pub batches: ByTier,
    /// Newest first, at most [`RECENT_TXS`].
    pub recent: Vec<RecentTxView>,
}

impl Activity {
    /// Records a batch of `tx_ids` made durable on `tier`.
    pub fn stored(&self, tier: Tier, batch_id: &BatchId, tx_ids: &[TxId]) {
        let i = slot(tier);
        self.batches[i].fetch_add(1, Ordering::Relaxed);
        self.txs[i].fetch_add(tx_ids.len() as u64, Ordering::Relaxed);
        let at = now_ms();
        // Only the last few of a large batch can stay in the ring.
        let tail = &tx_ids[tx_ids.len().saturating_sub(RECENT_TXS)..];
        let mut ring = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        for tx_id in tail {
            if ring.len() == RECENT_TXS {
                ring.pop_front();
            }
            ring.push_back(Recent {
                tx_id: *tx_id,
                batch_id: *batch_id,
                tier,
                stored_at_ms: at,
            });
        }
    }

    pub fn snapshot(&self) -> ActivityView {
        let recent: Vec<Recent> = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .copied()
            .collect();
        ActivityView {
            started_ms: self.started_ms,
            txs: ByTier::of(&self.txs),
            batches: ByTier::of(&self.batches),
            recent: recent
                .into_iter()
                .map(|r| RecentTxView {
                    tx_id: hex32(&r.tx_id),
                    tier: r.tier,
                    batch_id: hex32(&r.batch_id),
                    stored_at_ms: r.stored_at_ms,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_tier_and_keeps_the_newest_transactions_first() {
        let a = Activity::default();
        let ids: Vec<TxId> = (0..30u8).map(|n| [n; 32]).collect();
        a.stored(Tier::Light, &[1; 32], &ids[..25]);
        a.stored(Tier::Log, &[2; 32], &ids[25..]);
        let v = a.snapshot();
        assert_eq!(
            v.txs,
            ByTier {
                light: 25,
                full: 0,
                mongo: 0,
                log: 5
            }
        );
        assert_eq!(v.batches.light, 1);
        assert_eq!(v.batches.log, 1);
        assert_eq!(v.batches.total(), 2);
        assert_eq!(v.recent.len(), RECENT_TXS);
        assert_eq!(v.recent[0].tx_id, hex32(&[29; 32]));
        assert_eq!(v.recent[0].tier, Tier::Log);
        assert_eq!(v.recent[0].batch_id, hex32(&[2; 32]));
        // The oldest kept is the 20th from the end: transaction 10, from the light batch.
        assert_eq!(v.recent[RECENT_TXS - 1].tx_id, hex32(&[10; 32]));
        assert_eq!(v.recent[RECENT_TXS - 1].tier, Tier::Light);
    }
}
