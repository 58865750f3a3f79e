//! Tools of the resource-limit tests: raw HTTP/1.1 over TCP from a chosen loopback source
//! address (Linux routes all of 127.0.0.0/8 to loopback, so `127.0.0.2` is a second
//! "peer" the node tells apart from the honest `127.0.0.1`), request bodies that stop
//! arriving, a node process's resident memory, and small tmpfs mounts for disk faults.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The loopback address `127.0.0.n`.
pub fn peer(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The socket address of a node URL such as `http://127.0.0.1:4000`.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url} is not http://IP:PORT: {e}"))
}

/// A TCP connection to `to` from the source address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Resident memory of process `pid` in MiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

/// Samples a process's resident memory every 20 ms in the background and keeps the peak.
pub struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new((rss_mib(pid) * 1024.0) as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak_kib, stop) = (peak_kib.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let now = (rss_mib(pid) * 1024.0) as u64;
                    peak_kib.fetch_max(now, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            peak_kib,
            stop,
            task: Some(task),
        }
    }

    /// The highest resident memory seen so far, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// Stops sampling and returns the peak in MiB.
    pub async fn stop(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.peak_mib()
    }
}

/// One HTTP/1.1 answer read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Parses one complete answer at the start of `buf` (bodies framed by `Content-Length`);
/// `None` while incomplete. Returns the answer and the bytes it took.
fn parse_answer(buf: &[u8]) -> Option<(RawAnswer, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    if buf.len() < end + len {
        return None;
    }
    let body = buf[end..end + len].to_vec();
    Some((
        RawAnswer {
            status,
            headers,
            body,
        },
        end + len,
    ))
}

/// A raw HTTP/1.1 connection from a chosen source address.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn open(from: IpAddr, to: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            stream: connect_from(from, to).await?,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next answer; `None` when the connection closes (or fails) before a whole one.
    pub async fn answer(&mut self, within: Duration) -> Option<RawAnswer> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((answer, used)) = parse_answer(&self.buf) {
                self.buf.drain(..used);
                return Some(answer);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `GET path` and reads its answer.
    pub async fn get(&mut self, path: &str, within: Duration) -> Option<RawAnswer> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n");
        self.send(req.as_bytes()).await.ok()?;
        self.answer(within).await
    }

    /// Reads (and keeps, for [`RawConn::answer`]) whatever comes until the peer closes the
    /// connection; true if it closed within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }

    /// Whatever complete answer was read before the connection closed.
    pub fn buffered_answer(&self) -> Option<RawAnswer> {
        parse_answer(&self.buf).map(|(a, _)| a)
    }
}

/// What became of a request whose body stopped arriving.
#[derive(Debug, Clone)]
pub struct Stalled {
    /// The status the node answered, if any reached us.
    pub status: Option<u16>,
    /// From the moment the client stopped sending until the node closed the connection;
    /// `None` if it was still open when the test stopped waiting.
    pub closed_after: Option<Duration>,
}

/// Opens a connection from `from`, sends `head` and then `body` (a part of what `head`
/// declares), stops sending, and waits up to `wait` for the node to close the connection.
/// `sent` counts the clients that are done sending (or were cut off while sending).
pub async fn stall(
    from: IpAddr,
    to: SocketAddr,
    head: String,
    body: Arc<Vec<u8>>,
    wait: Duration,
    sent: Arc<AtomicU64>,
) -> Stalled {
    let mut conn = match RawConn::open(from, to).await {
        Ok(c) => c,
        Err(e) => panic!("connecting from {from} to {to}: {e}"),
    };
    let _ = async {
        conn.send(head.as_bytes()).await?;
        conn.send(&body).await
    }
    .await;
    sent.fetch_add(1, Ordering::Relaxed);
    let stopped = Instant::now();
    let closed = conn.closed_within(wait).await;
    Stalled {
        status: conn.buffered_answer().map(|a| a.status),
        closed_after: closed.then(|| stopped.elapsed()),
    }
}

/// A tmpfs mounted at a directory for as long as this lives (lazily unmounted on drop, so
/// a node process still holding files there does not stop it).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"8m"`) at `path`, creating it; `Err` with the reason
    /// when mounting is impossible here (it needs root or `CAP_SYS_ADMIN`).
    pub fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if out.status.success() {
            Ok(Self {
                path: path.to_owned(),
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Fills the file system until a write fails with ENOSPC; returns the filler file.
    pub fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("creating the filler");
        let block = vec![0xA5u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Pages a 64 KiB write could not fill completely.
        loop {
            match file.write(&block[..512]) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
