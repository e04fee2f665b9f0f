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
//! Pipelining: a second call may be in flight beside the first, started as
//! soon as as many items wait as the call started last carried (so under a
//! steady load the callers settle into two groups of about equal size, one
//! answered while Redis runs the other's call, instead of one convoy that
//! leaves Redis idle while the sidecar answers it and reads its next
//! requests, and the sidecar idle while Redis runs them). With two callers
//! the second no longer waits for the first's call. Never more than
//! [`MAX_IN_FLIGHT`] calls per key, so a burst still becomes few calls.
//!
//! Order: queued callers are served first come, first served, and their
//! items keep their order inside the combined call, so what one caller
//! sends is never reordered or interleaved with another's. Two calls in
//! flight only ever hold callers that are concurrent (none has its answer
//! yet), so no caller can tell in which order they ran. A call that fails
//! fails every caller in it, each with its own copy of the error.
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

/// Most calls in flight per key (see the module docs on pipelining).
pub const MAX_IN_FLIGHT: usize = 2;

/// One queued caller.
struct Waiter<I, R> {
    items: Vec<I>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<R>>>,
}

/// Per key, the calls in flight and who waits for the next one; a key is
/// present while a call for it is in flight. foldhash rather than SipHash:
/// every call hashes its key three times (enter, hand over, leave).
pub struct Batcher<K, I, R> {
    queues: Mutex<Queues<K, I, R>>,
}

type Queues<K, I, R> = HashMap<K, InFlight<I, R>, foldhash::fast::RandomState>;

/// One key's calls in flight and its queue.
struct InFlight<I, R> {
    /// Calls in flight: 1 to [`MAX_IN_FLIGHT`].
    calls: usize,
    /// Items of the call started last: a second call starts once as many
    /// wait.
    last_call_items: usize,
    /// Callers waiting for a call, first come first.
    waiting: Vec<Waiter<I, R>>,
    /// Their items, all told.
    waiting_items: usize,
}

impl<I, R> InFlight<I, R> {
    /// A call ends with nobody waiting: one call fewer in flight. True when
    /// none is left (the key can go).
    fn end_call(&mut self) -> bool {
        self.calls -= 1;
        self.calls == 0
    }
}

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
    /// meanwhile (in a second call started at once when enough wait, see the
    /// module docs). `run` must answer one result per item, in order, and do
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
                Some(flight) => {
                    let (reply, answer) = oneshot::channel();
                    flight.waiting_items += items.len();
                    flight.waiting.push(Waiter {
                        items,
                        bytes,
                        reply,
                    });
                    let start = flight.calls < MAX_IN_FLIGHT
                        && flight.waiting_items >= flight.last_call_items;
                    if start {
                        flight.calls += 1;
                    }
                    Role::Follow { answer, start }
                }
                None => {
                    let flight = InFlight {
                        calls: 1,
                        last_call_items: items.len(),
                        waiting: Vec::new(),
                        waiting_items: 0,
                    };
                    queues.insert(key.clone(), flight);
                    Role::Lead(items)
                }
            }
        };
        match role {
            Role::Follow { answer, start } => {
                if start {
                    tokio::spawn(self.clone().drain(key.clone(), Arc::new(run)));
                }
                answer
                    .await
                    .unwrap_or_else(|_| Err(Error::Internal("a group commit was dropped".into())))
            }
            Role::Lead(items) => {
                let run = Arc::new(run);
                let (batcher, key, next) = (self.clone(), key.clone(), run.clone());
                let _handover = Handover(Some(Box::new(move || batcher.hand_over(key, next))));
                // Boxed: the call's future (the whole Redis round trip) is
                // large, and inline it would make every caller's future as
                // large, followers' too, copied whole at each move.
                Box::pin(run(items)).await
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues<K, I, R>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next combined call's waiters for `key` (up to the bounds),
    /// or ends the call that just ended when none wait (removing `key` when
    /// it was the last in flight).
    fn next_round(&self, key: &K) -> Vec<Waiter<I, R>> {
        let mut queues = self.lock();
        let Some(flight) = queues.get_mut(key) else {
            return Vec::new();
        };
        if flight.waiting.is_empty() {
            if flight.end_call() {
                queues.remove(key);
            }
            return Vec::new();
        }
        let (mut items, mut bytes, mut take) = (0, 0, 0);
        for w in &flight.waiting {
            if take > 0 && (items + w.items.len() > MAX_ITEMS || bytes + w.bytes > MAX_BYTES) {
                break;
            }
            items += w.items.len();
            bytes += w.bytes;
            take += 1;
        }
        flight.waiting_items -= items;
        flight.last_call_items = items;
        flight.waiting.drain(..take).collect()
    }

    /// After the first caller's call: whoever queued meanwhile is served by
    /// a task of its own; with nobody queued, the call simply ends.
    fn hand_over<F, Fut>(self: Arc<Self>, key: K, run: Arc<F>)
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>>> + Send + 'static,
    {
        {
            let mut queues = self.lock();
            if let Some(flight) = queues.get_mut(&key)
                && flight.waiting.is_empty()
            {
                if flight.end_call() {
                    queues.remove(&key);
                }
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
    /// A call is in flight: wait to be served by a later one, which this
    /// caller starts (`start`) when it may.
    Follow {
        answer: oneshot::Receiver<Result<Vec<R>>>,
        start: bool,
    },
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

    /// How many calls a test's "script" got, and how many ran at once.
    #[derive(Default)]
    struct Calls {
        started: AtomicUsize,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
    }

    /// A "script" that appends items to a log and answers each item's
    /// position, after yielding (once, or more for some sizes, so that calls
    /// in flight together end in either order) so that other callers queue
    /// up.
    fn logging_run(
        log: Arc<Mutex<Vec<(usize, u32)>>>,
        calls: Arc<Calls>,
    ) -> impl Fn(Vec<(usize, u32)>) -> Answer + Send + Sync + 'static {
        move |items| {
            let (log, calls) = (log.clone(), calls.clone());
            calls.started.fetch_add(1, Ordering::Relaxed);
            let running = calls.running.fetch_add(1, Ordering::Relaxed) + 1;
            calls.most_at_once.fetch_max(running, Ordering::Relaxed);
            Box::pin(async move {
                for _ in 0..1 + items.len() % 3 {
                    tokio::task::yield_now().await;
                }
                let mut log = log.lock().unwrap();
                let positions = items
                    .into_iter()
                    .map(|item| {
                        log.push(item);
                        log.len() - 1
                    })
                    .collect();
                calls.running.fetch_sub(1, Ordering::Relaxed);
                Ok(positions)
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
                let calls = Arc::new(Calls::default());
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
                assert!(calls.started.load(Ordering::Relaxed) <= sizes.len());
                let most = calls.most_at_once.load(Ordering::Relaxed);
                assert!(most <= MAX_IN_FLIGHT, "{most} calls in flight at once");
                assert!(batcher.lock().is_empty(), "no key left behind");
            });
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_calls_and_a_lone_caller_goes_at_once() {
        let batcher: Arc<Batcher<u8, (usize, u32), usize>> = Arc::new(Batcher::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Calls::default());
        let run = logging_run(log.clone(), calls.clone());
        let lone = batcher.submit(&1, vec![(0, 0)], 1, run).await.unwrap();
        assert_eq!(lone, [0]);
        assert_eq!(calls.started.load(Ordering::Relaxed), 1);

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
        let calls = calls.started.load(Ordering::Relaxed);
        assert!(calls < 51, "50 concurrent callers took {calls} calls");
    }

    /// One gate per call started, opened (taken) by the test.
    type Gates = Arc<Mutex<Vec<Option<oneshot::Sender<()>>>>>;

    /// Calls that each wait for the test to open their gate, then answer
    /// every item times ten.
    fn gated_run(gates: Gates) -> impl Fn(Vec<u32>) -> Answer32 + Send + Sync + 'static {
        move |items| {
            let (open, gate) = oneshot::channel();
            gates.lock().unwrap().push(Some(open));
            Box::pin(async move {
                let _ = gate.await;
                Ok(items.into_iter().map(|i| i * 10).collect())
            })
        }
    }

    type Answer32 = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u32>>> + Send>>;

    /// Lets spawned tasks run until `done` holds (or gives up: the caller's
    /// assertion then fails).
    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_second_call_starts_beside_the_first_and_a_third_waits_for_either() {
        let batcher: Arc<Batcher<u8, u32, u32>> = Arc::new(Batcher::default());
        let gates: Gates = Arc::default();
        let started = || gates.lock().unwrap().len();
        let open = |i: usize| drop(gates.lock().unwrap()[i].take());
        let submit = |item: u32| {
            let (batcher, run) = (batcher.clone(), gated_run(gates.clone()));
            tokio::spawn(async move { batcher.submit(&1, vec![item], 1, run).await })
        };
        let first = submit(1);
        settle(|| started() == 1).await;
        // As many items wait (one) as the call in flight carries: the
        // second caller's call starts now, not after the first's.
        let second = submit(2);
        settle(|| started() == 2).await;
        assert_eq!(
            started(),
            2,
            "the second call did not start beside the first"
        );
        // Two in flight: a third caller waits.
        let third = submit(3);
        settle(|| false).await;
        assert_eq!(started(), 2, "a third call started with two in flight");
        // The second call ends first: its caller has its answer, and the
        // third caller's call starts in its place.
        open(1);
        assert_eq!(second.await.unwrap().unwrap(), [20]);
        settle(|| started() == 3).await;
        assert_eq!(started(), 3);
        assert!(!first.is_finished() && !third.is_finished());
        open(0);
        open(2);
        assert_eq!(first.await.unwrap().unwrap(), [10]);
        assert_eq!(third.await.unwrap().unwrap(), [30]);
        assert!(batcher.lock().is_empty(), "no key left behind");
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
                    .submit(&7, vec![1, 1, 1], 3, move |items: Vec<u32>| {
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
