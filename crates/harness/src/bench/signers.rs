//! Signers: blocking threads that sign benchmark transactions ahead of the schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use citychain::crypto::SigningKey;
use citychain::messages::now_ms;
use tokio::sync::mpsc;

use super::BENCH_RECEIVER;
use crate::client::TxDraft;

/// Conservative ML-DSA-65 signatures per second one signer thread sustains (~0.2–0.5 ms
/// each); sizes the signer pool.
pub(super) const SIGNS_PER_SEC_PER_THREAD: u64 = 2_000;

/// Pre-signed bodies to keep ready: half a second of load, at least 64 — but never more
/// than one second of it, so a body waits at most ~1 s between signing and sending.
pub(super) fn channel_capacity(rate: u64) -> usize {
    let n = (rate / 2).max(rate.min(64)).max(1);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Enough signer threads for `rate`, leaving at least half the cores to everything else
/// (often the node under test).
pub(super) fn signer_threads(rate: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = usize::try_from(rate.div_ceil(SIGNS_PER_SEC_PER_THREAD)).unwrap_or(usize::MAX);
    wanted.clamp(1, (cores / 2).max(1))
}

/// The JSON body of a signed benchmark transaction with nonce `seq`.
pub(super) fn build_body(
    key: &SigningKey,
    city: &str,
    continent: &str,
    seq: u64,
    timestamp_ms: u64,
) -> anyhow::Result<Vec<u8>> {
    TxDraft::new(BENCH_RECEIVER, 1 + fastrand::u64(0..1_000), city, seq)
        .continent(continent)
        .timestamp_ms(timestamp_ms)
        .sign_body(key)
        .context("signing a transaction")
}

/// Starts `threads` blocking signers that together sign nonces
/// `first_nonce..first_nonce + total` (each exactly once, in no particular order) into
/// `out`. The channel's bound keeps them from running
/// ahead; they stop early if the receiver goes away.
pub(super) fn spawn_signers(
    key: Arc<SigningKey>,
    city: String,
    continent: String,
    first_nonce: u64,
    total: u64,
    threads: usize,
    out: mpsc::Sender<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let next = Arc::new(AtomicU64::new(0));
    (0..threads.max(1))
        .map(|_| {
            let (key, city, continent, next, out) = (
                key.clone(),
                city.clone(),
                continent.clone(),
                next.clone(),
                out.clone(),
            );
            tokio::task::spawn_blocking(move || {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        return Ok(());
                    }
                    let body = build_body(&key, &city, &continent, first_nonce + seq, now_ms())?;
                    if out.blocking_send(body).is_err() {
                        return Ok(());
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use citychain::messages::{FlagKind, SignedTx};

    use super::*;

    #[test]
    fn bodies_are_accepted_signed_transactions_with_distinct_ids() {
        let key = SigningKey::generate().unwrap();
        let now = now_ms();
        let mut ids = HashSet::new();
        for seq in 0..8 {
            let body = build_body(&key, "tokyo", "asia", seq, now).unwrap();
            let tx = SignedTx::from_request_bytes(&body).unwrap();
            assert_eq!(tx.tx.sender, key.address());
            assert_eq!(tx.tx.kind, FlagKind::FreshTx);
            assert_eq!(tx.tx.receiver, BENCH_RECEIVER);
            assert_eq!(tx.tx.city_id, "tokyo");
            assert_eq!(tx.tx.nonce, seq);
            assert_eq!(tx.tx.timestamp_ms, now);
            assert!(tx.tx.amount >= 1);
            assert_eq!(tx.tx.continent.as_deref(), Some("asia"));
            assert!(tx.tx.payload.is_none() && tx.tx.pop.is_none());
            assert!(ids.insert(tx.id), "duplicate id at nonce {seq}");
        }
    }

    #[tokio::test]
    async fn signers_sign_every_nonce_exactly_once() {
        let key = Arc::new(SigningKey::generate().unwrap());
        let (tx, mut rx) = mpsc::channel(4);
        let signers = spawn_signers(
            key.clone(),
            "oslo".into(),
            "europe".into(),
            1_000,
            24,
            3,
            tx,
        );
        let mut nonces = Vec::new();
        while let Some(body) = rx.recv().await {
            let signed = SignedTx::from_request_bytes(&body).unwrap();
            assert_eq!(signed.tx.sender, key.address());
            nonces.push(signed.tx.nonce);
        }
        for s in signers {
            s.await.unwrap().unwrap();
        }
        nonces.sort_unstable();
        assert_eq!(nonces, (1_000..1_024).collect::<Vec<_>>());
    }

    #[test]
    fn channel_holds_at_most_a_second_and_at_least_64_when_possible() {
        for rate in [1u64, 10, 63, 64, 100, 1_000, 50_000] {
            let cap = channel_capacity(rate) as u64;
            assert!(cap >= 1 && cap <= rate.max(1), "rate {rate}: {cap}");
            assert!(cap >= rate.min(64), "rate {rate}: {cap}");
        }
        assert_eq!(channel_capacity(10_000), 5_000);
    }
}
