//! FailoverSupervisor: the root of a city node's supervision tree. It supervises and does
//! nothing else: the work (the tier walk included) flows between the children.
//!
//! It receives the children as a table ([`Child`], in start order) and starts each linked
//! to itself. When one exits, the restart policy ([`restart`], modelled on Erlang/OTP: a
//! strategy, a restart type per child, exponential backoff and an intensity limit) decides
//! what happens; past the limit the supervisor gives up: the node reports not ready and
//! exits non-zero instead of restarting in a loop. Restarted children are reached through
//! the same mailboxes, and what a failed child held is answered with 503 (dropped reply
//! channels, the Intake's sweep), never silently lost; what was acknowledged is on disk.
//! It publishes the tree in the [`ActorTable`] for `GET /v1/actors` and `/readyz`.
//!
//! Continent and global nodes run the same supervisor over their own child tables (under
//! their own names in the table).

mod child;
pub mod restart;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::Notify;

pub use child::{Child, ChildSpec};
use restart::{Decision, History};
pub use table::{ActorTable, ActorView};

use crate::city::msgs::SupervisorMsg;
use crate::config::{ActorName, SupervisorConfig};

/// The name the city's supervisor has in the actor table.
pub const CITY_SUPERVISOR: &str = "failover_supervisor";

pub struct FailoverSupervisor;

pub struct SupervisorArgs {
    /// Its own name in the actor table.
    pub name: &'static str,
    /// The children, in start order.
    pub children: Vec<Box<dyn Child>>,
    pub config: SupervisorConfig,
    pub actors: Arc<ActorTable>,
    /// Notified when the supervisor gives up; the node then exits non-zero.
    pub gave_up: Arc<Notify>,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    /// The current incarnation of each child.
    names: HashMap<ActorId, ActorName>,
    history: History,
    /// Children waiting out a backoff (their exits while waiting are not new failures).
    restarting: Vec<ActorName>,
}

impl SupervisorState {
    fn child(&self, name: ActorName) -> Option<&dyn Child> {
        self.args
            .children
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.as_ref())
    }

    fn order(&self) -> Vec<ActorName> {
        self.args.children.iter().map(|c| c.name()).collect()
    }
}

impl FailoverSupervisor {
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: ActorName,
    ) -> Result<(), ActorProcessingErr> {
        let child = state.child(name).expect("a child of the table");
        let cell = child.start(myself.get_cell()).await?;
        let depth = child.depth();
        // Zero from the first start, so a restart rate reads 0, not "no data".
        metrics::counter!(crate::metrics::ACTOR_RESTARTS, "actor" => name.as_str()).increment(0);
        metrics::counter!(crate::metrics::ACTOR_FAILURES, "actor" => name.as_str()).increment(0);
        state.names.insert(cell.get_id(), name);
        state
            .args
            .actors
            .set(name.as_str(), "running", None, Some(depth));
        Ok(())
    }

    /// Applies the restart policy to a child that exited; `abnormal` for a panic or error.
    fn on_exit(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        name: ActorName,
        abnormal: bool,
        reason: String,
    ) {
        if state.restarting.contains(&name) {
            return;
        }
        metrics::counter!(crate::metrics::ACTOR_FAILURES, "actor" => name.as_str()).increment(1);
        let order = state.order();
        let table = &state.args.actors;
        let decision =
            state
                .history
                .decide(&state.args.config, &order, name, abnormal, Instant::now());
        let (group, delay) = match decision {
            Decision::Stay => {
                tracing::error!(actor = %name, %reason, "actor exited and is not restarted; the node is not ready");
                table.set(name.as_str(), "failed", Some(reason), None);
                return;
            }
            Decision::GiveUp { restarts } => {
                table.set(name.as_str(), "restarting", Some(reason.clone()), None);
                let why = format!(
                    "supervisor gave up: {restarts} restarts within {:?} (last: {name}: {reason})",
                    state.args.config.within
                );
                tracing::error!("{why}");
                table.give_up(why);
                state.args.gave_up.notify_one();
                return;
            }
            Decision::Restart { group, delay } => (group, delay),
        };
        table.set(name.as_str(), "restarting", Some(reason), None);
        // The others of the group stop now and start again with the failed one.
        for other in group.iter().copied().filter(|c| *c != name) {
            state.restarting.push(other);
            table.set(other.as_str(), "restarting", None, None);
            if let Some(cell) = state.child(other).and_then(|c| c.cell()) {
                cell.stop(Some("restarting with a failed sibling".into()));
            }
        }
        state.restarting.push(name);
        tracing::warn!(actor = %name, ?delay, restart = ?group, "restarting after a failure");
        myself.send_after(delay, move || SupervisorMsg::Restart(group));
    }

    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        names: &[ActorName],
    ) -> Result<(), ActorProcessingErr> {
        // In start order, so each actor's downstream is running before it.
        for name in state.order().into_iter().filter(|c| names.contains(c)) {
            state.restarting.retain(|r| *r != name);
            Self::start_child(myself, state, name).await?;
            state.args.actors.restarted(name.as_str());
            metrics::counter!(crate::metrics::ACTOR_RESTARTS, "actor" => name.as_str())
                .increment(1);
            tracing::info!(actor = %name, "actor restarted");
        }
        Ok(())
    }
}

impl Actor for FailoverSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            names: HashMap::new(),
            history: History::default(),
            restarting: Vec::new(),
        };
        for name in state.order() {
            Self::start_child(&myself, &mut state, name).await?;
        }
        state
            .args
            .actors
            .set(state.args.name, "running", None, None);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(names) => Self::restart(&myself, state, &names).await?,
            SupervisorMsg::Inject(name) => {
                if let Some(child) = state.child(name)
                    && state.args.config.fault_injection
                {
                    tracing::warn!(actor = %name, "injecting a panic");
                    child.inject_panic();
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, abnormal, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                (cell, reason != "normal", reason)
            }
            _ => return Ok(()),
        };
        // Only the current incarnation of a child matters; an old one we stopped on
        // purpose has been forgotten already.
        let Some(name) = state.names.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::error!(actor = %name, %reason, "actor exited");
        Self::on_exit(&myself, state, name, abnormal, reason);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Front to back, so the Intake answers whoever still waits before the rest stops.
        state.names.clear();
        for child in state.args.children.iter().rev() {
            if let Some(cell) = child.cell() {
                let _ = cell
                    .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
            }
        }
        state
            .args
            .actors
            .set(state.args.name, "stopped", None, None);
        Ok(())
    }
}
