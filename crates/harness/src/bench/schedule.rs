//! The dispatcher: the open-loop schedule of sends, the clock it runs on, and starting
//! each request at its due time without waiting for earlier answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::CLIENT_SATURATED;
use super::tally::{Outcome, Tally, lock};

/// Start times of an open-loop run: `total` sends, the i-th due at `start + i / rate`.
#[derive(Debug)]
pub(super) struct Schedule {
    start: Instant,
    rate: u64,
    total: u64,
    next: u64,
}

impl Schedule {
    pub(super) fn new(start: Instant, rate: u64, duration: Duration) -> Self {
        Self {
            start,
            rate: rate.max(1),
            total: Self::total_for(rate, duration),
            next: 0,
        }
    }

    /// `rate × duration`, rounded down.
    pub(super) fn total_for(rate: u64, duration: Duration) -> u64 {
        u64::try_from(u128::from(rate) * duration.as_nanos() / 1_000_000_000).unwrap_or(u64::MAX)
    }

    pub(super) fn remaining(&self) -> u64 {
        self.total - self.next
    }

    pub(super) fn due(&self, seq: u64) -> Instant {
        let nanos = u128::from(seq) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Waits until the next send is due; returns its sequence number and due time. Never
    /// skips: sends whose time has already passed come back at once, one after another.
    pub(super) async fn next(&mut self, clock: &impl Clock) -> Option<(u64, Instant)> {
        if self.next >= self.total {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let due = self.due(seq);
        if due > clock.now() {
            clock.sleep_until(due).await;
        }
        Some((seq, due))
    }
}

/// Time as the dispatcher sees it: tokio's clock in a run, a virtual one in tests.
pub(super) trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Debug, Clone, Copy)]
pub(super) struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send {
        tokio::time::sleep_until(deadline)
    }
}

/// Runs the schedule: at each due time takes the next pre-signed body and starts `send`
/// on it without waiting for the answer, or counts [`CLIENT_SATURATED`] when
/// `max_in_flight` requests are outstanding. Stops early if `bodies` runs dry. Returns
/// the requests still outstanding.
pub(super) async fn dispatch<C, F, Fut>(
    clock: &C,
    schedule: &mut Schedule,
    bodies: &mut mpsc::Receiver<Vec<u8>>,
    max_in_flight: usize,
    tally: &Arc<Mutex<Tally>>,
    progress: &ProgressBar,
    mut send: F,
) -> JoinSet<()>
where
    C: Clock,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS)));
    let mut tasks = JoinSet::new();
    let mut stalls = 0u64;
    while let Some((_seq, due)) = schedule.next(clock).await {
        // Take the body even when saturated, so the ones left stay fresh.
        let body = match bodies.try_recv() {
            Ok(body) => body,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The signers fell behind: this send is late, and its latency says so.
                stalls += 1;
                match bodies.recv().await {
                    Some(body) => body,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        progress.inc(1);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            lock(tally).error(CLIENT_SATURATED);
            continue;
        };
        lock(tally).started(clock.now());
        let answer = send(body);
        let (tally, clock) = (tally.clone(), clock.clone());
        tasks.spawn(async move {
            let outcome = answer.await;
            lock(&tally).answered(outcome, due, clock.now());
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    if stalls > 0 {
        tracing::warn!(
            stalls,
            "sends waited for a signature; their latencies include client time (lower the rate)"
        );
    }
    tasks
}

/// Waits up to `limit` for the outstanding requests, abandons the rest, and closes the
/// tally.
pub(super) async fn drain(mut tasks: JoinSet<()>, tally: &Mutex<Tally>, limit: Duration) {
    let all = async { while tasks.join_next().await.is_some() {} };
    let _timed_out = tokio::time::timeout(limit, all).await;
    tasks.shutdown().await;
    lock(tally).close();
}

#[cfg(test)]
mod tests {
    use super::super::{DRAIN_TIMEOUT, UNANSWERED};
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn total_is_rate_times_duration() {
        assert_eq!(Schedule::total_for(1_000, Duration::from_secs(10)), 10_000);
        assert_eq!(Schedule::total_for(3, ms(1_500)), 4);
        assert_eq!(Schedule::total_for(1, ms(500)), 0);
    }

    /// Virtual time: `sleep_until` lets runnable tasks run, then jumps the clock to the
    /// deadline, as tokio's paused clock does when the runtime is idle (this crate does not
    /// enable tokio's `test-util`, which `start_paused` needs).
    #[derive(Clone)]
    struct VirtualClock(Arc<Mutex<Instant>>);

    impl VirtualClock {
        fn new() -> Self {
            Self(Arc::new(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for VirtualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }

        fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send {
            let clock = self.clone();
            async move {
                // Like tokio's paused clock, let every runnable task run before time moves.
                tokio::task::yield_now().await;
                let mut now = clock.0.lock().unwrap();
                if deadline > *now {
                    *now = deadline;
                }
            }
        }
    }

    #[tokio::test]
    async fn schedule_starts_rate_times_duration_sends_on_time() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let (rate, duration) = (50, Duration::from_secs(2));
        let mut schedule = Schedule::new(start, rate, duration);
        let mut n = 0u64;
        while let Some((seq, due)) = schedule.next(&clock).await {
            assert_eq!(seq, n);
            assert_eq!(due, start + ms(20) * seq as u32);
            assert_eq!(clock.now(), due, "send {seq} not started at its time");
            n += 1;
        }
        assert_eq!(n, rate * duration.as_secs());
        assert_eq!(clock.now() - start, ms(1_980));
    }

    #[tokio::test]
    async fn schedule_bursts_missed_sends_instead_of_skipping_them() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let mut schedule = Schedule::new(start, 100, Duration::from_secs(1));
        assert_eq!(schedule.next(&clock).await, Some((0, start)));
        clock.advance(ms(500));
        let late = clock.now();
        for seq in 1..=50 {
            let (s, due) = schedule.next(&clock).await.unwrap();
            assert_eq!(s, seq);
            assert_eq!(due, start + ms(10) * seq as u32);
            assert_eq!(clock.now(), late, "overdue send {seq} waited");
        }
        assert_eq!(schedule.remaining(), 49);
        assert_eq!(schedule.next(&clock).await, Some((51, start + ms(510))));
        assert_eq!(clock.now(), start + ms(510));
    }

    fn bodies(n: usize) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(n.max(1));
        for i in 0..n {
            tx.try_send(vec![i as u8]).unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn dispatch_does_not_wait_for_answers_and_counts_saturation() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let mut schedule = Schedule::new(start, 100, Duration::from_secs(1));
        let mut rx = bodies(100);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let progress = ProgressBar::hidden();
        // The node never answers.
        let send = |_body: Vec<u8>| std::future::pending::<Outcome>();
        let run = dispatch(&clock, &mut schedule, &mut rx, 10, &tally, &progress, send);
        // Real time passes only if dispatch wrongly waits for an answer.
        let outstanding = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("dispatch waited for answers that never come");
        assert_eq!(clock.now() - start, ms(990), "the schedule kept its pace");
        assert_eq!(progress.position(), 100);
        {
            let t = lock(&tally);
            assert_eq!(t.sent, 10);
            assert_eq!(t.in_flight, 10);
            assert_eq!(t.errors.get(CLIENT_SATURATED), Some(&90));
        }
        drain(outstanding, &tally, Duration::ZERO).await;
        let report = lock(&tally).report(
            "http://n",
            100,
            Duration::from_secs(1),
            super::super::ClientInfo::here(false),
            None,
        );
        assert_eq!(report.errors.get(UNANSWERED), Some(&10));
        assert_eq!(report.ok, 0);
        assert_eq!(report.throughput_tps, 0.0);
    }

    #[tokio::test]
    async fn latency_counts_from_the_scheduled_time() {
        let clock = VirtualClock::new();
        let schedule = Schedule::new(clock.now(), 100, ms(200));
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let dispatcher = {
            let (tally, clock) = (tally.clone(), clock.clone());
            tokio::spawn(async move {
                let mut schedule = schedule;
                let send = |_body: Vec<u8>| async {
                    Outcome::Stored {
                        duplicate: false,
                        tier: "light".into(),
                    }
                };
                let progress = ProgressBar::hidden();
                dispatch(&clock, &mut schedule, &mut rx, 64, &tally, &progress, send).await
            })
        };
        // The client stalls for 100 ms (no body ready); sends 0..=9 become overdue.
        clock.advance(ms(100));
        for i in 0..20u8 {
            tx.send(vec![i]).await.unwrap();
        }
        drop(tx);
        let outstanding = dispatcher.await.unwrap();
        drain(outstanding, &tally, DRAIN_TIMEOUT).await;
        let t = lock(&tally);
        assert_eq!(t.ok, 20);
        assert_eq!(t.tiers.get("light"), Some(&20));
        let delayed: u64 = t
            .latency_us
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= 9_000)
            .map(|v| v.count_at_value())
            .sum();
        assert_eq!(delayed, 10, "the stalled sends carry their queueing delay");
        let max_ms = t.latency_us.max() as f64 / 1_000.0;
        assert!((max_ms - 100.0).abs() < 0.5, "max {max_ms} ms");
    }
}
