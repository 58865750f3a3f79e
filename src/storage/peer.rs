//! The client side of light and full nodes: what a city node uses to write a batch, read
//! it back, and probe a storage node's health over the internal HTTP API
//! (`/internal/v1/...`, described in [`crate::messages::storage`]).
//!
//! One [`PeerClient`] wraps one connection pool shared by every storage node; it is cheap
//! to clone. Every request but the health probe is authenticated as this node for the node
//! it goes to (the protocol in [`crate::messages::auth`]): the first one to a node is signed
//! ([`RequestSigner`]) and opens a session with it, and the later ones carry a MAC under
//! the session key, renewed every [`SESSION_RENEW_AFTER`]. When a node answers that it no
//! longer knows the session (it restarted), the request is sent again, signed, and the next
//! one opens a new session; a node that cannot open one is asked again after
//! [`SESSION_RETRY_AFTER`], its requests signed meanwhile.
//! It reports what happened and leaves judgement to the caller: an ack or a possession
//! proof is returned as received, and verifying it against the holder's key is the
//! caller's job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use crate::crypto::session::{SessionKey, SessionOffer, Transcript};
use crate::messages::auth::RequestSigner;
pub use crate::messages::storage::HealthReport;
use crate::messages::storage::{
    BATCHES_PATH, HEALTH_PATH, OCTET_STREAM, PIECES_SEGMENT, POH_SUFFIX, PieceId, RELEASE_PATH,
    SESSIONS_PATH, SessionOpened,
};
use crate::messages::{self, HoldChallenge, HoldProof, PohAck};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer: connection refused or reset, timeout, bad URL.
    #[error("storage node unreachable: {0}")]
    Unreachable(String),
    /// The node answered with a non-2xx status.
    #[error("storage node refused with {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The node answered 2xx but the body is not what the API promises.
    #[error("malformed answer from storage node: {0}")]
    Malformed(String),
    /// The request could not be signed (the crypto library failed).
    #[error("signing the request: {0}")]
    Signing(#[from] crate::crypto::CryptoError),
}

pub type Result<T> = std::result::Result<T, PeerError>;

/// How long an idle pooled connection is kept. Probes run every few hundred milliseconds,
/// so connections to live nodes stay warm well within this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per storage node; enough for parallel batch writes to one node.
const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// A node that does not accept a connection within this is treated as down. Loopback and
/// datacenter links connect in well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of a non-JSON error body is kept in [`PeerError::Refused`]'s message.
const ERROR_SNIPPET_CHARS: usize = 200;

/// A session is renewed once this old (nodes keep one an hour).
pub const SESSION_RENEW_AFTER: Duration = Duration::from_secs(30 * 60);
/// After a node failed to open a session, how long its requests are signed before asking
/// again.
pub const SESSION_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The HTTP client of the storage tiers.
#[derive(Clone, Debug)]
pub struct PeerClient {
    http: reqwest::Client,
    signer: RequestSigner,
    /// Per storage node id, the session this client holds with it.
    sessions: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionSlot>>>>>,
}

/// What this client knows of its session with one node.
#[derive(Debug, Default)]
enum SessionSlot {
    #[default]
    None,
    Open(Arc<ClientSession>),
    /// Opening one failed at this time; requests are signed until [`SESSION_RETRY_AFTER`].
    Failed(Instant),
}

#[derive(Debug)]
struct ClientSession {
    id: [u8; 16],
    key: SessionKey,
    opened: Instant,
}

/// How a request proves its requester.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// The session's MAC if there is one (opening one if needed), else a signature.
    Session,
    Signed,
}

/// The JSON error body every endpoint answers with: `{"error":{"code":..,"message":..}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

fn unreachable(e: reqwest::Error) -> PeerError {
    // reqwest's Display omits the cause ("error sending request"); keep the chain.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    PeerError::Unreachable(msg)
}

fn batch_path(batch_id: &[u8; 32]) -> String {
    format!("{BATCHES_PATH}/{}", messages::hex32(batch_id))
}

fn piece_path(batch_id: &[u8; 32], index: u8) -> String {
    format!("{}{PIECES_SEGMENT}/{index}", batch_path(batch_id))
}

/// A storage node as the client addresses it: its id (what requests are signed for) and
/// its base URL.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub id: &'a str,
    pub url: &'a str,
}

impl Peer<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

impl PeerClient {
    /// A client whose requests `signer` signs.
    pub fn new(signer: RequestSigner) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .build()
            // Only TLS backend or resolver set-up can fail, and this build has neither.
            .expect("an HTTP client without TLS always builds");
        Self {
            http,
            signer,
            sessions: Arc::default(),
        }
    }

    /// Sends `method path` with `body` to `peer`, authenticated for it, the whole exchange
    /// bounded by `timeout`. A session the node no longer knows is dropped and the request
    /// sent again, signed.
    async fn send(
        &self,
        method: reqwest::Method,
        peer: Peer<'_>,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<reqwest::Response> {
        let (resp, in_session) = self
            .send_once(
                method.clone(),
                peer,
                path,
                body.clone(),
                timeout,
                Auth::Session,
            )
            .await?;
        if !in_session || resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        match success_body(resp).await {
            Err(PeerError::Refused { code, .. })
                if code == "unknown_session" || code == "bad_mac" =>
            {
                tracing::debug!(node = peer.id, %code, "session refused; signing and reopening");
                *self.slot(peer.id).lock().await = SessionSlot::None;
                let (resp, _) = self
                    .send_once(method, peer, path, body, timeout, Auth::Signed)
                    .await?;
                Ok(resp)
            }
            Err(e) => Err(e),
            Ok(_) => Err(PeerError::Malformed("401 with a success body".into())),
        }
    }

    /// One attempt; also says whether it went in a session.
    async fn send_once(
        &self,
        method: reqwest::Method,
        peer: Peer<'_>,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
        auth: Auth,
    ) -> Result<(reqwest::Response, bool)> {
        let session = match auth {
            Auth::Session => self.session(peer, timeout).await,
            Auth::Signed => None,
        };
        let req = self.request(method, peer, path, body, timeout, session.as_deref())?;
        let resp = req.send().await.map_err(unreachable)?;
        Ok((resp, session.is_some()))
    }

    /// The request, with a MAC under `session` or else signed.
    fn request(
        &self,
        method: reqwest::Method,
        peer: Peer<'_>,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
        session: Option<&ClientSession>,
    ) -> Result<reqwest::RequestBuilder> {
        let m = method.as_str();
        let headers = match session {
            Some(s) => self
                .signer
                .session_headers(&s.id, &s.key, m, path, peer.id, &body)?,
            None => self.signer.headers(m, path, peer.id, &body)?,
        };
        let mut req = self.http.request(method, peer.url(path)).timeout(timeout);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if !body.is_empty() {
            req = req
                .header(reqwest::header::CONTENT_TYPE, OCTET_STREAM)
                .body(body);
        }
        Ok(req)
    }

    fn slot(&self, node: &str) -> Arc<tokio::sync::Mutex<SessionSlot>> {
        let mut all = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.entry(node.to_owned()).or_default().clone()
    }

    /// The live session with `peer`, opened now if there is none or it is due for renewal;
    /// `None` (sign instead) if it cannot be opened.
    async fn session(&self, peer: Peer<'_>, timeout: Duration) -> Option<Arc<ClientSession>> {
        let slot = self.slot(peer.id);
        // One request per node opens the session; the others wait for it.
        let mut slot = slot.lock().await;
        match &*slot {
            SessionSlot::Open(s) if s.opened.elapsed() < SESSION_RENEW_AFTER => {
                return Some(s.clone());
            }
            SessionSlot::Failed(at) if at.elapsed() < SESSION_RETRY_AFTER => return None,
            _ => {}
        }
        match self.open_session(peer, timeout).await {
            Ok(session) => {
                let session = Arc::new(session);
                *slot = SessionSlot::Open(session.clone());
                Some(session)
            }
            Err(e) => {
                tracing::debug!(node = peer.id, error = %e, "opening a session failed; signing");
                *slot = SessionSlot::Failed(Instant::now());
                None
            }
        }
    }

    async fn open_session(&self, peer: Peer<'_>, timeout: Duration) -> Result<ClientSession> {
        let offer = SessionOffer::new()?;
        let body = bytes::Bytes::copy_from_slice(offer.public());
        let resp = self
            .request(
                reqwest::Method::POST,
                peer,
                SESSIONS_PATH,
                body,
                timeout,
                None,
            )?
            .send()
            .await
            .map_err(unreachable)?;
        let body = success_body(resp).await?;
        let opened: SessionOpened = serde_json::from_slice(&body)
            .map_err(|e| PeerError::Malformed(format!("session: {e}")))?;
        let id: [u8; 16] = hex::decode(&opened.session)
            .ok()
            .and_then(|id| id.try_into().ok())
            .ok_or_else(|| PeerError::Malformed("session id is not 16 hex bytes".into()))?;
        let ciphertext = B64
            .decode(&opened.ciphertext)
            .map_err(|_| PeerError::Malformed("session ciphertext is not base64".into()))?;
        let transcript = Transcript {
            requester: self.signer.node_id(),
            server: peer.id,
            session_id: &id,
        };
        let key = offer
            .finish(&ciphertext, &transcript)
            .map_err(|e| PeerError::Malformed(format!("session ciphertext: {e}")))?;
        Ok(ClientSession {
            id,
            key,
            opened: Instant::now(),
        })
    }

    /// Writes `bytes` as batch `batch_id` to `peer` (`PUT /internal/v1/batches/{hex id}`),
    /// the whole exchange bounded by `timeout`. Returns the node's proof-of-hold ack,
    /// unverified.
    ///
    /// Pass `bytes::Bytes` (e.g. `actix_web::web::Bytes`) to send one buffer to many nodes
    /// without copying, or a `Vec<u8>`.
    pub async fn put_batch(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        bytes: impl Into<bytes::Bytes>,
        timeout: Duration,
    ) -> Result<PohAck> {
        self.put(peer, &batch_path(batch_id), bytes.into(), timeout)
            .await
    }

    /// Writes the encoded piece `bytes` as piece `index` of batch `batch_id` to `peer`
    /// (`PUT /internal/v1/batches/{hex id}/pieces/{index}`), the whole exchange bounded by
    /// `timeout`. Returns the node's proof-of-hold ack for the piece, unverified.
    pub async fn put_piece(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        index: u8,
        bytes: impl Into<bytes::Bytes>,
        timeout: Duration,
    ) -> Result<PohAck> {
        self.put(peer, &piece_path(batch_id, index), bytes.into(), timeout)
            .await
    }

    async fn put(
        &self,
        peer: Peer<'_>,
        path: &str,
        bytes: bytes::Bytes,
        timeout: Duration,
    ) -> Result<PohAck> {
        let resp = self
            .send(reqwest::Method::PUT, peer, path, bytes, timeout)
            .await?;
        let body = success_body(resp).await?;
        messages::decode::<PohAck>(&body).map_err(|e| PeerError::Malformed(format!("ack: {e}")))
    }

    /// Reads batch `batch_id` back from `peer`; `None` if it does not hold it (404).
    pub async fn get_batch(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        self.get(peer, &batch_path(batch_id), timeout).await
    }

    /// Reads piece `index` of batch `batch_id` back from `peer` (the encoded piece, not
    /// checked); `None` if it does not hold it (404).
    pub async fn get_piece(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        index: u8,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        self.get(peer, &piece_path(batch_id, index), timeout).await
    }

    /// Releases `pieces` on `peer` in one request and one fsynced transaction there (`POST
    /// /internal/v1/pieces/release`, at most
    /// [`MAX_RELEASE_PIECES`](crate::messages::storage::MAX_RELEASE_PIECES)): for each, `true` when
    /// the node removed it, `false` when it did not hold it, both meaning it is gone.
    pub async fn release_pieces(
        &self,
        peer: Peer<'_>,
        pieces: &[PieceId],
        timeout: Duration,
    ) -> Result<Vec<bool>> {
        let body = bytes::Bytes::from(messages::encode(&pieces));
        let resp = self
            .send(reqwest::Method::POST, peer, RELEASE_PATH, body, timeout)
            .await?;
        let body = success_body(resp).await?;
        let removed: Vec<bool> = messages::decode(&body)
            .map_err(|e| PeerError::Malformed(format!("release answer: {e}")))?;
        if removed.len() != pieces.len() {
            return Err(PeerError::Malformed(format!(
                "release answer names {} pieces, {} were asked",
                removed.len(),
                pieces.len()
            )));
        }
        Ok(removed)
    }

    async fn get(&self, peer: Peer<'_>, path: &str, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let resp = self
            .send(
                reqwest::Method::GET,
                peer,
                path,
                bytes::Bytes::new(),
                timeout,
            )
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        // Zero-copy when the buffer is uniquely owned, as a freshly read body is.
        Ok(Some(Vec::from(success_body(resp).await?)))
    }

    /// `REPAIR_REQ`: challenges `peer` to prove it still holds the bytes of `batch_id`
    /// (`POST /internal/v1/batches/{id}/poh`). `None` when it holds nothing. The proof is
    /// returned unverified.
    pub async fn challenge(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        challenge: &HoldChallenge,
        timeout: Duration,
    ) -> Result<Option<HoldProof>> {
        let path = format!("{}{POH_SUFFIX}", batch_path(batch_id));
        self.challenge_at(peer, &path, challenge, timeout).await
    }

    /// `REPAIR_REQ` for one piece: challenges `peer` to prove it still holds piece `index`
    /// of `batch_id` (`POST /internal/v1/batches/{id}/pieces/{index}/poh`). `None` when it
    /// holds no such piece. The proof is returned unverified.
    pub async fn challenge_piece(
        &self,
        peer: Peer<'_>,
        batch_id: &[u8; 32],
        index: u8,
        challenge: &HoldChallenge,
        timeout: Duration,
    ) -> Result<Option<HoldProof>> {
        let path = format!("{}{POH_SUFFIX}", piece_path(batch_id, index));
        self.challenge_at(peer, &path, challenge, timeout).await
    }

    async fn challenge_at(
        &self,
        peer: Peer<'_>,
        path: &str,
        challenge: &HoldChallenge,
        timeout: Duration,
    ) -> Result<Option<HoldProof>> {
        let body = bytes::Bytes::from(messages::encode(challenge));
        let resp = self
            .send(reqwest::Method::POST, peer, path, body, timeout)
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = success_body(resp).await?;
        messages::decode::<HoldProof>(&body)
            .map(Some)
            .map_err(|e| PeerError::Malformed(format!("possession proof: {e}")))
    }

    /// Asks the node at `base_url` how it is (`GET /internal/v1/health`).
    pub async fn health(&self, base_url: &str, timeout: Duration) -> Result<HealthReport> {
        let resp = self
            .http
            .get(format!("{}{HEALTH_PATH}", base_url.trim_end_matches('/')))
            .timeout(timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let body = success_body(resp).await?;
        serde_json::from_slice(&body).map_err(|e| PeerError::Malformed(format!("health: {e}")))
    }
}

/// The body of a 2xx answer, or the error the answer carries. (reqwest does not re-export
/// `bytes`; actix-web does, and both depend on the same `bytes` 1.)
async fn success_body(resp: reqwest::Response) -> Result<actix_web::web::Bytes> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(unreachable)?;
    if status.is_success() {
        return Ok(body);
    }
    Err(match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => PeerError::Refused {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        // Not our error format (a proxy, another program on the port): keep what there is.
        Err(_) => PeerError::Refused {
            status: status.as_u16(),
            code: "unknown".into(),
            message: String::from_utf8_lossy(&body)
                .chars()
                .take(ERROR_SNIPPET_CHARS)
                .collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use actix_web::{App, HttpResponse, HttpServer, web};

    use super::*;

    /// Serves fixed answers on the storage API's paths, to see how the client reads them.
    fn start_fake(
        put: fn() -> HttpResponse,
        get: fn() -> HttpResponse,
    ) -> (String, actix_web::dev::ServerHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .route(
                    "/internal/v1/batches/{id}",
                    web::put().to(move || async move { put() }),
                )
                .route(
                    "/internal/v1/batches/{id}",
                    web::get().to(move || async move { get() }),
                )
                .route(
                    "/internal/v1/health",
                    web::get().to(move || async move { get() }),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        (url, handle)
    }

    #[actix_web::test]
    async fn error_bodies_and_garbage_are_reported_as_such() {
        let (url, handle) = start_fake(
            || HttpResponse::Ok().body("not an ack"),
            || {
                HttpResponse::BadGateway()
                    .content_type("text/plain")
                    .body("upstream down")
            },
        );
        let client = crate::testkit::peer_client();
        let t = Duration::from_secs(5);

        let peer = Peer {
            id: "light-1",
            url: &url,
        };
        let err = client.put_batch(peer, &[1; 32], vec![1, 2, 3], t).await;
        assert!(matches!(err, Err(PeerError::Malformed(_))), "{err:?}");

        match client.get_batch(peer, &[1; 32], t).await {
            Err(PeerError::Refused {
                status: 502,
                code,
                message,
            }) => {
                assert_eq!(code, "unknown");
                assert_eq!(message, "upstream down");
            }
            other => panic!("expected Refused 502, got {other:?}"),
        }
        let err = client.health(&url, t).await;
        assert!(
            matches!(err, Err(PeerError::Refused { status: 502, .. })),
            "{err:?}"
        );
        handle.stop(true).await;
    }

    #[actix_web::test]
    async fn json_errors_keep_code_and_message_and_bad_health_is_malformed() {
        let (url, handle) = start_fake(
            || {
                actix_web::ResponseError::error_response(&crate::http::ApiError::new(
                    503,
                    "overloaded",
                    "try later",
                ))
            },
            || HttpResponse::Ok().json(serde_json::json!({"node_id": "x"})),
        );
        let client = crate::testkit::peer_client();
        let t = Duration::from_secs(5);
        let peer = Peer {
            id: "light-1",
            url: &url,
        };
        match client.put_batch(peer, &[1; 32], Vec::new(), t).await {
            Err(PeerError::Refused {
                status,
                code,
                message,
            }) => assert_eq!(
                (status, code.as_str(), message.as_str()),
                (503, "overloaded", "try later")
            ),
            other => panic!("expected Refused, got {other:?}"),
        }
        let err = client.health(&url, t).await;
        assert!(matches!(err, Err(PeerError::Malformed(_))), "{err:?}");
        handle.stop(true).await;
    }

    #[actix_web::test]
    async fn closed_port_is_unreachable() {
        // Bind then drop: nothing listens on the port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = crate::testkit::peer_client()
            .health(&url, Duration::from_secs(5))
            .await;
        assert!(matches!(err, Err(PeerError::Unreachable(_))), "{err:?}");
    }

    #[actix_web::test]
    async fn silent_node_times_out_as_unreachable() {
        // The kernel accepts the connection into the backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let err = crate::testkit::peer_client()
            .put_batch(
                Peer {
                    id: "light-1",
                    url: &url,
                },
                &[2; 32],
                vec![0u8; 16],
                Duration::from_millis(200),
            )
            .await;
        match err {
            Err(PeerError::Unreachable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
        drop(listener);
    }

    #[test]
    fn urls_tolerate_a_trailing_slash() {
        let id = [0xab; 32];
        let want = format!("http://h:1/internal/v1/batches/{}", "ab".repeat(32));
        let path = batch_path(&id);
        assert_eq!(
            Peer {
                id: "n",
                url: "http://h:1"
            }
            .url(&path),
            want
        );
        assert_eq!(
            Peer {
                id: "n",
                url: "http://h:1/"
            }
            .url(&path),
            want
        );
    }
}
