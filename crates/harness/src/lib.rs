//! citychain-harness: test and operations tooling around the citychain node runtime.
//!
//! Module map:
//! - [`client`]: the one transaction signer and `POST /v1/tx` client every tool uses.
//! - [`federation`]: plans and launches a local federation of child processes (`up`).
//! - [`bench`](mod@bench): open-loop signed load generator (`citychain bench`).
//! - [`chaos`]: fault injection: kill and restart nodes while checking every promise.
//! - [`testkit`]: child-process nodes, `/metrics`, waiting with deadlines; shared by the
//!   integration tests and fault injection.
//! - [`mongo_stand_in`]: a MongoDB for the tier's tests (a configured one, or a
//!   wire-protocol stand-in installed and started on loopback).

pub mod bench;
pub mod chaos;
pub mod client;
pub mod federation;
pub mod mongo_stand_in;
pub mod testkit;

/// Asks the kernel to send `signal` to the child `cmd` starts when the thread that starts
/// it ends (the process, for `up`; the test's thread, for tests, also when the test
/// fails), so no node or server outlives what started it.
pub fn die_with_parent(cmd: &mut std::process::Command, signal: i32) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, signal);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, signal);
}
