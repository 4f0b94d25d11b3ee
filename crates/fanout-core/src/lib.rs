//! fanout-core: the engine behind the `fanout` command.
//!
//! Layers, bottom up (a module imports only from the ones listed before it; the integration
//! test `layers.rs` checks it):
//! - [`ids`], [`env`], [`layout`], [`text`]: the id types, the environment variables read,
//!   every path under `.fanout/` with the one durable atomic write, text helpers.
//! - [`config`]: the workflow YAML file: model, defaults, validation with located errors,
//!   JSON Schema and the `fanout init` template.
//! - [`provider`]: talk to a model API (Anthropic Messages, OpenAI-compatible Chat
//!   Completions, both providers' batch APIs) over HTTP, with typed errors. Knows nothing of
//!   retries or limits.
//! - [`retry`]: which errors to retry, how long to wait, and a fleet-wide retry budget.
//! - [`governor`]: the fleet-wide rate governor every agent of a run shares (request, input and
//!   output token buckets, header feedback, AIMD on in-flight concurrency).
//! - [`budget`]: a run's dollar budget, the rule that admits the next task (local scheduler
//!   and store leases alike).
//! - [`fleet`]: a provider wrapped in the governor and the retry policy: what agents call.
//! - [`backend`]: where calls go (the real APIs or an in-process simulator) and the one place
//!   provider, fleet and batch client are built.
//! - [`group_commit`], [`store`]: shared syncs, and the SQLite run store (one writer thread,
//!   batched commits) and the JSON-lines log.
//! - [`git`]: host-side git that runs no program the repository controls (hooks, fsmonitor,
//!   filters, pagers, editors, credential helpers, gpg, transports).
//! - [`policy`]: one agent's permissions as data (scopes, protected paths, tools, shell, network).
//! - [`sandbox`]: the kernel sandbox commands run in; [`process`]: the process's own limits;
//!   [`tools`]: the tools the model sees, on a scoped file system; [`agent`]: the turn loop.
//! - [`plan`]: repository scan, orchestrator planning with a repair loop, plan validation,
//!   estimates and the dry-run report.
//! - [`attempt`]: one agent attempt's inputs and records, shared by the local engine and a
//!   worker (its model configuration and permissions, its model calls, tool calls and
//!   denials on record, its failure in words), and the rule for what follows a failed one.
//! - [`distributed`]: runs shared between machines: `fanout worker`'s lease loop, a unit's
//!   tree in the worker's cache, what a coordinator publishes for its workers and how it
//!   applies what they commit.
//! - [`run`]: running a plan: the lifecycle every front end calls (`run::launch`), the engine
//!   (whose agents phase, in a shared run, is the coordinator's), the scheduler,
//!   checkpoints, pre-images and rollback, the repository lock.
//! - [`items`]: item work: inputs, chunking, worker prompts and answer accounting, aggregation,
//!   outputs, and the item runner (online or batch).
//! - [`report`]: one run as a self-contained HTML page (`fanout report`), from the store and
//!   the run's files; [`telemetry`]: the same records as OpenTelemetry GenAI spans and
//!   metrics, sent over OTLP/HTTP by the official exporter.
//!
//! `docs/architecture.md` draws the data flow of one run.
//!
//! The library never prints; callers render.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod agent;
pub mod attempt;
pub mod backend;
pub mod budget;
pub mod config;
pub mod distributed;
pub mod env;
pub mod fleet;
pub mod git;
pub mod governor;
pub mod group_commit;
pub mod ids;
pub mod items;
pub mod layout;
pub mod plan;
pub mod policy;
pub mod process;
pub mod provider;
pub mod report;
pub mod retry;
pub mod run;
pub mod sandbox;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tools;
