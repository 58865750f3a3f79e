//! A MongoDB for the MongoDB tier's tests: the server `CITYCHAIN_TEST_MONGO_URI` names,
//! or else a wire-protocol stand-in started on loopback for the test.
//!
//! The stand-in is nx-27017 (a MongoDB wire-protocol server on SQLite, from PyPI), which
//! `scripts/mongo-stand-in` installs into a virtualenv under the build's target directory
//! the first time it is needed (versions pinned in `scripts/mongo-stand-in.txt`). It
//! speaks the protocol the official driver uses and stores what it is given, which is
//! what the tier's tests check. It is not MongoDB: it has no replica set and no write
//! concern beyond its own SQLite commit, keeps index names of its own, and hands small
//! Int64 values back as Int32. Behaviour only a real deployment has is tested only when
//! `CITYCHAIN_TEST_MONGO_URI` is set ([`MongoServer::is_real`]).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The variable naming a real MongoDB for the tests.
pub const URI_VAR: &str = "CITYCHAIN_TEST_MONGO_URI";
/// How long the stand-in may take to listen once started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports tried before giving up (another process may take a port between the
/// moment it is found free and the moment the server binds it).
const START_ATTEMPTS: usize = 3;

/// A MongoDB to test against: a configured real one, or a stand-in child process that is
/// killed when this is dropped.
pub struct MongoServer {
    pub uri: String,
    child: Option<Child>,
}

impl MongoServer {
    /// The server `CITYCHAIN_TEST_MONGO_URI` names; else a stand-in with its data under
    /// `dir`, installed (once) under `install_dir`. `Ok(None)` only when the variable is
    /// unset and there is no `python3` to install the stand-in with: the caller skips and
    /// says so. Any other failure to install or start it is an error.
    pub fn start(dir: &Path, install_dir: &Path) -> anyhow::Result<Option<Self>> {
        if let Ok(uri) = std::env::var(URI_VAR) {
            return Ok(Some(Self { uri, child: None }));
        }
        let Some(server) = install(install_dir)? else {
            return Ok(None);
        };
        let mut last = None;
        for attempt in 0..START_ATTEMPTS {
            match start_stand_in(&server, &dir.join(format!("mongo-{attempt}"))) {
                Ok(found) => return Ok(Some(found)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Whether this is the real MongoDB of `CITYCHAIN_TEST_MONGO_URI`, not the stand-in.
    pub fn is_real(&self) -> bool {
        self.child.is_none()
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `scripts/mongo-stand-in` under a lock (test binaries run at once), returning the
/// server executable, or `None` if there is no Python.
fn install(install_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mongo-stand-in");
    std::fs::create_dir_all(install_dir)
        .with_context(|| format!("creating {}", install_dir.display()))?;
    let lock = File::create(install_dir.join(".lock"))?;
    lock.lock().context("locking the stand-in's install")?;
    let out = Command::new(&script)
        .arg(install_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let _ = lock.unlock();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Ok(Some(PathBuf::from(path)))
        }
        // The script's "no python3" exit.
        Some(3) => {
            eprintln!("{}", stderr.trim());
            Ok(None)
        }
        _ => bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            stderr.trim()
        ),
    }
}

/// Starts the stand-in on a free loopback port with its data in `dir` and waits until it
/// accepts connections.
fn start_stand_in(server: &Path, dir: &Path) -> anyhow::Result<MongoServer> {
    std::fs::create_dir_all(dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = dir.join("server.log");
    let mut cmd = Command::new(server);
    cmd.args(["--host", "127.0.0.1", "-p", &port.to_string(), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--log-file")
        .arg(&log)
        .arg("--pid-file")
        .arg(dir.join("server.pid"))
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("stdout.log"))?)
        .stderr(File::create(dir.join("stderr.log"))?);
    crate::die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", server.display()))?;
    let mut found = MongoServer {
        uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        child: Some(child),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(found);
        }
        let child = found.child.as_mut().expect("a stand-in has a child");
        if let Some(status) = child.try_wait()? {
            bail!(
                "the MongoDB stand-in exited ({status}): {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "the MongoDB stand-in did not listen on port {port} within {START_TIMEOUT:?}; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
