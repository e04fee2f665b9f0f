//! Group commit: callers that write to the same place (one topic's stream)
//! while a script call for it is in flight are sent together as the next
//! call, and each gets its own slice of the answer.
//!
//! No timer ever holds a caller back: a call starts at once when none is in
//! flight for its key; only callers that arrive *during* a call wait, and
//! they would have waited anyway (one connection, one script at a time on
//! the Redis side). Under concurrency this turns N script calls into about
//! one per round trip, which is where a sidecar's and Redis's per-call
//! costs go.
//!
//! Order: queued callers are served first come, first served, and their
//! items keep their order inside the combined call, so what one caller
//! sends is never reordered or interleaved with another's. A call that
//! fails fails every caller in it, each with its own copy of the error.
//!
//! Cancellation: the first caller runs its own call; if its future is
//! dropped mid-call (the client went away), a guard still hands the queue
//! to a task of its own, so queued callers never wait on a caller that is
//! gone. Combined calls run in that task and cannot be cancelled by any
//! one caller.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Most items and bytes one combined call carries; the rest waits for the
/// next call (so a burst never becomes one giant script call).
pub const MAX_ITEMS: usize = 1000;
/// See [`MAX_ITEMS`].
pub const MAX_BYTES: usize = 4 << 20;

/// One queued caller.
struct Waiter<I, R> {
    items: Vec<I>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<R>>>,
}

/// Queues of callers per key; a key is present while a call for it is in
/// flight (its queue holds who came meanwhile). foldhash rather than
/// SipHash: every call hashes its key three times (enter, hand over, leave).
pub struct Batcher<K, I, R> {
    queues: Mutex<Queues<K, I, R>>,
}

type Queues<K, I, R> = HashMap<K, Vec<Waiter<I, R>>, foldhash::fast::RandomState>;

impl<K, I, R> Default for Batcher<K, I, R> {
    fn default() -> Self {
        Self {
            queues: Mutex::new(HashMap::default()),
        }
    }
}

impl<K, I, R> Batcher<K, I, R>
where
    K: Hash + Eq + Clone + Send + 'static,
    I: Send + 'static,
    R: Send + 'static,
{
    /// Runs `items` (weighing `bytes`) through `run` for `key`, alone when
    /// nothing for `key` is in flight, else with the others that queue up
    /// meanwhile. `run` must answer one result per item, in order, and do
    /// the same for every caller of one key (queued callers are served by
    /// the first caller's `run`).
    pub async fn submit<F, Fut>(
        self: &Arc<Self>,
        key: &K,
        items: Vec<I>,
        bytes: usize,
        run: F,
    ) -> Result<Vec<R>>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>>> + Send + 'static,
    {
        let role = {
            let mut queues = self.lock();
            match queues.get_mut(key) {
                Some(queue) => {
                    let (reply, answer) = oneshot::channel();
                    queue.push(Waiter {
                        items,
                        bytes,
                        reply,
                    });
                    Role::Follow(answer)
                }
                None => {
                    queues.insert(key.clone(), Vec::new());
                    Role::Lead(items)
                }
            }
        };
        match role {
            Role::Follow(answer) => answer
                .await
                .unwrap_or_else(|_| Err(Error::Internal("a group commit was dropped".into()))),
            Role::Lead(items) => {
                let run = Arc::new(run);
                let (batcher, key, next) = (self.clone(), key.clone(), run.clone());
                let _handover = Handover(Some(Box::new(move || batcher.hand_over(key, next))));
                run(items).await
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues<K, I, R>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next combined call's waiters for `key` (up to the bounds),
    /// or removes `key` (nothing in flight any more) when none wait.
    fn next_round(&self, key: &K) -> Vec<Waiter<I, R>> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(key) else {
            return Vec::new();
        };
        if queue.is_empty() {
            queues.remove(key);
            return Vec::new();
        }
        let (mut items, mut bytes, mut take) = (0, 0, 0);
        for w in queue.iter() {
            if take > 0 && (items + w.items.len() > MAX_ITEMS || bytes + w.bytes > MAX_BYTES) {
                break;
            }
            items += w.items.len();
            bytes += w.bytes;
            take += 1;
        }
        queue.drain(..take).collect()
    }

    /// After the first caller's call: whoever queued meanwhile is served by
    /// a task of its own; with nobody queued, nothing is in flight any more.
    fn hand_over<F, Fut>(self: Arc<Self>, key: K, run: Arc<F>)
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>>> + Send + 'static,
    {
        {
            let mut queues = self.lock();
            if queues.get(&key).is_some_and(Vec::is_empty) {
                queues.remove(&key);
                return;
            }
        }
        tokio::spawn(self.drain(key, run));
    }

    /// Serves queued callers for `key`, round after round, until none wait.
    async fn drain<F, Fut>(self: Arc<Self>, key: K, run: Arc<F>)
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>>> + Send + 'static,
    {
        loop {
            let round = self.next_round(&key);
            if round.is_empty() {
                return;
            }
            let mut sizes = Vec::with_capacity(round.len());
            let mut replies = Vec::with_capacity(round.len());
            let mut items = Vec::new();
            for w in round {
                sizes.push(w.items.len());
                replies.push(w.reply);
                items.extend(w.items);
            }
            let expected = items.len();
            match run(items).await {
                Ok(results) if results.len() == expected => {
                    let mut results = results.into_iter();
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let _ = reply.send(Ok(results.by_ref().take(n).collect()));
                    }
                }
                Ok(results) => {
                    let detail = format!(
                        "a combined call answered {} results for {expected} items",
                        results.len()
                    );
                    for reply in replies {
                        let _ = reply.send(Err(Error::Internal(detail.clone())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.for_each_caller()));
                    }
                }
            }
        }
    }
}

/// What a caller of [`Batcher::submit`] does.
enum Role<I, R> {
    /// Nothing in flight for the key: run its own call now.
    Lead(Vec<I>),
    /// A call is in flight: wait to be served by the next one.
    Follow(oneshot::Receiver<Result<Vec<R>>>),
}

/// Runs its hand-over when dropped: when the first caller's own call ends,
/// or when its future is dropped mid-call.
struct Handover(Option<Box<dyn FnOnce() + Send>>);

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(hand_over) = self.0.take() {
            hand_over();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<Vec<usize>>> + Send>>;

    /// A "script" that appends items to a log and answers each item's
    /// position, after yielding so that other callers queue up.
    fn logging_run(
        log: Arc<Mutex<Vec<(usize, u32)>>>,
        calls: Arc<AtomicUsize>,
    ) -> impl Fn(Vec<(usize, u32)>) -> Answer + Send + Sync + 'static {
        move |items| {
            let log = log.clone();
            calls.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                tokio::task::yield_now().await;
                let mut log = log.lock().unwrap();
                Ok(items
                    .into_iter()
                    .map(|item| {
                        log.push(item);
                        log.len() - 1
                    })
                    .collect())
            })
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the interleaving, every caller gets exactly its own
        /// items' answers, in its own order, and no caller's items are
        /// split or mixed with another's in the log.
        #[test]
        fn callers_get_their_own_answers_in_order(sizes in proptest::collection::vec(1usize..20, 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let batcher: Arc<Batcher<u8, (usize, u32), usize>> = Arc::new(Batcher::default());
                let log = Arc::new(Mutex::new(Vec::new()));
                let calls = Arc::new(AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for (caller, &n) in sizes.iter().enumerate() {
                    let batcher = batcher.clone();
                    let run = logging_run(log.clone(), calls.clone());
                    tasks.push(tokio::spawn(async move {
                        let items: Vec<(usize, u32)> = (0..n as u32).map(|i| (caller, i)).collect();
                        let answer = batcher.submit(&0, items, n, run).await.unwrap();
                        (caller, answer)
                    }));
                }
                let log_snapshot = |answers: &[(usize, Vec<usize>)]| {
                    let log = log.lock().unwrap();
                    for (caller, positions) in answers {
                        assert_eq!(positions.len(), sizes[*caller]);
                        for (i, &p) in positions.iter().enumerate() {
                            assert_eq!(log[p], (*caller, i as u32), "caller {caller} item {i}");
                        }
                        // Contiguous: nobody else's item in between.
                        assert!(positions.windows(2).all(|w| w[1] == w[0] + 1));
                    }
                    assert_eq!(log.len(), sizes.iter().sum::<usize>());
                };
                let mut answers = Vec::new();
                for t in tasks {
                    answers.push(t.await.unwrap());
                }
                log_snapshot(&answers);
                assert!(calls.load(Ordering::Relaxed) <= sizes.len());
                assert!(batcher.lock().is_empty(), "no key left behind");
            });
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_calls_and_a_lone_caller_goes_at_once() {
        let batcher: Arc<Batcher<u8, (usize, u32), usize>> = Arc::new(Batcher::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let run = logging_run(log.clone(), calls.clone());
        let lone = batcher.submit(&1, vec![(0, 0)], 1, run).await.unwrap();
        assert_eq!(lone, [0]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let mut tasks = Vec::new();
        for caller in 1..=50 {
            let batcher = batcher.clone();
            let run = logging_run(log.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                batcher.submit(&1, vec![(caller, 0)], 1, run).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let calls = calls.load(Ordering::Relaxed);
        assert!(calls < 51, "50 concurrent callers took {calls} calls");
    }

    #[tokio::test]
    async fn a_failed_call_fails_each_of_its_callers_and_a_dropped_leader_hands_over() {
        let batcher: Arc<Batcher<u8, u32, u32>> = Arc::new(Batcher::default());
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let hold = Arc::new(tokio::sync::Mutex::new(Some(hold)));
        // The leader's call blocks until released; it is then dropped.
        let leader = {
            let batcher = batcher.clone();
            let hold = hold.clone();
            tokio::spawn(async move {
                batcher
                    .submit(&7, vec![1], 1, move |items: Vec<u32>| {
                        let hold = hold.clone();
                        async move {
                            if let Some(h) = hold.lock().await.take() {
                                let _ = h.await;
                            }
                            Err::<Vec<u32>, _>(Error::Unavailable {
                                kind: crate::error::RedisOutage::Unreachable,
                                source: None,
                            })
                            .map(|v: Vec<u32>| v.into_iter().chain(items).collect())
                        }
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let follower = {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                batcher
                    .submit(&7, vec![2, 3], 2, |items: Vec<u32>| async move {
                        Err::<Vec<u32>, _>(Error::Unavailable {
                            kind: crate::error::RedisOutage::Busy,
                            source: None,
                        })
                        .map(|v: Vec<u32>| v.into_iter().chain(items).collect())
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let _ = leader.await;
        drop(release);
        let answer = follower.await.unwrap();
        assert!(
            matches!(answer, Err(Error::Unavailable { .. })),
            "the follower is served after its leader went away: {answer:?}"
        );
        assert!(batcher.lock().is_empty());
    }
}
