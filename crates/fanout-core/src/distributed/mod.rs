//! Work shared between machines through the run store: `fanout worker` processes lease
//! units (one agent each, or one item chunk each) of any run in a shared store, run them in a
//! cache of their own, and commit each unit's patch (or chunk outcome) with its record; the
//! coordinator applies committed patches to the user's repository in commit order (an item
//! run's coordinator settles committed chunks instead).
//!
//! Start reading at [`worker::work`]. What each part owns:
//! - [`crate::store::units`] (below this layer): the units, their leases and commits as
//!   tables and queries on both store backends;
//! - [`shared_tree`]: the worker's one tree per run, checked out once from the base, in
//!   which every unit without dependencies runs (as a local run's agents share one tree),
//!   and a unit's patch read from it, or its scope put back when it did not commit;
//! - [`tree`]: the run's base from its bundle in the worker's cache, and a tree of its own
//!   for a unit with dependencies (their patches applied), with the patch of the agent's
//!   write scope afterwards;
//! - [`worker`]: the lease loop with `slots` units at once, a heartbeat per unit, the run
//!   contexts, and a store that cannot be reached for a moment waited out ([`patience`]);
//! - [`unit`]: one leased unit, its agent tried exactly as the local engine tries one (its
//!   toolbox, scope policy, sandbox, limits, records, and its rule for escalating a `fast`
//!   agent and retrying transient failures: [`crate::attempt`], which the local engine uses
//!   too), each attempt with a number of its own, then the commit;
//! - [`publish`]: what a coordinator stores for its workers (the plan, its hash, the
//!   workflow and the base bundle) and enqueues;
//! - [`apply`]: committed patches applied to the user's tree in commit order, exactly once;
//! - [`handler`]: units of other kinds (an item run's chunks), run by a [`UnitHandler`] a
//!   layer above supplies (`distributed` never names the item runner; see
//!   `crate::items::run`, which publishes chunks, implements the handler and settles what
//!   workers commit).
//!
//! The coordinator is the local engine itself (`fanout run --store URL --local-slots N`):
//! its agents phase publishes the run and applies what workers commit
//! (`crate::run::engine`, module `remote`), and the run's checkpoints, verification,
//! synthesis and totals are the local run's own.
//!
//! - [`limits`]: the rate limits every worker's fleet shares through the store: the
//!   workflow's and the learned ones, requests and tokens, one bucket row per model API and
//!   limit, corrected from each answer's usage.
//!
//! The run's dollar budget is shared too, below this layer: a lease reserves the unit's
//! estimate (published with it) and the commit settles the actual cost
//! ([`crate::store::units`], by [`crate::budget`]'s rule).

pub mod apply;
pub mod handler;
pub mod limits;
mod patience;
pub mod publish;
pub mod shared_tree;
pub mod tree;
mod unit;
pub mod worker;

pub use apply::{Applied, Applier, ApplyError, Pass, PassReader};
pub use handler::{HandlerError, HandlerRun, UnitContext, UnitHandler, UnitHandlers};
pub use limits::StoreLimits;
pub use publish::{PublishError, base_bundle, publish_run};
pub use tree::TreeError;
pub use worker::{WorkerError, WorkerOptions, WorkerReport, work};
