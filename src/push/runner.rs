//! One subscription at work: a fetch loop that hands deliveries to request
//! tasks, at most `max_in_flight` at once; each request task keeps its
//! leases alive while the app works, then acks, nacks or rejects by the
//! answer; a prober that finds out when an unreachable app is back.
//!
//! An app that refuses connections has not seen the message, so that costs
//! no attempt: the request task gives the delivery back to the group (a
//! release: due at once, the same attempt next time) and the fetch loop
//! waits until the prober connects. Nacking it instead would count an
//! attempt per outage (nacks count attempts), and a few restarts of the app
//! would dead-letter messages it never saw; holding its lease in this
//! process for the outage would let a sidecar killed -9 meanwhile cost one
//! (a lapsed lease counts an attempt). Only when Redis does not take the
//! release does the task keep the lease alive and send again once the app
//! is back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::AbortHandle;

use super::Services;
use super::client::{Client, Failure};
use super::request::{self, Verdict};
use super::spec::Subscription;
use super::status::Status;
use crate::broker::delivery::{Delivery, FetchRequest, MAX_FETCH};
use crate::error::Error;
use crate::names::Consumer;
use crate::telemetry;
use crate::traces::{self, MessageSpan};
use crate::workflow::emit::{Emit, Steps};

/// Long-poll of one fetch round (ends at once on shutdown).
const FETCH_WAIT_MS: u64 = 5_000;
/// How often the group's lease length is read again.
const GROUP_REFRESH: Duration = Duration::from_secs(10);
/// First and longest pause of the backoff after an error, and of the probes.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Tries of an ack/nack/reject while Redis does not answer (the lease then
/// lapses and the message is delivered again: at least once).
const SETTLE_TRIES: u32 = 5;

/// Doubling pause, from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`].
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Self(BACKOFF_MIN)
    }

    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        now
    }
}

/// A request not yet settled, for the drain.
type Outstanding = (AbortHandle, Vec<String>, Arc<AtomicBool>);

/// One subscription's shared parts.
pub struct Runner {
    pub(super) spec: Subscription,
    services: Services,
    client: Client,
    pub(super) status: Arc<Status>,
    consumer: Consumer,
    source: String,
    pub(super) permits: Arc<Semaphore>,
    /// False while the app refuses connections.
    reachable: watch::Sender<bool>,
    /// Held by the fetch loop from each fetch until its deliveries are
    /// handed out (or, fetched while the app went down, given back): a
    /// request that finds the app down waits for it before it gives its
    /// deliveries back and shows `app_unreachable`, so by then the fetch
    /// loop holds nothing (requests that failed at the same time give
    /// theirs back as they finish).
    fetching: tokio::sync::Mutex<()>,
    lease_ms: AtomicU64,
    /// Requests not yet settled: their task, receipts and whether they may
    /// have reached the app (false while it refuses connections), for the drain.
    outstanding: Mutex<HashMap<u64, Outstanding>>,
    next_request: AtomicU64,
}

impl Runner {
    /// A runner for `spec`, fetching as a consumer of its own.
    pub fn new(spec: Subscription, services: Services) -> Arc<Self> {
        // One consumer name per sidecar process, so several sidecars pushing
        // the same group show up (and are pruned) separately.
        let prefix: String = spec.name.chars().take(110).collect();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let consumer = Consumer::parse(&format!("{prefix}-push-{}", &suffix[..8]))
            .unwrap_or_else(|_| Consumer::parse("push").expect("a valid name"));
        Arc::new(Self {
            client: Client::new(
                &spec.target,
                spec.max_in_flight as usize,
                Duration::from_millis(spec.timeout_ms),
            ),
            status: Arc::new(Status::new(&spec)),
            source: format!("/v1/tenants/{}/topics/{}", spec.tenant, spec.topic),
            permits: Arc::new(Semaphore::new(spec.max_in_flight as usize)),
            reachable: watch::Sender::new(true),
            fetching: tokio::sync::Mutex::new(()),
            lease_ms: AtomicU64::new(crate::broker::groups::DEFAULT_LEASE_MS),
            outstanding: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(0),
            consumer,
            spec,
            services,
        })
    }

    /// Reads the group's lease length, declaring the group when it is missing.
    async fn refresh_group(&self) -> Result<(), Error> {
        let s = &self.spec;
        let info = match self
            .services
            .broker
            .group_counts(&s.tenant, &s.topic, &s.group)
            .await
        {
            Err(Error::NotFound { .. }) => {
                self.services
                    .broker
                    .declare_group(&s.tenant, &s.topic, &s.group, &s.group_config)
                    .await?;
                tracing::info!(subscription = %s.name, group = %s.group, "declared the group");
                self.services
                    .broker
                    .group_counts(&s.tenant, &s.topic, &s.group)
                    .await?
            }
            other => other?,
        };
        self.lease_ms.store(info.lease_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Fetches and hands out deliveries until `shutdown`.
    pub async fn fetch_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut pause = Pause::new();
        let mut reachable = self.reachable.subscribe();
        let mut group_read: Option<tokio::time::Instant> = None;
        let batch = self.spec.batch as usize;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if group_read.is_none_or(|t| t.elapsed() >= GROUP_REFRESH) {
                match self.refresh_group().await {
                    Ok(()) => group_read = Some(tokio::time::Instant::now()),
                    Err(e) => {
                        if !self.back_off(&mut pause, &mut shutdown, e).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            // Nothing is fetched for an app that refuses connections.
            let up = tokio::select! {
                r = reachable.wait_for(|r| *r) => r.is_ok(),
                _ = shutdown.wait_for(|s| *s) => false,
            };
            if !up {
                return;
            }
            let mut permits: Vec<OwnedSemaphorePermit> = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => vec![p],
                    Err(_) => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            while let Ok(p) = self.permits.clone().try_acquire_owned() {
                permits.push(p);
            }
            let max = u32::try_from(permits.len() * batch)
                .unwrap_or(MAX_FETCH)
                .min(MAX_FETCH);
            let request = FetchRequest {
                consumer: self.consumer.clone(),
                max: Some(max),
                wait_ms: Some(FETCH_WAIT_MS),
                max_bytes: None,
                ack: None,
            };
            let s = &self.spec;
            // A fetch waiting when the app goes down stops waiting, so it
            // cannot take what the failed request gives back.
            let mut watching = self.reachable.subscribe();
            let app_down = async move {
                let _ = watching.wait_for(|r| !*r).await;
            };
            let fetching = self.fetching.lock().await;
            if !*self.reachable.borrow() {
                // Went down while this loop waited for a request slot.
                continue;
            }
            match self
                .services
                .broker
                .fetch_unless(&s.tenant, &s.topic, &s.group, &request, app_down)
                .await
            {
                Ok(deliveries) => {
                    pause = Pause::new();
                    self.status.set_flag(&self.status.backing_off, false);
                    // Taken as the app went down: give them back at once
                    // (a request task would only do the same, later).
                    let held: Vec<&Delivery> = deliveries.iter().collect();
                    let down = !*self.reachable.borrow();
                    if !(down && self.release_unsent(&held).await) {
                        self.spawn_all(deliveries, permits, batch).await;
                    }
                }
                Err(e) => {
                    if matches!(e, Error::NotFound { .. }) {
                        group_read = None;
                    }
                    drop((fetching, permits));
                    if !self.back_off(&mut pause, &mut shutdown, e).await {
                        return;
                    }
                }
            }
        }
    }

    /// Hands `deliveries` to request tasks, `batch` to a request, one permit each.
    async fn spawn_all(
        self: &Arc<Self>,
        deliveries: Vec<Delivery>,
        mut permits: Vec<OwnedSemaphorePermit>,
        batch: usize,
    ) {
        let mut deliveries = deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            let chunk: Vec<Delivery> = deliveries.by_ref().take(batch).collect();
            match permits.pop() {
                Some(permit) => self.clone().spawn_push(chunk, permit),
                // Cannot happen (max ≤ permits × batch); give it back rather than hold it.
                None => {
                    self.give_back(chunk_receipts(&chunk), Some("no request slot"))
                        .await
                }
            }
        }
    }

    /// Waits out an error of Redis or the group; false on shutdown.
    async fn back_off(
        &self,
        pause: &mut Pause,
        shutdown: &mut watch::Receiver<bool>,
        error: Error,
    ) -> bool {
        self.status.error(format!("fetch: {error}"));
        self.status.set_flag(&self.status.backing_off, true);
        tokio::select! {
            () = tokio::time::sleep(pause.next()) => true,
            _ = shutdown.wait_for(|s| *s) => false,
        }
    }

    /// Starts the request task of `deliveries`, holding `permit` until settled.
    fn spawn_push(self: Arc<Self>, deliveries: Vec<Delivery>, permit: OwnedSemaphorePermit) {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let receipts = chunk_receipts(&deliveries);
        // Registered before the task can finish, so its own removal never
        // comes first; the lock is held across the spawn for that.
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        let runner = self.clone();
        let sent = Arc::new(AtomicBool::new(false));
        let sending = sent.clone();
        let task = tokio::spawn(async move {
            runner.status.request(true);
            Status::add(&runner.status.delivered, deliveries.len());
            let lost = Mutex::new(HashSet::new());
            tokio::select! {
                () = runner.deliver(&deliveries, &lost, &sending) => {}
                () = runner.keep_alive(&deliveries, &lost) => {}
            }
            runner.status.request(false);
            runner
                .outstanding
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(permit);
        });
        outstanding.insert(id, (task.abort_handle(), receipts, sent));
    }

    /// Renews the leases of `deliveries` every half lease, for as long as the
    /// request runs; a receipt found lost is not sent (again).
    async fn keep_alive(&self, deliveries: &[Delivery], lost: &Mutex<HashSet<String>>) {
        let s = &self.spec;
        // The group's lease may have been lowered since it was last read:
        // the first renewal comes by the leases as granted (their expiry, by
        // this host's clock), later ones by the lease each extend reports.
        let mut half =
            (self.lease_ms.load(Ordering::Relaxed) / 2).min(first_half_lease(deliveries));
        loop {
            tokio::time::sleep(Duration::from_millis(half.max(50))).await;
            let receipts: Vec<String> = {
                let lost = lost.lock().unwrap_or_else(|p| p.into_inner());
                chunk_receipts(deliveries)
                    .into_iter()
                    .filter(|r| !lost.contains(r))
                    .collect()
            };
            if receipts.is_empty() {
                return std::future::pending().await;
            }
            match self
                .services
                .broker
                .extend(&s.tenant, &s.topic, &s.group, &receipts, None)
                .await
            {
                Ok(outcome) => {
                    if outcome.group_lease_ms > 0 {
                        self.lease_ms
                            .store(outcome.group_lease_ms, Ordering::Relaxed);
                    }
                    if !outcome.lease_lost.is_empty() {
                        self.status.error(format!(
                            "lease lost for {} message(s) in flight",
                            outcome.lease_lost.len()
                        ));
                        lost.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(outcome.lease_lost);
                    }
                }
                Err(e) => self.status.error(format!("extend: {e}")),
            }
            half = self.lease_ms.load(Ordering::Relaxed) / 2;
        }
    }

    /// Sends `deliveries` until the app answers (or the leases are lost),
    /// then settles them by the answer.
    /// `sent` is true while the request may have reached the app.
    async fn deliver(
        &self,
        deliveries: &[Delivery],
        lost: &Mutex<HashSet<String>>,
        sent: &AtomicBool,
    ) {
        let mut reachable = self.reachable.subscribe();
        let labels = self.status.labels();
        let batch = self.spec.batch > 1;
        loop {
            // Fetched while the app went down (a fetch already waiting
            // then): give them back rather than hold them for the outage.
            let down = !*reachable.borrow();
            if down && self.release_unsent(&live(deliveries, lost)).await {
                return;
            }
            if reachable.wait_for(|r| *r).await.is_err() {
                return;
            }
            let live = live(deliveries, lost);
            if live.is_empty() {
                return;
            }
            let mut request = request::build(self.client.uri(), &self.source, &live, batch);
            let mut span = push_span(&self.spec, &live);
            if let Some(traceparent) = span.traceparent()
                && let Ok(value) = traceparent.parse()
            {
                request.headers_mut().insert(traces::TRACEPARENT, value);
            }
            let started = tokio::time::Instant::now();
            sent.store(true, Ordering::SeqCst);
            let result = self
                .client
                .send(request, Duration::from_millis(self.spec.timeout_ms))
                .await;
            let outcome = match &result {
                Err(Failure::Unreachable(_)) => "unreachable",
                Err(Failure::Timeout) => "timeout",
                Err(Failure::Broken(_)) => "broken",
                Ok(answer) => match request::judge(answer, batch) {
                    Verdict::Ack | Verdict::AckEmit(_) => "acked",
                    Verdict::TakenOver => "taken_over",
                    Verdict::Reject(_) => "rejected",
                    Verdict::Nack { .. } => "nacked",
                },
            };
            span.set(traces::attr::OUTCOME, outcome);
            let mut outcome_labels = labels.to_vec();
            outcome_labels.push(metrics::Label::new("outcome", outcome));
            metrics::counter!(telemetry::PUSH_REQUESTS, outcome_labels).increment(1);
            let verdict = match result {
                Err(Failure::Unreachable(e)) => {
                    // Not an attempt. Stop fetching first, then give the
                    // deliveries back (see `release_unsent`) before the
                    // subscription shows `app_unreachable`.
                    sent.store(false, Ordering::SeqCst);
                    self.reachable.send_replace(false);
                    // The fetch loop has stopped (and given back anything
                    // its last fetch took) once the lock was ours: from
                    // then on it checks the app under the lock first.
                    drop(self.fetching.lock().await);
                    let released = self.release_unsent(&live).await;
                    self.status.error(format!("app unreachable: {e}"));
                    // Shown only while the app is still down, decided
                    // under the watch's lock: the prober, which alone
                    // clears it, may have found the app back meanwhile.
                    self.reachable.send_if_modified(|up| {
                        if !*up {
                            self.status.set_flag(&self.status.unreachable, true);
                        }
                        false
                    });
                    if released {
                        return;
                    }
                    continue;
                }
                Err(Failure::Timeout) => Verdict::Nack {
                    delay_ms: None,
                    error: format!("timeout after {} ms", self.spec.timeout_ms),
                },
                Err(Failure::Broken(e)) => Verdict::Nack {
                    delay_ms: None,
                    error: format!("connection broken: {e}"),
                },
                Ok(answer) => request::judge(&answer, batch),
            };
            metrics::histogram!(telemetry::PUSH_DURATION, labels.to_vec())
                .record(started.elapsed().as_secs_f64());
            let receipts: Vec<String> = live.iter().map(|d| d.receipt.clone()).collect();
            // The settling spans (ack, emit, nack) nest under the push.
            let caller = span.traceparent();
            traces::with_caller(caller.as_deref(), self.settle(&receipts, verdict)).await;
            return;
        }
    }

    /// Acks, nacks or rejects `receipts` as `verdict` says, retrying a few
    /// times while Redis does not answer.
    async fn settle(&self, receipts: &[String], mut verdict: Verdict) {
        let s = &self.spec;
        let broker = &self.services.broker;
        let mut pause = Pause::new();
        let mut tries = 0;
        while tries < SETTLE_TRIES {
            if let Verdict::Reject(e) | Verdict::Nack { error: e, .. } = &verdict {
                self.status.error(e.clone());
            }
            let done = match &verdict {
                Verdict::TakenOver => return,
                Verdict::Ack => broker
                    .ack(&s.tenant, &s.topic, &s.group, receipts)
                    .await
                    .map(|o| Status::add(&self.status.acked, o.acked.len())),
                Verdict::AckEmit(emits) => {
                    match self.ack_with_emit(receipts, emits.clone()).await {
                        Ok(acked) => {
                            Status::add(&self.status.acked, acked);
                            Ok(())
                        }
                        Err(Error::Conflict { detail, .. }) => {
                            self.status.error(detail);
                            return;
                        }
                        Err(e @ (Error::Unavailable { .. } | Error::Redis(_))) => Err(e),
                        // The next step cannot be published: the message
                        // stays unacked and comes back (after the quota's
                        // delay, or the group's backoff for a bad emit).
                        Err(e) => {
                            verdict = Verdict::Nack {
                                delay_ms: match &e {
                                    Error::TooManyRequests { retry_after, .. } => {
                                        Some(retry_after.as_millis().try_into().unwrap_or(u64::MAX))
                                    }
                                    _ => None,
                                },
                                error: format!("emit refused: {e}"),
                            };
                            continue;
                        }
                    }
                }
                Verdict::Reject(error) => broker
                    .reject(&s.tenant, &s.topic, &s.group, receipts, Some(error))
                    .await
                    .map(|o| Status::add(&self.status.rejected, o.rejected.len())),
                Verdict::Nack { delay_ms, error } => broker
                    .nack(
                        &s.tenant,
                        &s.topic,
                        &s.group,
                        receipts,
                        *delay_ms,
                        Some(error),
                    )
                    .await
                    .map(|o| {
                        Status::add(&self.status.nacked, o.nacked.len() + o.dead_lettered.len())
                    }),
            };
            match done {
                Ok(()) => return,
                Err(e @ (Error::Unavailable { .. } | Error::Redis(_))) => {
                    self.status.error(format!("settle: {e}"));
                    tries += 1;
                    tokio::time::sleep(pause.next()).await;
                }
                // The group or topic is gone (deleted while the app
                // worked): trying again cannot help, and the request would
                // hold its slot for nothing.
                Err(e) => {
                    self.status.error(format!("settle: {e}"));
                    return;
                }
            }
        }
    }

    /// Acks the one delivery of `receipts` with `emits` (the app's 2xx
    /// answer `{"emit": […]}`); how many were acked.
    async fn ack_with_emit(&self, receipts: &[String], emits: Vec<Emit>) -> Result<usize, Error> {
        let s = &self.spec;
        let steps = Steps {
            broker: &self.services.broker,
            coord: &self.services.coord,
            channels: &self.services.channels,
        };
        let outcome = steps
            .ack_with_emit((&s.tenant, &s.topic, &s.group), receipts, emits)
            .await?;
        Ok(outcome.acked.len())
    }

    /// Gives back deliveries the app never got (it refuses connections):
    /// due at once, with no attempt counted; true when Redis took them
    /// (false: the caller keeps their leases alive and sends them once the
    /// app is back, as before).
    ///
    /// Held instead for the whole outage, they would live in this process
    /// only: a sidecar killed -9 meanwhile leaves their leases to lapse,
    /// and a lapsed lease counts an attempt, so a few kills during an
    /// outage dead-lettered messages the app never saw. Given back, they
    /// wait in Redis (for this sidecar once the app is back, or for any
    /// other consumer of the group) and a kill costs nothing.
    async fn release_unsent(&self, live: &[&Delivery]) -> bool {
        self.release(live.iter().map(|d| d.receipt.clone()).collect())
            .await
    }

    /// Gives `receipts` back without an attempt (see [`Self::release_unsent`]);
    /// true when Redis took them (false: the status shows why).
    async fn release(&self, receipts: Vec<String>) -> bool {
        if receipts.is_empty() {
            return true;
        }
        let s = &self.spec;
        let released = self
            .services
            .broker
            .release(&s.tenant, &s.topic, &s.group, &receipts)
            .await;
        if let Err(e) = &released {
            self.status
                .error(format!("giving undelivered messages back: {e}"));
        }
        released.is_ok()
    }

    /// Gives `receipts` back to the group, due at once. With `why` (the
    /// drain's end, or no slot to push them) it is a nack with that error:
    /// it counts an attempt, and in the status's `nacked`. Without, the app
    /// never got them (it refused connections): released, costing no
    /// attempt, as while the sidecar runs, and not counted as nacked.
    pub(super) async fn give_back(&self, receipts: Vec<String>, why: Option<&str>) {
        let Some(why) = why else {
            self.release(receipts).await;
            return;
        };
        if receipts.is_empty() {
            return;
        }
        let s = &self.spec;
        let nacked = self
            .services
            .broker
            .nack(&s.tenant, &s.topic, &s.group, &receipts, Some(0), Some(why))
            .await;
        match nacked {
            Ok(o) => Status::add(&self.status.nacked, o.nacked.len() + o.dead_lettered.len()),
            Err(e) => self.status.error(format!("giving deliveries back: {e}")),
        }
    }

    /// Stops the requests still running and returns their receipts: those
    /// that may have reached the app, and those that cannot have (it
    /// refused connections).
    pub(super) fn abort_outstanding(&self) -> (Vec<String>, Vec<String>) {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        let (mut sent, mut unsent) = (Vec::new(), Vec::new());
        for (_, (task, receipts, was_sent)) in outstanding.drain() {
            task.abort();
            if was_sent.load(Ordering::SeqCst) {
                sent.extend(receipts);
            } else {
                unsent.extend(receipts);
            }
        }
        (sent, unsent)
    }

    /// Probes an unreachable app with backoff until it accepts connections,
    /// and refreshes the gauges now and then. Runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        let mut reachable = self.reachable.subscribe();
        loop {
            self.status.export_gauges();
            let down = tokio::time::timeout(Duration::from_secs(60), reachable.wait_for(|r| !*r));
            match down.await {
                Err(_) => continue,
                Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
            let mut pause = Pause::new();
            loop {
                tokio::time::sleep(pause.next()).await;
                if self.client.probe().await {
                    break;
                }
            }
            tracing::info!(subscription = %self.spec.name, "the app accepts connections again");
            self.reachable.send_modify(|up| {
                *up = true;
                self.status.set_flag(&self.status.unreachable, false);
            });
        }
    }
}

/// Half the time left on the shortest lease of `deliveries`, ms (by this
/// host's clock; `u64::MAX` when there are none).
fn first_half_lease(deliveries: &[Delivery]) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    deliveries
        .iter()
        .map(|d| d.lease_expires_at.saturating_sub(now) / 2)
        .min()
        .unwrap_or(u64::MAX)
}

/// The deliveries of `deliveries` whose lease is not known lost.
fn live<'d>(deliveries: &'d [Delivery], lost: &Mutex<HashSet<String>>) -> Vec<&'d Delivery> {
    let lost = lost.lock().unwrap_or_else(|p| p.into_inner());
    deliveries
        .iter()
        .filter(|d| !lost.contains(&d.receipt))
        .collect()
}

fn chunk_receipts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.receipt.clone()).collect()
}

/// The `push` span of one request, under its (first) delivery's context.
fn push_span(spec: &Subscription, live: &[&Delivery]) -> MessageSpan {
    if !traces::enabled() {
        return MessageSpan::start(traces::Step::Push, None);
    }
    let first = live.first().map(|d| (&d.message, d.attempt));
    let parent = first.and_then(|(m, _)| traces::of_headers(&m.headers));
    let mut span = MessageSpan::on(
        traces::Step::Push,
        parent.as_deref(),
        &spec.tenant,
        &spec.topic,
        Some(&spec.group),
    );
    span.set(traces::attr::SUBSCRIPTION, &spec.name);
    if let Some((m, attempt)) = first {
        span.set(traces::attr::MESSAGE_ID, &m.id);
        span.set_int(
            traces::attr::ATTEMPT,
            i64::try_from(attempt).unwrap_or(i64::MAX),
        );
    }
    span.set_int(
        "streamcar.batch",
        i64::try_from(live.len()).unwrap_or(i64::MAX),
    );
    span
}
