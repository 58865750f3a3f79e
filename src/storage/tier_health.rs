//! What the last attempt on each tier of a chain showed. The Failover actor records every
//! tier result here; a city's readiness reads it for the tiers it cannot probe (MongoDB and
//! the immutable log: light and full nodes are probed by the Prioritizer).

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The last attempt on one tier.
#[derive(Debug, Clone, PartialEq)]
pub struct LastAttempt {
    /// `Err` with the reason the tier gave.
    pub outcome: Result<(), String>,
    pub at: Instant,
}

/// The last attempt on each tier of a chain, by position.
#[derive(Debug, Default)]
pub struct TierHealth {
    last: Mutex<Vec<Option<LastAttempt>>>,
}

impl TierHealth {
    pub fn new(tiers: usize) -> Self {
        Self {
            last: Mutex::new(vec![None; tiers]),
        }
    }

    /// Records the outcome of an attempt on the tier at `index` of the chain.
    pub fn record(&self, index: usize, outcome: Result<(), String>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = last.get_mut(index) {
            *slot = Some(LastAttempt {
                outcome,
                at: Instant::now(),
            });
        }
    }

    /// The last attempt on the tier at `index`; `None` before the first.
    pub fn last(&self, index: usize) -> Option<LastAttempt> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.get(index).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_outcome_of_each_tier() {
        let health = TierHealth::new(2);
        assert_eq!(health.last(0), None);
        health.record(1, Err("disk full".into()));
        health.record(1, Ok(()));
        health.record(0, Err("down".into()));
        health.record(7, Ok(()));
        assert_eq!(health.last(0).unwrap().outcome, Err("down".into()));
        assert_eq!(health.last(1).unwrap().outcome, Ok(()));
        assert_eq!(health.last(7), None, "outside the chain: ignored");
    }
}
