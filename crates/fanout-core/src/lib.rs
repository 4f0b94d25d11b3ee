//! fanout-core: the engine behind the `fanout` command.
//!
//! Layers, bottom up:
//! - [`config`]: the workflow YAML file: model, defaults, validation with located errors,
//!   JSON Schema and the `fanout init` template.
//! - [`provider`]: talk to a model API (Anthropic Messages, OpenAI-compatible Chat
//!   Completions) over HTTP, with typed errors. Knows nothing of retries or limits.
//! - [`retry`]: which errors to retry, how long to wait, and a fleet-wide retry budget.
//! - [`governor`]: the fleet-wide rate governor every agent of a run shares (request, input and
//!   output token buckets, header feedback, AIMD on in-flight concurrency).
//! - [`fleet`]: a provider wrapped in the governor and the retry policy: what agents call.
//!
//! The library never prints; callers render.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod env;
pub mod fleet;
pub mod governor;
pub mod provider;
pub mod retry;
