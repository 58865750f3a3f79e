//! Object dependencies: the read and write sets transactions declare (`tx.objects`) over
//! owned, shared and immutable objects, which of them may be in flight together, and the
//! order a batch records.
//!
//! The rules, as [`OwnedExclusive`] runs them:
//!
//! - A declaration names each object once, with a valid name, at most `[objects]
//!   max_per_tx` of them, and never writes an immutable object ([`ObjectEngine::validate`],
//!   400 `invalid_objects`, before the signature is checked).
//! - An object's kind is fixed the first time the city sees it: by its durable head, or
//!   while it has none by the transactions in flight that declared it.
//! - An owned object has one writer at a time: while a transaction writing it is in
//!   flight (admitted, not yet durable or failed) nobody else may touch it, and while
//!   transactions reading it are in flight nobody may write it. It belongs to the sender
//!   who first wrote it; another sender's write is refused.
//! - Shared objects take any number of readers and writers; immutable ones are only read.
//!
//! What is refused here is refused by the Intake, its sequential point, before anything is
//! recorded ([`ObjectLocks`] are its in-flight state); the DagBatcher keeps admission order
//! inside a batch and asks [`ObjectEngine::edges`] for the batch's dependency edges, which
//! [`verify_edges`] checks on any batch (from earlier to later only, and acyclic).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::{ObjectEngineName, ObjectsConfig};
use crate::messages::names::check_name;
use crate::messages::{
    BatchId, Dep, DepFrom, DepKind, ObjectAccess, ObjectHead, ObjectKind, ObjectRef, TxId,
};

/// Readers of one object remembered since its last write (for write-after-read edges);
/// past it the oldest are forgotten, so a hot object read forever holds bounded memory.
pub const MAX_TRACKED_READERS: usize = 1024;

/// Objects the batcher remembers the last writer of; past it the memory starts over, and
/// the durable heads the Intake read stand in (exact for owned objects, whose previous
/// writer is always durable; an edge to a shared object's writer still in flight can then
/// be missing).
pub const MAX_TRACKED_OBJECTS: usize = 1 << 20;

/// Why a declaration is refused (400 `invalid_objects`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    #[error("{count} objects declared (limit {limit})")]
    TooMany { count: usize, limit: usize },
    #[error("object id: {0}")]
    BadId(String),
    #[error("object {0:?} is declared more than once")]
    Repeated(String),
    #[error("object {0:?} is immutable and cannot be written")]
    ImmutableWrite(String),
}

/// Why a transaction conflicts with what is in flight or durable (409 `object_conflict`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectConflict {
    #[error("object {object:?} is {}, not {}", .kind.as_str(), .declared.as_str())]
    Kind {
        object: String,
        kind: ObjectKind,
        declared: ObjectKind,
    },
    #[error("owned object {object:?} is in use by transaction {} in flight", hex::encode(.tx))]
    InFlight { object: String, tx: TxId },
    #[error("owned object {object:?} is owned by {owner}")]
    Owner { object: String, owner: String },
}

impl ObjectConflict {
    /// Which rule refused it (the metric's label).
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Kind { .. } => "kind",
            Self::InFlight { .. } => "in_flight",
            Self::Owner { .. } => "owner",
        }
    }

    pub fn object(&self) -> &str {
        match self {
            Self::Kind { object, .. }
            | Self::InFlight { object, .. }
            | Self::Owner { object, .. } => object,
        }
    }
}

/// Why a batch's edges are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("edge on {object:?} names transaction {index}, the batch has {count}")]
    OutOfRange {
        object: String,
        index: u32,
        count: usize,
    },
    #[error("the edges form a cycle through transaction {0}")]
    Cycle(u32),
    #[error("edge on {object:?} goes from transaction {from} forward to {to}")]
    Forward { object: String, from: u32, to: u32 },
}

/// One transaction of a batch, as the edges see it.
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry<'a> {
    pub id: TxId,
    pub objects: &'a [ObjectRef],
    /// The durable last writer of each object it accesses, as the Intake read it at
    /// admission (for objects this batcher has not seen written since it started).
    pub prior: &'a [(String, TxId)],
}

/// The object rules a city runs (`[objects] engine`). The Intake and the DagBatcher call
/// this trait, never an implementation.
pub trait ObjectEngine: Send + Sync {
    fn name(&self) -> ObjectEngineName;

    /// Whether durable heads and edges are kept at all.
    fn tracks(&self) -> bool;

    /// Checks a declaration on its own (before the signature).
    fn validate(&self, objects: &[ObjectRef]) -> Result<(), DeclarationError>;

    /// Checks transaction `tx` of `sender` against the transactions in flight (`locks`) and
    /// the durable heads of its objects (`heads`, as read from the store); if it may go,
    /// takes its locks. A refusal changes nothing.
    fn admit(
        &self,
        locks: &mut ObjectLocks,
        tx: TxId,
        sender: &str,
        objects: &[ObjectRef],
        heads: &HashMap<String, ObjectHead>,
    ) -> Result<(), ObjectConflict>;

    /// The dependency edges of a batch of `entries` (in batch order), advancing `tracker`.
    fn edges(&self, tracker: &mut EdgeTracker, entries: &[BatchEntry<'_>]) -> Vec<Dep>;

    /// Checks a batch's edges ([`verify_edges`]).
    fn verify(&self, deps: &[Dep], tx_count: usize) -> Result<(), EdgeError> {
        verify_edges(deps, tx_count)
    }
}

/// The engine `[objects]` names.
pub fn engine_from_config(config: &ObjectsConfig) -> Arc<dyn ObjectEngine> {
    match config.engine {
        ObjectEngineName::OwnedExclusive => Arc::new(OwnedExclusive {
            max_per_tx: config.max_per_tx,
        }),
        ObjectEngineName::Off => Arc::new(Off),
    }
}

/// An object as the transactions in flight hold it.
#[derive(Debug)]
struct Held {
    kind: ObjectKind,
    writer: Option<TxId>,
    readers: HashSet<TxId>,
    /// Transactions in flight that declared it (the kind is fixed while any does).
    users: usize,
}

/// The objects of the transactions in flight: what the Intake holds between admitting a
/// transaction and hearing its batch is durable or failed ([`ObjectLocks::release`]).
#[derive(Debug, Default)]
pub struct ObjectLocks {
    objects: HashMap<String, Held>,
    by_tx: HashMap<TxId, Vec<ObjectRef>>,
}

impl ObjectLocks {
    /// Whether transaction `tx` holds locks.
    pub fn holds(&self, tx: &TxId) -> bool {
        self.by_tx.contains_key(tx)
    }

    /// Objects held by transactions in flight.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn take(&mut self, tx: TxId, objects: &[ObjectRef]) {
        for r in objects {
            let held = self.objects.entry(r.id.clone()).or_insert_with(|| Held {
                kind: r.kind,
                writer: None,
                readers: HashSet::new(),
                users: 0,
            });
            held.users += 1;
            if r.kind == ObjectKind::Owned {
                match r.access {
                    ObjectAccess::Write => held.writer = Some(tx),
                    ObjectAccess::Read => {
                        held.readers.insert(tx);
                    }
                }
            }
        }
        self.by_tx.insert(tx, objects.to_vec());
    }

    /// Releases what `tx` holds (its batch is durable or failed); nothing if it holds
    /// nothing.
    pub fn release(&mut self, tx: &TxId) {
        let Some(objects) = self.by_tx.remove(tx) else {
            return;
        };
        for r in objects {
            if let Some(held) = self.objects.get_mut(&r.id) {
                if held.writer == Some(*tx) {
                    held.writer = None;
                }
                held.readers.remove(tx);
                held.users -= 1;
                if held.users == 0 {
                    self.objects.remove(&r.id);
                }
            }
        }
    }
}

/// The last writer and the readers since of every object the batcher has seen, so that an
/// edge can name a transaction of an earlier batch still in flight.
#[derive(Debug)]
pub struct EdgeTracker {
    objects: HashMap<String, Track>,
    limit: usize,
}

impl Default for EdgeTracker {
    fn default() -> Self {
        Self::with_limit(MAX_TRACKED_OBJECTS)
    }
}

impl EdgeTracker {
    /// A tracker remembering at most `limit` objects ([`MAX_TRACKED_OBJECTS`] by default).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            objects: HashMap::new(),
            limit,
        }
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[derive(Debug, Default)]
struct Track {
    writer: Option<TxId>,
    readers: Vec<TxId>,
}

/// The default engine: owned objects are exclusive to one writer in flight and to their
/// owner; see the module's rules.
#[derive(Debug, Clone)]
pub struct OwnedExclusive {
    pub max_per_tx: usize,
}

impl ObjectEngine for OwnedExclusive {
    fn name(&self) -> ObjectEngineName {
        ObjectEngineName::OwnedExclusive
    }

    fn tracks(&self) -> bool {
        true
    }

    fn validate(&self, objects: &[ObjectRef]) -> Result<(), DeclarationError> {
        if objects.len() > self.max_per_tx {
            return Err(DeclarationError::TooMany {
                count: objects.len(),
                limit: self.max_per_tx,
            });
        }
        let mut seen = HashSet::with_capacity(objects.len());
        for r in objects {
            check_name("objects.id", &r.id).map_err(|e| DeclarationError::BadId(e.to_string()))?;
            if !seen.insert(r.id.as_str()) {
                return Err(DeclarationError::Repeated(r.id.clone()));
            }
            if r.kind == ObjectKind::Immutable && r.writes() {
                return Err(DeclarationError::ImmutableWrite(r.id.clone()));
            }
        }
        Ok(())
    }

    fn admit(
        &self,
        locks: &mut ObjectLocks,
        tx: TxId,
        sender: &str,
        objects: &[ObjectRef],
        heads: &HashMap<String, ObjectHead>,
    ) -> Result<(), ObjectConflict> {
        if locks.holds(&tx) {
            // The same transaction again: it waits with itself, it does not conflict.
            return Ok(());
        }
        // Every check before any lock is taken: a refusal changes nothing.
        for r in objects {
            let head = heads.get(&r.id);
            let held = locks.objects.get(&r.id);
            let kind = head.map(|h| h.kind).or(held.map(|h| h.kind));
            if let Some(kind) = kind
                && kind != r.kind
            {
                return Err(ObjectConflict::Kind {
                    object: r.id.clone(),
                    kind,
                    declared: r.kind,
                });
            }
            if r.kind != ObjectKind::Owned {
                continue;
            }
            if r.writes()
                && let Some(owner) = head.and_then(|h| h.owner.as_deref())
                && owner != sender
            {
                return Err(ObjectConflict::Owner {
                    object: r.id.clone(),
                    owner: owner.to_string(),
                });
            }
            let Some(held) = held else { continue };
            let blocker = held.writer.or_else(|| {
                r.writes()
                    .then(|| held.readers.iter().copied().min())
                    .flatten()
            });
            if let Some(other) = blocker.filter(|other| *other != tx) {
                return Err(ObjectConflict::InFlight {
                    object: r.id.clone(),
                    tx: other,
                });
            }
        }
        locks.take(tx, objects);
        Ok(())
    }

    fn edges(&self, tracker: &mut EdgeTracker, entries: &[BatchEntry<'_>]) -> Vec<Dep> {
        let index: HashMap<TxId, u32> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id, i as u32))
            .collect();
        let from = |tx: TxId| match index.get(&tx) {
            Some(i) => DepFrom::InBatch(*i),
            None => DepFrom::Earlier(tx),
        };
        if tracker.objects.len() >= tracker.limit {
            tracker.objects.clear();
        }
        let mut deps = Vec::new();
        for (to, entry) in entries.iter().enumerate() {
            let to = to as u32;
            for r in entry.objects {
                if r.kind == ObjectKind::Immutable {
                    // Never written: nothing to follow.
                    continue;
                }
                let track = tracker
                    .objects
                    .entry(r.id.clone())
                    .or_insert_with(|| Track {
                        writer: entry
                            .prior
                            .iter()
                            .find(|(id, _)| *id == r.id)
                            .map(|(_, tx)| *tx),
                        readers: Vec::new(),
                    });
                if let Some(writer) = track.writer.filter(|w| *w != entry.id) {
                    deps.push(Dep {
                        from: from(writer),
                        to,
                        object: r.id.clone(),
                        kind: if r.writes() {
                            DepKind::WriteAfterWrite
                        } else {
                            DepKind::ReadAfterWrite
                        },
                    });
                }
                if r.writes() {
                    for reader in track.readers.drain(..).filter(|t| *t != entry.id) {
                        deps.push(Dep {
                            from: from(reader),
                            to,
                            object: r.id.clone(),
                            kind: DepKind::WriteAfterRead,
                        });
                    }
                    track.writer = Some(entry.id);
                } else {
                    if track.readers.len() >= MAX_TRACKED_READERS {
                        track.readers.remove(0);
                    }
                    track.readers.push(entry.id);
                }
            }
        }
        deps
    }
}

/// No object rules: declarations are carried as signed; no locks, heads or edges.
#[derive(Debug, Clone, Copy)]
pub struct Off;

impl ObjectEngine for Off {
    fn name(&self) -> ObjectEngineName {
        ObjectEngineName::Off
    }

    fn tracks(&self) -> bool {
        false
    }

    fn validate(&self, _objects: &[ObjectRef]) -> Result<(), DeclarationError> {
        Ok(())
    }

    fn admit(
        &self,
        _locks: &mut ObjectLocks,
        _tx: TxId,
        _sender: &str,
        _objects: &[ObjectRef],
        _heads: &HashMap<String, ObjectHead>,
    ) -> Result<(), ObjectConflict> {
        Ok(())
    }

    fn edges(&self, _tracker: &mut EdgeTracker, _entries: &[BatchEntry<'_>]) -> Vec<Dep> {
        Vec::new()
    }
}

/// Checks a batch's edges: every index within the batch, no cycle among the batch's own
/// transactions (Kahn's algorithm), and every in-batch edge from an earlier transaction
/// to a later one (so the body's order replays them). Edges from earlier batches name
/// transaction ids and cannot form a cycle inside this batch.
pub fn verify_edges(deps: &[Dep], tx_count: usize) -> Result<(), EdgeError> {
    let out_of_range = |dep: &Dep, index: u32| EdgeError::OutOfRange {
        object: dep.object.clone(),
        index,
        count: tx_count,
    };
    let mut successors: Vec<Vec<u32>> = vec![Vec::new(); tx_count];
    let mut incoming = vec![0usize; tx_count];
    for dep in deps {
        if dep.to as usize >= tx_count {
            return Err(out_of_range(dep, dep.to));
        }
        if let DepFrom::InBatch(from) = dep.from {
            if from as usize >= tx_count {
                return Err(out_of_range(dep, from));
            }
            successors[from as usize].push(dep.to);
            incoming[dep.to as usize] += 1;
        }
    }
    let mut ready: Vec<u32> = (0..tx_count as u32)
        .filter(|i| incoming[*i as usize] == 0)
        .collect();
    let mut visited = 0;
    while let Some(node) = ready.pop() {
        visited += 1;
        for next in &successors[node as usize] {
            incoming[*next as usize] -= 1;
            if incoming[*next as usize] == 0 {
                ready.push(*next);
            }
        }
    }
    if visited < tx_count {
        let stuck = (0..tx_count as u32)
            .find(|i| incoming[*i as usize] > 0)
            .expect("an unvisited node has incoming edges");
        return Err(EdgeError::Cycle(stuck));
    }
    for dep in deps {
        if let DepFrom::InBatch(from) = dep.from
            && from >= dep.to
        {
            return Err(EdgeError::Forward {
                object: dep.object.clone(),
                from,
                to: dep.to,
            });
        }
    }
    Ok(())
}

/// An object's durable head after transaction `tx` of `sender` (in batch `batch`) used it
/// as `r` says: the kind is kept from the first time; a write counts a version, names
/// the writer (if it is `later` in admission order than the head's last writer) and, for
/// an owned object without an owner, makes `sender` its owner.
///
/// Batches are recorded in the order their storage completes, which for a shared object
/// written in several batches in flight at once is not the order they were admitted in:
/// a write recorded after a later one counts, but does not become the last writer.
pub fn advance_head(
    head: Option<ObjectHead>,
    r: &ObjectRef,
    sender: &str,
    tx: TxId,
    batch: BatchId,
    later: bool,
) -> ObjectHead {
    let mut head = head.unwrap_or(ObjectHead {
        kind: r.kind,
        owner: None,
        last_tx: None,
        last_batch: None,
        version: 0,
    });
    if r.writes() {
        head.version += 1;
        if later || head.last_tx.is_none() {
            head.last_tx = Some(tx);
            head.last_batch = Some(batch);
        }
        if head.kind == ObjectKind::Owned && head.owner.is_none() {
            head.owner = Some(sender.to_string());
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: &str, kind: ObjectKind, access: ObjectAccess) -> ObjectRef {
        ObjectRef {
            id: id.into(),
            kind,
            access,
        }
    }

    fn owned_w(id: &str) -> ObjectRef {
        obj(id, ObjectKind::Owned, ObjectAccess::Write)
    }

    fn owned_r(id: &str) -> ObjectRef {
        obj(id, ObjectKind::Owned, ObjectAccess::Read)
    }

    fn shared(id: &str, access: ObjectAccess) -> ObjectRef {
        obj(id, ObjectKind::Shared, access)
    }

    fn engine() -> OwnedExclusive {
        OwnedExclusive { max_per_tx: 4 }
    }

    fn none() -> HashMap<String, ObjectHead> {
        HashMap::new()
    }

    fn dep(from: DepFrom, to: u32, object: &str, kind: DepKind) -> Dep {
        Dep {
            from,
            to,
            object: object.into(),
            kind,
        }
    }

    #[test]
    fn declarations_are_checked() {
        let e = engine();
        assert_eq!(e.validate(&[]), Ok(()));
        assert_eq!(
            e.validate(&[owned_w("a"), owned_r("b"), shared("c", ObjectAccess::Write)]),
            Ok(())
        );
        let five: Vec<_> = (0..5).map(|i| owned_w(&format!("o{i}"))).collect();
        assert_eq!(
            e.validate(&five),
            Err(DeclarationError::TooMany { count: 5, limit: 4 })
        );
        assert_eq!(
            e.validate(&[owned_w("a"), owned_r("a")]),
            Err(DeclarationError::Repeated("a".into()))
        );
        assert_eq!(
            e.validate(&[obj("law", ObjectKind::Immutable, ObjectAccess::Write)]),
            Err(DeclarationError::ImmutableWrite("law".into()))
        );
        assert_eq!(
            e.validate(&[obj("law", ObjectKind::Immutable, ObjectAccess::Read)]),
            Ok(())
        );
        for bad in ["", "a\nb", "a\u{202e}b"] {
            assert!(matches!(
                e.validate(&[owned_w(bad)]),
                Err(DeclarationError::BadId(_))
            ));
        }
        assert!(matches!(
            e.validate(&[owned_w(&"x".repeat(300))]),
            Err(DeclarationError::BadId(_))
        ));
        // Off checks nothing.
        assert_eq!(Off.validate(&five), Ok(()));
    }

    #[test]
    fn an_owned_object_has_one_writer_in_flight_and_readers_block_writers() {
        let e = engine();
        let mut locks = ObjectLocks::default();
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        e.admit(&mut locks, a, "alice", &[owned_w("coin")], &none())
            .unwrap();
        // The same transaction again is not a conflict with itself.
        e.admit(&mut locks, a, "alice", &[owned_w("coin")], &none())
            .unwrap();
        for access in [owned_w("coin"), owned_r("coin")] {
            assert_eq!(
                e.admit(&mut locks, b, "alice", &[access], &none()),
                Err(ObjectConflict::InFlight {
                    object: "coin".into(),
                    tx: a
                })
            );
        }
        assert!(!locks.holds(&b), "a refusal takes nothing");
        locks.release(&a);
        assert!(locks.is_empty());
        // Readers share; a writer waits for them all.
        e.admit(&mut locks, b, "alice", &[owned_r("coin")], &none())
            .unwrap();
        e.admit(&mut locks, c, "alice", &[owned_r("coin")], &none())
            .unwrap();
        let err = e
            .admit(&mut locks, a, "alice", &[owned_w("coin")], &none())
            .unwrap_err();
        assert!(matches!(err, ObjectConflict::InFlight { tx, .. } if tx == b));
        locks.release(&b);
        let err = e
            .admit(&mut locks, a, "alice", &[owned_w("coin")], &none())
            .unwrap_err();
        assert!(matches!(err, ObjectConflict::InFlight { tx, .. } if tx == c));
        locks.release(&c);
        e.admit(&mut locks, a, "alice", &[owned_w("coin")], &none())
            .unwrap();
    }

    #[test]
    fn a_refused_transaction_takes_no_lock_on_its_other_objects() {
        let e = engine();
        let mut locks = ObjectLocks::default();
        e.admit(&mut locks, [1; 32], "alice", &[owned_w("b")], &none())
            .unwrap();
        assert!(
            e.admit(
                &mut locks,
                [2; 32],
                "alice",
                &[owned_w("a"), owned_w("b")],
                &none()
            )
            .is_err()
        );
        e.admit(&mut locks, [3; 32], "alice", &[owned_w("a")], &none())
            .unwrap();
    }

    #[test]
    fn shared_and_immutable_objects_take_everyone() {
        let e = engine();
        let mut locks = ObjectLocks::default();
        for n in 0..10u8 {
            let access = if n % 2 == 0 {
                ObjectAccess::Write
            } else {
                ObjectAccess::Read
            };
            e.admit(
                &mut locks,
                [n; 32],
                &format!("s{n}"),
                &[
                    shared("pool", access),
                    obj("law", ObjectKind::Immutable, ObjectAccess::Read),
                ],
                &none(),
            )
            .unwrap();
        }
        for n in 0..10u8 {
            locks.release(&[n; 32]);
        }
        assert!(locks.is_empty());
    }

    #[test]
    fn kinds_are_fixed_by_heads_and_by_what_is_in_flight() {
        let e = engine();
        let mut locks = ObjectLocks::default();
        e.admit(
            &mut locks,
            [1; 32],
            "alice",
            &[shared("x", ObjectAccess::Read)],
            &none(),
        )
        .unwrap();
        assert_eq!(
            e.admit(&mut locks, [2; 32], "bob", &[owned_r("x")], &none()),
            Err(ObjectConflict::Kind {
                object: "x".into(),
                kind: ObjectKind::Shared,
                declared: ObjectKind::Owned
            })
        );
        locks.release(&[1; 32]);
        let heads = HashMap::from([(
            "x".to_string(),
            ObjectHead {
                kind: ObjectKind::Immutable,
                owner: None,
                last_tx: None,
                last_batch: None,
                version: 0,
            },
        )]);
        assert!(matches!(
            e.admit(&mut locks, [2; 32], "bob", &[owned_r("x")], &heads),
            Err(ObjectConflict::Kind { .. })
        ));
        // Off lets it through.
        Off.admit(&mut locks, [2; 32], "bob", &[owned_r("x")], &heads)
            .unwrap();
    }

    #[test]
    fn owned_objects_belong_to_their_first_writer() {
        let e = engine();
        let mut locks = ObjectLocks::default();
        let head = advance_head(None, &owned_w("coin"), "alice", [1; 32], [9; 32], true);
        assert_eq!(head.owner.as_deref(), Some("alice"));
        assert_eq!((head.version, head.last_tx), (1, Some([1; 32])));
        let head = advance_head(
            Some(head),
            &owned_w("coin"),
            "alice",
            [2; 32],
            [8; 32],
            true,
        );
        assert_eq!(head.version, 2);
        assert_eq!(head.last_batch, Some([8; 32]));
        let read = advance_head(
            Some(head.clone()),
            &owned_r("coin"),
            "bob",
            [3; 32],
            [7; 32],
            true,
        );
        assert_eq!(read, head, "a read changes nothing");
        let heads = HashMap::from([("coin".to_string(), head)]);
        assert_eq!(
            e.admit(&mut locks, [4; 32], "bob", &[owned_w("coin")], &heads),
            Err(ObjectConflict::Owner {
                object: "coin".into(),
                owner: "alice".into()
            })
        );
        e.admit(&mut locks, [4; 32], "bob", &[owned_r("coin")], &heads)
            .unwrap();
        locks.release(&[4; 32]);
        e.admit(&mut locks, [5; 32], "alice", &[owned_w("coin")], &heads)
            .unwrap();
        // A shared object has no owner.
        let s = advance_head(
            None,
            &shared("pool", ObjectAccess::Write),
            "bob",
            [6; 32],
            [1; 32],
            true,
        );
        assert_eq!(s.owner, None);
        // A write recorded after a later one (its batch's storage finished last) counts a
        // version but does not become the last writer.
        let s = advance_head(
            Some(s),
            &shared("pool", ObjectAccess::Write),
            "carol",
            [7; 32],
            [0; 32],
            false,
        );
        assert_eq!(
            (s.version, s.last_tx, s.last_batch),
            (2, Some([6; 32]), Some([1; 32]))
        );
    }

    #[test]
    fn edges_follow_writers_and_readers_within_and_across_batches() {
        let e = engine();
        let mut tracker = EdgeTracker::default();
        let (w0, r1, r2, w3) = ([10; 32], [11; 32], [12; 32], [13; 32]);
        let prior = vec![("pool".to_string(), [1u8; 32])];
        let (write, read) = (
            [shared("pool", ObjectAccess::Write)],
            [shared("pool", ObjectAccess::Read)],
        );
        let first = [
            BatchEntry {
                id: w0,
                objects: &write,
                prior: &prior,
            },
            BatchEntry {
                id: r1,
                objects: &read,
                prior: &[],
            },
            BatchEntry {
                id: r2,
                objects: &read,
                prior: &[],
            },
        ];
        let deps = e.edges(&mut tracker, &first);
        use DepKind::*;
        assert_eq!(
            deps,
            vec![
                dep(DepFrom::Earlier([1; 32]), 0, "pool", WriteAfterWrite),
                dep(DepFrom::InBatch(0), 1, "pool", ReadAfterWrite),
                dep(DepFrom::InBatch(0), 2, "pool", ReadAfterWrite),
            ]
        );
        verify_edges(&deps, 3).unwrap();
        // The next batch's writer follows the last writer and both readers, by id.
        let second = [BatchEntry {
            id: w3,
            objects: &write,
            prior: &prior,
        }];
        let deps = e.edges(&mut tracker, &second);
        assert_eq!(
            deps,
            vec![
                dep(DepFrom::Earlier(w0), 0, "pool", WriteAfterWrite),
                dep(DepFrom::Earlier(r1), 0, "pool", WriteAfterRead),
                dep(DepFrom::Earlier(r2), 0, "pool", WriteAfterRead),
            ]
        );
        verify_edges(&deps, 1).unwrap();
        // Immutable reads have no edges; Off computes none.
        let law = [obj("law", ObjectKind::Immutable, ObjectAccess::Read)];
        let entries = [
            BatchEntry {
                id: [20; 32],
                objects: &law,
                prior: &[],
            },
            BatchEntry {
                id: [21; 32],
                objects: &law,
                prior: &[],
            },
        ];
        assert!(e.edges(&mut tracker, &entries).is_empty());
        assert!(Off.edges(&mut tracker, &first).is_empty());
    }

    #[test]
    fn the_tracker_is_bounded_and_falls_back_on_durable_heads() {
        let e = engine();
        let mut tracker = EdgeTracker::with_limit(2);
        let write = |id: &str| [shared(id, ObjectAccess::Write)];
        for (n, id) in ["a", "b"].iter().enumerate() {
            let objects = write(id);
            e.edges(
                &mut tracker,
                &[BatchEntry {
                    id: [n as u8; 32],
                    objects: &objects,
                    prior: &[],
                }],
            );
        }
        assert_eq!(tracker.len(), 2);
        // Full: it starts over; the writer of "a" now comes from the durable head given.
        let objects = write("a");
        let prior = vec![("a".to_string(), [42u8; 32])];
        let deps = e.edges(
            &mut tracker,
            &[BatchEntry {
                id: [9; 32],
                objects: &objects,
                prior: &prior,
            }],
        );
        assert_eq!(tracker.len(), 1);
        assert_eq!(
            deps,
            vec![dep(
                DepFrom::Earlier([42; 32]),
                0,
                "a",
                DepKind::WriteAfterWrite
            )]
        );
    }

    #[test]
    fn edge_verification_refuses_cycles_forward_edges_and_strangers() {
        use DepKind::*;
        let chain = vec![
            dep(DepFrom::InBatch(0), 1, "a", ReadAfterWrite),
            dep(DepFrom::InBatch(1), 2, "a", WriteAfterRead),
            dep(DepFrom::Earlier([7; 32]), 0, "a", WriteAfterWrite),
        ];
        assert_eq!(verify_edges(&chain, 3), Ok(()));
        assert_eq!(verify_edges(&[], 0), Ok(()));

        let mut cyclic = chain.clone();
        cyclic.push(dep(DepFrom::InBatch(2), 0, "a", WriteAfterWrite));
        assert!(matches!(verify_edges(&cyclic, 3), Err(EdgeError::Cycle(_))));
        let self_loop = vec![dep(DepFrom::InBatch(1), 1, "a", WriteAfterWrite)];
        assert_eq!(verify_edges(&self_loop, 2), Err(EdgeError::Cycle(1)));

        // Acyclic, but pointing from a later transaction to an earlier one: the body's
        // order would not replay it.
        let forward = vec![dep(DepFrom::InBatch(2), 0, "a", ReadAfterWrite)];
        assert_eq!(
            verify_edges(&forward, 3),
            Err(EdgeError::Forward {
                object: "a".into(),
                from: 2,
                to: 0
            })
        );
        let outside = vec![dep(DepFrom::InBatch(0), 3, "a", ReadAfterWrite)];
        assert!(matches!(
            verify_edges(&outside, 3),
            Err(EdgeError::OutOfRange { index: 3, .. })
        ));
        let outside = vec![dep(DepFrom::InBatch(5), 1, "a", ReadAfterWrite)];
        assert!(matches!(
            verify_edges(&outside, 3),
            Err(EdgeError::OutOfRange { index: 5, .. })
        ));
        assert_eq!(engine().verify(&chain, 3), Ok(()));
    }

    #[test]
    fn the_config_names_the_engine() {
        let on = engine_from_config(&ObjectsConfig::default());
        assert_eq!(on.name(), ObjectEngineName::OwnedExclusive);
        assert!(on.tracks());
        let off = engine_from_config(&ObjectsConfig {
            engine: ObjectEngineName::Off,
            ..Default::default()
        });
        assert_eq!(off.name(), ObjectEngineName::Off);
        assert!(!off.tracks());
        assert!(ObjectsConfig::default().problems().is_empty());
        let zero = ObjectsConfig {
            max_per_tx: 0,
            ..Default::default()
        };
        assert_eq!(zero.problems().len(), 1);
    }
}
