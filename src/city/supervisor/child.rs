//! A supervised child, described once: its name, its mailbox and how to build its
//! arguments. The supervisor starts, stops, injects faults into and restarts every child
//! through this one interface, so it never names an actor.

use ractor::{Actor, ActorCell, ActorProcessingErr};

use crate::city::mailbox::{ActorMsg, Bounded, Depth, Mailbox};
use crate::config::ActorName;

/// What the supervisor can do with one child.
#[async_trait::async_trait]
pub trait Child: Send + Sync {
    fn name(&self) -> ActorName;
    /// Starts a new incarnation linked to `supervisor` and points the mailbox at it.
    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ActorProcessingErr>;
    /// The current incarnation, if one was started.
    fn cell(&self) -> Option<ActorCell>;
    /// Fault injection: the child panics on its next message.
    fn inject_panic(&self);
    /// The mailbox depth, for `GET /v1/actors`.
    fn depth(&self) -> Depth;
}

/// A [`Child`] for actor `A`: every start builds fresh arguments (so a restarted actor
/// resumes from what is durable, not from what its predecessor held) and runs `A` behind
/// its [`Mailbox`].
pub struct ChildSpec<A: Actor> {
    name: ActorName,
    actor: fn() -> A,
    mailbox: Mailbox<A::Msg>,
    args: Box<dyn Fn() -> A::Arguments + Send + Sync>,
}

impl<A: Actor> ChildSpec<A> {
    pub fn new(
        name: ActorName,
        actor: fn() -> A,
        mailbox: &Mailbox<A::Msg>,
        args: impl Fn() -> A::Arguments + Send + Sync + 'static,
    ) -> Box<Self> {
        Box::new(Self {
            name,
            actor,
            mailbox: mailbox.clone(),
            args: Box::new(args),
        })
    }
}

#[async_trait::async_trait]
impl<A> Child for ChildSpec<A>
where
    A: Actor,
    A::Msg: ActorMsg,
{
    fn name(&self) -> ActorName {
        self.name
    }

    async fn start(&self, supervisor: ActorCell) -> Result<ActorCell, ActorProcessingErr> {
        let args = ((self.args)(), self.mailbox.depth_handle());
        let (actor, _) =
            Actor::spawn_linked(None, Bounded((self.actor)()), args, supervisor).await?;
        let cell = actor.get_cell();
        self.mailbox.repoint(actor);
        Ok(cell)
    }

    fn cell(&self) -> Option<ActorCell> {
        self.mailbox.actor().map(|a| a.get_cell())
    }

    fn inject_panic(&self) {
        let _ = self.mailbox.cast(A::Msg::panic());
    }

    fn depth(&self) -> Depth {
        self.mailbox.depth_handle()
    }
}
