//! The one HTTP server every role runs, and the JSON error body on every error it sends.
//!
//! [`serve`] builds it: actix-server with actix-http's HTTP/1.1 service over an actix-web
//! `App` whose routes the role configures. Two pieces make sure no error leaves without
//! the `{"error":{"code","message"}}` body of docs/API.md:
//!
//! - [`guard`], the outermost middleware, refuses over-long URLs (414) and over-large
//!   header sections (431) before any route runs, gives a JSON body to any error
//!   response that has none (e.g. actix-web's own 405), and tells the connection how each
//!   response it lets out is framed on the wire.
//! - [`JsonErrors`], a wrapper around each connection's socket, rewrites the responses
//!   actix-http's HTTP/1 dispatcher makes by itself, with empty bodies and no way to
//!   change them: 400 for a request it cannot parse (malformed request line or header,
//!   conflicting `Content-Length`/`Transfer-Encoding`), 408 when the request head does
//!   not arrive within `[limits] request_head_timeout`, 431 when the head overflows its parser, and 500.
//!   It follows the response stream: every response the app made was announced by
//!   [`guard`] (so its head is passed through and its body skipped by length), and a
//!   response head that nobody announced is the dispatcher's own, which it replaces by
//!   the same status with a JSON body. `100 Continue` passes unchanged.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::DispatchError;
use actix_http::{HttpService, Version};
use actix_service::{ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, Extensions, Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, ResponseError, web};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::ApiError;
use super::limits::Limits;

/// Longest request target (path and query) answered; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header section (names, values and separators) answered; larger ones get 431.
/// actix-http's own parser stops at 128 KiB (431 too).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How a role's server runs.
pub struct ServerOptions {
    /// Worker threads, each serving its own connections.
    pub workers: usize,
    /// Seconds in-flight requests get to finish once the server is stopped.
    pub shutdown_timeout_secs: u64,
    /// Connections, timeouts and the body budget (`[limits]`, see [`super::limits`]).
    pub limits: Limits,
    /// Threads of each worker's blocking pool (`web::block`); actix-server's default when
    /// `None`.
    pub blocking_threads: Option<usize>,
}

/// Starts serving `listener` with the routes `configure` adds (and its `app_data`), the
/// shared JSON 404 for unknown paths and JSON errors for malformed path parameters. The
/// returned server runs once polled (spawn it).
pub fn serve<F>(listener: TcpListener, options: ServerOptions, configure: F) -> io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let addr = listener.local_addr()?;
    let limits = web::Data::new(options.limits);
    let mut builder = Server::build();
    if let Some(threads) = options.blocking_threads {
        builder = builder.worker_max_blocking_threads(threads);
    }
    let builder = builder
        .workers(options.workers)
        .max_concurrent_connections(limits.connections_per_worker(options.workers))
        .disable_signals()
        .shutdown_timeout(options.shutdown_timeout_secs);
    let graceful = builder.graceful_shutdown_signal();
    Ok(builder
        .listen("citychain-http", listener, move || {
            let configure = configure.clone();
            // `guard` outermost: it must see every response, the limits' refusals too.
            let app = App::new()
                .wrap(from_fn(super::limits::guard_connection))
                .wrap(from_fn(guard))
                .app_data(limits.clone())
                .app_data(super::common::path_config())
                .configure(configure)
                .default_service(web::to(super::common::not_found));
            let graceful = graceful.clone();
            let h1 = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = graceful.clone();
                    async move { signal.notified().await }
                })
                .client_request_timeout(limits.config.request_head_timeout)
                .keep_alive(limits.config.keep_alive)
                .client_disconnect_timeout(super::limits::LINGER)
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .on_connect_ext({
                    let limits = limits.clone();
                    move |io: &JsonErrors<TcpStream>, ext: &mut Extensions| {
                        ext.insert(io.announcements());
                        limits.on_connect(io.get_ref(), ext);
                    }
                })
                // The app reads neither the host nor the address from its config.
                .h1(map_config(app, |()| AppConfig::default()));
            fn_service(|io: TcpStream| {
                // Responses are written in several segments (head, body chunks); with
                // Nagle's algorithm on, the last one waits for the ACK of the one before,
                // which the peer delays by up to 40 ms.
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                std::future::ready(Ok::<_, DispatchError>((JsonErrors::new(io), peer)))
            })
            .and_then(h1)
        })?
        .run())
}

/// The error code and message of an error response that came without a body.
fn protocol_error(status: StatusCode) -> ApiError {
    let (code, message) = match status.as_u16() {
        400 => (
            "bad_request",
            "the request is not valid HTTP/1.1 (request line, headers or framing)",
        ),
        404 => ("not_found", "no such resource"),
        405 => ("method_not_allowed", "method not allowed on this path"),
        408 => ("request_timeout", "the request head did not arrive in time"),
        413 => ("payload_too_large", "the request body is too large"),
        414 => ("uri_too_long", "the request target is too long"),
        431 => (
            "headers_too_large",
            "the request's header section is too large",
        ),
        500 => ("internal", "internal server error"),
        503 => ("unavailable", "the service is unavailable"),
        _ => ("http_error", status.canonical_reason().unwrap_or("error")),
    };
    ApiError::new(status.as_u16(), code, message)
}

/// Refusals made before routing: an over-long target, an over-large header section.
fn refuse_early(req: &ServiceRequest) -> Option<ApiError> {
    let uri = req.uri();
    let target = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            414,
            "uri_too_long",
            format!("the request target is {target} bytes long (limit {MAX_URI_BYTES})"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            431,
            "headers_too_large",
            format!("the header section is {headers} bytes (limit {MAX_HEADER_BYTES})"),
        ));
    }
    None
}

/// The outermost middleware of every role (see the module documentation).
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let announcements = req.conn_data::<Announcements>().cloned();
    let head_only = req.method() == Method::HEAD;
    let version = req.version();
    let announce = |res: &HttpResponse<BoxBody>| {
        if let Some(a) = &announcements {
            a.announce(framing(res, head_only, version));
        }
    };
    if let Some(refusal) = refuse_early(&req) {
        let res = refusal.error_response();
        announce(&res);
        return Ok(req.into_response(res));
    }
    match next.call(req).await {
        Ok(res) => {
            let res = res.map_into_boxed_body();
            let (req, res) = res.into_parts();
            let res = with_json_error_body(res);
            announce(&res);
            Ok(ServiceResponse::new(req, res))
        }
        // The dispatcher sends an error's response itself: make it the JSON one, and
        // announce it like any other.
        Err(e) => {
            let res = with_json_error_body(e.error_response());
            announce(&res);
            Err(actix_web::error::InternalError::from_response(e.to_string(), res).into())
        }
    }
}

/// An error response without a body gets the JSON one of its status.
fn with_json_error_body(res: HttpResponse<BoxBody>) -> HttpResponse<BoxBody> {
    let status = res.status();
    let empty = matches!(res.body().size(), BodySize::None | BodySize::Sized(0));
    if !(status.is_client_error() || status.is_server_error()) || !empty {
        return res;
    }
    let body = serde_json::to_vec(&protocol_error(status).body()).expect("JSON serializes");
    let mut res = res.set_body(BoxBody::new(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// How the dispatcher will write `res`'s body after its head.
fn framing(res: &HttpResponse<BoxBody>, head_only: bool, version: Version) -> Framing {
    let status = res.status();
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Framing::Length(0);
    }
    match res.body().size() {
        BodySize::None => Framing::Length(0),
        BodySize::Sized(n) => Framing::Length(n),
        BodySize::Stream if version == Version::HTTP_11 => Framing::Chunked,
        BodySize::Stream => Framing::UntilClose,
    }
}

/// How a response's body follows its head on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// The body ends with the connection.
    UntilClose,
}

/// The responses the app has let out on one connection and the socket has not reached
/// yet, in order. A worker serves a connection on one thread, so `Rc` is enough.
#[derive(Debug, Clone, Default)]
pub struct Announcements(Rc<RefCell<VecDeque<Framing>>>);

impl Announcements {
    pub fn announce(&self, framing: Framing) {
        self.0.borrow_mut().push_back(framing);
    }

    fn next(&self) -> Option<Framing> {
        self.0.borrow_mut().pop_front()
    }
}

/// A connection's socket, with the dispatcher's own bodiless error responses rewritten
/// into JSON ones (see the module documentation).
pub struct JsonErrors<T> {
    io: T,
    announcements: Announcements,
    state: Out,
    /// Bytes of a rewritten response not yet written to `io`.
    pending: Vec<u8>,
    pending_from: usize,
}

/// Where the outgoing stream is.
#[derive(Debug, Clone)]
enum Out {
    /// Between responses.
    Idle,
    /// In the head of a response the app announced.
    AppHead {
        framing: Framing,
        end: HeadEnd,
    },
    /// In the head of a response nobody announced: collected, to be judged whole.
    OwnHead {
        head: Vec<u8>,
        end: HeadEnd,
    },
    Body {
        remaining: u64,
    },
    Chunked(Chunked),
    UntilClose,
}

/// Finds the `\r\n\r\n` that ends a head, across writes.
#[derive(Debug, Clone, Copy, Default)]
struct HeadEnd {
    matched: u8,
}

impl HeadEnd {
    /// Feeds bytes; `Some(n)` when the head ends after the first `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                return Some(i + 1);
            }
        }
        None
    }
}

/// A chunked body as actix-http writes it: `SIZE\r\nDATA\r\n`… then `0\r\n\r\n`.
#[derive(Debug, Clone, Copy)]
enum Chunked {
    Size { size: u64, cr: bool },
    Data { remaining: u64 },
    DataEnd { left: u8 },
    LastEnd { left: u8 },
}

impl Chunked {
    /// Feeds bytes; `Some(n)` when the body ends after the first `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunked::Size { size, cr: false } => match b {
                    b'\r' => Chunked::Size { size, cr: true },
                    _ => Chunked::Size {
                        size: size
                            .saturating_mul(16)
                            .saturating_add(u64::from((b as char).to_digit(16).unwrap_or(0))),
                        cr: false,
                    },
                },
                Chunked::Size { size: 0, cr: true } => Chunked::LastEnd { left: 2 },
                Chunked::Size { size, cr: true } => Chunked::Data { remaining: size },
                Chunked::Data { remaining } => {
                    let take = remaining.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == remaining {
                        Chunked::DataEnd { left: 2 }
                    } else {
                        Chunked::Data {
                            remaining: remaining - take,
                        }
                    };
                    continue;
                }
                Chunked::DataEnd { left: 1 } => Chunked::Size { size: 0, cr: false },
                Chunked::DataEnd { left } => Chunked::DataEnd { left: left - 1 },
                Chunked::LastEnd { left: 1 } => return Some(i + 1),
                Chunked::LastEnd { left } => Chunked::LastEnd { left: left - 1 },
            };
            i += 1;
        }
        None
    }
}

impl<T> JsonErrors<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            announcements: Announcements::default(),
            state: Out::Idle,
            pending: Vec::new(),
            pending_from: 0,
        }
    }

    /// The socket it wraps.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The handle [`guard`] announces responses on.
    pub fn announcements(&self) -> Announcements {
        self.announcements.clone()
    }
}

/// The response that replaces a head the dispatcher made, or `None` to pass it as is.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status = StatusCode::from_bytes(status_line.get(9..12)?.as_bytes()).ok()?;
    if status.is_informational() || !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let mut kept = String::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("content-length") {
            // A body we cannot see: leave the response alone.
            if line[name.len() + 1..].trim() != "0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        } else if !name.eq_ignore_ascii_case("content-type") {
            kept.push_str(line);
            kept.push_str("\r\n");
        }
    }
    let body = serde_json::to_vec(&protocol_error(status).body()).expect("JSON serializes");
    let mut out = format!(
        "{status_line}\r\n{kept}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

/// The `Content-Length` of a response head (0 if it has none).
fn content_length(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes out what a rewrite left pending.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_from < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.pending_from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_from += n;
        }
        self.pending.clear();
        self.pending_from = 0;
        Poll::Ready(Ok(()))
    }

    /// Passes `buf[..n]` through to the socket, where `n` is where the current part of
    /// the response ends (`end` on a copy of the scanner), and advances the scanner by
    /// what the socket took.
    fn pass<S: Clone>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        scanner: S,
        feed: fn(&mut S, &[u8]) -> Option<usize>,
    ) -> Poll<io::Result<(usize, Result<(), S>)>> {
        let mut probe = scanner.clone();
        let n = feed(&mut probe, buf).unwrap_or(buf.len());
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, &buf[..n]))?;
        let mut committed = scanner;
        Poll::Ready(Ok(match feed(&mut committed, &buf[..written]) {
            Some(_) => (written, Ok(())),
            None => (written, Err(committed)),
        }))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Out::Idle = this.state {
            this.state = match this.announcements.next() {
                Some(framing) => Out::AppHead {
                    framing,
                    end: HeadEnd::default(),
                },
                None => Out::OwnHead {
                    head: Vec::new(),
                    end: HeadEnd::default(),
                },
            };
        }
        match this.state.clone() {
            Out::Idle => unreachable!("left above"),
            Out::AppHead { framing, end } => {
                let (n, done) = ready!(this.pass(cx, buf, end, HeadEnd::feed))?;
                this.state = match done {
                    Err(end) => Out::AppHead { framing, end },
                    Ok(()) => match framing {
                        Framing::Length(0) => Out::Idle,
                        Framing::Length(remaining) => Out::Body { remaining },
                        Framing::Chunked => Out::Chunked(Chunked::Size { size: 0, cr: false }),
                        Framing::UntilClose => Out::UntilClose,
                    },
                };
                Poll::Ready(Ok(n))
            }
            Out::Body { remaining } => {
                let n = remaining.min(buf.len() as u64) as usize;
                let written = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..n]))?;
                let remaining = remaining - written as u64;
                this.state = if remaining == 0 {
                    Out::Idle
                } else {
                    Out::Body { remaining }
                };
                Poll::Ready(Ok(written))
            }
            Out::Chunked(chunked) => {
                let (n, done) = ready!(this.pass(cx, buf, chunked, Chunked::feed))?;
                this.state = match done {
                    Ok(()) => Out::Idle,
                    Err(chunked) => Out::Chunked(chunked),
                };
                Poll::Ready(Ok(n))
            }
            Out::UntilClose => Pin::new(&mut this.io).poll_write(cx, buf),
            Out::OwnHead { mut head, mut end } => {
                let Some(n) = end.feed(buf) else {
                    head.extend_from_slice(buf);
                    this.state = Out::OwnHead { head, end };
                    return Poll::Ready(Ok(buf.len()));
                };
                head.extend_from_slice(&buf[..n]);
                (this.pending, this.state) = match rewrite(&head) {
                    Some(response) => (response, Out::Idle),
                    // `100 Continue`, or (never seen) a response with a body: as is.
                    None => {
                        let state = match content_length(&head) {
                            0 => Out::Idle,
                            remaining => Out::Body { remaining },
                        };
                        (head, state)
                    }
                };
                // Best effort now: the dispatcher may drop the socket right after its
                // flush, which finishes what this leaves.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `writes` through a wrapper (each write in pieces of `piece` bytes) and
    /// returns what reached the other end.
    async fn through(announced: &[Framing], writes: &[&[u8]], piece: usize) -> String {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = JsonErrors::new(a);
        for f in announced {
            w.announcements().announce(*f);
        }
        for write in writes {
            for chunk in write.chunks(piece) {
                w.write_all(chunk).await.unwrap();
            }
        }
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = String::new();
        b.read_to_string(&mut out).await.unwrap();
        out
    }

    const DISPATCHER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 23 Nov 2026 12:00:00 GMT\r\n\r\n";

    #[tokio::test]
    async fn announced_responses_pass_unchanged_and_the_dispatchers_own_get_json() {
        let app_404 = b"HTTP/1.1 404 Not Found\r\ncontent-length: 17\r\ncontent-type: application/json\r\n\r\n{\"error\":\"HTTP/\"}";
        let app_head = b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 99\r\n\r\n";
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nHTTP/\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let announced = [Framing::Length(17), Framing::Length(0), Framing::Chunked];
        for piece in [1, 3, 7, 4096] {
            let out = through(
                &announced,
                &[app_404, app_head, chunked, DISPATCHER_431],
                piece,
            )
            .await;
            let (ours, theirs) = out.split_at(app_404.len() + app_head.len() + chunked.len());
            assert_eq!(
                ours.as_bytes(),
                [&app_404[..], app_head, chunked].concat(),
                "piece {piece}"
            );
            assert!(
                theirs.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{theirs}"
            );
            assert!(theirs.contains("connection: close\r\n"), "{theirs}");
            assert!(theirs.contains("content-type: application/json\r\n"));
            let (head, body) = theirs.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], "headers_too_large");
        }
    }

    #[tokio::test]
    async fn continue_passes_and_408_and_400_are_rewritten() {
        let out = through(
            &[],
            &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ],
            2,
        )
        .await;
        let rest = out.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert!(rest.starts_with("HTTP/1.1 408 "), "{rest}");
        assert!(rest.ends_with("\"code\":\"request_timeout\",\"message\":\"the request head did not arrive in time\"}}"), "{rest}");

        let out = through(
            &[],
            &[b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"],
            64,
        )
        .await;
        assert!(out.contains("\"code\":\"bad_request\""), "{out}");
    }

    #[test]
    fn a_head_with_a_body_or_a_success_is_not_rewritten() {
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n").is_none());
        assert!(rewrite(DISPATCHER_431).is_some());
    }
}
