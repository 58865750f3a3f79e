//! Group commit: one thread that makes many small writes durable with one fsync each round.
//!
//! An fsync costs the same for one record as for a thousand, so the stores that promise
//! durability before they answer (the city's status index, the immutable log) share it.
//! Callers queue a request on a bounded channel and await a oneshot reply. A dedicated
//! thread takes the first request, then everything already waiting (up to a group limit),
//! runs one commit for the whole group and answers every request of the group with its
//! share of the result. Requests that arrive during a commit wait for the next one, so
//! the busier the store, the more requests each fsync carries.
//!
//! A failed commit fails every request of its group with the same error; the store decides
//! whether the thread goes on (a database transaction that failed left nothing behind) or
//! stops (after a failed fsync nothing the kernel says can be trusted).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// A bound on a group's total weight: the most, and how much one request weighs.
pub type WeightLimit<R> = (usize, fn(&R) -> usize);

/// How a group commit thread groups its requests.
pub struct Options<R> {
    /// The thread's name (shown by debuggers and `top -H`).
    pub name: &'static str,
    /// Requests that may wait for the thread before `submit` itself waits.
    pub queue: usize,
    /// Most requests one commit takes.
    pub max_requests: usize,
    /// A request's weight (e.g. its bytes) and the group weight after which a group takes
    /// no more requests; `None` bounds groups by `max_requests` only.
    pub max_weight: Option<WeightLimit<R>>,
    /// Whether a failed commit stops the thread: later requests then fail with
    /// [`GroupError::Closed`].
    pub stop_after_failure: bool,
}

/// Why a request was not committed.
#[derive(Debug)]
pub enum GroupError<E> {
    /// The writer was closed or has stopped; the request may not have been queued at all.
    Closed,
    /// The commit of the request's group failed; every request of the group gets this
    /// same error.
    Failed(Arc<E>),
}

struct Pending<R, T, E> {
    request: R,
    reply: oneshot::Sender<Result<T, Arc<E>>>,
}

/// The handle of a group commit thread. Dropping it stops the thread after the requests
/// already queued, and waits for it.
pub struct GroupCommit<R, T, E> {
    /// `None` once closed; the thread stops when every sender is gone.
    tx: Mutex<Option<mpsc::Sender<Pending<R, T, E>>>>,
    thread: Option<JoinHandle<()>>,
    #[cfg(test)]
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<R, T, E> GroupCommit<R, T, E>
where
    R: Send + 'static,
    T: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Starts the thread. `commit` makes a whole group durable and returns one answer per
    /// request, in order, or the error every request of the group gets.
    pub fn spawn<C>(options: Options<R>, commit: C) -> io::Result<Self>
    where
        C: FnMut(&mut [R]) -> Result<Vec<T>, E> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(options.queue);
        #[cfg(test)]
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let thread = Writer {
            rx,
            max_requests: options.max_requests,
            max_weight: options.max_weight,
            stop_after_failure: options.stop_after_failure,
            commit,
            #[cfg(test)]
            gate: gate.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(options.name.into())
            .spawn(move || thread.run())?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
            #[cfg(test)]
            gate,
        })
    }

    /// Queues `request` and waits until its group is committed. Dropping the future after
    /// the request was queued does not withdraw it: it may still be committed.
    pub async fn submit(&self, request: R) -> Result<T, GroupError<E>> {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(GroupError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Pending { request, reply })
            .await
            .map_err(|_| GroupError::Closed)?;
        drop(tx);
        // A dropped reply means the thread stopped (or panicked) with the request.
        answer
            .await
            .map_err(|_| GroupError::Closed)?
            .map_err(GroupError::Failed)
    }

    /// Refuses later requests with [`GroupError::Closed`]; those already queued are still
    /// committed, and the thread then ends on its own.
    pub fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Requests waiting for the thread.
    pub fn queued(&self) -> usize {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        tx.as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Held by the thread from taking a group's first request until the group is
    /// answered: a test holding it makes requests pile up in the queue.
    #[cfg(test)]
    pub(crate) fn gate(&self) -> &tokio::sync::Mutex<()> {
        &self.gate
    }
}

impl<R, T, E> Drop for GroupCommit<R, T, E> {
    /// Waits for the thread to commit what is queued, so whatever it owns (a file and its
    /// lock, a database) is released when the handle is gone.
    fn drop(&mut self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = self.thread.take() {
            // A panicked thread already failed its requests with `Closed`.
            let _ = thread.join();
        }
    }
}

struct Writer<R, T, E, C> {
    rx: mpsc::Receiver<Pending<R, T, E>>,
    max_requests: usize,
    max_weight: Option<WeightLimit<R>>,
    stop_after_failure: bool,
    commit: C,
    #[cfg(test)]
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<R, T, E, C> Writer<R, T, E, C>
where
    C: FnMut(&mut [R]) -> Result<Vec<T>, E>,
{
    fn run(mut self) {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        #[cfg(test)]
        let gate = self.gate.clone();
        while let Some(first) = self.rx.blocking_recv() {
            #[cfg(test)]
            let _gate = gate.blocking_lock();
            let (limit, weigh) = self.max_weight.unwrap_or((usize::MAX, |_| 0));
            let mut weight = weigh(&first.request);
            requests.push(first.request);
            replies.push(first.reply);
            while requests.len() < self.max_requests && weight < limit {
                match self.rx.try_recv() {
                    Ok(pending) => {
                        weight += weigh(&pending.request);
                        requests.push(pending.request);
                        replies.push(pending.reply);
                    }
                    Err(_) => break,
                }
            }
            let result = (self.commit)(&mut requests);
            requests.clear();
            match result {
                Ok(answers) => {
                    assert_eq!(answers.len(), replies.len(), "one answer per request");
                    for (reply, answer) in replies.drain(..).zip(answers) {
                        // The caller may have stopped waiting; the commit stands either way.
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(e.clone()));
                    }
                    if self.stop_after_failure {
                        // Dropping the receiver fails every queued and later request with
                        // `Closed`.
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc as std_mpsc;

    use super::*;

    type Groups = Arc<Mutex<Vec<Vec<u32>>>>;

    fn options(max_requests: usize, stop_after_failure: bool) -> Options<u32> {
        Options {
            name: "group-commit-test",
            queue: 64,
            max_requests,
            max_weight: None,
            stop_after_failure,
        }
    }

    /// A writer that records every group it commits and answers each request doubled.
    fn recording(max_requests: usize) -> (Arc<GroupCommit<u32, u32, String>>, Groups) {
        let groups = Groups::default();
        let seen = groups.clone();
        let writer =
            GroupCommit::spawn(options(max_requests, false), move |group: &mut [u32]| {
                seen.lock().unwrap().push(group.to_vec());
                Ok(group.iter().map(|r| r * 2).collect())
            })
            .unwrap();
        (Arc::new(writer), groups)
    }

    fn submit_all(
        writer: &Arc<GroupCommit<u32, u32, String>>,
        requests: impl IntoIterator<Item = u32>,
    ) -> Vec<tokio::task::JoinHandle<Result<u32, GroupError<String>>>> {
        requests
            .into_iter()
            .map(|r| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(r).await })
            })
            .collect()
    }

    /// Waits, without sleeping, until `n` requests are queued for the thread.
    async fn wait_queued<R, T, E>(writer: &GroupCommit<R, T, E>, n: usize)
    where
        R: Send + 'static,
        T: Send + 'static,
        E: Send + Sync + 'static,
    {
        while writer.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn requests_waiting_during_a_commit_share_the_next_one() {
        let (writer, groups) = recording(1024);
        let gate = writer.gate().lock().await;
        let tasks = submit_all(&writer, 0..50);
        // The thread holds the first request at the gate, or has not taken it yet.
        wait_queued(&writer, 49).await;
        drop(gate);
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), 2 * i as u32, "request {i}");
        }
        let groups = groups.lock().unwrap();
        assert!(groups.len() <= 2, "50 requests in {} commits", groups.len());
        let mut all: Vec<u32> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_group_takes_at_most_its_limit() {
        let (writer, groups) = recording(4);
        let gate = writer.gate().lock().await;
        let tasks = submit_all(&writer, 0..10);
        wait_queued(&writer, 9).await;
        drop(gate);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let groups = groups.lock().unwrap();
        assert!(groups.iter().all(|g| g.len() <= 4), "{groups:?}");
        assert!(groups.len() >= 3, "{groups:?}");
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 10);
    }

    #[tokio::test]
    async fn a_group_stops_growing_at_its_weight() {
        let groups = Groups::default();
        let seen = groups.clone();
        let options = Options {
            max_weight: Some((10, |r: &u32| *r as usize)),
            ..options(1024, false)
        };
        let writer = GroupCommit::<u32, (), String>::spawn(options, move |group: &mut [u32]| {
            seen.lock().unwrap().push(group.to_vec());
            Ok(vec![(); group.len()])
        })
        .unwrap();
        let gate = writer.gate().lock().await;
        let writes = futures::future::join_all((0..6).map(|_| writer.submit(4)));
        let released = async {
            wait_queued(&writer, 5).await;
            drop(gate);
        };
        let (results, ()) = tokio::join!(writes, released);
        assert!(results.iter().all(Result::is_ok));
        // Weights 4 + 4 + 4 reach 10 at the third request: no group holds more.
        let groups = groups.lock().unwrap();
        assert!(groups.iter().all(|g| g.len() <= 3), "{groups:?}");
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 6);
    }

    /// A writer whose first commit waits for the test, and whose second commit fails.
    #[tokio::test]
    async fn a_failed_commit_fails_every_request_of_its_group_and_only_those() {
        let (entered_tx, entered) = std_mpsc::channel();
        let (go, go_rx) = std_mpsc::channel::<()>();
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let writer = Arc::new(
            GroupCommit::spawn(options(1024, false), move |group: &mut [u32]| match counted
                .fetch_add(1, Ordering::SeqCst)
            {
                0 => {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(group.to_vec())
                }
                1 => Err(format!("disk gone under {} requests", group.len())),
                _ => Ok(group.to_vec()),
            })
            .unwrap(),
        );
        let first = submit_all(&writer, [0]);
        // The thread is inside the first commit: these three queue up behind it.
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let failed = submit_all(&writer, [1, 2, 3]);
        wait_queued(&writer, 3).await;
        go.send(()).unwrap();

        assert_eq!(first.into_iter().next().unwrap().await.unwrap().unwrap(), 0);
        let mut errors = Vec::new();
        for task in failed {
            match task.await.unwrap() {
                Err(GroupError::Failed(e)) => errors.push(e),
                other => panic!("expected the group's error, got {other:?}"),
            }
        }
        assert_eq!(*errors[0], "disk gone under 3 requests");
        assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
        // The thread goes on after a failure unless told to stop.
        assert_eq!(writer.submit(4).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_writer_told_to_stop_refuses_everything_after_a_failure() {
        let writer =
            GroupCommit::<u32, u32, &str>::spawn(options(1024, true), |_| Err("fsync")).unwrap();
        assert!(matches!(writer.submit(1).await, Err(GroupError::Failed(e)) if *e == "fsync"));
        assert!(matches!(writer.submit(2).await, Err(GroupError::Closed)));
    }

    #[tokio::test]
    async fn close_refuses_new_requests_and_drop_ends_the_thread_after_the_queue() {
        let owned = Arc::new(());
        let held = owned.clone();
        let groups = Groups::default();
        let seen = groups.clone();
        let writer = Arc::new(
            GroupCommit::<u32, (), String>::spawn(
                options(1024, false),
                move |group: &mut [u32]| {
                    let _ = &held;
                    seen.lock().unwrap().push(group.to_vec());
                    Ok(vec![(); group.len()])
                },
            )
            .unwrap(),
        );
        let gate = writer.gate().lock().await;
        let tasks: Vec<_> = (0..5)
            .map(|r| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.submit(r).await })
            })
            .collect();
        wait_queued(&writer, 4).await;
        writer.close();
        assert!(matches!(writer.submit(9).await, Err(GroupError::Closed)));
        drop(gate);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let writer = Arc::into_inner(writer).expect("the tasks are done");
        drop(writer);
        // Drop joined the thread, which dropped its commit function.
        assert_eq!(Arc::strong_count(&owned), 1);
        assert_eq!(
            groups.lock().unwrap().iter().map(Vec::len).sum::<usize>(),
            5
        );
    }
}
