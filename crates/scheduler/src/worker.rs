//! The dispatcher: claims due occurrences in bounded batches, runs their actions concurrently
//! (bounded), records each execution's status, timing, result or error, and sleeps until the
//! nearest `next_run_at` or a change notification — never a busy poll. It beats a heartbeat and
//! periodically marks executions of dead instances `interrupted`.

use crate::actions::{ActionPorts, RetryPolicy};
use crate::error::SchedulerError;
use crate::settings::SchedulerSettings;
use crate::timing::Planner;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use gathering_domain::Clock;
use gathering_domain::agents::AgentRunner;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::{ListenerEvent, Notifier};
use gathering_domain::scheduler::{
    ClaimedExecution, ExecutionFinish, ExecutionStatus, PipelineLauncher,
    SCHEDULES_CHANGED_CHANNEL, ScheduleRepository,
};
use gathering_domain::tools::ToolInvoker;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Tuning of one scheduler instance.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Identifies this instance in executions and heartbeats; a new one per process start.
    pub instance_id: Uuid,
    /// Due schedules claimed per transaction.
    pub batch_size: u32,
    /// Actions running at once on this instance.
    pub max_concurrency: usize,
    /// Longest sleep between ticks (a safety net for lost notifications).
    pub max_sleep: Duration,
    /// Shortest sleep when something is due but could not be claimed (locked elsewhere).
    pub min_sleep: Duration,
    pub heartbeat_every: Duration,
    /// An instance silent this long is dead: its running executions become `interrupted`.
    pub stale_after: Duration,
    /// How late an occurrence may start and still count as on time (not missed).
    pub misfire_grace: Duration,
    /// How long a graceful stop waits for running actions.
    pub shutdown_timeout: Duration,
    pub retry: RetryPolicy,
    /// The process-wide circuit-breaker registry; `None`: one of this scheduler's own.
    pub breakers: Option<Arc<gathering_resilience::Breakers>>,
}

/// The configurable values come from [`SchedulerSettings::default`] (the one source).
impl Default for SchedulerConfig {
    fn default() -> Self {
        let s = SchedulerSettings::default();
        Self {
            instance_id: Uuid::now_v7(),
            batch_size: s.batch_size,
            max_concurrency: s.max_concurrent,
            max_sleep: Duration::from_secs(30),
            min_sleep: Duration::from_millis(100),
            heartbeat_every: Duration::from_secs(s.heartbeat_secs),
            stale_after: Duration::from_secs(s.stale_after_secs),
            misfire_grace: Duration::from_secs(s.misfire_grace_secs),
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            breakers: None,
        }
    }
}

/// The ports the scheduler runs on.
#[derive(Clone)]
pub struct SchedulerDeps {
    pub repo: Arc<dyn ScheduleRepository>,
    pub tools: Arc<dyn ToolInvoker>,
    /// `None`: `run_task` executions fail with "no agent runner configured".
    pub agents: Option<Arc<dyn AgentRunner>>,
    /// `None`: `execute_pipeline` executions fail with "no pipeline service configured".
    pub pipelines: Option<Arc<dyn PipelineLauncher>>,
    pub events: Arc<dyn EventPublisher>,
    /// Announces schedule changes to other instances; `None` on a single instance.
    pub notifier: Option<Arc<dyn Notifier>>,
    pub clock: Arc<dyn Clock>,
}

/// What one claim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Due schedules examined.
    pub examined: usize,
    /// Executions started.
    pub started: usize,
    /// Occurrences recorded as `skipped` (overlap).
    pub skipped: usize,
    /// Nothing was claimed because every action slot is busy.
    pub saturated: bool,
    /// The claim returned a full batch: more may be due right now.
    pub more: bool,
}

struct Inner {
    repo: Arc<dyn ScheduleRepository>,
    ports: ActionPorts,
    events: Arc<dyn EventPublisher>,
    notifier: Option<Arc<dyn Notifier>>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    planner: Planner,
    permits: Arc<Semaphore>,
    wake: Notify,
    /// Finished executions waiting to be recorded (at most one per running action).
    pending: Mutex<Vec<Finished>>,
    flush: tokio::sync::Mutex<()>,
}

/// Results recorded per statement.
const FLUSH_BATCH: usize = 500;

/// Waits between attempts to record a batch of results (the shared backoff policy).
const RECORD_BACKOFF: gathering_resilience::Backoff = gathering_resilience::Backoff {
    initial: Duration::from_millis(200),
    multiplier: 2.0,
    max: Duration::from_secs(2),
    jitter: true,
    max_hint: Duration::ZERO,
};

/// The error recorded for an action whose code panicked. The panic payload is not recorded: it
/// may hold arbitrary internals (the panic hook still reports it on stderr).
const PANICKED_ERROR: &str = "action panicked";

/// The error recorded when an action finished but its result could not be written.
const UNRECORDABLE_ERROR: &str = "the action finished but its result could not be recorded";

struct Finished {
    owner_id: Uuid,
    schedule_id: Uuid,
    scheduled_for: DateTime<Utc>,
    duration_ms: u64,
    finish: ExecutionFinish,
    /// The action slot, held until the result is recorded.
    _permit: OwnedSemaphorePermit,
}

/// One scheduler instance. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Scheduler {
    pub fn new(deps: SchedulerDeps, mut config: SchedulerConfig) -> Self {
        config.batch_size = config.batch_size.max(1);
        config.max_concurrency = config.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        let planner = Planner::new(chrono_dur(config.misfire_grace));
        Self {
            inner: Arc::new(Inner {
                repo: deps.repo,
                ports: ActionPorts {
                    tools: deps.tools,
                    agents: deps.agents,
                    pipelines: deps.pipelines,
                    retry: config.retry,
                    breakers: config.breakers.clone().unwrap_or_else(|| {
                        gathering_resilience::Breakers::new(
                            Default::default(),
                            Arc::clone(&deps.clock),
                        )
                    }),
                },
                events: deps.events,
                notifier: deps.notifier,
                clock: deps.clock,
                permits: Arc::new(Semaphore::new(config.max_concurrency)),
                planner,
                config,
                wake: Notify::new(),
                pending: Mutex::new(Vec::new()),
                flush: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn instance_id(&self) -> Uuid {
        self.inner.config.instance_id
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    pub(crate) fn repo(&self) -> &Arc<dyn ScheduleRepository> {
        &self.inner.repo
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Makes the loop re-check what is due now (local changes).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Tells every instance (and this one) that schedules changed.
    pub(crate) async fn announce_change(&self, schedule_id: Uuid) {
        self.wake();
        if let Some(n) = &self.inner.notifier
            && let Err(e) = n
                .notify(SCHEDULES_CHANGED_CHANNEL, &schedule_id.to_string())
                .await
        {
            tracing::warn!(error = %e, "cannot announce schedule change; other instances catch up within max_sleep");
        }
    }

    /// Claims one bounded batch and starts its actions (without waiting for them).
    pub async fn tick_once(&self) -> Result<TickReport, SchedulerError> {
        let inner = &self.inner;
        let free = inner.permits.available_permits();
        if free == 0 {
            return Ok(TickReport {
                saturated: true,
                ..TickReport::default()
            });
        }
        let batch = inner
            .config
            .batch_size
            .min(u32::try_from(free).unwrap_or(u32::MAX));
        let now = inner.clock.now();
        let outcome = inner
            .repo
            .claim_due(now, batch, inner.config.instance_id, &inner.planner)
            .await?;
        let report = TickReport {
            examined: outcome.examined,
            started: outcome.to_run.len(),
            skipped: outcome.skipped.len(),
            saturated: false,
            more: outcome.examined >= batch as usize,
        };
        for e in &outcome.skipped {
            tracing::info!(schedule_id = %e.schedule_id, scheduled_for = %e.scheduled_for, "occurrence skipped: previous execution still running");
        }
        // The owners of skipped occurrences are not loaded; their executions are listed by the API.
        for claimed in outcome.to_run {
            self.start(claimed);
        }
        Ok(report)
    }

    /// Starts an already-recorded `running` execution on this instance.
    /// Never waits: the action waits for a free slot in its own task.
    pub(crate) fn start(&self, claimed: ClaimedExecution) {
        let this = self.clone();
        // Taken synchronously when free, so the next claim sees the slot as busy.
        let ready = self.inner.permits.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            let permit = match ready {
                Some(p) => Ok(p),
                None => this.inner.permits.clone().acquire_owned().await,
            };
            let permit = match permit {
                Ok(p) => p,
                Err(_) => {
                    tracing::error!("scheduler semaphore closed; execution left for recovery");
                    return;
                }
            };
            // The permit is released once the result is recorded (bounds the result queue).
            this.run_execution(claimed, permit).await;
        });
    }

    async fn run_execution(&self, claimed: ClaimedExecution, permit: OwnedSemaphorePermit) {
        let ClaimedExecution {
            execution,
            schedule,
        } = claimed;
        let started = Instant::now();
        // A panicking action must still end its execution; otherwise the row stays `running` on
        // this live instance (and, with overlap=skip, every later occurrence is skipped).
        let outcome = match AssertUnwindSafe(self.inner.ports.perform(&schedule, &execution))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(_payload) => {
                tracing::error!(
                    schedule_id = %schedule.id,
                    execution_id = %execution.id,
                    "scheduled action panicked; execution recorded as failed"
                );
                Err(PANICKED_ERROR.to_owned())
            }
        };
        let finished_at = self.inner.clock.now();
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let finish = match outcome {
            Ok(o) => ExecutionFinish {
                execution_id: execution.id,
                status: ExecutionStatus::Succeeded,
                result: Some(o.result),
                error: None,
                run_id: o.run_id,
                finished_at,
            },
            Err(e) => ExecutionFinish {
                execution_id: execution.id,
                status: ExecutionStatus::Failed,
                result: None,
                error: Some(e),
                run_id: None,
                finished_at,
            },
        };
        tracing::info!(
            schedule_id = %schedule.id,
            execution_id = %execution.id,
            status = finish.status.as_str(),
            duration_ms,
            error = finish.error.as_deref().unwrap_or(""),
            "schedule executed"
        );
        self.record(Finished {
            owner_id: schedule.owner_id,
            schedule_id: schedule.id,
            scheduled_for: execution.scheduled_for,
            duration_ms,
            finish,
            _permit: permit,
        })
        .await;
    }

    /// Group commit: results queue up, and whichever task finds no flush in progress writes
    /// everything queued in one statement (then publishes the events of what it recorded).
    async fn record(&self, f: Finished) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
        loop {
            let Ok(guard) = self.inner.flush.try_lock() else {
                // The running flush (or its re-check after releasing) takes ours too.
                return;
            };
            let batch: Vec<Finished> = {
                let mut q = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(FLUSH_BATCH);
                q.drain(..n).collect()
            };
            if !batch.is_empty() {
                self.flush(&batch).await;
                drop(batch);
                self.wake();
            }
            drop(guard);
            if self
                .inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
        }
    }

    async fn flush(&self, batch: &[Finished]) {
        let rows: Vec<ExecutionFinish> = batch.iter().map(|f| f.finish.clone()).collect();
        for attempt in 0..3u32 {
            match self.inner.repo.finish_executions(&rows).await {
                Ok(recorded) => {
                    let recorded: std::collections::HashSet<Uuid> = recorded.into_iter().collect();
                    for f in batch {
                        if recorded.contains(&f.finish.execution_id) {
                            self.publish(f);
                        } else {
                            tracing::warn!(execution_id = %f.finish.execution_id, "execution was no longer running (marked interrupted); result not recorded");
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(count = rows.len(), attempt, error = %e, "cannot record execution results; retrying");
                    tokio::time::sleep(RECORD_BACKOFF.delay(attempt + 1)).await;
                }
            }
        }
        tracing::error!(
            count = rows.len(),
            "cannot record a batch of execution results; recording them one by one"
        );
        for f in batch {
            self.record_alone(f).await;
        }
    }

    /// Last resort for one result of a batch that could not be written (one bad row, e.g. a
    /// result PostgreSQL refuses, must not lose the others): the result as is, else `failed`
    /// without it. If even that fails the row stays `running` until this instance stops; then
    /// recovery marks it `interrupted`.
    async fn record_alone(&self, f: &Finished) {
        let fin = &f.finish;
        let repo = &self.inner.repo;
        let first = repo
            .finish_execution(
                fin.execution_id,
                fin.status,
                fin.result.clone(),
                fin.error.clone(),
                fin.run_id,
                fin.finished_at,
            )
            .await;
        let recorded = match first {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(execution_id = %fin.execution_id, error = %e, "cannot record the execution result; recording it as failed without its result");
                match repo
                    .finish_execution(
                        fin.execution_id,
                        ExecutionStatus::Failed,
                        None,
                        Some(UNRECORDABLE_ERROR.to_owned()),
                        fin.run_id,
                        fin.finished_at,
                    )
                    .await
                {
                    Ok(recorded) => {
                        if recorded {
                            let failed = ExecutionFinish {
                                status: ExecutionStatus::Failed,
                                result: None,
                                error: Some(UNRECORDABLE_ERROR.to_owned()),
                                ..fin.clone()
                            };
                            self.publish_finish(f, &failed);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::error!(
                            execution_id = %fin.execution_id,
                            schedule_id = %f.schedule_id,
                            error = %e,
                            "execution result not recorded; the execution stays running until this instance stops, then it is marked interrupted"
                        );
                        return;
                    }
                }
            }
        };
        if recorded {
            self.publish(f);
        } else {
            tracing::warn!(execution_id = %fin.execution_id, "execution was no longer running (marked interrupted); result not recorded");
        }
    }

    fn publish(&self, f: &Finished) {
        self.publish_finish(f, &f.finish);
    }

    fn publish_finish(&self, f: &Finished, finish: &ExecutionFinish) {
        self.inner.events.publish(Event::new(
            f.owner_id,
            "schedule.executed",
            json!({
                "schedule_id": f.schedule_id,
                "execution_id": finish.execution_id,
                "scheduled_for": f.scheduled_for,
                "status": finish.status.as_str(),
                "duration_ms": f.duration_ms,
                "run_id": finish.run_id,
                "error": finish.error,
            }),
        ));
    }

    /// Waits until no action of this instance is running.
    pub async fn wait_idle(&self) {
        let n = u32::try_from(self.inner.config.max_concurrency).unwrap_or(u32::MAX);
        if let Ok(all) = self.inner.permits.acquire_many(n).await {
            drop(all);
        }
    }

    /// Claims and runs until nothing is due and every started action has finished (tests).
    pub async fn run_until_idle(&self) -> Result<TickReport, SchedulerError> {
        let mut total = TickReport::default();
        loop {
            let r = self.tick_once().await?;
            total.examined += r.examined;
            total.started += r.started;
            total.skipped += r.skipped;
            self.wait_idle().await;
            if r.examined == 0 && !r.saturated {
                return Ok(total);
            }
        }
    }

    pub async fn heartbeat(&self) -> Result<(), SchedulerError> {
        let now = self.inner.clock.now();
        self.inner
            .repo
            .heartbeat(self.inner.config.instance_id, now)
            .await?;
        Ok(())
    }

    /// Marks executions of instances that stopped beating `interrupted`.
    pub async fn recover(&self) -> Result<u64, SchedulerError> {
        let now = self.inner.clock.now();
        let n = self
            .inner
            .repo
            .recover(now, chrono_dur(self.inner.config.stale_after))
            .await?;
        if n > 0 {
            tracing::warn!(
                count = n,
                "executions of stopped instances marked interrupted"
            );
        }
        Ok(n)
    }

    /// Runs the loop until `cancel`; then waits up to `shutdown_timeout` for running actions.
    /// `listener` delivers `gathering_schedules_changed` notifications from other instances.
    pub fn spawn(
        &self,
        listener: Option<broadcast::Receiver<ListenerEvent>>,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run(listener, cancel).await })
    }

    async fn run(
        &self,
        mut listener: Option<broadcast::Receiver<ListenerEvent>>,
        cancel: CancellationToken,
    ) {
        let cfg = self.inner.config.clone();
        tracing::info!(instance_id = %cfg.instance_id, "scheduler started");
        let mut last_beat: Option<Instant> = None;
        let mut last_recover: Option<Instant> = None;
        while !cancel.is_cancelled() {
            if last_beat.is_none_or(|t| t.elapsed() >= cfg.heartbeat_every) {
                match self.heartbeat().await {
                    Ok(()) => last_beat = Some(Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "scheduler heartbeat failed"),
                }
            }
            // Recovery runs after our own heartbeat, so it never interrupts our executions.
            if last_beat.is_some()
                && last_recover.is_none_or(|t| t.elapsed() >= cfg.heartbeat_every)
            {
                match self.recover().await {
                    Ok(_) => last_recover = Some(Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "scheduler recovery failed"),
                }
            }

            let mut full = false;
            let mut saturated = false;
            let mut failed = false;
            loop {
                match self.tick_once().await {
                    Ok(r) if r.saturated => {
                        saturated = true;
                        break;
                    }
                    Ok(r) if r.more => {
                        full = true;
                        if cancel.is_cancelled() {
                            break;
                        }
                    }
                    Ok(_) => {
                        full = false;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler claim failed");
                        failed = true;
                        break;
                    }
                }
            }

            let mut sleep = cfg.max_sleep;
            if !saturated && !failed {
                match self.inner.repo.next_due().await {
                    Ok(Some(due)) => {
                        let until = (due - self.inner.clock.now())
                            .to_std()
                            .unwrap_or(Duration::ZERO);
                        sleep = sleep.min(until.max(cfg.min_sleep));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler cannot read the next due time");
                        sleep = sleep.min(Duration::from_secs(1));
                    }
                }
            } else if failed {
                sleep = sleep.min(Duration::from_secs(1));
            }
            if full && !saturated {
                sleep = Duration::ZERO;
            }
            sleep = sleep.min(cfg.heartbeat_every);

            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.wake.notified() => {}
                w = next_wake(&mut listener) => {
                    if w == ListenerWake::Closed {
                        listener = None;
                    }
                }
            }
        }

        tracing::info!(instance_id = %cfg.instance_id, "scheduler stopping; waiting for running actions");
        match tokio::time::timeout(cfg.shutdown_timeout, self.wait_idle()).await {
            Ok(()) => {
                if let Err(e) = self.inner.repo.forget_instance(cfg.instance_id).await {
                    tracing::warn!(error = %e, "cannot remove the scheduler heartbeat");
                }
            }
            Err(_) => tracing::warn!(
                "scheduler stopped with actions still running; they will be marked interrupted"
            ),
        }
        tracing::info!(instance_id = %cfg.instance_id, "scheduler stopped");
    }
}

/// Whether a listener event may mean that what is due changed: a schedule change, or a
/// (re)connection (changes announced while disconnected were lost). Everything else on the
/// shared listener (events, revocations, queued runs...) is none of the scheduler's business.
fn wakes_scheduler(ev: &ListenerEvent) -> bool {
    match ev {
        ListenerEvent::Connected => true,
        ListenerEvent::Disconnected => false,
        ListenerEvent::Notification { channel, .. } => channel == SCHEDULES_CHANGED_CHANNEL,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerWake {
    /// Re-check what is due.
    Wake,
    /// The listener is gone; rely on timed sleeps from now on.
    Closed,
}

/// Waits for the next listener event that concerns the scheduler; never completes without a
/// listener. Unrelated notifications are consumed without waking the loop.
async fn next_wake(listener: &mut Option<broadcast::Receiver<ListenerEvent>>) -> ListenerWake {
    let Some(rx) = listener else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(ev) if wakes_scheduler(&ev) => return ListenerWake::Wake,
            Ok(_) => {}
            // Some notifications were dropped: one of them may have been a schedule change.
            Err(broadcast::error::RecvError::Lagged(_)) => return ListenerWake::Wake,
            Err(broadcast::error::RecvError::Closed) => return ListenerWake::Closed,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn note(channel: &str) -> ListenerEvent {
        ListenerEvent::Notification {
            channel: channel.to_owned(),
            payload: "x".to_owned(),
        }
    }

    #[test]
    fn only_schedule_changes_and_reconnections_wake_the_scheduler() {
        assert!(wakes_scheduler(&note(SCHEDULES_CHANGED_CHANNEL)));
        assert!(wakes_scheduler(&ListenerEvent::Connected));
        assert!(!wakes_scheduler(&ListenerEvent::Disconnected));
        assert!(!wakes_scheduler(&note("gathering_events")));
        assert!(!wakes_scheduler(&note("gathering_revocations")));
        assert!(!wakes_scheduler(&note("")));
    }

    #[tokio::test]
    async fn unrelated_notifications_are_consumed_without_waking() {
        let (tx, rx) = broadcast::channel(16);
        let mut listener = Some(rx);
        for ch in [
            "gathering_events",
            "gathering_revocations",
            "gathering_runs",
        ] {
            tx.send(note(ch)).unwrap();
        }
        tx.send(ListenerEvent::Disconnected).unwrap();
        let woke = tokio::time::timeout(Duration::from_millis(100), next_wake(&mut listener)).await;
        assert!(woke.is_err(), "woke on an unrelated event");
        // They were consumed: the next relevant notification is what wakes the loop.
        tx.send(note(SCHEDULES_CHANGED_CHANNEL)).unwrap();
        assert_eq!(next_wake(&mut listener).await, ListenerWake::Wake);
        assert!(listener.as_mut().unwrap().is_empty());
        tx.send(ListenerEvent::Connected).unwrap();
        assert_eq!(next_wake(&mut listener).await, ListenerWake::Wake);
        drop(tx);
        assert_eq!(next_wake(&mut listener).await, ListenerWake::Closed);
    }

    #[tokio::test]
    async fn lagging_behind_wakes_because_a_change_may_have_been_dropped() {
        let (tx, rx) = broadcast::channel(2);
        let mut listener = Some(rx);
        for _ in 0..5 {
            tx.send(note("gathering_events")).unwrap();
        }
        assert_eq!(next_wake(&mut listener).await, ListenerWake::Wake);
    }
}
