//! The server side of signed node-to-node requests (the protocol is in
//! [`crate::messages::auth`]): who may call a storage node, checked before its body is read.
//!
//! A request is served only if, in this order (cheapest first, so that a stranger costs a
//! few comparisons and never a body read):
//!
//! 1. it carries the five headers, well formed;
//! 2. its node id is on the allow-list (`[[auth.peers]]`), else 401 `unknown_peer`;
//! 3. its time is within `max_clock_skew` of ours, else 401 `stale_request`;
//! 4. its signature verifies with that node's key over the method, the path, our node id,
//!    the time, the nonce and the body hash, else 401 `bad_signature`; or, for a request
//!    made in a session, the session is one this node opened with that node and has not
//!    expired, else 401 `unknown_session`, and the MAC of the same fields under the
//!    session key matches, else 401 `bad_mac`;
//! 5. its nonce was not seen from that node in the window, else 401 `replayed_request`
//!    (nonces are remembered only once a signature verified, so strangers cannot fill the
//!    memory of them);
//! 6. the body it then sends hashes to what it signed, else 400 `body_mismatch`
//!    ([`AuthenticatedPeer::check_body`], called by the handler once it has read the body).
//!
//! Sessions are opened by a signed `POST /internal/v1/sessions` ([`PeerAuth::open_session`];
//! the protocol in [`crate::crypto::session`]). They live in memory only, for
//! [`SESSION_LIFETIME`], at most [`SESSIONS_PER_PEER`] per allowed node (opening one more
//! drops that node's oldest), so their memory is bounded by the allow-list.
//!
//! Each refusal changes nothing. Possession proofs cost this node an ML-DSA signature and a
//! pass over the bytes held, so they are also rate-limited per peer
//! ([`PeerAuth::allow_challenge`]), 429 `rate_limited`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::config::{AuthConfig, decode_public_key};
use crate::crypto::session::{self, SessionKey, Transcript};
use crate::crypto::{self, Hash32};
use crate::messages::auth::{
    BODY_HASH_HEADER, MAC_HEADER, NODE_HEADER, NONCE_HEADER, RequestClaim, SESSION_HEADER,
    SIGNATURE_HEADER, TIME_HEADER,
};
use crate::messages::now_ms;
use crate::messages::storage::SessionOpened;

/// The allow-list and the replay window of one node; register it as `web::Data<PeerAuth>`.
pub struct PeerAuth {
    /// This node's id: the audience every request must be signed for.
    me: String,
    /// Allowed node id → its ML-DSA-65 public key.
    peers: HashMap<String, Vec<u8>>,
    max_skew_ms: u64,
    seen: Mutex<ReplayWindow>,
    challenges: DefaultKeyedRateLimiter<String>,
    sessions: Mutex<Sessions>,
}

/// How long a session opened with this node lasts; requesters renew well before.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// Sessions kept per allowed node: opening one more drops its oldest.
pub const SESSIONS_PER_PEER: usize = 4;

/// The sessions this node opened, by id, and per peer in the order they were opened.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<[u8; 16], ServerSession>,
    by_peer: HashMap<String, VecDeque<[u8; 16]>>,
}

struct ServerSession {
    peer: String,
    key: SessionKey,
    expires_ms: u64,
}

impl Sessions {
    fn insert(&mut self, id: [u8; 16], session: ServerSession) {
        let mine = self.by_peer.entry(session.peer.clone()).or_default();
        mine.push_back(id);
        while mine.len() > SESSIONS_PER_PEER {
            if let Some(old) = mine.pop_front() {
                self.by_id.remove(&old);
            }
        }
        self.by_id.insert(id, session);
    }
}

/// Nonces seen in the last window, oldest first, so that expired ones leave cheaply.
#[derive(Default)]
struct ReplayWindow {
    nonces: HashSet<(String, [u8; 16])>,
    by_age: VecDeque<(u64, String, [u8; 16])>,
}

impl ReplayWindow {
    /// Records the nonce; false if it was already there.
    fn first_use(&mut self, peer: &str, nonce: [u8; 16], now_ms: u64, keep_ms: u64) -> bool {
        while let Some((at, _, _)) = self.by_age.front() {
            if now_ms.saturating_sub(*at) <= keep_ms {
                break;
            }
            let (_, p, n) = self.by_age.pop_front().expect("front exists");
            self.nonces.remove(&(p, n));
        }
        if !self.nonces.insert((peer.to_owned(), nonce)) {
            return false;
        }
        self.by_age.push_back((now_ms, peer.to_owned(), nonce));
        true
    }
}

impl PeerAuth {
    /// The checks for node `me`. Entries whose key does not decode are skipped (config
    /// validation refuses them before a node starts).
    pub fn new(me: impl Into<String>, config: &AuthConfig) -> Self {
        let peers = config
            .peers
            .iter()
            .filter_map(|p| Some((p.id.clone(), decode_public_key(&p.public_key)?)))
            .collect();
        let rate = NonZeroU32::new(config.challenges_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.challenge_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            me: me.into(),
            peers,
            max_skew_ms: config.max_clock_skew.as_millis() as u64,
            seen: Mutex::new(ReplayWindow::default()),
            challenges: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            sessions: Mutex::new(Sessions::default()),
        }
    }

    /// Opens a session for `peer` (already authenticated) from its ML-KEM-768 `offer`:
    /// what the route `POST /internal/v1/sessions` answers.
    pub fn open_session(
        &self,
        peer: &AuthenticatedPeer,
        offer: &[u8],
    ) -> Result<SessionOpened, ApiError> {
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| ApiError::new(500, "internal", "no randomness for a session id"))?;
        let transcript = Transcript {
            requester: &peer.id,
            server: &self.me,
            session_id: &id,
        };
        let (ciphertext, key) = session::accept(offer, &transcript).map_err(|e| {
            ApiError::bad_request("invalid_session_offer", format!("refused session: {e}"))
        })?;
        let lifetime_ms = SESSION_LIFETIME.as_millis() as u64;
        lock(&self.sessions).insert(
            id,
            ServerSession {
                peer: peer.id.clone(),
                key,
                expires_ms: now_ms() + lifetime_ms,
            },
        );
        metrics::counter!(crate::metrics::SESSIONS_OPENED).increment(1);
        Ok(SessionOpened {
            session: hex::encode(id),
            ciphertext: B64.encode(ciphertext),
            expires_in_ms: lifetime_ms,
        })
    }

    /// Whether `peer` may have one more possession proof now.
    pub fn allow_challenge(&self, peer: &AuthenticatedPeer) -> Result<(), ApiError> {
        self.challenges.check_key(&peer.id).map_err(|_| {
            metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => "rate_limited")
                .increment(1);
            ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    429,
                    "rate_limited",
                    format!("too many possession proofs asked by {}", peer.id),
                )
            }
        })
    }

    fn authenticate(&self, req: &HttpRequest) -> Result<AuthenticatedPeer, ApiError> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| unauthenticated(format!("missing or unreadable {name} header")))
        };
        let requester = header(NODE_HEADER)?;
        let time_ms: u64 = header(TIME_HEADER)?
            .parse()
            .map_err(|_| unauthenticated(format!("{TIME_HEADER} must be milliseconds")))?;
        let nonce: [u8; 16] = hex::decode(header(NONCE_HEADER)?)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| unauthenticated(format!("{NONCE_HEADER} must be 32 hex characters")))?;
        let body_hash: Hash32 = crate::messages::parse_hex32(header(BODY_HASH_HEADER)?)
            .ok_or_else(|| {
                unauthenticated(format!("{BODY_HASH_HEADER} must be 64 hex characters"))
            })?;
        let proof = match req.headers().get(SESSION_HEADER) {
            None => Proof::Signature(
                B64.decode(header(SIGNATURE_HEADER)?)
                    .map_err(|_| unauthenticated(format!("{SIGNATURE_HEADER} must be base64")))?,
            ),
            Some(_) => {
                let session: [u8; 16] = hex::decode(header(SESSION_HEADER)?)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or_else(|| {
                        unauthenticated(format!("{SESSION_HEADER} must be 32 hex characters"))
                    })?;
                let mac = crate::messages::parse_hex32(header(MAC_HEADER)?).ok_or_else(|| {
                    unauthenticated(format!("{MAC_HEADER} must be 64 hex characters"))
                })?;
                Proof::Mac { session, mac }
            }
        };

        let Some(key) = self.peers.get(requester) else {
            return Err(refused(
                "unknown_peer",
                format!("{requester:?} is not a node this node serves"),
            ));
        };
        let now = now_ms();
        if now.abs_diff(time_ms) > self.max_skew_ms {
            return Err(refused(
                "stale_request",
                format!(
                    "the request was signed {} ms away from this node's clock (at most {} ms)",
                    now as i64 - time_ms as i64,
                    self.max_skew_ms
                ),
            ));
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or(req.path(), |p| p.as_str());
        let claim = RequestClaim {
            method: req.method().as_str(),
            path,
            audience: &self.me,
            requester,
            time_ms,
            nonce,
            body_hash,
        };
        match proof {
            Proof::Signature(signature) => {
                if crypto::verify(key, &claim.signed_bytes(), &signature).is_err() {
                    return Err(refused(
                        "bad_signature",
                        format!("the request signature does not verify with {requester}'s key"),
                    ));
                }
            }
            Proof::Mac { session, mac } => {
                let sessions = lock(&self.sessions);
                let live = sessions
                    .by_id
                    .get(&session)
                    .filter(|s| s.peer == requester && s.expires_ms > now);
                let Some(live) = live else {
                    return Err(refused(
                        "unknown_session",
                        format!(
                            "no live session {} of {requester} on this node; open a new one",
                            hex::encode(session)
                        ),
                    ));
                };
                if !live.key.verify(&claim.signed_bytes(), &mac) {
                    return Err(refused(
                        "bad_mac",
                        format!("the request MAC does not verify under {requester}'s session"),
                    ));
                }
            }
        }
        let first = lock(&self.seen).first_use(requester, nonce, now, 2 * self.max_skew_ms);
        if !first {
            return Err(refused(
                "replayed_request",
                "this request was already served; sign a new one".to_owned(),
            ));
        }
        Ok(AuthenticatedPeer {
            id: requester.to_owned(),
            body_hash,
        })
    }
}

/// How a request proves its requester.
enum Proof {
    Signature(Vec<u8>),
    Mac { session: [u8; 16], mac: Hash32 },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unauthenticated(message: String) -> ApiError {
    refused("unauthenticated", message)
}

fn refused(code: &'static str, message: String) -> ApiError {
    metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => code).increment(1);
    ApiError::new(401, code, message)
}

/// A request whose headers passed every check: the extractor of the storage routes.
#[derive(Debug, Clone)]
pub struct AuthenticatedPeer {
    /// The node that signed it.
    pub id: String,
    body_hash: Hash32,
}

impl AuthenticatedPeer {
    /// The body must be what was signed.
    pub fn check_body(&self, body: &[u8]) -> Result<(), ApiError> {
        if crypto::hash(body) == self.body_hash {
            Ok(())
        } else {
            metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => "body_mismatch")
                .increment(1);
            Err(ApiError::bad_request(
                "body_mismatch",
                "the body does not hash to the signed body hash",
            ))
        }
    }
}

impl FromRequest for AuthenticatedPeer {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(match req.app_data::<web::Data<PeerAuth>>() {
            Some(auth) => auth.authenticate(req),
            None => Err(ApiError::new(
                500,
                "internal",
                "request authentication is not configured",
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix_web::test::TestRequest;
    use base64::Engine;

    use super::*;
    use crate::config::{PeerKeyEntry, Role};
    use crate::crypto::SigningKey;
    use crate::messages::auth::RequestSigner;

    fn setup() -> (PeerAuth, RequestSigner, RequestSigner) {
        let city = Arc::new(SigningKey::generate().unwrap());
        let stranger = Arc::new(SigningKey::generate().unwrap());
        let config = AuthConfig {
            peers: vec![PeerKeyEntry {
                id: "city-1".into(),
                role: Role::City,
                public_key: B64.encode(city.public_key()),
                city: None,
                continent: None,
            }],
            max_clock_skew: Duration::from_secs(30),
            ..AuthConfig::default()
        };
        (
            PeerAuth::new("light-1", &config),
            RequestSigner::new("city-1", city),
            // Claims to be the city, signs with another key.
            RequestSigner::new("city-1", stranger),
        )
    }

    fn request(headers: &[(&'static str, String)], method: &str, path: &str) -> HttpRequest {
        let mut r = TestRequest::default()
            .method(method.parse().unwrap())
            .uri(path);
        for (k, v) in headers {
            r = r.insert_header((*k, v.as_str()));
        }
        r.to_http_request()
    }

    fn code(r: Result<AuthenticatedPeer, ApiError>) -> &'static str {
        r.err().map_or("ok", |e| e.code)
    }

    const PATH: &str = "/internal/v1/batches/00";

    /// Opens a session for `signer` (signed as `city-1`), as the route does: returns the
    /// session id and the requester's key.
    fn open(auth: &PeerAuth, signer: &RequestSigner) -> ([u8; 16], SessionKey) {
        use crate::crypto::session::SessionOffer;
        let offer = SessionOffer::new().unwrap();
        let path = crate::messages::storage::SESSIONS_PATH;
        let h = signer
            .headers("POST", path, "light-1", offer.public())
            .unwrap();
        let peer = auth.authenticate(&request(&h, "POST", path)).unwrap();
        peer.check_body(offer.public()).unwrap();
        let opened = auth.open_session(&peer, offer.public()).unwrap();
        let id: [u8; 16] = hex::decode(&opened.session).unwrap().try_into().unwrap();
        let ct = B64.decode(&opened.ciphertext).unwrap();
        let t = Transcript {
            requester: "city-1",
            server: "light-1",
            session_id: &id,
        };
        (id, offer.finish(&ct, &t).unwrap())
    }

    #[test]
    fn a_session_request_passes_with_its_mac_once_and_binds_what_a_signature_binds() {
        let (auth, city, _) = setup();
        let (id, key) = open(&auth, &city);
        let h = city
            .session_headers(&id, &key, "PUT", PATH, "light-1", b"body")
            .unwrap();
        assert!(h.iter().all(|(k, _)| *k != SIGNATURE_HEADER));
        let req = request(&h, "PUT", PATH);
        let peer = auth.authenticate(&req).unwrap();
        assert_eq!(peer.id, "city-1");
        peer.check_body(b"body").unwrap();
        assert_eq!(peer.check_body(b"other").unwrap_err().code, "body_mismatch");
        assert_eq!(code(auth.authenticate(&req)), "replayed_request");

        // Another path, method or audience under the same MAC fails.
        let h = city
            .session_headers(&id, &key, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", "/internal/v1/batches/01"))),
            "bad_mac"
        );
        assert_eq!(
            code(auth.authenticate(&request(&h, "PUT", PATH))),
            "bad_mac"
        );
        let h = city
            .session_headers(&id, &key, "GET", PATH, "light-2", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "bad_mac"
        );
    }

    #[test]
    fn sessions_are_the_opener_s_only_unknown_ones_are_refused_and_each_peer_keeps_a_few() {
        let (auth, city, forger) = setup();
        let (id, key) = open(&auth, &city);

        // A key that is not the session's (another session's): a forger who knows the id.
        let (_, wrong) = open(&auth, &city);
        let h = city
            .session_headers(&id, &wrong, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "bad_mac"
        );

        // The forger (claiming the city's id) cannot open a session: its offer is signed
        // with another key.
        let offer = crate::crypto::session::SessionOffer::new().unwrap();
        let path = crate::messages::storage::SESSIONS_PATH;
        let h = forger
            .headers("POST", path, "light-1", offer.public())
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "POST", path))),
            "bad_signature"
        );

        // An id this node never opened (or forgot, restarting) is refused as unknown.
        let h = city
            .session_headers(&[9u8; 16], &key, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unknown_session"
        );
        // Another node cannot use the city's session id.
        let h = RequestSigner::new("city-2", Arc::new(SigningKey::generate().unwrap()))
            .session_headers(&id, &key, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unknown_peer"
        );

        // Opening more than SESSIONS_PER_PEER drops the oldest: memory stays bounded.
        for _ in 0..SESSIONS_PER_PEER {
            open(&auth, &city);
        }
        assert_eq!(lock(&auth.sessions).by_id.len(), SESSIONS_PER_PEER);
        let h = city
            .session_headers(&id, &key, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unknown_session"
        );

        // An expired session is refused.
        let (id, key) = open(&auth, &city);
        lock(&auth.sessions).by_id.get_mut(&id).unwrap().expires_ms = now_ms() - 1;
        let h = city
            .session_headers(&id, &key, "GET", PATH, "light-1", b"")
            .unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unknown_session"
        );
    }

    #[test]
    fn an_offer_that_is_no_key_opens_nothing() {
        let (auth, city, _) = setup();
        let path = crate::messages::storage::SESSIONS_PATH;
        let h = city.headers("POST", path, "light-1", b"junk").unwrap();
        let peer = auth.authenticate(&request(&h, "POST", path)).unwrap();
        let err = auth.open_session(&peer, b"junk").unwrap_err();
        assert_eq!(
            (err.status.as_u16(), err.code),
            (400, "invalid_session_offer")
        );
        assert!(lock(&auth.sessions).by_id.is_empty());
    }

    #[test]
    fn a_signed_request_passes_once_and_its_body_is_bound() {
        let (auth, city, _) = setup();
        let h = city.headers("PUT", PATH, "light-1", b"body").unwrap();
        let req = request(&h, "PUT", PATH);
        let peer = auth.authenticate(&req).unwrap();
        assert_eq!(peer.id, "city-1");
        peer.check_body(b"body").unwrap();
        assert_eq!(peer.check_body(b"other").unwrap_err().code, "body_mismatch");
        // The same request again is a replay.
        assert_eq!(code(auth.authenticate(&req)), "replayed_request");
    }

    #[test]
    fn strangers_forgers_and_misdirected_requests_are_refused() {
        let (auth, city, forger) = setup();
        // No headers at all.
        assert_eq!(
            code(auth.authenticate(&request(&[], "GET", PATH))),
            "unauthenticated"
        );
        // Signed by a key that is not the city's.
        let h = forger.headers("GET", PATH, "light-1", b"").unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "bad_signature"
        );
        // A node that is not on the list.
        let other = RequestSigner::new("city-9", Arc::new(SigningKey::generate().unwrap()));
        let h = other.headers("GET", PATH, "light-1", b"").unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unknown_peer"
        );
        // Signed for another node: replaying it here fails.
        let h = city.headers("GET", PATH, "light-2", b"").unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "bad_signature"
        );
        // Signed for another path or method.
        let h = city.headers("GET", PATH, "light-1", b"").unwrap();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", "/internal/v1/batches/01"))),
            "bad_signature"
        );
        assert_eq!(
            code(auth.authenticate(&request(&h, "PUT", PATH))),
            "bad_signature"
        );
        // A changed time.
        let mut h = city.headers("GET", PATH, "light-1", b"").unwrap();
        let t: u64 = h[1].1.parse().unwrap();
        h[1].1 = (t + 1).to_string();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "bad_signature"
        );
        // Garbage in a header.
        let mut h = city.headers("GET", PATH, "light-1", b"").unwrap();
        h[2].1 = "zz".into();
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "unauthenticated"
        );
    }

    #[test]
    fn old_requests_are_stale_and_the_replay_window_forgets_in_time() {
        let (auth, _, _) = setup();
        // A request signed long ago (by a real key) is stale whatever its signature.
        let key = Arc::new(SigningKey::generate().unwrap());
        let claim = RequestClaim {
            method: "GET",
            path: PATH,
            audience: "light-1",
            requester: "city-1",
            time_ms: now_ms() - 120_000,
            nonce: [1; 16],
            body_hash: crypto::hash(b""),
        };
        let sig = key.sign(&claim.signed_bytes()).unwrap();
        let h = [
            (NODE_HEADER, "city-1".to_string()),
            (TIME_HEADER, claim.time_ms.to_string()),
            (NONCE_HEADER, hex::encode(claim.nonce)),
            (BODY_HASH_HEADER, hex::encode(claim.body_hash)),
            (SIGNATURE_HEADER, B64.encode(sig)),
        ];
        assert_eq!(
            code(auth.authenticate(&request(&h, "GET", PATH))),
            "stale_request"
        );

        let mut w = ReplayWindow::default();
        assert!(w.first_use("a", [1; 16], 1_000, 60_000));
        assert!(!w.first_use("a", [1; 16], 2_000, 60_000));
        assert!(w.first_use("b", [1; 16], 2_000, 60_000));
        // Past the window the old nonce is forgotten, and so is its memory.
        assert!(w.first_use("c", [2; 16], 70_000, 60_000));
        assert_eq!(w.nonces.len(), 1);
    }

    #[test]
    fn challenges_are_rate_limited_per_peer() {
        let (_, city, _) = setup();
        let config = AuthConfig {
            peers: vec![PeerKeyEntry {
                id: "city-1".into(),
                role: Role::City,
                public_key: B64.encode(SigningKey::generate().unwrap().public_key()),
                city: None,
                continent: None,
            }],
            challenges_per_second: 1,
            challenge_burst: 3,
            ..AuthConfig::default()
        };
        let auth = PeerAuth::new("light-1", &config);
        let peer = AuthenticatedPeer {
            id: city.node_id().to_owned(),
            body_hash: [0; 32],
        };
        let other = AuthenticatedPeer {
            id: "city-2".into(),
            body_hash: [0; 32],
        };
        for _ in 0..3 {
            auth.allow_challenge(&peer).unwrap();
        }
        let e = auth.allow_challenge(&peer).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
        assert_eq!(e.retry_after, Some(1));
        // Another peer has its own budget.
        auth.allow_challenge(&other).unwrap();
    }
}
