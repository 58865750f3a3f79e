//! Bounded mailboxes over ractor actors.
//!
//! ractor's mailboxes are unbounded; a bound is what turns overload into a clear 503 instead
//! of a slow death by memory. A [`Mailbox`] counts messages sent but not yet taken by the
//! actor, refuses past its capacity, and publishes the depth as a gauge. The receiving actor
//! calls [`Depth::taken`] as the first thing it does with each message.
//!
//! A mailbox outlives the actor behind it: when the supervisor restarts an actor it
//! re-points the mailbox ([`Mailbox::repoint`]), and every holder of a clone reaches the new
//! actor. Messages that were queued for the failed actor are gone with it; their senders
//! learn it from their dropped reply channels or from the Intake's sweep.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ractor::{ActorRef, Message};

/// Why a message was not delivered. Either way the message comes back to the sender, so
/// nothing is dropped silently.
#[derive(Debug)]
pub enum SendError<M> {
    /// The mailbox holds `capacity` messages already.
    Full(M),
    /// The actor has stopped (shutdown, or a failure its supervisor is handling).
    Closed(M),
}

impl<M> SendError<M> {
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m) | SendError::Closed(m) => m,
        }
    }
}

/// The depth counter shared by a mailbox and its actor.
#[derive(Clone)]
pub struct Depth {
    name: &'static str,
    count: Arc<AtomicUsize>,
}

impl Depth {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            count: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Marks one message as taken out of the mailbox.
    pub fn taken(&self) {
        let before = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .expect("the update closure always returns Some");
        let now = before.saturating_sub(1);
        metrics::gauge!(crate::metrics::MAILBOX_DEPTH, "actor" => self.name).set(now as f64);
    }

    pub fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A sending handle with a capacity.
pub struct Mailbox<M: Message> {
    actor: Arc<RwLock<ActorRef<M>>>,
    depth: Depth,
    capacity: usize,
}

impl<M: Message> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
            capacity: self.capacity,
        }
    }
}

impl<M: Message> Mailbox<M> {
    pub fn new(actor: ActorRef<M>, depth: Depth, capacity: usize) -> Self {
        Self {
            actor: Arc::new(RwLock::new(actor)),
            depth,
            capacity,
        }
    }

    /// Points every clone of this mailbox at a restarted actor; what the old one had
    /// queued is gone, so the depth starts again from zero.
    pub fn repoint(&self, actor: ActorRef<M>) {
        *self.actor.write().expect("mailbox lock poisoned") = actor;
        self.depth.count.store(0, Ordering::Release);
        metrics::gauge!(crate::metrics::MAILBOX_DEPTH, "actor" => self.depth.name).set(0.0);
    }

    /// Sends a control message (a completion, a credit) past the bound: these are limited
    /// by the work in flight, and refusing them would lose track of it.
    pub fn cast(&self, msg: M) -> Result<(), SendError<M>> {
        self.actor().cast(msg).map_err(|e| match e {
            ractor::MessagingErr::SendErr(m) => SendError::Closed(m),
            other => panic!("local cast failed unexpectedly: {other}"),
        })
    }

    /// Sends unless the mailbox is full or the actor is gone.
    pub fn try_send(&self, msg: M) -> Result<(), SendError<M>> {
        let before = self.depth.count.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.depth.count.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Full(msg));
        }
        metrics::gauge!(crate::metrics::MAILBOX_DEPTH, "actor" => self.depth.name)
            .set((before + 1) as f64);
        self.actor().cast(msg).map_err(|e| {
            self.depth.count.fetch_sub(1, Ordering::AcqRel);
            match e {
                ractor::MessagingErr::SendErr(m) => SendError::Closed(m),
                // A message type that is not transportable cannot reach here: ours are local.
                other => panic!("local cast failed unexpectedly: {other}"),
            }
        })
    }

    pub fn depth(&self) -> usize {
        self.depth.get()
    }

    /// The depth counter, shared with the actor behind the mailbox.
    pub fn depth_handle(&self) -> Depth {
        self.depth.clone()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The actor behind the mailbox now.
    pub fn actor(&self) -> ActorRef<M> {
        self.actor.read().expect("mailbox lock poisoned").clone()
    }
}
