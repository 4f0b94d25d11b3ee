//! The scheduler: admits tasks of a dependency graph under a concurrency cap and a run
//! budget, one tokio task per running task, until everything has finished, failed, been
//! skipped or the run is cancelled.
//!
//! It is generic over what a task does (a repository agent, an item-work chunk worker): the
//! caller passes a function that runs one task and reports its outcome and cost. Admission
//! rules:
//! - only running tasks count against `max_parallel`;
//! - a task is ready as soon as its own dependencies have succeeded (no barrier waiting for
//!   siblings); a task whose dependency failed or was skipped is skipped, with the reason;
//! - the budget is enforced on actual spend by [`crate::budget`]'s rule (the one workers
//!   sharing a run through the store follow too): a scaled estimate is reserved before a task
//!   starts; when the budget cannot cover the next ready task, it waits for running tasks to
//!   settle; once nothing runs and it still cannot be covered, no new task starts;
//! - ready tasks start in the order they were given (plan order);
//! - cancellation stops admission and is passed to running tasks through a child token; the
//!   scheduler still waits for them, so their records are written.
//!
//! Nothing here waits on time: a full run is exact and fast on paused tokio time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::budget::{self, Admission, Ledger};

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub id: String,
    pub depends_on: Vec<String>,
    /// Dollars reserved before the task starts; the actual cost replaces it when it ends.
    pub estimated_cost: f64,
}

/// Limits of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerLimits {
    pub max_parallel: usize,
    /// The run's dollar budget; `None` for no cap.
    pub budget: Option<f64>,
}

/// What a finished task reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub succeeded: bool,
    /// Dollars actually spent.
    pub cost: f64,
    /// Why it failed (empty on success).
    pub reason: String,
}

/// Why a task did not run to an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// A dependency failed or was itself not run.
    DependencyFailed { dependency: String },
    /// The budget could not cover its reservation.
    BudgetExhausted,
    /// The run was cancelled before it started.
    Cancelled,
    /// It depends on a task that is not in the graph (plan validation should catch this).
    UnknownDependency { dependency: String },
    /// Part of a dependency cycle (plan validation should catch this).
    Cycle,
}

/// Something that happened, in order, for progress displays and the run store.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerEvent {
    Started { id: String },
    Finished { id: String, outcome: TaskOutcome },
    NotRun { id: String, why: NotRun },
}

/// The end state of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerReport {
    /// Outcomes of the tasks that ran, in completion order.
    pub finished: Vec<(String, TaskOutcome)>,
    pub not_run: Vec<(String, NotRun)>,
    pub spent: f64,
    pub peak_running: usize,
    pub cancelled: bool,
}

impl SchedulerReport {
    pub fn succeeded(&self) -> usize {
        self.finished.iter().filter(|(_, o)| o.succeeded).count()
    }

    pub fn failed(&self) -> usize {
        self.finished.iter().filter(|(_, o)| !o.succeeded).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Succeeded,
    Failed,
    NotRun,
}

/// Run `tasks`. `done` lists tasks that already succeeded in an earlier attempt of this run
/// (resume): they are not run again and count as succeeded dependencies. `run_task` runs one
/// task with a cancellation token of its own; `on_event` sees every state change in order.
pub async fn run_graph<F, Fut, E>(
    tasks: &[TaskSpec],
    done: &HashSet<String>,
    limits: SchedulerLimits,
    cancel: &CancellationToken,
    run_task: F,
    mut on_event: E,
) -> SchedulerReport
where
    F: Fn(String, CancellationToken) -> Fut,
    Fut: Future<Output = TaskOutcome> + Send + 'static,
    E: FnMut(&SchedulerEvent),
{
    let mut report = SchedulerReport::default();
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut state = vec![State::Waiting; tasks.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    let mut unmet = vec![0usize; tasks.len()];
    let mut ready: VecDeque<usize> = VecDeque::new();
    let not_run = |i: usize,
                   why: NotRun,
                   state: &mut Vec<State>,
                   report: &mut SchedulerReport,
                   on_event: &mut E| {
        state[i] = State::NotRun;
        let event = SchedulerEvent::NotRun {
            id: tasks[i].id.clone(),
            why: why.clone(),
        };
        on_event(&event);
        report.not_run.push((tasks[i].id.clone(), why));
    };

    for (i, task) in tasks.iter().enumerate() {
        if done.contains(&task.id) {
            state[i] = State::Succeeded;
        }
    }
    for (i, task) in tasks.iter().enumerate() {
        if state[i] != State::Waiting {
            continue;
        }
        for dependency in &task.depends_on {
            match index.get(dependency.as_str()) {
                Some(&d) if state[d] == State::Succeeded => {}
                Some(&d) => {
                    dependents[d].push(i);
                    unmet[i] += 1;
                }
                None => {
                    not_run(
                        i,
                        NotRun::UnknownDependency {
                            dependency: dependency.clone(),
                        },
                        &mut state,
                        &mut report,
                        &mut on_event,
                    );
                    break;
                }
            }
        }
    }
    // Tasks made unrunnable above take their dependents with them.
    let mut dead: Vec<usize> = (0..tasks.len())
        .filter(|&i| state[i] == State::NotRun)
        .collect();
    while let Some(d) = dead.pop() {
        for &i in &dependents[d] {
            if state[i] == State::Waiting {
                not_run(
                    i,
                    NotRun::DependencyFailed {
                        dependency: tasks[d].id.clone(),
                    },
                    &mut state,
                    &mut report,
                    &mut on_event,
                );
                dead.push(i);
            }
        }
    }
    for i in 0..tasks.len() {
        if state[i] == State::Waiting && unmet[i] == 0 {
            ready.push_back(i);
        }
    }

    let max_parallel = limits.max_parallel.max(1);
    // `spent` is `report.spent`'s, kept in step.
    let mut ledger = Ledger::default();
    // Reservations of running tasks.
    let mut reservation = vec![0.0f64; tasks.len()];
    let mut finished_any = false;
    let mut running: JoinSet<(usize, TaskOutcome)> = JoinSet::new();
    let mut budget_exhausted = false;

    loop {
        // Admit as many ready tasks as the limits allow.
        while !cancel.is_cancelled() && !budget_exhausted && running.len() < max_parallel {
            let Some(&i) = ready.front() else { break };
            let estimate = match budget::admit(
                limits.budget,
                &ledger,
                tasks[i].estimated_cost,
                !running.is_empty(),
                finished_any,
            ) {
                Admission::Reserve(estimate) => estimate,
                Admission::Wait => break,
                Admission::Exhausted => {
                    budget_exhausted = true;
                    break;
                }
            };
            ready.pop_front();
            ledger.reserved += estimate;
            reservation[i] = estimate;
            state[i] = State::Running;
            on_event(&SchedulerEvent::Started {
                id: tasks[i].id.clone(),
            });
            let future = run_task(tasks[i].id.clone(), cancel.child_token());
            let estimate_on_crash = estimate;
            running.spawn(async move {
                // A panicking task is that task's failure, not the run's.
                let outcome = AssertUnwindSafe(future)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| TaskOutcome {
                        succeeded: false,
                        cost: estimate_on_crash,
                        reason: "the task crashed".into(),
                    });
                (i, outcome)
            });
            report.peak_running = report.peak_running.max(running.len());
        }

        let Some(joined) = running.join_next().await else {
            break;
        };
        // Tasks are never aborted and panics are caught inside them, so a join error
        // cannot carry a task we still track.
        let Ok((i, outcome)) = joined else { continue };
        ledger.reserved = (ledger.reserved - reservation[i]).max(0.0);
        report.spent += outcome.cost.max(0.0);
        ledger.spent = report.spent;
        ledger.estimated_done += tasks[i].estimated_cost.max(0.0);
        finished_any = true;
        state[i] = if outcome.succeeded {
            State::Succeeded
        } else {
            State::Failed
        };
        on_event(&SchedulerEvent::Finished {
            id: tasks[i].id.clone(),
            outcome: outcome.clone(),
        });
        report.finished.push((tasks[i].id.clone(), outcome.clone()));
        if outcome.succeeded {
            for &d in &dependents[i] {
                if state[d] == State::Waiting {
                    unmet[d] -= 1;
                    if unmet[d] == 0 {
                        ready.push_back(d);
                    }
                }
            }
        } else {
            let mut dead = vec![i];
            while let Some(f) = dead.pop() {
                for &d in &dependents[f] {
                    if state[d] == State::Waiting {
                        not_run(
                            d,
                            NotRun::DependencyFailed {
                                dependency: tasks[f].id.clone(),
                            },
                            &mut state,
                            &mut report,
                            &mut on_event,
                        );
                        dead.push(d);
                    }
                }
            }
        }
    }

    // Whatever is left never started.
    report.cancelled = cancel.is_cancelled();
    for i in 0..tasks.len() {
        if state[i] == State::Waiting {
            let why = if report.cancelled {
                NotRun::Cancelled
            } else if budget_exhausted {
                NotRun::BudgetExhausted
            } else {
                NotRun::Cycle
            };
            not_run(i, why, &mut state, &mut report, &mut on_event);
        }
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn task(id: &str, deps: &[&str]) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            estimated_cost: 1.0,
        }
    }

    fn limits(max_parallel: usize) -> SchedulerLimits {
        SchedulerLimits {
            max_parallel,
            budget: None,
        }
    }

    fn ok(cost: f64) -> TaskOutcome {
        TaskOutcome {
            succeeded: true,
            cost,
            reason: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_independent_tasks_run_at_once() {
        let tasks: Vec<_> = (0..1000).map(|i| task(&format!("t{i}"), &[])).collect();
        let start = Instant::now();
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            limits(1000),
            &CancellationToken::new(),
            |_, _| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                ok(0.01)
            },
            |_| {},
        )
        .await;
        assert_eq!(report.succeeded(), 1000);
        assert_eq!(report.peak_running, 1000);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn only_running_tasks_count_against_the_cap() {
        let tasks: Vec<_> = (0..10).map(|i| task(&format!("t{i}"), &[])).collect();
        let start = Instant::now();
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            limits(3),
            &CancellationToken::new(),
            |_, _| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ok(0.0)
            },
            |_| {},
        )
        .await;
        assert_eq!(report.peak_running, 3);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependent_starts_when_its_own_dependency_ends_not_its_siblings() {
        // slow (10 s) and fast (1 s) start together; after_fast depends only on fast.
        let tasks = vec![
            task("slow", &[]),
            task("fast", &[]),
            task("after_fast", &["fast"]),
        ];
        let started: Arc<std::sync::Mutex<HashMap<String, Duration>>> = Arc::default();
        let begin = Instant::now();
        let record = Arc::clone(&started);
        run_graph(
            &tasks,
            &HashSet::new(),
            limits(10),
            &CancellationToken::new(),
            move |id, _| {
                let record = Arc::clone(&record);
                async move {
                    record.lock().unwrap().insert(id.clone(), begin.elapsed());
                    let secs = if id == "slow" { 10 } else { 1 };
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    ok(0.0)
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(
            started.lock().unwrap()["after_fast"],
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_skips_its_dependents_and_the_rest_goes_on() {
        let tasks = vec![
            task("a", &[]),
            task("b", &["a"]),
            task("c", &["b"]),
            task("d", &[]),
        ];
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            limits(4),
            &CancellationToken::new(),
            |id, _| async move {
                if id == "a" {
                    TaskOutcome {
                        succeeded: false,
                        cost: 0.5,
                        reason: "tests failed".into(),
                    }
                } else {
                    ok(0.5)
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(report.succeeded(), 1);
        assert_eq!(report.failed(), 1);
        assert_eq!(
            report.not_run,
            vec![
                (
                    "b".to_string(),
                    NotRun::DependencyFailed {
                        dependency: "a".into()
                    }
                ),
                (
                    "c".to_string(),
                    NotRun::DependencyFailed {
                        dependency: "b".into()
                    }
                ),
            ]
        );
        assert!((report.spent - 1.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_new_starts_before_it_is_exceeded() {
        let tasks: Vec<_> = (0..10).map(|i| task(&format!("t{i}"), &[])).collect();
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            SchedulerLimits {
                max_parallel: 2,
                budget: Some(4.5),
            },
            &CancellationToken::new(),
            |_, _| async { ok(1.0) },
            |_| {},
        )
        .await;
        // Each reserves 1.0: four fit under 4.5, the fifth would not.
        assert_eq!(report.succeeded(), 4);
        assert!(report.spent <= 4.5);
        assert_eq!(report.not_run.len(), 6);
        assert!(
            report
                .not_run
                .iter()
                .all(|(_, why)| *why == NotRun::BudgetExhausted)
        );
    }

    /// `budgets.run.max_dollars: 0.05` refused a $0.02 run because the estimate said $0.22:
    /// the budget holds actual spend, and reservations learn from finished tasks.
    #[tokio::test(start_paused = true)]
    async fn an_over_estimate_does_not_refuse_work_the_budget_can_pay_for() {
        let tasks: Vec<_> = (0..10)
            .map(|i| TaskSpec {
                estimated_cost: 0.022,
                ..task(&format!("t{i}"), &[])
            })
            .collect();
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            SchedulerLimits {
                max_parallel: 4,
                budget: Some(0.05),
            },
            &CancellationToken::new(),
            |_, _| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ok(0.002)
            },
            |_| {},
        )
        .await;
        assert_eq!(report.succeeded(), 10, "{:?}", report.not_run);
        assert!((report.spent - 0.02).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_admission_and_waits_for_running_tasks() {
        let tasks: Vec<_> = (0..6).map(|i| task(&format!("t{i}"), &[])).collect();
        let cancel = CancellationToken::new();
        let finished_cleanly = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&finished_cleanly);
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            trigger.cancel();
        });
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            limits(2),
            &cancel,
            move |_, token| {
                let count = Arc::clone(&count);
                async move {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => ok(0.0),
                        _ = token.cancelled() => {
                            count.fetch_add(1, Ordering::SeqCst);
                            TaskOutcome { succeeded: false, cost: 0.0, reason: "cancelled".into() }
                        }
                    }
                }
            },
            |_| {},
        )
        .await;
        assert!(report.cancelled);
        assert_eq!(
            report.succeeded(),
            2,
            "the first two finished before the cancel"
        );
        assert_eq!(
            finished_cleanly.load(Ordering::SeqCst),
            2,
            "two were running and saw it"
        );
        assert_eq!(
            report
                .not_run
                .iter()
                .filter(|(_, w)| *w == NotRun::Cancelled)
                .count(),
            2
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resumed_runs_skip_what_already_succeeded() {
        let tasks = vec![task("a", &[]), task("b", &["a"]), task("c", &[])];
        let done: HashSet<String> = ["a".to_string()].into();
        let ran: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let record = Arc::clone(&ran);
        let report = run_graph(
            &tasks,
            &done,
            limits(4),
            &CancellationToken::new(),
            move |id, _| {
                record.lock().unwrap().push(id);
                async { ok(0.0) }
            },
            |_| {},
        )
        .await;
        let mut ran = ran.lock().unwrap().clone();
        ran.sort();
        assert_eq!(ran, vec!["b", "c"]);
        assert_eq!(report.succeeded(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_dependencies_and_cycles_are_reported_not_hung() {
        let tasks = vec![
            task("x", &["nowhere"]),
            task("y", &["x"]),
            task("p", &["q"]),
            task("q", &["p"]),
            task("free", &[]),
        ];
        let events: Arc<std::sync::Mutex<Vec<SchedulerEvent>>> = Arc::default();
        let sink = Arc::clone(&events);
        let report = run_graph(
            &tasks,
            &HashSet::new(),
            limits(4),
            &CancellationToken::new(),
            |_, _| async { ok(0.0) },
            move |e| sink.lock().unwrap().push(e.clone()),
        )
        .await;
        assert_eq!(report.succeeded(), 1);
        let why: HashMap<_, _> = report.not_run.iter().cloned().collect();
        assert_eq!(
            why["x"],
            NotRun::UnknownDependency {
                dependency: "nowhere".into()
            }
        );
        assert_eq!(
            why["y"],
            NotRun::DependencyFailed {
                dependency: "x".into()
            }
        );
        assert_eq!(why["p"], NotRun::Cycle);
        assert_eq!(why["q"], NotRun::Cycle);
        assert_eq!(
            events.lock().unwrap().len(),
            2 + 4,
            "start+finish of free, 4 not-run"
        );
    }
}
