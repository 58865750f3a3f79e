//! The fault task: SIGKILL the planned victims, wait out their downtime, start them again
//! and wait until they are ready; record every fault and every window of downtime.

use std::sync::Arc;

use citychain::config::Role;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::plan::{FaultPlan, Victims, plan_fault};
use super::{ChaosSpec, FaultEvent, FaultKind};
use crate::federation::Federation;

/// When nodes were down: `[start, end]`, `end` when every victim was ready again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Option<Instant>,
}

/// What the fault task hands back.
#[derive(Default)]
pub(super) struct FaultLog {
    pub(super) events: Vec<FaultEvent>,
    pub(super) windows: Vec<Window>,
    pub(super) errors: Vec<String>,
}

/// Kills and restarts nodes until told to stop; never leaves a node down when it returns.
pub(super) async fn fault_task(
    fed: Arc<Mutex<Federation>>,
    spec: ChaosSpec,
    city_id: String,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> FaultLog {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut log = FaultLog::default();
    let (lights, fulls) = {
        let f = fed.lock().await;
        (f.ids(Role::Light), f.ids(Role::Full))
    };
    let victims = Victims {
        lights,
        fulls,
        city: spec.kill_city.then(|| city_id.clone()),
    };
    loop {
        let plan = plan_fault(&mut rng, spec.fault_interval, &victims);
        tokio::select! {
            _ = tokio::time::sleep(plan.gap) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let FaultPlan {
            kind,
            nodes: victims,
            downtime,
            ..
        } = plan;

        let mut f = fed.lock().await;
        // A node that died without our help is a finding; bring it back first.
        let crashed: Vec<String> = f.exited().into_iter().map(|(id, _)| id).collect();
        if !crashed.is_empty() {
            let at = start.elapsed();
            tracing::warn!(nodes = ?crashed, "chaos: found nodes dead that were not killed");
            log.errors
                .push(format!("nodes exited on their own: {}", crashed.join(", ")));
            let (recovered, error) = restart_all(&mut f, &crashed).await;
            log.events.push(FaultEvent {
                at_s: at.as_secs_f64(),
                kind: FaultKind::Crashed,
                nodes: crashed,
                recovered_after_s: recovered.then(|| (start.elapsed() - at).as_secs_f64()),
                error,
            });
        }

        let killed_at = Instant::now();
        let at = killed_at - start;
        let mut kill_error = None;
        for id in &victims {
            if let Err(e) = f.kill(id) {
                kill_error = Some(format!("killing {id}: {e:#}"));
            }
        }
        drop(f);
        tracing::info!(
            at_s = format!("{:.2}", at.as_secs_f64()),
            kind = ?kind,
            nodes = %victims.join(","),
            down_ms = downtime.as_millis() as u64,
            "chaos: SIGKILL"
        );
        // Not cut short by `stop`: a fault always ends with its nodes restarted.
        tokio::time::sleep(downtime).await;
        let mut f = fed.lock().await;
        let (recovered, restart_error) = restart_all(&mut f, &victims).await;
        drop(f);
        let ended = Instant::now();
        let recovered_after = recovered.then(|| (ended - killed_at).as_secs_f64());
        tracing::info!(
            at_s = format!("{:.2}", (ended - start).as_secs_f64()),
            nodes = %victims.join(","),
            recovered = recovered,
            "chaos: restarted"
        );
        log.windows.push(Window {
            start: killed_at,
            end: recovered.then_some(ended),
        });
        let error = match (kill_error, restart_error) {
            (None, None) => None,
            (a, b) => Some([a, b].into_iter().flatten().collect::<Vec<_>>().join("; ")),
        };
        if let Some(e) = &error {
            log.errors
                .push(format!("fault at {:.2} s: {e}", at.as_secs_f64()));
        }
        log.events.push(FaultEvent {
            at_s: at.as_secs_f64(),
            kind,
            nodes: victims,
            recovered_after_s: recovered_after,
            error,
        });
        if !recovered {
            // Without every node back the run cannot go on meaningfully.
            break;
        }
    }
    log
}

/// Starts every node of `ids` that is not running, waiting for each to be ready; one
/// retry (kill, start) per node. Returns whether all came back, and the errors.
pub(super) async fn restart_all(f: &mut Federation, ids: &[String]) -> (bool, Option<String>) {
    let mut errors = Vec::new();
    for id in ids {
        if f.node(id).pid().is_some() {
            continue;
        }
        if let Err(first) = f.restart(id).await {
            tracing::warn!(node = %id, error = %format!("{first:#}"), "chaos: restart failed; retrying");
            let _ = f.kill(id);
            if let Err(second) = f.restart(id).await {
                errors.push(format!("{id} did not restart: {first:#}; then: {second:#}"));
            }
        }
    }
    if errors.is_empty() {
        (true, None)
    } else {
        (false, Some(errors.join("; ")))
    }
}
