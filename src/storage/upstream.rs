//! The link to the node above (a city's continent, a continent's global node): the signed
//! client that posts what a node forwards, the [`Outbox`] each role keeps of what the
//! upstream has not acknowledged, and the link's published state (`GET /v1/uplink`).
//!
//! Requests are signed like every node-to-node request ([`RequestSigner`], for the
//! upstream's node id); the upstream serves only the nodes on its allow-list. An outbox
//! forgets an item only once the upstream has answered for it, and both ends make
//! retries harmless (a continent or global node answers a batch it already holds with where
//! it is), so the uplink actor may retry anything, any time, as often as it takes.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::config::UplinkConfig;
use crate::crypto::Hash32;
use crate::messages::auth::RequestSigner;
use crate::messages::now_ms;
use crate::messages::storage::OCTET_STREAM;

/// How much of a non-JSON error body is kept in a refusal's message.
const ERROR_SNIPPET_CHARS: usize = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No answer: connection refused or reset, timeout.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream answered with a non-2xx status.
    #[error("upstream refused with {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// It answered 2xx with something else than the API promises.
    #[error("malformed answer from upstream: {0}")]
    Malformed(String),
    /// This node could not read its outbox, sign, or record a delivery.
    #[error("{0}")]
    Local(String),
}

impl LinkError {
    /// The upstream refused what was sent (it will refuse it again as it is), rather than
    /// failing to take it now: an authenticated request whose content it judged invalid.
    pub fn refuses_content(&self) -> bool {
        matches!(self, LinkError::Refused { status, .. } if matches!(status, 400 | 403 | 413 | 422))
    }

    /// The `reason` label of the failure counter.
    pub fn label(&self) -> &'static str {
        match self {
            LinkError::Unreachable(_) => "unreachable",
            LinkError::Refused { status: 401, .. } => "unauthenticated",
            LinkError::Refused { .. } if self.refuses_content() => "refused",
            LinkError::Refused { .. } => "unavailable",
            LinkError::Malformed(_) => "malformed",
            LinkError::Local(_) => "local",
        }
    }
}

/// One forwarding attempt: what was sent, and how it went.
#[derive(Debug)]
pub struct Attempt {
    /// Ids of the items sent, in order; empty when nothing was waiting.
    pub sent: Vec<Hash32>,
    pub outcome: Result<(), LinkError>,
    /// More items were waiting than were sent.
    pub more: bool,
}

/// What a role keeps of what its upstream has not acknowledged.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Forwards up to `limit` waiting items (oldest first, leaving out `skip`) in one
    /// request, and forgets those the upstream acknowledged.
    async fn forward(&self, limit: usize, skip: &HashSet<Hash32>) -> Attempt;
    /// Items waiting now.
    fn waiting(&self) -> u64;
}

/// The HTTP client of the link: requests signed as this node for the upstream.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    http: reqwest::Client,
    signer: RequestSigner,
    id: String,
    url: String,
    timeout: Duration,
}

impl UpstreamClient {
    pub fn new(signer: RequestSigner, config: &UplinkConfig) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            // Only TLS backend or resolver set-up can fail, and this build has neither.
            .expect("an HTTP client without TLS always builds");
        Self {
            http,
            signer,
            id: config.id.clone(),
            url: config.url.trim_end_matches('/').to_owned(),
            timeout: config.timeout,
        }
    }

    /// The upstream's node id.
    pub fn upstream(&self) -> &str {
        &self.id
    }

    /// POSTs `body` (a versioned postcard encoding) to `path`, signed for the upstream,
    /// and decodes its JSON answer.
    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, LinkError> {
        let headers = self
            .signer
            .headers("POST", path, &self.id, &body)
            .map_err(|e| LinkError::Local(format!("signing the request: {e}")))?;
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, OCTET_STREAM);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            LinkError::Unreachable(msg)
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| LinkError::Unreachable(format!("reading the answer: {e}")))?;
        if !status.is_success() {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v["error"][k].as_str())
                    .map(str::to_owned)
            };
            return Err(LinkError::Refused {
                status: status.as_u16(),
                code: field("code").unwrap_or_else(|| "unknown".into()),
                message: field("message")
                    .unwrap_or_else(|| text.chars().take(ERROR_SNIPPET_CHARS).collect()),
            });
        }
        serde_json::from_str(&text).map_err(|e| LinkError::Malformed(e.to_string()))
    }
}

/// The link's state as `GET /v1/uplink` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UplinkView {
    /// The upstream node's id and URL.
    pub upstream: String,
    pub url: String,
    /// Items not acknowledged yet.
    pub waiting: u64,
    /// Items acknowledged since this node started.
    pub forwarded: u64,
    /// When the upstream last acknowledged something (ms since the epoch).
    pub last_forward_ms: Option<u64>,
    /// The last failure, until an attempt succeeds.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Items the upstream refused, offered again every `[uplink] retry_max`.
    pub refused: usize,
}

/// The link's state, written by the uplink actor and read by the HTTP layer.
pub struct UplinkStatus {
    view: Mutex<UplinkView>,
}

impl UplinkStatus {
    pub fn new(config: &UplinkConfig) -> Self {
        Self {
            view: Mutex::new(UplinkView {
                upstream: config.id.clone(),
                url: config.url.clone(),
                ..UplinkView::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut UplinkView) -> T) -> T {
        f(&mut self.view.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn succeeded(&self, delivered: usize, refused: usize) {
        self.with(|v| {
            v.forwarded += delivered as u64;
            v.last_forward_ms = Some(now_ms());
            v.last_error = None;
            v.failures = 0;
            v.refused = refused;
        });
    }

    pub fn failed(&self, error: &LinkError, refused: usize) {
        self.with(|v| {
            v.last_error = Some(error.to_string());
            v.failures += 1;
            v.refused = refused;
        });
    }

    /// The view, with `waiting` read now.
    pub fn view(&self, waiting: u64) -> UplinkView {
        self.with(|v| UplinkView {
            waiting,
            ..v.clone()
        })
    }
}
