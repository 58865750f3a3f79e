//! Signed transactions and `POST /v1/tx`, as every citychain tool sends them.
//!
//! [`TxDraft`] holds what a sender chooses (kind, receiver, amount, city, nonce, …); its
//! [`sign`](TxDraft::sign) fills in the sender's address and the clock and signs with
//! [`SignedTx::sign`], exactly the request a wallet would send. [`TxClient`] posts such a
//! request (or any body) to `{node}/v1/tx` and returns a [`TxAnswer`]: the status code, the
//! raw body, its JSON if it is JSON, and accessors for the receipt or the error code.

use std::sync::Arc;

use citychain::crypto::{self, SigningKey};
use citychain::messages::{FlagKind, ObjectRef, Pop, SignedTx, Tx, TxRequest, now_ms, tx_id_hex};
use serde_json::{Map, Value};

/// A transaction before it has a sender, a timestamp and a signature.
#[derive(Debug, Clone, PartialEq)]
pub struct TxDraft {
    pub kind: FlagKind,
    /// Receiver address or account name.
    pub to: String,
    /// Minor units.
    pub amount: u64,
    pub city: String,
    pub continent: Option<String>,
    /// A JSON object carried with the transaction.
    pub payload: Option<Map<String, Value>>,
    /// Where the sender is (proof of place).
    pub pop: Option<Pop>,
    /// The objects it reads or writes (`tx.objects`).
    pub objects: Option<Vec<ObjectRef>>,
    pub nonce: u64,
    /// `None`: the time of signing.
    pub timestamp_ms: Option<u64>,
}

impl TxDraft {
    /// A `fresh_tx` of `amount` to `to` in `city`, without continent or payload, stamped
    /// when signed.
    pub fn new(to: impl Into<String>, amount: u64, city: impl Into<String>, nonce: u64) -> Self {
        Self {
            kind: FlagKind::FreshTx,
            to: to.into(),
            amount,
            city: city.into(),
            continent: None,
            payload: None,
            pop: None,
            objects: None,
            nonce,
            timestamp_ms: None,
        }
    }

    /// The sender's position, in degrees.
    pub fn pop(mut self, lat: f64, lon: f64) -> Self {
        self.pop = Some(Pop { lat, lon });
        self
    }

    pub fn kind(mut self, kind: FlagKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn continent(mut self, continent: impl Into<String>) -> Self {
        self.continent = Some(continent.into());
        self
    }

    pub fn payload(mut self, payload: Map<String, Value>) -> Self {
        self.payload = Some(payload);
        self
    }

    pub fn objects(mut self, objects: Vec<ObjectRef>) -> Self {
        self.objects = Some(objects);
        self
    }

    pub fn timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The unsigned `tx` object `key` would send.
    pub fn tx(&self, key: &SigningKey) -> Tx {
        Tx {
            kind: self.kind,
            sender: key.address(),
            receiver: self.to.clone(),
            amount: self.amount,
            timestamp_ms: self.timestamp_ms.unwrap_or_else(now_ms),
            nonce: self.nonce,
            city_id: self.city.clone(),
            continent: self.continent.clone(),
            payload: self.payload.clone(),
            pop: self.pop,
            objects: self.objects.clone(),
        }
    }

    /// The signed request (the body of `POST /v1/tx`).
    pub fn sign(&self, key: &SigningKey) -> crypto::Result<TxRequest> {
        SignedTx::sign(self.tx(key), key)
    }

    /// The signed request as JSON bytes, ready to post.
    pub fn sign_body(&self, key: &SigningKey) -> crypto::Result<Vec<u8>> {
        Ok(request_body(&self.sign(key)?))
    }
}

/// A request as the JSON bytes of `POST /v1/tx`.
pub fn request_body(request: &TxRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("a transaction request serializes")
}

/// The tx id (hex) of a request body, computed as the node does: by parsing and
/// authenticating it.
pub fn body_tx_id(body: &[u8]) -> anyhow::Result<String> {
    let signed = SignedTx::from_request_bytes(body)
        .map_err(|e| anyhow::anyhow!("our own transaction does not parse: {e}"))?;
    Ok(tx_id_hex(&signed.id))
}

/// The tx id (hex) of a request, computed as the node does.
pub fn tx_id(request: &TxRequest) -> anyhow::Result<String> {
    body_tx_id(&request_body(request))
}

/// Who a node says it is (`GET /healthz`): its id, role, city (a city node's) and
/// continent.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct NodePlace {
    pub node_id: String,
    pub role: citychain::config::Role,
    #[serde(default)]
    pub city: Option<String>,
    pub continent: String,
}

impl NodePlace {
    /// Asks the node at `node` (base URL) who it is.
    pub async fn of(http: &reqwest::Client, node: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let url = format!("{}/healthz", node.trim_end_matches('/'));
        http.get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not the answer of a citychain node"))
    }

    /// The city and continent of the transactions a city node takes: its own.
    pub fn city_and_continent(&self, node: &str) -> anyhow::Result<(String, String)> {
        match &self.city {
            Some(city) => Ok((city.clone(), self.continent.clone())),
            None => anyhow::bail!(
                "{node} is {} node {}, not a city; point --node at a city node (its URL is in federation.json) or pass --city",
                self.role,
                self.node_id
            ),
        }
    }
}

/// Posts transactions to one node's `/v1/tx`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TxClient {
    http: reqwest::Client,
    url: Arc<str>,
}

impl TxClient {
    /// A client for the node at `node` (base URL, e.g. `http://127.0.0.1:8080`).
    pub fn new(http: reqwest::Client, node: &str) -> Self {
        Self {
            http,
            url: format!("{}/v1/tx", node.trim_end_matches('/')).into(),
        }
    }

    /// Posts a signed request as JSON.
    pub async fn post(&self, request: &TxRequest) -> reqwest::Result<TxAnswer> {
        self.post_json(request_body(request)).await
    }

    /// Posts a body that is already JSON bytes.
    pub async fn post_json(&self, body: Vec<u8>) -> reqwest::Result<TxAnswer> {
        self.post_raw("application/json", body).await
    }

    /// Posts any body with any content type (to see how the node refuses it). Errs only
    /// when the request could not be sent or its answer not read.
    pub async fn post_raw(&self, content_type: &str, body: Vec<u8>) -> reqwest::Result<TxAnswer> {
        let answer = self
            .http
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok(TxAnswer::new(status, answer.bytes().await?))
    }
}

/// A node's answer to `POST /v1/tx`.
#[derive(Debug, Clone)]
pub struct TxAnswer {
    pub status: u16,
    /// The body as received.
    pub body: bytes::Bytes,
    /// The body, if it is JSON.
    pub json: Option<Value>,
}

/// The fields of a `200` answer, each `None` when absent or not of its type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Receipt {
    pub tx_id: Option<String>,
    /// `stored` for a durable transaction.
    pub status: Option<String>,
    pub tier: Option<String>,
    pub batch_id: Option<String>,
    pub duplicate: Option<bool>,
}

impl TxAnswer {
    /// An answer of `status` with `body`, parsing the body as JSON if it is.
    pub fn new(status: u16, body: bytes::Bytes) -> Self {
        let json = serde_json::from_slice(&body).ok();
        Self { status, body, json }
    }

    /// Whether the node answered 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The receipt fields of the answer (meaningful for a `200`).
    pub fn receipt(&self) -> Receipt {
        let field = |name: &str| self.json.as_ref().and_then(|j| j.get(name));
        let text = |name: &str| field(name).and_then(Value::as_str).map(str::to_string);
        Receipt {
            tx_id: text("tx_id"),
            status: text("status"),
            tier: text("tier"),
            batch_id: text("batch_id"),
            duplicate: field("duplicate").and_then(Value::as_bool),
        }
    }

    /// The API error code (`error.code`) of a refusal, if the body has one.
    pub fn error_code(&self) -> Option<&str> {
        self.json
            .as_ref()
            .and_then(|j| j.pointer("/error/code"))
            .and_then(Value::as_str)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_signs_into_a_request_the_node_accepts() {
        let key = SigningKey::generate().unwrap();
        let mut payload = Map::new();
        payload.insert("memo".into(), "lunch".into());
        let draft = TxDraft::new("bob", 1250, "tokyo", 7)
            .kind(FlagKind::FreshTx)
            .continent("asia")
            .payload(payload)
            .timestamp_ms(1_700_000_000_000);
        let request = draft.sign(&key).unwrap();
        let body = request_body(&request);
        let signed = SignedTx::from_request_bytes(&body).unwrap();
        assert_eq!(signed.tx, draft.tx(&key));
        assert_eq!(signed.tx.sender, key.address());
        assert_eq!(signed.tx.timestamp_ms, 1_700_000_000_000);
        assert_eq!(tx_id(&request).unwrap(), tx_id_hex(&signed.id));
        assert_eq!(
            body_tx_id(&draft.sign_body(&key).unwrap()).unwrap().len(),
            64
        );
    }

    #[test]
    fn answers_expose_the_receipt_and_the_error_code() {
        let answer =
            |status: u16, body: &str| TxAnswer::new(status, body.as_bytes().to_vec().into());
        let ok = answer(
            200,
            r#"{"tx_id":"ab","status":"stored","tier":"full","batch_id":"cd","duplicate":true}"#,
        );
        assert!(ok.is_success());
        assert_eq!(
            ok.receipt(),
            Receipt {
                tx_id: Some("ab".into()),
                status: Some("stored".into()),
                tier: Some("full".into()),
                batch_id: Some("cd".into()),
                duplicate: Some(true),
            }
        );
        let busy = answer(503, r#"{"error":{"code":"overloaded","message":"full"}}"#);
        assert_eq!(busy.error_code(), Some("overloaded"));
        let html = answer(502, "<html>bad gateway</html>");
        assert_eq!((html.error_code(), html.json.is_none()), (None, true));
        assert_eq!(html.text(), "<html>bad gateway</html>");
    }
}
