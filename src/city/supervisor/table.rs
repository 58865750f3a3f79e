//! The supervision tree's published state: what `GET /v1/actors` shows and `/readyz`
//! decides on. Written by the supervisor, read by the HTTP layer.

use std::sync::RwLock;

use serde::Serialize;

use crate::city::mailbox::Depth;

/// One actor as `GET /v1/actors` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ActorView {
    pub name: String,
    pub status: String,
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub mailbox_depth: usize,
}

/// The supervision tree's published state, shared with the HTTP layer.
#[derive(Default)]
pub struct ActorTable {
    entries: RwLock<Vec<(ActorView, Option<Depth>)>>,
    /// Set when the supervisor gave up; the node is not ready from then on.
    gave_up: RwLock<Option<String>>,
}

impl ActorTable {
    pub(super) fn set(
        &self,
        name: &str,
        status: &str,
        failure: Option<String>,
        depth: Option<Depth>,
    ) {
        let mut entries = self.entries.write().expect("actor table lock poisoned");
        match entries.iter_mut().find(|(v, _)| v.name == name) {
            Some((v, d)) => {
                v.status = status.into();
                if failure.is_some() {
                    v.last_failure = failure;
                }
                if depth.is_some() {
                    *d = depth;
                }
            }
            None => entries.push((
                ActorView {
                    name: name.into(),
                    status: status.into(),
                    restarts: 0,
                    last_failure: failure,
                    mailbox_depth: 0,
                },
                depth,
            )),
        }
    }

    pub(super) fn restarted(&self, name: &str) {
        let mut entries = self.entries.write().expect("actor table lock poisoned");
        if let Some((v, _)) = entries.iter_mut().find(|(v, _)| v.name == name) {
            v.restarts += 1;
            v.status = "running".into();
        }
    }

    pub fn views(&self) -> Vec<ActorView> {
        let entries = self.entries.read().expect("actor table lock poisoned");
        entries
            .iter()
            .map(|(v, d)| ActorView {
                mailbox_depth: d.as_ref().map_or(0, Depth::get),
                ..v.clone()
            })
            .collect()
    }

    /// `Ok` while every actor runs; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self
            .gave_up
            .read()
            .expect("actor table lock poisoned")
            .clone()
        {
            return Err(reason);
        }
        let entries = self.entries.read().expect("actor table lock poisoned");
        match entries.iter().find(|(v, _)| v.status != "running") {
            None if !entries.is_empty() => Ok(()),
            None => Err("the pipeline has not started".into()),
            Some((v, _)) => Err(format!("actor {} is {}", v.name, v.status)),
        }
    }

    pub(super) fn give_up(&self, why: String) {
        *self.gave_up.write().expect("actor table lock poisoned") = Some(why);
    }

    /// Why the supervisor gave up, if it did.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up
            .read()
            .expect("actor table lock poisoned")
            .clone()
    }
}
