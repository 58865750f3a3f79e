//! Bounded mailboxes over ractor actors.
//!
//! ractor's mailboxes are unbounded; a bound is what turns overload into a clear 503 instead
//! of a slow death by memory. A [`Mailbox`] counts messages sent but not yet taken by the
//! actor, refuses past its capacity, and publishes the depth as a gauge. The receiving actor
//! calls [`Depth::taken`] as the first thing it does with each message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    actor: ActorRef<M>,
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
            actor,
            depth,
            capacity,
        }
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
        self.actor.cast(msg).map_err(|e| {
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

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }
}
