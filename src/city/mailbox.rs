//! Bounded mailboxes over ractor actors.
//!
//! ractor's mailboxes are unbounded; a bound is what turns overload into a clear 503 instead
//! of a slow death by memory. A [`Mailbox`] counts work messages sent but not yet taken by
//! the actor, refuses past its capacity, and publishes the depth as a gauge. Actors run
//! inside [`Bounded`], which takes each work message off the count before the actor sees
//! it, so no handler has to remember to.
//!
//! A mailbox outlives the actor behind it: the city creates every mailbox before any actor
//! starts (so the wiring has no start-order puzzle), and when the supervisor (re)starts an
//! actor it points the mailbox at it ([`Mailbox::repoint`]); every holder of a clone reaches
//! the new actor. Messages that were queued for a failed actor are gone with it; their
//! senders learn it from their dropped reply channels or from the Intake's sweep.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, Message, SupervisionEvent};

/// What the mailbox and the supervisor need to know of an actor's message type.
pub trait ActorMsg: Message {
    /// The message fault injection sends; the actor panics on it.
    fn panic() -> Self;
    /// Work sent with [`Mailbox::try_send`], counted in the mailbox's depth. Control
    /// messages (completions, credits, timers) go with [`Mailbox::cast`] and are not.
    fn is_work(&self) -> bool {
        false
    }
}

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
    actor: Arc<RwLock<Option<ActorRef<M>>>>,
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
        let mailbox = Self::detached(depth, capacity);
        mailbox.repoint(actor);
        mailbox
    }

    /// A mailbox with no actor behind it yet: sends fail as [`SendError::Closed`] until
    /// [`Mailbox::repoint`].
    pub fn detached(depth: Depth, capacity: usize) -> Self {
        Self {
            actor: Arc::new(RwLock::new(None)),
            depth,
            capacity,
        }
    }

    /// Points every clone of this mailbox at a (re)started actor; what an old one had
    /// queued is gone, so the depth starts again from zero.
    pub fn repoint(&self, actor: ActorRef<M>) {
        *self.actor.write().expect("mailbox lock poisoned") = Some(actor);
        self.depth.count.store(0, Ordering::Release);
        metrics::gauge!(crate::metrics::MAILBOX_DEPTH, "actor" => self.depth.name).set(0.0);
    }

    /// Sends a control message (a completion, a credit) past the bound: these are limited
    /// by the work in flight, and refusing them would lose track of it.
    pub fn cast(&self, msg: M) -> Result<(), SendError<M>> {
        let Some(actor) = self.actor() else {
            return Err(SendError::Closed(msg));
        };
        actor.cast(msg).map_err(|e| match e {
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
        let Some(actor) = self.actor() else {
            self.depth.count.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Closed(msg));
        };
        actor.cast(msg).map_err(|e| {
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

    /// The actor behind the mailbox now, if one has started.
    pub fn actor(&self) -> Option<ActorRef<M>> {
        self.actor.read().expect("mailbox lock poisoned").clone()
    }
}

/// Runs actor `A` behind a [`Mailbox`]: each work message is taken off the mailbox's
/// depth as it is handled. Everything else is `A`'s own.
pub struct Bounded<A>(pub A);

impl<A> Actor for Bounded<A>
where
    A: Actor,
    A::Msg: ActorMsg,
{
    type Msg = A::Msg;
    type State = (A::State, Depth);
    type Arguments = (A::Arguments, Depth);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (args, depth): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((self.0.pre_start(myself, args).await?, depth))
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.0.post_start(myself, &mut state.0).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.0.post_stop(myself, &mut state.0).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if msg.is_work() {
            state.1.taken();
        }
        self.0.handle(myself, msg, &mut state.0).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.0
            .handle_supervisor_evt(myself, event, &mut state.0)
            .await
    }
}
