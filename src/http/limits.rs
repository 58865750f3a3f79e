//! The resource limits of every role's HTTP server (`[limits]`), enforced here:
//!
//! - **Connections**: at most `max_connections` for the whole node (actix-web counts per
//!   worker, so each worker gets its share; past it the listener stops accepting and new
//!   connections wait in the listen backlog), and at most `max_connections_per_peer` per
//!   source IP address: [`PeerTable`] counts each connection from the moment it is
//!   accepted until it closes, and [`guard_connection`] answers a connection past its
//!   peer's bound with 503 `overloaded` and closes it.
//! - **Time**: a request head must arrive within `request_head_timeout` (actix-web answers
//!   408), each piece of a body within `body_idle_timeout` and the whole body within
//!   `body_deadline` ([`read_limited_body`](super::common::read_limited_body) answers 408
//!   and closes the connection), idle keep-alive connections close after `keep_alive`.
//! - **Memory**: the bytes of request bodies being read or held at once are bounded by a
//!   [`BodyBudget`] of `body_budget_bytes`, of which one peer may hold
//!   `body_budget_per_peer_bytes`. A body is granted its declared length before a byte of
//!   it is buffered (a chunked body, each chunk as it arrives); a body the budget cannot
//!   grant is refused at once with 503 `overloaded`. The grant lives as long as the body
//!   ([`BoundedBody`](super::common::BoundedBody)), through its decoding and storing.
//!
//! So a node's memory for request bodies is at most `body_budget_bytes` plus actix-web's
//! own buffers (a few tens of KiB per connection, times `max_connections`).

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, ResponseError, web};
use futures::{Stream, StreamExt};

use super::ApiError;
use crate::config::{LimitsConfig, RESERVED_FILES};

/// The limits a node's HTTP server enforces; one per node, shared by its workers as
/// `web::Data<Limits>`.
pub struct Limits {
    pub config: LimitsConfig,
    pub budget: Arc<BodyBudget>,
    pub peers: Arc<PeerTable>,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            budget: Arc::new(BodyBudget::new(
                config.body_budget_bytes,
                config.body_budget_per_peer(),
            )),
            peers: Arc::new(PeerTable::new(config.connections_per_peer())),
            config,
        }
    }

    /// The limits registered with the app serving `req`, or the defaults (an app built
    /// without them, as unit tests do, still bounds its bodies).
    pub fn of(req: &HttpRequest) -> &Limits {
        static DEFAULT: OnceLock<Limits> = OnceLock::new();
        match req.app_data::<web::Data<Limits>>() {
            Some(limits) => limits.get_ref(),
            None => DEFAULT.get_or_init(|| Limits::new(LimitsConfig::default())),
        }
    }

    /// `max_connections` per HTTP worker, rounded down (at least one each), so that all
    /// workers together never exceed it.
    pub fn connections_per_worker(&self, workers: usize) -> usize {
        (self.config.max_connections / workers.max(1)).max(1)
    }

    /// Called by actix-web for every accepted connection: counts it against its peer and
    /// keeps the count in the connection's data until the connection closes, with the
    /// socket's descriptor for [`guard_connection`].
    pub fn on_connect(&self, conn: &dyn Any, data: &mut Extensions) {
        use std::os::fd::AsRawFd;
        let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        data.insert(ConnSocket(stream.as_raw_fd()));
        if let Ok(peer) = stream.peer_addr() {
            data.insert(self.peers.enter(peer.ip()));
        }
    }
}

/// Fits `max_connections` into the process's open-file limit: raises the soft limit
/// towards the hard one if it must, and if that is still not enough lowers
/// `max_connections` to leave [`RESERVED_FILES`] descriptors for the node's own files and
/// outgoing connections (a city's to its storage nodes). Returns the limit in force.
pub fn fit_open_files(config: &mut LimitsConfig) -> u64 {
    let want = config.max_connections as u64 + RESERVED_FILES;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit we own; only the soft limit changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let fits = lim.rlim_cur.saturating_sub(RESERVED_FILES).max(16);
    if (config.max_connections as u64) > fits {
        tracing::warn!(
            configured = config.max_connections,
            open_files = lim.rlim_cur,
            max_connections = fits,
            "[limits] max_connections does not fit the open-file limit (ulimit -n) with room for the node's own files and outgoing connections; lowered"
        );
        config.max_connections = fits as usize;
    }
    lim.rlim_cur
}

/// Sets the listen backlog of an already listening socket (`listen(2)` again, which Linux
/// allows); the standard library listens with 128, which a burst of connections overflows
/// into SYN retries of one, three, seven seconds.
pub fn set_backlog(listener: &std::net::TcpListener, backlog: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    // SAFETY: the descriptor is a bound, listening TCP socket owned by `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How long a connection closed after an early answer (a body refused or timed out) keeps
/// reading and discarding what its client still sends, so the client reads the answer
/// instead of a reset.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Open connections per peer (source IP address).
pub struct PeerTable {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerTable {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`; the slot says whether it is over the limit, and
    /// uncounts it when dropped.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> PeerSlot {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        *n += 1;
        PeerSlot {
            table: self.clone(),
            ip,
            over: *n > self.limit,
        }
    }

    /// Connections open from `ip` now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// One counted connection, kept in the connection's data (`HttpRequest::conn_data`).
pub struct PeerSlot {
    table: Arc<PeerTable>,
    ip: IpAddr,
    /// The peer already held its limit when this connection came.
    pub over: bool,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The descriptor of a connection's socket, kept in its data.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket(RawFd);

/// Middleware (`from_fn`) on every role:
///
/// - a request on a connection past its peer's limit gets 503 `overloaded` and the
///   connection is closed;
/// - a connection whose chunked request body was left unfinished when its answer was ready
///   (refused early, or timed out) has its read side shut: actix-web would otherwise keep
///   it open to read and discard the rest of that body, for as long as the client takes,
///   which a client that stopped sending never ends. With the read side shut, the answer is
///   written and the connection closed. (A body with a `Content-Length` left unread is
///   closed by actix-web itself after [`LINGER`].)
pub async fn guard_connection(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let socket = req.conn_data::<ConnSocket>().copied();
    let chunked = is_chunked(&req);
    if req.conn_data::<PeerSlot>().is_some_and(|s| s.over) {
        metrics::counter!(crate::metrics::HTTP_REFUSED, "reason" => "peer_connections")
            .increment(1);
        let limit = Limits::of(req.request()).config.connections_per_peer();
        let answer = ApiError::overloaded(format!(
            "this address holds {limit} connections already, the most one peer may; retry shortly"
        ))
        .closing()
        .error_response();
        if chunked {
            stop_reading(socket);
        }
        return Ok(req.into_response(answer).map_into_right_body());
    }
    let finished = chunked.then(|| track_payload(&mut req));
    let answer = next.call(req).await;
    if finished.is_some_and(|f| !f.get()) {
        stop_reading(socket);
    }
    answer.map(ServiceResponse::map_into_left_body)
}

/// Shuts the read side of a connection's socket: the dispatcher reads end-of-file, writes
/// the answer it has and closes the connection.
fn stop_reading(socket: Option<ConnSocket>) {
    if let Some(ConnSocket(fd)) = socket {
        // SAFETY: the descriptor is the socket of the connection the current request came
        // on, which its dispatcher keeps open at least until the answer is written;
        // shutting its read side only makes further reads return end-of-file.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
}

fn is_chunked(req: &ServiceRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// Wraps the request's body so that the returned flag turns true once it was read to its
/// end.
fn track_payload(req: &mut ServiceRequest) -> Rc<Cell<bool>> {
    let finished = Rc::new(Cell::new(false));
    let inner = req.take_payload();
    let flag = finished.clone();
    let tracked = futures::stream::unfold(Some(inner), move |state| {
        let flag = flag.clone();
        async move {
            let mut inner = state?;
            match inner.next().await {
                Some(item) => Some((item, Some(inner))),
                None => {
                    flag.set(true);
                    None
                }
            }
        }
    });
    let boxed: Pin<Box<dyn Stream<Item = Result<web::Bytes, PayloadError>>>> = Box::pin(tracked);
    req.set_payload(Payload::from(boxed));
    finished
}

/// Bytes of request bodies held at once: `total` for the node, `per_peer` for one source
/// address. Grants are taken without waiting: what does not fit is refused.
pub struct BodyBudget {
    total: usize,
    per_peer: usize,
    used: AtomicUsize,
    peers: Mutex<HashMap<IpAddr, usize>>,
}

impl BodyBudget {
    pub fn new(total: usize, per_peer: usize) -> Self {
        Self {
            total,
            per_peer,
            used: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes granted now, all peers together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Grants `bytes` to a body from `peer` (`None`: not counted against any peer), or
    /// `None` if the node or the peer has no room for them.
    pub fn try_grant(self: &Arc<Self>, peer: Option<IpAddr>, bytes: usize) -> Option<BodyGrant> {
        let mut grant = BodyGrant {
            budget: self.clone(),
            peer,
            bytes: 0,
        };
        grant.try_grow(bytes).then_some(grant)
    }

    fn reserve(&self, peer: Option<IpAddr>, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let held = peer.map_or(0, |ip| peers.get(&ip).copied().unwrap_or(0));
        if peer.is_some() && held + bytes > self.per_peer {
            return false;
        }
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.total).then_some(used + bytes)
            })
            .is_ok();
        if reserved && let Some(ip) = peer {
            peers.insert(ip, held + bytes);
        }
        if reserved {
            metrics::gauge!(crate::metrics::BODY_BUDGET_USED).increment(bytes as f64);
        }
        reserved
    }

    fn release(&self, peer: Option<IpAddr>, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ip) = peer
            && let Some(held) = peers.get_mut(&ip)
        {
            *held -= bytes;
            if *held == 0 {
                peers.remove(&ip);
            }
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        metrics::gauge!(crate::metrics::BODY_BUDGET_USED).decrement(bytes as f64);
    }
}

/// Bytes of a [`BodyBudget`] held by one body; given back when dropped.
pub struct BodyGrant {
    budget: Arc<BodyBudget>,
    peer: Option<IpAddr>,
    bytes: usize,
}

impl BodyGrant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `more` bytes on top of the grant; false (and nothing taken) if there is no
    /// room.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let ok = self.budget.reserve(self.peer, more);
        if ok {
            self.bytes += more;
        }
        ok
    }
}

impl Drop for BodyGrant {
    fn drop(&mut self) {
        self.budget.release(self.peer, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, n]))
    }

    #[test]
    fn the_budget_bounds_the_node_and_each_peer_and_returns_what_is_dropped() {
        let budget = Arc::new(BodyBudget::new(100, 60));
        let a = budget.try_grant(ip(1), 50).expect("room");
        assert!(
            budget.try_grant(ip(1), 20).is_none(),
            "peer 1 holds 50 of 60"
        );
        let mut b = budget.try_grant(ip(2), 40).expect("room for another peer");
        assert!(!b.try_grow(20), "the node holds 90 of 100");
        assert_eq!(b.bytes(), 40, "a refused growth takes nothing");
        assert!(b.try_grow(10));
        assert_eq!(budget.used(), 100);
        assert!(budget.try_grant(None, 1).is_none());
        assert!(
            budget.try_grant(ip(3), 0).is_some(),
            "an empty body needs nothing"
        );
        drop(a);
        assert_eq!(budget.used(), 50);
        let c = budget.try_grant(ip(1), 50).expect("room again");
        drop((b, c));
        assert_eq!(budget.used(), 0);
        assert!(budget.peers.lock().unwrap().is_empty());
    }

    #[test]
    fn peer_slots_count_connections_until_dropped() {
        let table = Arc::new(PeerTable::new(2));
        let one = ip(1).unwrap();
        let a = table.enter(one);
        let b = table.enter(one);
        let c = table.enter(one);
        assert_eq!((a.over, b.over, c.over), (false, false, true));
        assert!(
            !table.enter(ip(2).unwrap()).over,
            "another peer has its own count"
        );
        assert_eq!(table.open(one), 3);
        drop((a, c));
        assert_eq!(table.open(one), 1);
        assert!(!table.enter(one).over);
        drop(b);
        assert_eq!(table.open(one), 0);
        assert!(table.open.lock().unwrap().is_empty());
    }
}
