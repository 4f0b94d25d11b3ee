//! The exit codes of every `fanout` command, in one place (the README has the same table).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: a clean plan, or a run that completed |
//! | 1 | the plan has permission violations |
//! | 2 | invalid workflow file, arguments (a `--store` that names no usable store), or unknown run |
//! | 3 | planning failed (no usable plan, provider error, unreadable or edited plan file) |
//! | 4 | not ready (dirty tree, another live run holds the repository, a model API or PostgreSQL store that cannot be reached, …) |
//! | 5 | partial: some agents or items failed, were not run, or a change left every scope |
//! | 6 | failed: no agent or item succeeded |
//! | 7 | tests failed: every agent succeeded, the verification command did not |
//! | 8 | nothing to do: the item input has no items |
//! | 70 | an internal error the command could not classify |
//! | 130 | cancelled (resumable) |

use std::process::ExitCode;

use fanout_core::store::RunStatus;

/// Why the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Violations,
    Config,
    Planning,
    NotReady,
    Partial,
    Failed,
    TestsFailed,
    NothingToDo,
    Internal,
    Cancelled,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Violations => 1,
            Exit::Config => 2,
            Exit::Planning => 3,
            Exit::NotReady => 4,
            Exit::Partial => 5,
            Exit::Failed => 6,
            Exit::TestsFailed => 7,
            Exit::NothingToDo => 8,
            Exit::Internal => 70,
            Exit::Cancelled => 130,
        }
    }

    /// The exit of a run that ended with `status`.
    pub fn of_run(status: RunStatus) -> Exit {
        match status {
            RunStatus::Completed => Exit::Success,
            // A run that ends never has the last three; they would not be a success.
            RunStatus::Partial
            | RunStatus::Planned
            | RunStatus::Running
            | RunStatus::RolledBack => Exit::Partial,
            RunStatus::Failed => Exit::Failed,
            RunStatus::TestsFailed => Exit::TestsFailed,
            RunStatus::Cancelled => Exit::Cancelled,
        }
    }
}

impl Exit {
    /// The exit of an error no command handled itself: core's error classes where the chain
    /// has one (a model API or a shared run store that cannot be reached is "not ready", a
    /// scenario that does not load or a `--store` that names no store is an invalid argument),
    /// else internal.
    pub fn of_error(error: &anyhow::Error) -> Exit {
        use fanout_core::backend::BackendError;
        for cause in error.chain() {
            if let Some(backend) = cause.downcast_ref::<BackendError>() {
                return match backend {
                    BackendError::Api { .. } | BackendError::Sim(_) => Exit::NotReady,
                    BackendError::Scenario { .. } => Exit::Config,
                };
            }
            if let Some(store) = cause.downcast_ref::<fanout_core::store::StoreError>() {
                use fanout_core::store::StoreError;
                match store {
                    // `--store` / FANOUT_STORE names no store fanout can use.
                    StoreError::InvalidLocation { .. } | StoreError::TlsUnsupported { .. } => {
                        return Exit::Config;
                    }
                    // The shared store is down or refuses us: nothing ran.
                    StoreError::Connect { .. } => return Exit::NotReady,
                    _ => {}
                }
            }
            // A worker gave up on a store it could not reach for its whole patience.
            if let Some(fanout_core::distributed::WorkerError::StoreUnavailable { .. }) =
                cause.downcast_ref::<fanout_core::distributed::WorkerError>()
            {
                return Exit::NotReady;
            }
            if let Some(launch) = cause.downcast_ref::<fanout_core::run::launch::LaunchError>() {
                use fanout_core::run::launch::LaunchErrorKind;
                return match launch.kind() {
                    LaunchErrorKind::Input => Exit::Config,
                    LaunchErrorKind::Plan => Exit::Planning,
                    LaunchErrorKind::NotReady => Exit::NotReady,
                };
            }
        }
        Exit::Internal
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}
