//! The closed loop: `workers` requests outstanding at every moment until the run ends,
//! each worker sending its next transaction as soon as its previous one is answered.
//! Latency counts from each request's send (there is no schedule to fall behind), so the
//! throughput a closed loop reaches is the node's at that concurrency, and its latencies
//! are service times, not the open loop's latencies under an offered load.

use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::tally::{Outcome, Tally, lock};

/// Runs `workers` loops until `until`: each takes the next pre-signed body, sends it and
/// waits for the answer. Stops early if `bodies` runs dry. Returns the workers, still
/// finishing the request each started before `until`.
pub(super) fn closed_loop<F, Fut>(
    workers: usize,
    until: Instant,
    bodies: mpsc::Receiver<Vec<u8>>,
    tally: &Arc<Mutex<Tally>>,
    progress: &ProgressBar,
    send: F,
) -> JoinSet<()>
where
    F: Fn(Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let bodies = Arc::new(tokio::sync::Mutex::new(bodies));
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let (bodies, tally, progress, send) = (
            bodies.clone(),
            tally.clone(),
            progress.clone(),
            send.clone(),
        );
        tasks.spawn(async move {
            while Instant::now() < until {
                let Some(body) = bodies.lock().await.recv().await else {
                    break;
                };
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                lock(&tally).started(sent);
                progress.inc(1);
                let outcome = send(body).await;
                lock(&tally).answered(outcome, sent, Instant::now());
            }
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::super::{DRAIN_TIMEOUT, schedule::drain};
    use super::*;

    #[tokio::test]
    async fn exactly_n_requests_are_outstanding_and_none_starts_after_the_end() {
        const N: usize = 3;
        let (tx, rx) = mpsc::channel(10_000);
        for i in 0..10_000u32 {
            tx.try_send(i.to_be_bytes().to_vec()).unwrap();
        }
        let tally = Arc::new(Mutex::new(Tally::new()));
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // The first N sends meet at a barrier: the run would hang (and the timeout below
        // fail the test) unless N requests are outstanding at once.
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let first = Arc::new(AtomicUsize::new(0));
        let last_start = Arc::new(Mutex::new(None::<Instant>));
        let send = {
            let (now, most, barrier, first, last_start) = (
                now.clone(),
                most.clone(),
                barrier.clone(),
                first.clone(),
                last_start.clone(),
            );
            move |_body: Vec<u8>| {
                let (now, most, barrier, first, last_start) = (
                    now.clone(),
                    most.clone(),
                    barrier.clone(),
                    first.clone(),
                    last_start.clone(),
                );
                async move {
                    *last_start.lock().unwrap() = Some(Instant::now());
                    let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(in_flight, Ordering::SeqCst);
                    if first.fetch_add(1, Ordering::SeqCst) < N {
                        barrier.wait().await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Outcome::Stored {
                        duplicate: false,
                        tier: "log".into(),
                    }
                }
            }
        };
        let until = Instant::now() + Duration::from_millis(200);
        let workers = closed_loop(N, until, rx, &tally, &ProgressBar::hidden(), send);
        tokio::time::timeout(
            Duration::from_secs(10),
            drain(workers, &tally, DRAIN_TIMEOUT),
        )
        .await
        .expect("N requests were outstanding at once");
        assert_eq!(most.load(Ordering::SeqCst), N, "never more than N at once");
        let t = lock(&tally);
        assert!(t.sent > N as u64, "each worker sent again after its answer");
        assert_eq!((t.ok, t.in_flight), (t.sent, 0), "every send answered");
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        assert!(
            last_start.lock().unwrap().unwrap() < until,
            "none started after the end"
        );
        assert!(t.sent < 10_000, "the run ended before the bodies ran out");
    }

    #[tokio::test]
    async fn the_loop_stops_when_the_bodies_run_out() {
        let (tx, rx) = mpsc::channel(8);
        for i in 0..5u8 {
            tx.try_send(vec![i]).unwrap();
        }
        drop(tx);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let send = |_body: Vec<u8>| async { Outcome::Failed("overloaded".into()) };
        let until = Instant::now() + Duration::from_secs(3_600);
        let workers = closed_loop(2, until, rx, &tally, &ProgressBar::hidden(), send);
        tokio::time::timeout(
            Duration::from_secs(10),
            drain(workers, &tally, DRAIN_TIMEOUT),
        )
        .await
        .unwrap();
        let t = lock(&tally);
        assert_eq!((t.sent, t.ok), (5, 0));
        assert_eq!(t.errors.get("overloaded"), Some(&5));
    }
}
