//! The runs this MCP server is carrying out: each on its own task, with its cancellation
//! token, a tally of its engine events and its fleet (for rate waits and the ETA). A run
//! stays listed after it ends, with how it ended, so `run_status` can say so without the
//! store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_core::fleet::Fleet;
use fanout_core::run::engine::{self, EngineInputs};
use fanout_core::store::RunStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::progress::Tally;

/// How a run of this server ended.
#[derive(Debug, Clone)]
pub enum Ended {
    Status(RunStatus),
    /// The engine could not carry the run out (the store has what it recorded).
    Error(String),
}

/// One run in this process.
#[derive(Debug)]
pub struct LiveRun {
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

/// Run the engine, counting its events into the run's tally.
async fn drive(run: &LiveRun, inputs: EngineInputs, resume: bool) -> Ended {
    let cancel = run.cancel.clone();
    let on_event = |event: &engine::EngineEvent| {
        run.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(event, cancel.is_cancelled());
    };
    let outcome = if resume {
        engine::resume(inputs, &cancel, on_event).await
    } else {
        engine::execute(inputs, &cancel, on_event).await
    };
    match outcome {
        Ok(outcome) => Ended::Status(outcome.status),
        Err(error) => Ended::Error(error.to_string()),
    }
}

/// The runs of this server, by run id.
#[derive(Debug, Default)]
pub struct Runs {
    inner: Mutex<HashMap<String, Arc<LiveRun>>>,
}

impl Runs {
    /// Start the engine on `inputs` in the background (`resume`: finish a recorded run).
    pub fn spawn(&self, inputs: EngineInputs, estimated: Duration, resume: bool) -> Arc<LiveRun> {
        let run = Arc::new(LiveRun {
            cancel: CancellationToken::new(),
            fleet: inputs.fleet.clone(),
            started: Instant::now(),
            estimated,
            tally: Mutex::new(Tally {
                total: inputs.plan.subtasks.len(),
                ..Tally::default()
            }),
            ended: Mutex::new(None),
        });
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(inputs.run_id.to_string(), Arc::clone(&run));
        let task_run = Arc::clone(&run);
        // The engine's future is not `Send` (it holds the store's connection across awaits),
        // so each run drives it on a thread of its own, with its own runtime, as `fanout run`
        // drives it on the main thread. Model calls, agents and the simulator are unaffected.
        let spawned = std::thread::Builder::new()
            .name(format!("fanout-run-{}", inputs.run_id))
            .spawn(move || {
                let run = task_run;
                let ended = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .max_blocking_threads(crate::MAX_BLOCKING_THREADS)
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drive(&run, inputs, resume)),
                    Err(error) => Ended::Error(format!("cannot start the run's runtime: {error}")),
                };
                *run.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
            });
        if let Err(error) = spawned {
            *run.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(Ended::Error(
                format!("cannot start the run's thread: {error}"),
            ));
        }
        run
    }

    pub fn get(&self, run_id: &str) -> Option<Arc<LiveRun>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run_id)
            .cloned()
    }
}
