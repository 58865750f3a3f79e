//! Signed requests between nodes: how a city proves to a storage node who is asking.
//!
//! Every request to a storage node's internal API (but its health report) carries five
//! headers: the requester's node id, the time, a fresh random nonce, the BLAKE3 hash of the
//! body and an ML-DSA-65 signature by the requester's node key over all of that plus the
//! method, the path and the id of the node it is meant for (the audience). The receiving
//! node checks them against its allow-list ([`crate::config::AuthConfig`]) before it reads
//! the body; see `http::peer_auth` for the rules.
//!
//! After its first request to a node, a requester opens a **session** with it
//! (`POST /internal/v1/sessions`, a signed request carrying an ephemeral ML-KEM-768 key;
//! [`crate::crypto::session`]) and from then on replaces the signature header with two
//! others: the session id and a keyed BLAKE3 MAC of the same claim under the session key.
//! Everything else (the five checks, the nonce, the body hash) is unchanged; a node that
//! forgot the session (it restarted) answers 401 `unknown_session` and the requester opens
//! a new one.
//!
//! Binding the audience means a request captured on its way to one node cannot be replayed
//! to another; binding the body hash means a signed header cannot carry other bytes; the
//! time and the nonce make every request usable once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::crypto::session::SessionKey;
use crate::crypto::{self, Hash32, SigningKey};

/// Domain-separation tag of request signatures.
pub const REQUEST_TAG: &str = "citychain/request/v1";

/// The requester's node id.
pub const NODE_HEADER: &str = "x-citychain-node";
/// Milliseconds since the Unix epoch when the request was signed.
pub const TIME_HEADER: &str = "x-citychain-time";
/// 16 random bytes, hex: a request is accepted once.
pub const NONCE_HEADER: &str = "x-citychain-nonce";
/// BLAKE3 of the body, hex (of the empty string when there is none).
pub const BODY_HASH_HEADER: &str = "x-citychain-body-hash";
/// Base64 ML-DSA-65 signature over [`RequestClaim::signed_bytes`].
pub const SIGNATURE_HEADER: &str = "x-citychain-signature";

/// The id of the session whose key MACs the request, hex (instead of a signature).
pub const SESSION_HEADER: &str = "x-citychain-session";
/// Hex keyed BLAKE3 of [`RequestClaim::signed_bytes`] under the session key.
pub const MAC_HEADER: &str = "x-citychain-mac";

/// What a signed request claims; the signature covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestClaim<'a> {
    pub method: &'a str,
    /// Path and query as sent, e.g. `/internal/v1/batches/ab…`.
    pub path: &'a str,
    /// The node the request is meant for.
    pub audience: &'a str,
    pub requester: &'a str,
    pub time_ms: u64,
    pub nonce: [u8; 16],
    pub body_hash: Hash32,
}

impl RequestClaim<'_> {
    pub fn signed_bytes(&self) -> Vec<u8> {
        let fields = postcard::to_stdvec(&(
            self.method,
            self.path,
            self.audience,
            self.requester,
            self.time_ms,
            self.nonce,
            self.body_hash,
        ))
        .expect("request fields encode");
        crypto::tagged(REQUEST_TAG, &fields)
    }
}

/// Signs outgoing requests as one node.
#[derive(Debug, Clone)]
pub struct RequestSigner {
    node_id: String,
    key: std::sync::Arc<SigningKey>,
}

impl RequestSigner {
    pub fn new(node_id: impl Into<String>, key: std::sync::Arc<SigningKey>) -> Self {
        Self {
            node_id: node_id.into(),
            key,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The five authentication headers for `method path` with `body`, meant for
    /// `audience`, signed with the node key.
    pub fn headers(
        &self,
        method: &str,
        path: &str,
        audience: &str,
        body: &[u8],
    ) -> crypto::Result<Vec<(&'static str, String)>> {
        let claim = self.claim(method, path, audience, body)?;
        let signature = self.key.sign(&claim.signed_bytes())?;
        let mut headers = claim_headers(&claim);
        headers.push((SIGNATURE_HEADER, B64.encode(signature)));
        Ok(headers)
    }

    /// The same request authenticated by session `session_id` instead: its four claim
    /// headers, the session id and the MAC under `key`.
    pub fn session_headers(
        &self,
        session_id: &[u8; 16],
        key: &SessionKey,
        method: &str,
        path: &str,
        audience: &str,
        body: &[u8],
    ) -> crypto::Result<Vec<(&'static str, String)>> {
        let claim = self.claim(method, path, audience, body)?;
        let mut headers = claim_headers(&claim);
        headers.push((SESSION_HEADER, hex::encode(session_id)));
        headers.push((MAC_HEADER, hex::encode(key.mac(&claim.signed_bytes()))));
        Ok(headers)
    }

    fn claim<'a>(
        &'a self,
        method: &'a str,
        path: &'a str,
        audience: &'a str,
        body: &[u8],
    ) -> crypto::Result<RequestClaim<'a>> {
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| crypto::CryptoError::Library)?;
        Ok(RequestClaim {
            method,
            path,
            audience,
            requester: &self.node_id,
            time_ms: super::now_ms(),
            nonce,
            body_hash: crypto::hash(body),
        })
    }
}

fn claim_headers(claim: &RequestClaim<'_>) -> Vec<(&'static str, String)> {
    vec![
        (NODE_HEADER, claim.requester.to_owned()),
        (TIME_HEADER, claim.time_ms.to_string()),
        (NONCE_HEADER, hex::encode(claim.nonce)),
        (BODY_HASH_HEADER, hex::encode(claim.body_hash)),
    ]
}
