//! Metric names and the process-wide Prometheus recorder.
//!
//! One named metric per thing worth watching. `/metrics` renders the recorder's handle from
//! our own actix-web route; a background task runs the handle's upkeep so histograms do not
//! grow without bound.
//!
//! Names follow the Prometheus conventions (base units in the name: `_seconds`, `_bytes`;
//! `_total` on counters only). Every metric has a help text ([`DESCRIPTIONS`], the `# HELP`
//! lines), and each role registers the counters and gauges it exports at start
//! ([`register_role`]), so dashboards and alerts read 0 rather than "no data" before the
//! first event. `deploy/prometheus` and `deploy/grafana` use these names;
//! `scripts/check-monitoring` holds them to what a running federation exports.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, Role};

/// Counter, label `reason`: transactions refused (an API error code).
pub const TX_REJECTED: &str = "citychain_tx_rejected_total";
/// Counter (city nodes), label `outcome` (`inside`, `absent`, `unchecked`, or the refusal's
/// code: `pop_outside_city`, `pop_required`, `invalid_field`): proof-of-place checks.
pub const POP_CHECKS: &str = "citychain_pop_checks_total";
/// Counter, label `rule` (`kind`, `in_flight`, `owner`): transactions refused 409
/// `object_conflict` (`engines::objects`).
pub const OBJECT_CONFLICTS: &str = "citychain_object_conflicts_total";
/// Counter: transactions acknowledged durable (200 on first submission).
pub const TX_ACCEPTED: &str = "citychain_tx_accepted_total";
/// Counter, label `tier`: batches stored, by the tier they reached.
pub const BATCHES_STORED: &str = "citychain_batches_stored_total";
/// Counter: batches no tier could store.
pub const BATCHES_FAILED: &str = "citychain_batches_failed_total";
/// Histogram (seconds): from a transaction's arrival to its batch being durable.
pub const STORE_LATENCY: &str = "citychain_store_latency_seconds";
/// Histogram (seconds), label `stage`: where a batch's time goes on its way to durable, in
/// the order it passes them: `batch` (its oldest transaction's arrival to the batch sealed:
/// the batch window and sealing), `queue` (sealed to its write started: flagging, placing),
/// `first_tier` (the write to the first tier of the chain, until its acks are in or it
/// failed) and `index` (the tier answered to the city's index record fsynced).
pub const STAGE_LATENCY: &str = "citychain_stage_seconds";
/// Histogram: transactions per batch.
pub const BATCH_SIZE: &str = "citychain_batch_txs";
/// Gauge, label `actor`: messages waiting in the actor's mailbox.
pub const MAILBOX_DEPTH: &str = "citychain_mailbox_depth";
/// Gauge, label `node`: 1 while a storage node is up, 0 when down.
pub const STORAGE_NODE_UP: &str = "citychain_storage_node_up";
/// Gauge, label `node`: the 0–9 score of a storage node.
pub const STORAGE_NODE_SCORE: &str = "citychain_storage_node_score";
/// Counter, label `tier`: tier attempts that failed and fell through.
pub const TIER_FAILURES: &str = "citychain_tier_failures_total";
/// Counter, label `reason`: acks refused by verification.
pub const ACKS_REJECTED: &str = "citychain_acks_rejected_total";
/// Counter (storage nodes), label `outcome`: batches offered to this node.
pub const STORE_REQUESTS: &str = "citychain_store_requests_total";
/// Gauge (storage nodes): bytes held.
pub const STORE_USED_BYTES: &str = "citychain_store_used_bytes";
/// Counter, label `actor`: pipeline actors that exited (panic, error or stop).
pub const ACTOR_FAILURES: &str = "citychain_actor_failures_total";
/// Counter, label `actor`: restarts by the supervisor.
pub const ACTOR_RESTARTS: &str = "citychain_actor_restarts_total";
/// Counter, labels `kind` (`upward`, `rereplicate`) and `from` (tier): batches repaired.
pub const REPAIRS: &str = "citychain_repairs_total";
/// Counter (city nodes): light batches archived to full nodes once past `[storage]
/// light_retention` and acknowledged upstream (their light pieces are then released).
pub const ARCHIVED_BATCHES: &str = "citychain_archived_batches_total";
/// Counter (city nodes): light pieces of archived batches released on their light nodes
/// (removed, or found already gone).
pub const LIGHT_PIECES_RELEASED: &str = "citychain_light_pieces_released_total";
/// Counter (storage nodes): pieces this node removed at the city's request.
pub const STORE_PIECES_RELEASED: &str = "citychain_store_pieces_released_total";
/// Counter (storage nodes), label `reason` (an API error code): node-to-node requests
/// refused by authentication or rate limiting.
pub const AUTH_REFUSED: &str = "citychain_auth_refused_total";
/// Counter (storage nodes): request sessions opened for the nodes it serves.
pub const SESSIONS_OPENED: &str = "citychain_sessions_opened_total";
/// Counter (city nodes), label `outcome` (`proved`, `refused`, `unreachable`, `missing`):
/// possession challenges sent to storage nodes.
pub const HOLD_CHALLENGES: &str = "citychain_hold_challenges_total";
/// Counter (city nodes), label `role` (`light`, `full`): reward points credited to
/// storage nodes, counted when their ledger entry is durable.
pub const REWARD_POINTS: &str = "citychain_reward_points_total";
/// Counter (city nodes), label `outcome` (`passed`, `failed`): repair challenges whose
/// result entered the rewards ledger (a rate-limited challenge proves nothing and is not
/// counted).
pub const REPAIR_CHALLENGES: &str = "citychain_repair_challenges_total";
/// Counter: records appended to the immutable log.
pub const LOG_APPENDS: &str = "citychain_log_appends_total";
/// Counter: tree heads of the immutable log signed.
pub const LOG_HEADS_SIGNED: &str = "citychain_log_heads_signed_total";
/// Counter: tree heads that could not be signed or written.
pub const LOG_HEAD_FAILURES: &str = "citychain_log_head_failures_total";
/// Gauge: records a signed head covered that the log no longer held (or no longer
/// matched) at this start; 0 when the log held everything.
pub const LOG_RECORDS_LOST: &str = "citychain_log_records_lost";
/// Gauge: batches acknowledged on the immutable log that it no longer holds and that are
/// not found anywhere else yet; their transactions read as `lost`.
pub const LOG_LOST_BATCHES: &str = "citychain_log_lost_batches";
/// Counter, label `reason` (`peer_connections`, `body_budget`, `body_timeout`): requests
/// the HTTP layer refused to protect the node's connections, memory or time.
pub const HTTP_REFUSED: &str = "citychain_http_refused_total";
/// Gauge: bytes of request bodies granted by the body budget now.
pub const BODY_BUDGET_USED: &str = "citychain_body_budget_used_bytes";
/// Gauge: transactions admitted and not yet answered (a city's admission bound).
pub const TX_IN_FLIGHT: &str = "citychain_tx_in_flight";
/// Gauge (storage nodes): the most the store can hold now: its `[storage]` capacity, or
/// less when its disk has less room left.
pub const STORE_CAPACITY_BYTES: &str = "citychain_store_capacity_bytes";
/// Gauge (city nodes): batches held below their home tier (on full nodes, MongoDB or the
/// log in place of light nodes), waiting for the Repairer to move them up; set each round.
pub const REPAIR_BACKLOG: &str = "citychain_repair_backlog_batches";
/// Gauge (storage nodes): 1 while the store fails (an I/O error) and is being reopened.
pub const STORE_FAILING: &str = "citychain_store_failing";

/// Counter (city), labels `tier` (`cache`, `light`, `full`, `mongo`, `log`, or `none`)
/// and `outcome` (`served`, `failed`, `timeout`; `unavailable` or `overloaded` with
/// `tier="none"`): attempts to read a transaction body.
pub const READS: &str = "citychain_reads_total";
/// Histogram (seconds), label `tier`: from the start of a body read to its answer, by
/// the source that served it.
pub const READ_LATENCY: &str = "citychain_read_latency_seconds";
/// Gauge (city): bytes of sealed bodies in the body cache (`[reads] body_cache_bytes`
/// bounds it, but for batches marked lost).
pub const BODY_CACHE_BYTES: &str = "citychain_body_cache_bytes";

/// Counter: items the node above acknowledged (a city's batches, a continent's batches).
pub const UPLINK_FORWARDED: &str = "citychain_uplink_forwarded_total";
/// Counter, label `reason` (`unreachable`, `unauthenticated`, `refused`, `unavailable`,
/// `malformed`, `local`): forwarding attempts that failed.
pub const UPLINK_FAILURES: &str = "citychain_uplink_failures_total";
/// Gauge: items in the outbox, not acknowledged by the node above yet.
pub const UPLINK_WAITING: &str = "citychain_uplink_waiting";
/// Counter (continent), label `outcome` (`merged`, `duplicate`, `refused`): city batches
/// submitted.
pub const CITY_BATCHES_RECEIVED: &str = "citychain_city_batches_received_total";
/// Counter (continent): continent batches made durable.
pub const CONTINENT_BATCHES: &str = "citychain_continent_batches_total";
/// Counter (global), label `outcome` (`received`, `duplicate`, `refused`): continent
/// batches submitted.
pub const CONTINENT_BATCHES_RECEIVED: &str = "citychain_continent_batches_received_total";
/// Counter (global): checkpoints signed and written to the log.
pub const CHECKPOINTS: &str = "citychain_checkpoints_total";
/// Counter (continent), label `outcome` (`recorded`, `duplicate`, `equivocation`,
/// `bad_signature`, `unknown`, `invalid`, `store_failed`): votes on continent batches.
pub const DPOS_VOTES: &str = "citychain_dpos_votes_total";
/// Counter (continent): continent batches approved by two thirds of the stake.
pub const DPOS_APPROVED: &str = "citychain_dpos_approved_batches_total";
/// Gauge (continent): stake slashed from equivocating representatives, in all.
pub const DPOS_SLASHED: &str = "citychain_dpos_slashed_stake";

/// What kind of metric a name is, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric's kind and help text (its `# HELP` line on `/metrics`).
pub const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (
        TX_REJECTED,
        Kind::Counter,
        "Transactions refused, by API error code (reason).",
    ),
    (
        POP_CHECKS,
        Kind::Counter,
        "Proof-of-place checks on a city node, by outcome.",
    ),
    (
        OBJECT_CONFLICTS,
        Kind::Counter,
        "Transactions refused 409 object_conflict, by rule.",
    ),
    (
        TX_ACCEPTED,
        Kind::Counter,
        "Transactions acknowledged durable (200 on first submission).",
    ),
    (
        BATCHES_STORED,
        Kind::Counter,
        "Batches made durable, by the storage tier they reached.",
    ),
    (
        BATCHES_FAILED,
        Kind::Counter,
        "Batches no storage tier could store.",
    ),
    (
        STORE_LATENCY,
        Kind::Histogram,
        "Seconds from a transaction's arrival to its batch being durable.",
    ),
    (
        STAGE_LATENCY,
        Kind::Histogram,
        "Seconds a batch spends in each stage on its way to durable (batch, queue, first_tier, index).",
    ),
    (
        BATCH_SIZE,
        Kind::Histogram,
        "Transactions per sealed batch.",
    ),
    (
        MAILBOX_DEPTH,
        Kind::Gauge,
        "Messages waiting in each pipeline actor's mailbox.",
    ),
    (
        STORAGE_NODE_UP,
        Kind::Gauge,
        "1 while the city sees a storage node up, 0 while down, by node.",
    ),
    (
        STORAGE_NODE_SCORE,
        Kind::Gauge,
        "The 0-9 placement score the city gives each storage node.",
    ),
    (
        TIER_FAILURES,
        Kind::Counter,
        "Tier attempts that failed and fell through to the next tier, by tier.",
    ),
    (
        ACKS_REJECTED,
        Kind::Counter,
        "Storage acks refused by verification, by reason.",
    ),
    (
        STORE_REQUESTS,
        Kind::Counter,
        "Batches and pieces offered to this storage node, by outcome.",
    ),
    (
        STORE_USED_BYTES,
        Kind::Gauge,
        "Bytes this storage node holds.",
    ),
    (
        STORE_CAPACITY_BYTES,
        Kind::Gauge,
        "Bytes this storage node can hold now: its capacity, or less when its disk has less room.",
    ),
    (
        REPAIR_BACKLOG,
        Kind::Gauge,
        "Batches held below their home tier, waiting for the Repairer to move them up.",
    ),
    (
        ACTOR_FAILURES,
        Kind::Counter,
        "Pipeline actor exits (panic, error or stop), by actor.",
    ),
    (
        ACTOR_RESTARTS,
        Kind::Counter,
        "Pipeline actor restarts by the supervisor, by actor.",
    ),
    (
        REPAIRS,
        Kind::Counter,
        "Batches repaired, by kind and the tier they came from.",
    ),
    (
        ARCHIVED_BATCHES,
        Kind::Counter,
        "Light batches archived to full nodes once past their light retention.",
    ),
    (
        LIGHT_PIECES_RELEASED,
        Kind::Counter,
        "Light pieces of archived batches released on their light nodes.",
    ),
    (
        STORE_PIECES_RELEASED,
        Kind::Counter,
        "Pieces this storage node removed at its city's request.",
    ),
    (
        AUTH_REFUSED,
        Kind::Counter,
        "Node-to-node requests refused by authentication or rate limiting, by reason.",
    ),
    (
        SESSIONS_OPENED,
        Kind::Counter,
        "Request sessions this storage node opened for the nodes it serves.",
    ),
    (
        HOLD_CHALLENGES,
        Kind::Counter,
        "Possession challenges sent to storage nodes, by outcome.",
    ),
    (
        REWARD_POINTS,
        Kind::Counter,
        "Reward points credited to storage nodes, by role.",
    ),
    (
        REPAIR_CHALLENGES,
        Kind::Counter,
        "Repair challenges whose result entered the rewards ledger, by outcome.",
    ),
    (
        LOG_APPENDS,
        Kind::Counter,
        "Records appended to the immutable log.",
    ),
    (
        LOG_HEADS_SIGNED,
        Kind::Counter,
        "Tree heads of the immutable log signed.",
    ),
    (
        LOG_HEAD_FAILURES,
        Kind::Counter,
        "Tree heads of the immutable log that could not be signed or written.",
    ),
    (
        LOG_RECORDS_LOST,
        Kind::Gauge,
        "Records a signed head covered that the log no longer held at this start.",
    ),
    (
        LOG_LOST_BATCHES,
        Kind::Gauge,
        "Batches acknowledged on the immutable log that it no longer holds and no other copy was found for yet.",
    ),
    (
        HTTP_REFUSED,
        Kind::Counter,
        "Requests the HTTP layer refused to protect connections, memory or time, by reason.",
    ),
    (
        BODY_BUDGET_USED,
        Kind::Gauge,
        "Bytes of request bodies granted by the body budget now.",
    ),
    (
        TX_IN_FLIGHT,
        Kind::Gauge,
        "Transactions admitted and not yet answered.",
    ),
    (
        STORE_FAILING,
        Kind::Gauge,
        "1 while this storage node's store fails and is being reopened.",
    ),
    (
        READS,
        Kind::Counter,
        "Attempts to read a transaction body, by tier and outcome.",
    ),
    (
        READ_LATENCY,
        Kind::Histogram,
        "Seconds from the start of a body read to its answer, by the tier that served it.",
    ),
    (
        BODY_CACHE_BYTES,
        Kind::Gauge,
        "Bytes of sealed bodies in the city's body cache.",
    ),
    (
        UPLINK_FORWARDED,
        Kind::Counter,
        "Items the node above acknowledged.",
    ),
    (
        UPLINK_FAILURES,
        Kind::Counter,
        "Forwarding attempts to the node above that failed, by reason.",
    ),
    (
        UPLINK_WAITING,
        Kind::Gauge,
        "Items in the outbox not acknowledged by the node above yet.",
    ),
    (
        CITY_BATCHES_RECEIVED,
        Kind::Counter,
        "City batches submitted to this continent node, by outcome.",
    ),
    (
        CONTINENT_BATCHES,
        Kind::Counter,
        "Continent batches made durable.",
    ),
    (
        CONTINENT_BATCHES_RECEIVED,
        Kind::Counter,
        "Continent batches submitted to the global node, by outcome.",
    ),
    (
        CHECKPOINTS,
        Kind::Counter,
        "Checkpoints signed and written to the global log.",
    ),
    (
        DPOS_VOTES,
        Kind::Counter,
        "Representatives' votes on continent batches, by outcome.",
    ),
    (
        DPOS_APPROVED,
        Kind::Counter,
        "Continent batches approved by two thirds of the stake.",
    ),
    (
        DPOS_SLASHED,
        Kind::Gauge,
        "Stake slashed from equivocating representatives, in all.",
    ),
];

/// Gives every metric its help text. Called once the recorder is installed.
fn describe_all() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Registers, at 0, the counters and gauges a node of `config`'s role exports, with the
/// label values known in advance, so a rate or a sum has a series before its first event.
pub fn register_role(config: &Config) {
    let counter = |name: &'static str| metrics::counter!(name).increment(0);
    let counter_by = |name: &'static str, label: &'static str, values: &[&'static str]| {
        for v in values {
            metrics::counter!(name, label => *v).increment(0);
        }
    };
    let gauge = |name: &'static str| metrics::gauge!(name).increment(0.0);
    counter_by(
        HTTP_REFUSED,
        "reason",
        &["peer_connections", "body_budget", "body_timeout"],
    );
    gauge(BODY_BUDGET_USED);
    let tiers = ["light", "full", "mongo", "log"];
    match config.node.role {
        Role::City => {
            counter(TX_ACCEPTED);
            counter_by(TX_REJECTED, "reason", &["overloaded"]);
            counter_by(BATCHES_STORED, "tier", &tiers);
            counter_by(TIER_FAILURES, "tier", &tiers);
            counter(BATCHES_FAILED);
            for (kind, from) in [
                ("upward", "full"),
                ("upward", "mongo"),
                ("upward", "log"),
                ("rereplicate", "light"),
                ("recovered", "log"),
            ] {
                metrics::counter!(REPAIRS, "kind" => kind, "from" => from).increment(0);
            }
            counter(ARCHIVED_BATCHES);
            counter(LIGHT_PIECES_RELEASED);
            counter(LOG_APPENDS);
            counter(LOG_HEADS_SIGNED);
            counter(LOG_HEAD_FAILURES);
            gauge(TX_IN_FLIGHT);
            gauge(REPAIR_BACKLOG);
        }
        Role::Light | Role::Full => {
            counter_by(
                STORE_REQUESTS,
                "outcome",
                &["stored", "duplicate", "full", "rejected", "error"],
            );
            counter(STORE_PIECES_RELEASED);
            counter(SESSIONS_OPENED);
        }
        Role::Continent => {
            counter_by(
                CITY_BATCHES_RECEIVED,
                "outcome",
                &["merged", "duplicate", "refused"],
            );
            counter(CONTINENT_BATCHES);
            counter(LOG_APPENDS);
        }
        Role::Global => {
            counter_by(
                CONTINENT_BATCHES_RECEIVED,
                "outcome",
                &["received", "duplicate", "refused"],
            );
            counter(CHECKPOINTS);
            counter(LOG_APPENDS);
        }
        Role::Representative => {}
    }
    if config.uplink.is_some() && matches!(config.node.role, Role::City | Role::Continent) {
        counter(UPLINK_FORWARDED);
        counter_by(UPLINK_FAILURES, "reason", &["unreachable"]);
        gauge(UPLINK_WAITING);
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns its handle. Safe to call from every
/// node started in one process (tests start several).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(STORE_LATENCY.into()), &buckets)
                .expect("buckets are non-empty")
                .set_buckets_for_metric(Matcher::Full(READ_LATENCY.into()), &buckets)
                .expect("buckets are non-empty")
                .set_buckets_for_metric(
                    Matcher::Full(STAGE_LATENCY.into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                        0.5, 1.0,
                    ],
                )
                .expect("buckets are non-empty")
                .set_buckets_for_metric(
                    Matcher::Full(BATCH_SIZE.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
                .expect("buckets are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application's);
            // then ours still renders whatever is recorded through it, which is nothing,
            // and the embedding application owns its metrics.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            handle
        })
        .clone()
}

/// Runs the recorder's upkeep every few seconds until the runtime stops.
pub fn spawn_upkeep() {
    let handle = handle();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_and_named_by_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in DESCRIPTIONS {
            assert!(seen.insert(name), "{name} described twice");
            assert!(name.starts_with("citychain_"), "{name}");
            assert!(!help.is_empty() && help.ends_with('.'), "{name}: {help:?}");
            // `_total` marks a counter and only a counter.
            assert_eq!(name.ends_with("_total"), kind == Kind::Counter, "{name}");
            if help.contains("Seconds") || help.starts_with("Bytes") {
                let unit = if help.contains("Seconds") {
                    "_seconds"
                } else {
                    "_bytes"
                };
                assert!(name.ends_with(unit), "{name} should end with {unit}");
            }
        }
        // Every constant of this module is in the table.
        let source = include_str!("metrics.rs");
        let constants = source
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"citychain_"))
            .count();
        assert_eq!(constants, DESCRIPTIONS.len());
    }

    #[test]
    fn metrics_render_with_help_lines_and_latencies_as_histograms() {
        let handle = handle();
        metrics::counter!(BATCHES_FAILED).increment(0);
        metrics::histogram!(STORE_LATENCY).record(0.003);
        let text = handle.render();
        for line in [
            "# HELP citychain_batches_failed_total Batches no storage tier could store.",
            "# TYPE citychain_store_latency_seconds histogram",
            "citychain_store_latency_seconds_bucket{le=\"0.005\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }
}
