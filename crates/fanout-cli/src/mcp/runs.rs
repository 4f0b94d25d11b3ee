//! The runs this MCP server is carrying out: each on a thread of its own, with its
//! cancellation token, a tally of its engine events (repository runs) and its fleet (for rate
//! waits and the ETA). A run stays listed after it ends, with how it ended, so `run_status`
//! can say so without the store.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_core::fleet::Fleet;
use fanout_core::plan::RunId;
use fanout_core::run::engine::{self, EngineInputs};
use fanout_core::store::RunStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::progress::Tally;

/// How a run of this server ended.
#[derive(Debug, Clone)]
pub enum Ended {
    Status(RunStatus),
    /// The run could not be carried out (the store has what it recorded).
    Error(String),
}

/// What kind of work a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A repository run: the engine's events feed the tally.
    Plan,
    /// An item run: its counts are read from the store.
    Items,
}

/// One run in this process.
#[derive(Debug)]
pub struct LiveRun {
    pub kind: Kind,
    pub cancel: CancellationToken,
    pub fleet: Fleet,
    pub started: Instant,
    /// The estimate's wall-time floor.
    pub estimated: Duration,
    tally: Mutex<Tally>,
    ended: Mutex<Option<Ended>>,
}

impl LiveRun {
    /// The tally now, with the fleet's current figures.
    pub fn tally(&self) -> Tally {
        let mut tally = *self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.observe_fleet(&self.fleet);
        tally
    }

    pub fn ended(&self) -> Option<Ended> {
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The work of a run, made on the run's own thread (the futures of the engine and the item
/// runner hold the store's connection across awaits, so they are not `Send`).
pub type Work = Box<dyn FnOnce(Arc<LiveRun>) -> Pin<Box<dyn Future<Output = Ended>>> + Send>;

/// The runs of this server, by run id.
#[derive(Debug, Default)]
pub struct Runs {
    inner: Mutex<HashMap<RunId, Arc<LiveRun>>>,
}

impl Runs {
    /// Start the engine on `inputs` in the background (`resume`: finish a recorded run).
    pub fn spawn_plan(&self, inputs: EngineInputs, estimated: Duration, resume: bool) {
        let run_id = inputs.run_id.clone();
        let total = inputs.plan.subtasks.len();
        let fleet = inputs.fleet.clone();
        let work: Work = Box::new(move |run| Box::pin(drive(run, inputs, resume)));
        self.start(run_id, Kind::Plan, total, fleet, estimated, work);
    }

    /// Start an item run's `work` in the background.
    pub fn spawn_items(&self, run_id: RunId, chunks: usize, fleet: Fleet, work: Work) {
        self.start(run_id, Kind::Items, chunks, fleet, Duration::ZERO, work);
    }

    fn start(
        &self,
        run_id: RunId,
        kind: Kind,
        total: usize,
        fleet: Fleet,
        estimated: Duration,
        work: Work,
    ) {
        let run = Arc::new(LiveRun {
            kind,
            cancel: CancellationToken::new(),
            fleet,
            started: Instant::now(),
            estimated,
            tally: Mutex::new(Tally {
                total,
                ..Tally::default()
            }),
            ended: Mutex::new(None),
        });
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run_id.clone(), Arc::clone(&run));
        let task_run = Arc::clone(&run);
        // Each run drives its work on a thread of its own, with its own runtime, as `fanout
        // run` drives it on the main thread. Model calls, agents and the simulator are
        // unaffected.
        let spawned = std::thread::Builder::new()
            .name(format!("fanout-run-{run_id}"))
            .spawn(move || {
                let run = task_run;
                let ended = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .max_blocking_threads(crate::MAX_BLOCKING_THREADS)
                    .build()
                {
                    Ok(runtime) => runtime.block_on(work(Arc::clone(&run))),
                    Err(error) => Ended::Error(format!("cannot start the run's runtime: {error}")),
                };
                *run.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
            });
        if let Err(error) = spawned {
            *run.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ended::Error(
                format!("cannot start the run's thread: {error}"),
            ));
        }
    }

    pub fn get(&self, run_id: &RunId) -> Option<Arc<LiveRun>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run_id)
            .cloned()
    }
}

/// Run the engine, counting its events into the run's tally.
async fn drive(run: Arc<LiveRun>, inputs: EngineInputs, resume: bool) -> Ended {
    let cancel = run.cancel.clone();
    let on_event = |event: &engine::EngineEvent| {
        run.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(event, cancel.is_cancelled());
    };
    let traced = (
        inputs.repo.clone(),
        inputs.store.clone(),
        inputs.run_id.clone(),
    );
    let outcome = if resume {
        engine::resume(inputs, &cancel, on_event).await
    } else {
        engine::execute(inputs, &cancel, on_event).await
    };
    // As `fanout run` does once a run ends (nothing without a collector); its messages go
    // to stderr, which the MCP transports leave to logs.
    crate::traces::export(&traced.0, &traced.1, &traced.2).await;
    match outcome {
        Ok(outcome) => Ended::Status(outcome.status),
        Err(error) => Ended::Error(error.to_string()),
    }
}
