//! Verification: every promise must be stored per the city, and its batch must hold it
//! where the status says — fetched from a holder for the light and full tiers (where the
//! batch's record says it is at the read: retention moves old light batches to full
//! nodes), found among the city's immutable-log records for the log tier.
//!
//! Batches are sealed, so what is held is read without the key holder's key: the held
//! copy's clear header must hash to the batch id and carry the Merkle root of the
//! transaction ids the city lists for the batch, which must include the promise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use citychain::crypto::merkle_root;
use citychain::messages::{BatchHeader, SealedEnvelope, TxId, parse_hex32};
use citychain::storage::immutable_log::{ImmutableLog, RecordKind};
use citychain::storage::peer::{Peer, PeerClient};
use futures::StreamExt;
use tokio::time::Instant;

use super::load::Promise;
use super::{MissingTx, VERIFY_CONCURRENCY, VERIFY_RETRY_FOR};
use crate::federation::Federation;

/// Why a promise is not (yet) verified: a [`MissingTx::class`] and details.
pub(super) type Why = (&'static str, String);

/// What the city says about a promise at the end.
#[derive(Debug, Clone)]
pub(super) struct Status {
    tier: String,
    batch_id: String,
    holders: Vec<String>,
}

#[derive(Default)]
pub(super) struct Verification {
    pub(super) verified: u64,
    pub(super) missing: Vec<MissingTx>,
    pub(super) relocated: u64,
    pub(super) final_tiers: BTreeMap<String, u64>,
    pub(super) holder_misses: u64,
    pub(super) errors: Vec<String>,
}

/// Checks every promise: stored per the city, and its batch holds it where the status
/// says.
pub(super) async fn verify_promises(
    fed: &Federation,
    city_url: &str,
    log_dir: &std::path::Path,
    promises: &[Promise],
) -> Verification {
    let mut out = Verification::default();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("building the HTTP client: {e}"));
            return out;
        }
    };

    // 1. The city's word on each promise, asked again for a while if it does not know
    //    one yet (it may have just restarted).
    let mut statuses: HashMap<String, Status> = HashMap::new();
    let mut pending: Vec<&Promise> = promises.iter().collect();
    let mut last_reason: HashMap<String, Why> = HashMap::new();
    let deadline = Instant::now() + VERIFY_RETRY_FOR;
    loop {
        let answers: Vec<(&Promise, Result<Status, Why>)> = futures::stream::iter(pending)
            .map(|p| {
                let client = client.clone();
                async move { (p, tx_status(&client, city_url, &p.tx_id).await) }
            })
            .buffer_unordered(VERIFY_CONCURRENCY)
            .collect()
            .await;
        pending = Vec::new();
        for (p, answer) in answers {
            match answer {
                Ok(status) => {
                    statuses.insert(p.tx_id.clone(), status);
                }
                Err(why) => {
                    last_reason.insert(p.tx_id.clone(), why);
                    pending.push(p);
                }
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for p in &pending {
        let (class, why) = last_reason
            .remove(&p.tx_id)
            .unwrap_or(("city_bad_answer", "?".into()));
        out.missing.push(MissingTx {
            tx_id: p.tx_id.clone(),
            class: class.into(),
            reason: format!(
                "promised on tier {} in batch {}; the city now says: {why}",
                p.tier, p.batch_id,
            ),
        });
    }

    // 2. Each batch, once: from a holder for light/full, from the log for log.
    let mut by_batch: BTreeMap<(String, String), Vec<&Promise>> = BTreeMap::new();
    for p in promises {
        if let Some(s) = statuses.get(&p.tx_id) {
            *out.final_tiers.entry(s.tier.clone()).or_default() += 1;
            if s.batch_id != p.batch_id {
                out.relocated += 1;
            }
            by_batch
                .entry((s.tier.clone(), s.batch_id.clone()))
                .or_default()
                .push(p);
        }
    }
    let needs_log = by_batch.keys().any(|(tier, _)| tier == "log");
    let log_batches: Result<HashMap<String, BatchHeader>, String> = if needs_log {
        let dir = log_dir.to_path_buf();
        match tokio::task::spawn_blocking(move || log_batches(&dir)).await {
            Ok(r) => r,
            Err(e) => Err(format!("reading the log panicked: {e}")),
        }
    } else {
        Ok(HashMap::new())
    };
    // Storage nodes serve only their city: read holdings back with the city's key.
    let peers = match fed.storage_client() {
        Ok(peers) => peers,
        Err(e) => {
            for p in by_batch.into_values().flatten() {
                out.missing.push(MissingTx {
                    tx_id: p.tx_id.clone(),
                    class: "city_key_unreadable".into(),
                    reason: e.to_string(),
                });
            }
            return out;
        }
    };
    for ((tier, batch_id), members) in by_batch {
        let listed = match tier.as_str() {
            "mongo" => Ok((Vec::new(), serde_json::Value::Null)),
            _ => batch_tx_ids(&client, city_url, &batch_id).await,
        };
        let held: Result<HashSet<String>, Why> = match (tier.as_str(), listed) {
            (_, Err(why)) => Err(why),
            ("light" | "full", Ok((listed, mut batch))) => {
                // Retention moves old light batches to full nodes and releases their
                // pieces, maybe between the status read and now, or during the read: the
                // batch is verified where its record says it is now, and once more if a
                // read fails and the record moved meanwhile.
                let mut retried = false;
                loop {
                    let (found, misses) = match batch["tier"].as_str().unwrap_or(&tier) {
                        "light" => rebuild_from_pieces(fed, &peers, &batch, &listed).await,
                        _ => {
                            let holders: Vec<String> = batch["holders"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|h| h.as_str().map(str::to_string))
                                        .collect()
                                })
                                .unwrap_or_else(|| statuses[&members[0].tx_id].holders.clone());
                            fetch_from_holders(fed, &peers, &batch_id, &holders, &listed).await
                        }
                    };
                    if found.is_err() && !retried {
                        retried = true;
                        if let Ok((_, again)) = batch_tx_ids(&client, city_url, &batch_id).await
                            && again["tier"] != batch["tier"]
                        {
                            batch = again;
                            continue;
                        }
                    }
                    out.holder_misses += misses;
                    break found.map_err(|e| ("batch_unavailable", e));
                }
            }
            ("log", Ok((listed, _))) => match &log_batches {
                Ok(map) => match map.get(&batch_id) {
                    Some(header) => committed(header, &listed).map_err(|e| ("not_in_log", e)),
                    None => Err((
                        "not_in_log",
                        format!("batch {batch_id} is not among the city's log records"),
                    )),
                },
                Err(e) => Err(("log_unreadable", e.clone())),
            },
            // The mongo tier is checked by the status alone (no database client here).
            ("mongo", Ok(_)) => Ok(members.iter().map(|p| p.tx_id.clone()).collect()),
            (other, Ok(_)) => Err(("unknown_tier", format!("unknown tier {other:?}"))),
        };
        for p in members {
            match &held {
                Ok(ids) if ids.contains(&p.tx_id) => out.verified += 1,
                Ok(_) => out.missing.push(MissingTx {
                    tx_id: p.tx_id.clone(),
                    class: "not_in_batch".into(),
                    reason: format!("batch {batch_id} ({tier}) does not contain it"),
                }),
                Err((class, why)) => out.missing.push(MissingTx {
                    tx_id: p.tx_id.clone(),
                    class: (*class).into(),
                    reason: format!("status says {tier} batch {batch_id}: {why}"),
                }),
            }
        }
    }
    out
}

/// `GET {city}/v1/tx/{id}`: the stored status, or why there is none (a
/// [`MissingTx::class`] and details).
pub(super) async fn tx_status(
    client: &reqwest::Client,
    city_url: &str,
    tx_id: &str,
) -> Result<Status, Why> {
    let resp = client
        .get(format!("{city_url}/v1/tx/{tx_id}"))
        .send()
        .await
        .map_err(|e| ("city_unreachable", format!("GET failed: {e}")))?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ("city_bad_answer", format!("{code}, not JSON: {e}")))?;
    match code {
        200 => {}
        404 => return Err(("city_unknown", format!("{code} {body}"))),
        _ => return Err(("city_bad_answer", format!("{code} {body}"))),
    }
    if body["status"] != "stored" {
        return Err(("city_not_stored", format!("status {}", body["status"])));
    }
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let bad = |what: &str| ("city_bad_answer", format!("no {what} in {body}"));
    Ok(Status {
        tier: text(&body["tier"]).ok_or_else(|| bad("tier"))?,
        batch_id: text(&body["batch_id"]).ok_or_else(|| bad("batch_id"))?,
        holders: body["holders"]
            .as_array()
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default(),
    })
}

/// The tx ids the city lists for batch `batch_id`, and its whole answer
/// (`GET /v1/batches/{id}`).
async fn batch_tx_ids(
    client: &reqwest::Client,
    city_url: &str,
    batch_id: &str,
) -> Result<(Vec<TxId>, serde_json::Value), Why> {
    let resp = client
        .get(format!("{city_url}/v1/batches/{batch_id}"))
        .send()
        .await
        .map_err(|e| ("city_unreachable", format!("GET batch failed: {e}")))?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ("city_bad_answer", format!("{code}, not JSON: {e}")))?;
    body["tx_ids"]
        .as_array()
        .and_then(|ids| {
            ids.iter()
                .map(|id| id.as_str().and_then(parse_hex32))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ("city_bad_answer", format!("{code}: no tx_ids in {body}")))
        .map(|ids| (ids, body))
}

/// The tx ids of the light batch `batch` (the city's answer for it), rebuilt from the
/// pieces its holders serve, when it is the sealed batch committing to `listed`; and how
/// many holders did not serve a sound piece.
async fn rebuild_from_pieces(
    fed: &Federation,
    peers: &PeerClient,
    batch: &serde_json::Value,
    listed: &[TxId],
) -> (Result<HashSet<String>, String>, u64) {
    let holders = batch["acks"].as_array().map_or(0, Vec::len) as u64;
    let bytes = match crate::testkit::rebuild_light(fed, peers, batch, &[]).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return (
                Err(format!("cannot rebuild it from its pieces: {e}")),
                holders,
            );
        }
    };
    let id = batch["batch_id"].as_str().and_then(parse_hex32);
    let found = match SealedEnvelope::from_bytes(&bytes) {
        Ok(envelope) if Some(envelope.id()) == id => committed(&envelope.header.batch, listed)
            .map_err(|e| format!("rebuilt a damaged batch: {e}")),
        Ok(_) => Err("rebuilt a different batch".to_string()),
        Err(e) => Err(format!("rebuilt bytes that are not a sealed batch: {e}")),
    };
    (found, 0)
}

/// The tx ids (hex) a held header commits to: `listed`, when their Merkle root is the
/// header's.
fn committed(header: &BatchHeader, listed: &[TxId]) -> Result<HashSet<String>, String> {
    if merkle_root(listed) != header.merkle_root {
        return Err("its header does not commit to the transactions the city lists".into());
    }
    Ok(listed.iter().map(hex::encode).collect())
}

/// The tx ids of batch `batch_id` from the first listed holder that serves a sound sealed
/// copy committing to `listed`, and how many holders did not.
pub(super) async fn fetch_from_holders(
    fed: &Federation,
    peers: &PeerClient,
    batch_id: &str,
    holders: &[String],
    listed: &[TxId],
) -> (Result<HashSet<String>, String>, u64) {
    let Some(id) = parse_hex32(batch_id) else {
        return (Err(format!("batch id {batch_id:?} is not 64 hex")), 0);
    };
    if holders.is_empty() {
        return (Err("the status lists no holder".into()), 0);
    }
    let mut misses = 0;
    let mut why = Vec::new();
    for holder in holders {
        let Some(node) = fed.nodes.iter().find(|n| &n.id == holder) else {
            misses += 1;
            why.push(format!("{holder}: not a node of this federation"));
            continue;
        };
        let answer = peers
            .get_batch(
                Peer {
                    id: &node.id,
                    url: &node.url,
                },
                &id,
                Duration::from_secs(5),
            )
            .await;
        let problem = match answer {
            Ok(Some(bytes)) => match SealedEnvelope::from_bytes(&bytes) {
                Ok(envelope) if envelope.id() == id => {
                    match committed(&envelope.header.batch, listed) {
                        Ok(ids) => return (Ok(ids), misses),
                        Err(e) => format!("serves a damaged batch: {e}"),
                    }
                }
                Ok(_) => "serves a different batch".to_string(),
                Err(e) => format!("serves bytes that are not a sealed batch: {e}"),
            },
            Ok(None) => "does not have it (404)".to_string(),
            Err(e) => e.to_string(),
        };
        misses += 1;
        why.push(format!("{holder}: {problem}"));
    }
    (
        Err(format!("no holder serves it: {}", why.join("; "))),
        misses,
    )
}

/// Batch id → clear header of every batch record in the log at `dir`.
pub(super) fn log_batches(dir: &std::path::Path) -> Result<HashMap<String, BatchHeader>, String> {
    let records = ImmutableLog::read_all(dir)
        .map_err(|e| format!("reading the log at {}: {e}", dir.display()))?;
    let mut out = HashMap::new();
    for record in records.iter().filter(|r| r.kind == RecordKind::Batch) {
        let envelope = SealedEnvelope::from_bytes(&record.payload)
            .map_err(|e| format!("log record {} is not a sealed batch: {e}", record.seq))?;
        out.insert(hex::encode(envelope.id()), envelope.header.batch);
    }
    Ok(out)
}
