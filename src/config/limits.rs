//! `[limits]`: what one node lets its peers hold at once, on every role. Each bound turns a
//! resource an attacker or a burst could exhaust (open files, memory, time) into a quick,
//! clear refusal: 408 for a body that stops arriving, 503 `overloaded` (with `Retry-After`)
//! past a connection or memory bound.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[limits]`: connections, request bodies and store caches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections the node serves at once, all HTTP workers together. Past it the node
    /// stops accepting: new connections wait in the listen backlog. Keep it well under the
    /// process's open-file limit (`ulimit -n`): a node lowers it at start to leave
    /// [`RESERVED_FILES`] descriptors for its own files and outgoing connections.
    pub max_connections: usize,
    /// Connections one peer (source IP address) may hold at once (never more than
    /// `max_connections`); a connection past it is answered 503 `overloaded` and closed.
    pub max_connections_per_peer: usize,
    /// Connections the kernel queues before the node accepts them (`listen(2)` backlog,
    /// capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Longest wait for a request's head (request line and headers); past it, 408.
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Longest an idle keep-alive connection is kept open.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Longest wait for the next piece of a request body; past it, 408 and the connection
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Longest a whole request body may take to arrive; past it, 408 and the connection is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub body_deadline: Duration,
    /// Bytes of request bodies being read or held at once by the node. A body is granted
    /// its declared `Content-Length` before it is read (a chunked body, its chunks as they
    /// arrive); past the budget, 503 `overloaded` at once.
    pub body_budget_bytes: usize,
    /// The share of `body_budget_bytes` one peer (source IP address) may hold at once
    /// (never more than the whole).
    pub body_budget_per_peer_bytes: usize,
    /// Page cache of the node's redb store (`city.redb` on a city, `batches.redb` on a
    /// storage node), in bytes.
    pub store_cache_bytes: usize,
    /// A storage node whose store failed (an I/O error) reopens it after this, then after
    /// twice as long each time it fails again, up to `store_retry_max`.
    #[serde(with = "humantime_serde")]
    pub store_retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub store_retry_max: Duration,
}

/// File descriptors a node keeps out of `max_connections` for its own files, its outgoing
/// connections (a city's to its storage nodes and MongoDB) and its listeners.
pub const RESERVED_FILES: u64 = 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_peer: 1024,
            listen_backlog: 4096,
            request_head_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            body_idle_timeout: Duration::from_secs(5),
            body_deadline: Duration::from_secs(30),
            body_budget_bytes: 64 * 1024 * 1024,
            body_budget_per_peer_bytes: 32 * 1024 * 1024,
            store_cache_bytes: 64 * 1024 * 1024,
            store_retry_initial: Duration::from_millis(100),
            store_retry_max: Duration::from_secs(5),
        }
    }
}

impl LimitsConfig {
    /// Connections one peer may hold at once, in effect.
    pub fn connections_per_peer(&self) -> usize {
        self.max_connections_per_peer.min(self.max_connections)
    }

    /// Bytes of bodies one peer may hold at once, in effect.
    pub fn body_budget_per_peer(&self) -> usize {
        self.body_budget_per_peer_bytes.min(self.body_budget_bytes)
    }

    /// Every problem of the section; `largest_body` is the largest request body the node's
    /// role accepts (a body budget smaller than that could never grant it).
    pub fn problems(&self, largest_body: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_connections < 16 {
            p.push("[limits] max_connections must be at least 16".into());
        }
        if self.max_connections_per_peer == 0 {
            p.push("[limits] max_connections_per_peer must be at least 1".into());
        }
        if self.listen_backlog == 0 {
            p.push("[limits] listen_backlog must be at least 1".into());
        }
        if [
            self.request_head_timeout,
            self.keep_alive,
            self.body_idle_timeout,
            self.body_deadline,
            self.store_retry_initial,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            p.push("[limits] timeouts and store_retry_initial must be positive".into());
        }
        if self.body_idle_timeout > self.body_deadline {
            p.push("[limits] body_idle_timeout must not exceed body_deadline".into());
        }
        if self.store_retry_initial > self.store_retry_max {
            p.push("[limits] store_retry_initial must not exceed store_retry_max".into());
        }
        if self.body_budget_per_peer() < largest_body {
            p.push(format!(
                "[limits] body_budget_per_peer_bytes and body_budget_bytes ({} in effect) must hold the largest body this node accepts ({largest_body})",
                self.body_budget_per_peer()
            ));
        }
        if self.store_cache_bytes < 1024 * 1024 {
            p.push("[limits] store_cache_bytes must be at least 1 MiB".into());
        }
        p
    }
}

/// Room over `[batcher] max_batch_bytes` for a batch's header and encoding: what a storage
/// node accepts as one `PUT` body.
pub const BATCH_ENVELOPE_BYTES: usize = 64 * 1024;
