//! Uplink: forwards what this node holds to the node above it, until acknowledged.
//!
//! A city runs it over its outbox of batches for its continent, a continent over its
//! outbox of continent batches for the global node ([`Outbox`]). Both outboxes are durable,
//! so the actor owns only timing: it is woken when something enters the outbox (and once at
//! every start, for what waited across a restart), and each attempt runs in a task of its
//! own that forwards up to `[uplink] max_items` items in one signed request and reports back
//! ([`UplinkMsg::Done`]); the actor never waits on the network. A report meant for an
//! incarnation that failed is dropped with it: its successor starts by looking at the
//! outbox again.
//!
//! After a failure (the upstream unreachable, busy, or refusing the request's signature)
//! it waits `retry_initial`, doubling up to `retry_max`, and new work does not cut the wait
//! short. When the upstream refuses the content (400/403: a certificate it does not
//! accept), the actor halves the request until the item it refuses stands alone, sets that
//! one aside (offered again every `retry_max`, with an error in the log) and forwards the
//! rest, so one bad item never holds up the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::city::msgs::UplinkMsg;
use crate::config::UplinkConfig;
use crate::crypto::Hash32;
use crate::messages::hex32;
use crate::storage::upstream::{Attempt, Outbox, UplinkStatus};

/// Mailbox capacity: wake-ups, timers and one attempt's report at a time.
pub const MAILBOX_CAPACITY: usize = 64;

pub struct Uplink;

/// What a node hands the uplink it starts: the outbox, its wake-up, the link's published
/// state and the `[uplink]` section.
#[derive(Clone)]
pub struct UplinkParts {
    pub outbox: Arc<dyn Outbox>,
    pub added: Arc<Notify>,
    pub status: Arc<UplinkStatus>,
    pub config: UplinkConfig,
}

impl UplinkParts {
    /// The actor's arguments.
    pub fn args(&self) -> UplinkArgs {
        UplinkArgs {
            outbox: self.outbox.clone(),
            added: self.added.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
        }
    }
}

pub struct UplinkArgs {
    pub outbox: Arc<dyn Outbox>,
    /// Notified when something enters the outbox.
    pub added: Arc<Notify>,
    pub config: UplinkConfig,
    pub status: Arc<UplinkStatus>,
}

pub struct UplinkState {
    args: UplinkArgs,
    /// Items per request now: `max_items`, halved while the upstream refuses content.
    limit: usize,
    /// The delay after the last failure, while failures go on.
    backoff: Option<Duration>,
    /// No attempt before this (a backoff); the timer of generation `timer` ends it.
    hold_until: Option<Instant>,
    timer: u64,
    in_flight: bool,
    /// Woken while an attempt ran: look again when it ends.
    again: bool,
    /// Items the upstream refused, and when to offer each again.
    refused: HashMap<Hash32, Instant>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Uplink {
    fn start(myself: &ActorRef<UplinkMsg>, state: &mut UplinkState) {
        let now = Instant::now();
        state.refused.retain(|_, until| *until > now);
        state.in_flight = true;
        state.again = false;
        let skip = state.refused.keys().copied().collect();
        let (outbox, me, limit) = (state.args.outbox.clone(), myself.clone(), state.limit);
        tokio::spawn(async move {
            let attempt = outbox.forward(limit, &skip).await;
            // To this incarnation only: a successor looks at the outbox afresh, and the
            // outbox still holds whatever was not acknowledged.
            let _ = me.cast(UplinkMsg::Done(attempt));
        });
    }

    /// Starts an attempt unless one runs or a backoff holds.
    fn wake(myself: &ActorRef<UplinkMsg>, state: &mut UplinkState) {
        if state.in_flight {
            state.again = true;
        } else if state.hold_until.is_none_or(|t| t <= Instant::now()) {
            state.hold_until = None;
            Self::start(myself, state);
        }
    }

    fn done(myself: &ActorRef<UplinkMsg>, state: &mut UplinkState, attempt: Attempt) {
        state.in_flight = false;
        let cfg = &state.args.config;
        let upstream = cfg.id.as_str();
        metrics::gauge!(crate::metrics::UPLINK_WAITING).set(state.args.outbox.waiting() as f64);
        match attempt.outcome {
            Ok(()) => {
                if !attempt.sent.is_empty() {
                    metrics::counter!(crate::metrics::UPLINK_FORWARDED)
                        .increment(attempt.sent.len() as u64);
                    state
                        .args
                        .status
                        .succeeded(attempt.sent.len(), state.refused.len());
                    state.backoff = None;
                    state.limit = (state.limit * 2).min(cfg.max_items);
                }
                if (attempt.more && !attempt.sent.is_empty()) || state.again {
                    Self::start(myself, state);
                }
            }
            Err(e) if e.refuses_content() => {
                metrics::counter!(crate::metrics::UPLINK_FAILURES, "reason" => e.label())
                    .increment(1);
                state.args.status.failed(&e, state.refused.len());
                if attempt.sent.len() > 1 {
                    // One of them is refused: look for it with smaller requests.
                    state.limit = (attempt.sent.len() / 2).max(1);
                    tracing::warn!(%upstream, error = %e, items = attempt.sent.len(), "the upstream refused a request; sending fewer items at a time");
                } else if let Some(id) = attempt.sent.first() {
                    tracing::error!(%upstream, item = %hex32(id), error = %e, retry_in = ?cfg.retry_max, "the upstream refuses this item; it stays in the outbox and is offered again later");
                    state.refused.insert(*id, Instant::now() + cfg.retry_max);
                    state.limit = cfg.max_items;
                    myself.send_after(cfg.retry_max, || UplinkMsg::Kick);
                }
                Self::start(myself, state);
            }
            Err(e) => {
                metrics::counter!(crate::metrics::UPLINK_FAILURES, "reason" => e.label())
                    .increment(1);
                state.args.status.failed(&e, state.refused.len());
                let delay = state
                    .backoff
                    .map_or(cfg.retry_initial, |d| (d * 2).min(cfg.retry_max));
                state.backoff = Some(delay);
                state.hold_until = Some(Instant::now() + delay);
                state.timer += 1;
                let timer = state.timer;
                tracing::warn!(%upstream, error = %e, retry_in = ?delay, "forwarding failed; retrying");
                myself.send_after(delay, move || UplinkMsg::Retry(timer));
            }
        }
    }
}

impl Actor for Uplink {
    type Msg = UplinkMsg;
    type State = UplinkState;
    type Arguments = UplinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UplinkArgs,
    ) -> Result<UplinkState, ActorProcessingErr> {
        let (added, me) = (args.added.clone(), myself.clone());
        let watcher = tokio::spawn(async move {
            loop {
                added.notified().await;
                if me.cast(UplinkMsg::Kick).is_err() {
                    break;
                }
            }
        });
        // Whatever waited across a restart goes first.
        myself.cast(UplinkMsg::Kick)?;
        Ok(UplinkState {
            limit: args.config.max_items,
            args,
            backoff: None,
            hold_until: None,
            timer: 0,
            in_flight: false,
            again: false,
            refused: HashMap::new(),
            watcher,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: UplinkMsg,
        state: &mut UplinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UplinkMsg::Kick => Self::wake(&myself, state),
            UplinkMsg::Retry(timer) => {
                if timer == state.timer {
                    state.hold_until = None;
                    Self::wake(&myself, state);
                }
            }
            UplinkMsg::Done(attempt) => Self::done(&myself, state, attempt),
            UplinkMsg::Panic => panic!("fault injected into uplink"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut UplinkState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::city::mailbox::{Bounded, Depth};
    use crate::storage::upstream::LinkError;

    /// An outbox of numbered items; the upstream refuses `bad` and is down while `down`.
    struct Fake {
        waiting: Mutex<Vec<u8>>,
        bad: Option<u8>,
        down: Mutex<bool>,
        requests: Mutex<Vec<Vec<u8>>>,
    }

    fn id(n: u8) -> Hash32 {
        [n; 32]
    }

    #[async_trait::async_trait]
    impl Outbox for Fake {
        async fn forward(&self, limit: usize, skip: &HashSet<Hash32>) -> Attempt {
            let items: Vec<u8> = self
                .waiting
                .lock()
                .unwrap()
                .iter()
                .copied()
                .filter(|n| !skip.contains(&id(*n)))
                .collect();
            let more = items.len() > limit;
            let sent: Vec<u8> = items.into_iter().take(limit).collect();
            if sent.is_empty() {
                return Attempt {
                    sent: vec![],
                    outcome: Ok(()),
                    more: false,
                };
            }
            self.requests.lock().unwrap().push(sent.clone());
            let outcome = if *self.down.lock().unwrap() {
                Err(LinkError::Unreachable("down".into()))
            } else if self.bad.is_some_and(|b| sent.contains(&b)) {
                Err(LinkError::Refused {
                    status: 403,
                    code: "invalid_certificate".into(),
                    message: "no".into(),
                })
            } else {
                self.waiting.lock().unwrap().retain(|n| !sent.contains(n));
                Ok(())
            };
            Attempt {
                sent: sent.iter().map(|n| id(*n)).collect(),
                outcome,
                more,
            }
        }

        fn waiting(&self) -> u64 {
            self.waiting.lock().unwrap().len() as u64
        }
    }

    async fn start(fake: Arc<Fake>, max_items: usize) -> (Arc<Notify>, ActorRef<UplinkMsg>) {
        let mut config = UplinkConfig::to("continent-asia", "http://127.0.0.1:1");
        config.max_items = max_items;
        config.retry_initial = Duration::from_millis(100);
        config.retry_max = Duration::from_secs(5);
        let depth = Depth::new("uplink");
        let added = Arc::new(Notify::new());
        let status = Arc::new(UplinkStatus::new(&config));
        let args = UplinkArgs {
            outbox: fake,
            added: added.clone(),
            config,
            status,
        };
        let (actor, _) = Actor::spawn(None, Bounded(Uplink), (args, depth))
            .await
            .unwrap();
        (added, actor)
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_item_is_set_aside_and_the_rest_goes_through() {
        let fake = Arc::new(Fake {
            waiting: Mutex::new((0..8).collect()),
            bad: Some(5),
            down: Mutex::new(false),
            requests: Mutex::default(),
        });
        let (_added, actor) = start(fake.clone(), 8).await;
        settle().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        settle().await;
        assert_eq!(
            *fake.waiting.lock().unwrap(),
            vec![5],
            "everything else went"
        );
        let requests = fake.requests.lock().unwrap().clone();
        assert_eq!(requests.first().map(Vec::len), Some(8));
        assert!(requests.contains(&vec![5]), "{requests:?}");
        // Offered again after retry_max, refused again.
        let before = fake.requests.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle().await;
        assert!(fake.requests.lock().unwrap().len() > before);
        actor.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_new_work_does_not_cut_the_wait_short() {
        let fake = Arc::new(Fake {
            waiting: Mutex::new(vec![1]),
            bad: None,
            down: Mutex::new(true),
            requests: Mutex::default(),
        });
        let (added, actor) = start(fake.clone(), 8).await;
        settle().await;
        assert_eq!(fake.requests.lock().unwrap().len(), 1);
        // Woken during the backoff: nothing is sent before it ends.
        fake.waiting.lock().unwrap().push(2);
        added.notify_one();
        settle().await;
        assert_eq!(fake.requests.lock().unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(110)).await;
        settle().await;
        assert_eq!(fake.requests.lock().unwrap().len(), 2, "after 100 ms");
        tokio::time::sleep(Duration::from_millis(150)).await;
        settle().await;
        assert_eq!(fake.requests.lock().unwrap().len(), 2, "then 200 ms");
        *fake.down.lock().unwrap() = false;
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(fake.requests.lock().unwrap().len(), 3);
        assert!(fake.waiting.lock().unwrap().is_empty());
        actor.stop(None);
    }
}
