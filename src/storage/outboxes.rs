//! The two outboxes of the federation ([`Outbox`]): a city's, of batches its continent has
//! not merged yet (in `city.redb`), and a continent's, of continent batches the global node
//! has not received yet (in `continent.redb`). Each forwards what waits, oldest first, in
//! one signed request, and forgets an item only once the upstream has answered for it
//! (fsynced), so a crash of either end at any moment loses nothing: the item is sent again
//! and the upstream answers where it already holds it.

use std::collections::HashSet;
use std::sync::Arc;

use super::city_store::CityStore;
use super::continent_store::ContinentStore;
use super::upstream::{Attempt, LinkError, Outbox, UpstreamClient};
use crate::crypto::{Hash32, SigningKey};
use crate::messages::federation::{
    CITY_BATCHES_PATH, CONTINENT_BATCHES_PATH, Certificate, CertifiedBatch, CitySubmission,
    ContinentPlacement, ContinentSubmission, GlobalPlacement, MAX_SUBMISSION_BYTES, MergeReply,
    ReceiveReply,
};
use crate::messages::{encode, hex32, now_ms, parse_hex32};

/// Bytes of items one request carries, at most: the upstream's body limit, with room for
/// the envelope.
const REQUEST_BYTES: usize = MAX_SUBMISSION_BYTES - 64 * 1024;

fn local(what: &str) -> impl Fn(String) -> LinkError + '_ {
    move |e| LinkError::Local(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LinkError::Local(format!("{what}: {e}")))?
        .map_err(local(what))
}

/// A city's batches for its continent: each with its certificate of availability (the
/// tier, holders and acks of its record in `city.redb`), signed by the city.
pub struct CityOutbox {
    pub store: Arc<CityStore>,
    pub client: UpstreamClient,
    pub key: Arc<SigningKey>,
}

#[async_trait::async_trait]
impl Outbox for CityOutbox {
    async fn forward(&self, limit: usize, skip: &HashSet<Hash32>) -> Attempt {
        let (store, key, skip) = (self.store.clone(), self.key.clone(), skip.clone());
        let prepared = blocking("reading the outbox", move || {
            let records = store
                .uplink_pending(limit + 1, &skip)
                .map_err(|e| e.to_string())?;
            let more = records.len() > limit;
            let mut batches = Vec::new();
            let mut bytes = 0;
            for rec in records.into_iter().take(limit) {
                let certificate = Certificate {
                    tier: rec.tier,
                    holders: rec.holders,
                    acks: rec.acks,
                };
                let signed = CertifiedBatch::sign(&key, rec.header, certificate)
                    .map_err(|e| format!("signing a certificate: {e}"))?;
                bytes += encode(&signed).len();
                if bytes > REQUEST_BYTES && !batches.is_empty() {
                    return Ok((batches, true));
                }
                batches.push(signed);
            }
            Ok((batches, more))
        })
        .await;
        let (batches, more) = match prepared {
            Ok(p) => p,
            Err(e) => return failed(Vec::new(), e),
        };
        let sent: Vec<Hash32> = batches.iter().map(CertifiedBatch::id).collect();
        if sent.is_empty() {
            return Attempt {
                sent,
                outcome: Ok(()),
                more: false,
            };
        }
        let seqs: Vec<u64> = batches.iter().map(|b| b.header.seq).collect();
        let body = encode(&CitySubmission { batches });
        let reply: MergeReply = match self.client.post(CITY_BATCHES_PATH, body).await {
            Ok(r) => r,
            Err(e) => return failed(sent, e),
        };
        let node = self.client.upstream().to_owned();
        let mut done = Vec::with_capacity(sent.len());
        if reply.merged.len() != sent.len() {
            return failed(
                sent,
                LinkError::Malformed(format!(
                    "{} placements for {} batches",
                    reply.merged.len(),
                    seqs.len()
                )),
            );
        }
        for ((m, id), seq) in reply.merged.iter().zip(&sent).zip(&seqs) {
            let placement = (parse_hex32(&m.batch_id) == Some(*id))
                .then(|| parse_hex32(&m.continent_batch_id))
                .flatten();
            let Some(continent_batch_id) = placement else {
                return failed(
                    sent.clone(),
                    LinkError::Malformed(format!("no placement for batch {}", hex32(id))),
                );
            };
            done.push((
                *seq,
                *id,
                ContinentPlacement {
                    node: node.clone(),
                    continent_batch_id,
                    continent_seq: m.continent_seq,
                    entry_index: m.entry_index,
                    time_ms: now_ms(),
                },
            ));
        }
        let store = self.store.clone();
        let recorded = blocking("recording the delivery", move || {
            store.uplink_delivered(&done).map_err(|e| e.to_string())
        })
        .await;
        Attempt {
            sent,
            outcome: recorded,
            more,
        }
    }

    fn waiting(&self) -> u64 {
        self.store.uplink_depth().unwrap_or(0)
    }
}

fn failed(sent: Vec<Hash32>, e: LinkError) -> Attempt {
    Attempt {
        sent,
        outcome: Err(e),
        more: true,
    }
}

/// A continent's batches for the global node, as signed when they were made.
pub struct ContinentOutbox {
    pub store: Arc<ContinentStore>,
    pub client: UpstreamClient,
}

#[async_trait::async_trait]
impl Outbox for ContinentOutbox {
    async fn forward(&self, limit: usize, skip: &HashSet<Hash32>) -> Attempt {
        let (store, skip) = (self.store.clone(), skip.clone());
        let prepared = blocking("reading the outbox", move || {
            let pending = store
                .pending(limit + skip.len() + 1)
                .map_err(|e| e.to_string())?;
            let mut pending: Vec<_> = pending
                .into_iter()
                .filter(|p| !skip.contains(&p.id))
                .collect();
            let mut more = pending.len() > limit;
            pending.truncate(limit);
            let mut items = Vec::new();
            let mut bytes = 0;
            for p in pending {
                let record = store.record(p.record_index).map_err(|e| e.to_string())?;
                bytes += encode(&record.batch).len();
                if bytes > REQUEST_BYTES && !items.is_empty() {
                    more = true;
                    break;
                }
                items.push((p, record.batch));
            }
            Ok((items, more))
        })
        .await;
        let (items, more) = match prepared {
            Ok(p) => p,
            Err(e) => return failed(Vec::new(), e),
        };
        let sent: Vec<Hash32> = items.iter().map(|(p, _)| p.id).collect();
        if sent.is_empty() {
            return Attempt {
                sent,
                outcome: Ok(()),
                more: false,
            };
        }
        let (pending, batches): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let body = encode(&ContinentSubmission { batches });
        let reply: ReceiveReply = match self.client.post(CONTINENT_BATCHES_PATH, body).await {
            Ok(r) => r,
            Err(e) => return failed(sent, e),
        };
        if reply.received.len() != pending.len()
            || reply
                .received
                .iter()
                .zip(&pending)
                .any(|(r, p)| parse_hex32(&r.continent_batch_id) != Some(p.id))
        {
            return failed(
                sent,
                LinkError::Malformed("the receipts do not match the batches sent".into()),
            );
        }
        let node = self.client.upstream().to_owned();
        let done: Vec<_> = pending
            .into_iter()
            .zip(&reply.received)
            .map(|(p, r)| {
                (
                    p,
                    GlobalPlacement {
                        node: node.clone(),
                        record_index: r.record_index,
                        time_ms: now_ms(),
                    },
                )
            })
            .collect();
        let store = self.store.clone();
        let recorded = blocking("recording the delivery", move || {
            store.delivered(&done).map_err(|e| e.to_string())
        })
        .await;
        Attempt {
            sent,
            outcome: recorded,
            more,
        }
    }

    fn waiting(&self) -> u64 {
        self.store.counts().map_or(0, |c| c.outbox)
    }
}
