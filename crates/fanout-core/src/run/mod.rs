//! Running a plan: the engine and what it stands on.
//!
//! - [`launch`]: the run's lifecycle for every front end: the engine's inputs for a fresh
//!   run, and the checks a recorded run passes before it is finished again.
//! - [`engine`]: one live run (or resume) of a reviewed plan, start to summary.
//! - [`lock`]: [`RepoLock`](lock::RepoLock), one live run per repository at a time (an OS
//!   lock that a `kill -9` releases), required by the engine.
//! - [`checkpoint`]: [`Checkpointer`] commits the whole working tree to
//!   `refs/fanout/<run_id>/checkpoints/<n>` without touching HEAD, the branch or the index;
//!   [`CheckpointPolicy`] says when.
//! - [`mod@rollback`]: [`rollback()`](rollback::rollback) restores the working tree byte for byte
//!   to a checkpoint (by default the run's base).
//!
//! - [`scheduler`]: [`run_graph`](scheduler::run_graph) admits a dependency graph of tasks
//!   under a concurrency cap and a dollar budget, for both repository and item work.
//! - [`durable`]: [`SyncGroup`](durable::SyncGroup) makes many agents' edits durable with
//!   one `syncfs` per filesystem per round.
//! - [`preimage`]: durable pre-images of each agent's write scope, so `fanout resume` can
//!   roll back agents that were in flight when the process died.
//!
//! Git itself is [`crate::git`], a layer below (planning uses it too). It blocks on child
//! processes; call it from `spawn_blocking` in async code ([`Checkpointer::checkpoint`] does so
//! itself).

pub mod checkpoint;
pub mod checkpoint_worker;
pub mod durable;
pub mod engine;
pub mod launch;
pub mod lock;
pub mod preimage;
pub mod rollback;
pub mod scheduler;

pub use checkpoint::{CheckpointError, CheckpointId, CheckpointPolicy, Checkpointer};
pub use rollback::{RollbackError, RollbackOptions, RollbackReport, rollback};
