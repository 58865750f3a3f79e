//! The checker's load: signed transactions at a steady rate, at most
//! [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) outstanding, every answer recorded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use citychain::crypto::SigningKey;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{CHAOS_RECEIVER, ChaosSpec, DRAIN_TIMEOUT, MAX_IN_FLIGHT, REQUEST_TIMEOUT};
use crate::client::{TxClient, TxDraft, body_tx_id};

/// A 200 answer.
#[derive(Debug, Clone)]
pub(super) struct Promise {
    pub(super) tx_id: String,
    pub(super) tier: String,
    pub(super) batch_id: String,
    pub(super) sent: Instant,
    pub(super) answered: Instant,
}

pub(super) enum Outcome {
    Promised(Promise),
    Rejected(String),
    /// A 200 that does not read as a promise of this transaction.
    Wrong(String),
}

/// The checker's load: signed transactions at `spec.rate` for `spec.duration`. Returns
/// every outcome, how many requests were sent and how long it all took.
pub(super) async fn run_load(
    spec: &ChaosSpec,
    city_url: &str,
    city_name: &str,
) -> anyhow::Result<(Vec<Outcome>, u64, Duration)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let key = Arc::new(SigningKey::generate().context("generating a signing key")?);
    let client = TxClient::new(client, city_url);
    let city: Arc<str> = city_name.into();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let total = ((spec.rate as f64) * spec.duration.as_secs_f64()).round() as u64;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut outcomes = Vec::new();
    let mut submitted = 0;
    for nonce in 0..total {
        let due = start + Duration::from_secs_f64(nonce as f64 / spec.rate as f64);
        tokio::time::sleep_until(due).await;
        if start.elapsed() >= spec.duration {
            break; // behind schedule after an outage; the run's length is what counts
        }
        let slot = slots.clone().acquire_owned().await?;
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done.context("a request task panicked")?);
        }
        let (client, key, city) = (client.clone(), key.clone(), city.clone());
        submitted += 1;
        tasks.spawn(async move {
            let _slot = slot;
            submit(&client, &key, &city, nonce).await
        });
    }
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.context("a request task panicked")?);
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(result) => result?,
        Err(_) => {
            let left = tasks.len();
            tasks.abort_all();
            outcomes.extend((0..left).map(|_| Outcome::Rejected("unanswered".into())));
        }
    }
    Ok((outcomes, submitted, start.elapsed()))
}

/// Signs transaction `nonce`, posts it and reads the answer.
pub(super) async fn submit(
    client: &TxClient,
    key: &Arc<SigningKey>,
    city: &str,
    nonce: u64,
) -> Outcome {
    let signed = {
        let (key, city) = (key.clone(), city.to_string());
        tokio::task::spawn_blocking(move || sign(&key, &city, nonce)).await
    };
    let (tx_id, body) = match signed {
        Ok(Ok(signed)) => signed,
        Ok(Err(e)) => return Outcome::Wrong(format!("signing transaction {nonce}: {e:#}")),
        Err(e) => return Outcome::Wrong(format!("signing transaction {nonce}: {e}")),
    };
    let sent = Instant::now();
    let Ok(answer) = client.post_json(body).await else {
        return Outcome::Rejected("transport".into());
    };
    let answered = Instant::now();
    if answer.status != 200 {
        let code = answer
            .error_code()
            .map(str::to_string)
            .unwrap_or_else(|| format!("http_{}", answer.status));
        return Outcome::Rejected(code);
    }
    let receipt = answer.receipt();
    match (
        receipt.tx_id,
        receipt.status,
        receipt.tier,
        receipt.batch_id,
    ) {
        (Some(id), Some(st), Some(tier), Some(batch_id)) if id == tx_id && st == "stored" => {
            Outcome::Promised(Promise {
                tx_id,
                tier,
                batch_id,
                sent,
                answered,
            })
        }
        _ => Outcome::Wrong(format!(
            "a 200 for {tx_id} is not a stored answer for it: {}",
            answer.text()
        )),
    }
}

/// A signed transaction: its id and the JSON body of `POST /v1/tx`.
pub(super) fn sign(key: &SigningKey, city: &str, nonce: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let body = TxDraft::new(CHAOS_RECEIVER, 1 + nonce % 1000, city, nonce)
        .sign_body(key)
        .context("signing")?;
    let id = body_tx_id(&body)?;
    Ok((id, body))
}
