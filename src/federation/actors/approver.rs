//! Approver (continent): gathers its representatives' votes on each continent batch.
//!
//! Woken when a continent batch is durable (the store's `batch_added`), at start (so
//! batches left unapproved by a restart are asked again) and by its own backoff timer.
//! A round is a task: it reads up to [`BATCHES_PER_ROUND`] unapproved batches from the
//! index (from where the last round stopped, so that a batch that cannot be approved
//! never hides the ones after it; wrapping to the lowest unapproved one), sends each (header and the continent's signature, read back from the log) to
//! every representative that has no recorded vote for that slot, all in parallel, as
//! signed requests; checks every vote that comes back against the configured key and
//! records it ([`DposBook::accept`]: votes, evidence, slashes, approvals, fsynced). A
//! 409 carries the representative's earlier vote for the slot, which is recorded the same
//! way (a conflicting one is evidence). While batches stay pending, rounds repeat with a
//! doubling delay from `[dpos] retry_initial` to `retry_max`, back to the start whenever a
//! round approves something.
//!
//! Approval gates nothing: the Uplink forwards continent batches to the global node
//! whether approved or not; approval is a record beside them.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::config::DposConfig;
use crate::crypto::{Hash32, SigningKey};
use crate::federation::dpos::DposBook;
use crate::federation::msgs::ApproverMsg;
use crate::messages::auth::RequestSigner;
use crate::messages::dpos::{DposProposal, PROPOSALS_PATH, SignedVote, VoteReply};
use crate::messages::encode;

/// Mailbox capacity (wake-ups and round completions only).
pub const MAILBOX_CAPACITY: usize = 64;
/// Unapproved continent batches one round asks about, at most.
pub const BATCHES_PER_ROUND: usize = 32;

pub struct Approver;

pub struct ApproverArgs {
    pub config: DposConfig,
    pub node_id: String,
    pub key: Arc<SigningKey>,
    pub book: Arc<DposBook>,
}

/// What a round needs, shared with its task.
struct Round {
    book: Arc<DposBook>,
    http: reqwest::Client,
    signer: RequestSigner,
    node_id: String,
    /// (id, base URL) of each representative.
    targets: Vec<(String, String)>,
    timeout: Duration,
}

pub struct ApproverState {
    round: Arc<Round>,
    initial: Duration,
    max: Duration,
    delay: Duration,
    /// The lowest sequence number that may still be unapproved.
    low: u64,
    /// Where the next round looks first (at or above `low`).
    next: u64,
    in_flight: bool,
    again: bool,
    timer: u64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Round {
    /// Asks one representative about one batch: its vote, or its earlier vote for the
    /// slot (409); `None` if it did not answer usefully (asked again next round).
    async fn ask(&self, rep: &str, url: &str, body: Vec<u8>) -> Option<SignedVote> {
        let headers = self
            .signer
            .headers("POST", PROPOSALS_PATH, rep, &body)
            .ok()?;
        let mut req = self
            .http
            .post(format!("{}{PROPOSALS_PATH}", url.trim_end_matches('/')))
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(representative = rep, error = %e, "representative unreachable");
                return None;
            }
        };
        let status = resp.status();
        if !(status.is_success() || status == reqwest::StatusCode::CONFLICT) {
            tracing::warn!(representative = rep, %status, "representative refused a proposal");
            return None;
        }
        match resp.json::<VoteReply>().await {
            Ok(reply) => Some(reply.vote),
            Err(e) => {
                tracing::warn!(representative = rep, error = %e, "unreadable vote");
                None
            }
        }
    }

    /// Up to [`BATCHES_PER_ROUND`] unapproved batches from `start`. Blocks.
    fn unapproved(&self, start: u64) -> Result<Vec<(u64, Hash32, u64)>, String> {
        self.book
            .store
            .dpos_unapproved(start, BATCHES_PER_ROUND)
            .map_err(|e| e.to_string())
    }

    /// One round from `next` (or from `low` once past the last pending batch); returns
    /// (batches still pending, something was approved, the new `low`, the new `next`).
    async fn run(self: Arc<Self>, low: u64, next: u64) -> (bool, bool, u64, u64) {
        let me = self.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let start = next.max(low);
            let found = me.unapproved(start)?;
            if found.is_empty() && start > low {
                return Ok((low, me.unapproved(low)?));
            }
            Ok::<_, String>((start, found))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (start, pending) = match scanned {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "reading unapproved continent batches failed");
                return (true, false, low, next);
            }
        };
        let Some(first) = pending.first() else {
            return (false, false, low, low);
        };
        // A scan from `low` finds the lowest unapproved batch; one from further on does not.
        let new_low = if start == low { first.0 } else { low };
        let new_next = match pending.last() {
            Some(last) if pending.len() == BATCHES_PER_ROUND => last.0 + 1,
            _ => new_low,
        };
        // Batches outside this window may wait too: below it, or after a full one.
        let more = start > new_low || pending.len() == BATCHES_PER_ROUND;
        // (batch, representative, url, proposal body)
        let mut asks: Vec<(Hash32, String, String, Vec<u8>)> = Vec::new();
        for (seq, id, record_index) in &pending {
            let (book, me, (seq, id, record_index)) = (
                self.book.clone(),
                self.node_id.clone(),
                (*seq, *id, *record_index),
            );
            let targets = self.targets.clone();
            let planned = tokio::task::spawn_blocking(move || {
                let record = book.store.record(record_index)?;
                let body = encode(&DposProposal {
                    header: record.batch.batch.header,
                    signer: me,
                    signature: record.batch.signature,
                });
                let mut out = Vec::new();
                for (rep, url) in targets {
                    if book.store.dpos_vote(&rep, seq)?.is_none() {
                        out.push((id, rep, url, body.clone()));
                    }
                }
                Ok::<_, crate::storage::ledger::LedgerError>(out)
            })
            .await;
            match planned {
                Ok(Ok(list)) => asks.extend(list),
                Ok(Err(e)) => tracing::error!(seq, error = %e, "reading a continent batch failed"),
                Err(e) => tracing::error!(seq, error = %e, "reading a continent batch failed"),
            }
        }
        let votes = futures::future::join_all(
            asks.iter()
                .map(|(_, rep, url, body)| self.ask(rep, url, body.clone())),
        )
        .await;
        let book = self.book.clone();
        let ids: Vec<Hash32> = pending.iter().map(|(_, id, _)| *id).collect();
        let result = tokio::task::spawn_blocking(move || {
            let mut approved = false;
            for vote in votes.into_iter().flatten() {
                match book.accept(&vote) {
                    Ok(o) => approved |= o.approved_now,
                    Err(e) => tracing::warn!(
                        representative = %vote.representative,
                        error = %e,
                        "a representative's answer was refused"
                    ),
                }
            }
            // A slash may have lowered the stake in force enough for what waited.
            let mut pending = false;
            for id in &ids {
                match book.approve_if_due(id) {
                    Ok(now) => approved |= now,
                    Err(e) => tracing::error!(error = %e, "recording an approval failed"),
                }
                if !matches!(book.store.dpos_approval(id), Ok(Some(_))) {
                    pending = true;
                }
            }
            (pending, approved)
        })
        .await;
        match result {
            Ok((pending, approved)) => (pending || more, approved, new_low, new_next),
            Err(e) => {
                tracing::error!(error = %e, "recording votes failed");
                (true, false, new_low, new_next)
            }
        }
    }
}

impl Approver {
    fn start_round(myself: &ActorRef<ApproverMsg>, state: &mut ApproverState) {
        if state.in_flight {
            state.again = true;
            return;
        }
        state.in_flight = true;
        let (round, me) = (state.round.clone(), myself.clone());
        let (low, next) = (state.low, state.next);
        tokio::spawn(async move {
            let (pending, approved, low, next) = round.run(low, next).await;
            let _ = me.cast(ApproverMsg::Done {
                pending,
                approved,
                low,
                next,
            });
        });
    }

    fn done(
        myself: &ActorRef<ApproverMsg>,
        state: &mut ApproverState,
        pending: bool,
        approved: bool,
        (low, next): (u64, u64),
    ) {
        state.in_flight = false;
        state.low = low;
        state.next = next;
        if approved {
            state.delay = state.initial;
        }
        if std::mem::take(&mut state.again) {
            Self::start_round(myself, state);
        } else if pending {
            state.timer += 1;
            let timer = state.timer;
            myself.send_after(state.delay, move || ApproverMsg::Retry(timer));
            state.delay = (state.delay * 2).min(state.max);
        } else {
            state.delay = state.initial;
        }
    }
}

impl Actor for Approver {
    type Msg = ApproverMsg;
    type State = ApproverState;
    type Arguments = ApproverArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ApproverArgs,
    ) -> Result<ApproverState, ActorProcessingErr> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()?;
        let added = args.book.store.batch_added.clone();
        let me = myself.clone();
        let watcher = tokio::spawn(async move {
            loop {
                added.notified().await;
                if me.cast(ApproverMsg::Kick).is_err() {
                    break;
                }
            }
        });
        // Batches left unapproved before a restart are asked again first.
        myself.cast(ApproverMsg::Kick)?;
        let round = Round {
            targets: args
                .config
                .representatives
                .iter()
                .map(|r| (r.id.clone(), r.url.clone()))
                .collect(),
            signer: RequestSigner::new(args.node_id.clone(), args.key.clone()),
            node_id: args.node_id,
            http,
            timeout: args.config.timeout,
            book: args.book,
        };
        Ok(ApproverState {
            round: Arc::new(round),
            initial: args.config.retry_initial,
            max: args.config.retry_max,
            delay: args.config.retry_initial,
            low: 0,
            next: 0,
            in_flight: false,
            again: false,
            timer: 0,
            watcher,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ApproverMsg,
        state: &mut ApproverState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApproverMsg::Kick => Self::start_round(&myself, state),
            ApproverMsg::Retry(timer) => {
                if timer == state.timer {
                    Self::start_round(&myself, state);
                }
            }
            ApproverMsg::Done {
                pending,
                approved,
                low,
                next,
            } => Self::done(&myself, state, pending, approved, (low, next)),
            ApproverMsg::Panic => panic!("fault injected into approver"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ApproverState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::city::mailbox::{Bounded, Depth};
    use crate::config::{Config, RepresentativeEntry};
    use crate::messages::federation::{
        ContinentBatch, ContinentBatchHeader, ContinentRecord, SignedContinentBatch,
    };
    use crate::node::RunningNode;
    use crate::storage::continent_store::ContinentStore;
    use crate::storage::immutable_log::ImmutableLog;

    fn b64(key: &SigningKey) -> String {
        base64::engine::general_purpose::STANDARD.encode(key.public_key())
    }

    /// A representative of asia serving `continent`, in this process.
    async fn representative(
        dir: &std::path::Path,
        id: &str,
        continent: &SigningKey,
    ) -> (RunningNode, String) {
        let text = format!(
            "[node]\nid = \"{id}\"\nrole = \"representative\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncontinent = \"asia\"\n[[auth.peers]]\nid = \"continent-asia\"\nrole = \"continent\"\ncontinent = \"asia\"\npublic_key = \"{}\"\n",
            dir.join(id).display(),
            b64(continent)
        );
        let config = Config::parse(&text).unwrap();
        let key_path = config.node.key_path();
        let node = crate::node::start(config).await.unwrap();
        (node, b64(&SigningKey::load(&key_path).unwrap()))
    }

    async fn batch(store: &ContinentStore, key: &SigningKey, seq: u64) -> Hash32 {
        let batch = ContinentBatch {
            header: ContinentBatchHeader {
                continent: "asia".into(),
                seq,
                parents: vec![],
                entries_root: [0; 32],
                entry_count: 0,
                created_at_ms: seq,
            },
            entries: vec![],
        };
        let signed = SignedContinentBatch::sign(key, "continent-asia", batch).unwrap();
        let id = signed.id();
        store
            .append(&ContinentRecord {
                batch: signed,
                certified: vec![],
            })
            .await
            .unwrap();
        id
    }

    async fn approved(
        store: &ContinentStore,
        id: &Hash32,
    ) -> crate::storage::continent_dpos::Approval {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(a) = store.dpos_approval(id).unwrap() {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not approved in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_stored_before_the_approver_starts_and_while_it_runs_are_all_approved() {
        let dir = tempfile::tempdir().unwrap();
        let continent = Arc::new(SigningKey::from_seed([9; 32]).unwrap());
        let mut reps = Vec::new();
        let mut entries = Vec::new();
        for n in 1..=3 {
            let id = format!("rep-{n}");
            let (node, key) = representative(dir.path(), &id, &continent).await;
            entries.push(RepresentativeEntry {
                id,
                public_key: key,
                stake: 100,
                url: format!("http://{}", node.addr),
            });
            reps.push(node);
        }
        let config = DposConfig {
            representatives: entries,
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            ..DposConfig::default()
        };
        let log = Arc::new(ImmutableLog::open(&dir.path().join("log")).unwrap());
        let store = Arc::new(ContinentStore::open(dir.path(), 1 << 20, log).unwrap());
        // Left from before a restart: asked as soon as the Approver starts.
        let first = batch(&store, &continent, 0).await;
        // More than one round's window waiting at once: every one is reached.
        let mut many = Vec::new();
        for seq in 1..=BATCHES_PER_ROUND as u64 + 8 {
            many.push(batch(&store, &continent, seq).await);
        }
        let book = Arc::new(DposBook::new("asia".into(), &config, store.clone()));
        let args = ApproverArgs {
            config,
            node_id: "continent-asia".into(),
            key: continent.clone(),
            book,
        };
        let (actor, _) = Actor::spawn(None, Bounded(Approver), (args, Depth::new("approver")))
            .await
            .unwrap();
        let a = approved(&store, &first).await;
        assert!(a.stake >= 200 && a.total_stake == 300, "{a:?}");
        for id in &many {
            approved(&store, id).await;
        }
        // A batch stored while it runs is asked at once.
        let second = batch(&store, &continent, BATCHES_PER_ROUND as u64 + 9).await;
        approved(&store, &second).await;
        actor.stop(None);
        for r in reps {
            r.stop().await;
        }
    }
}
