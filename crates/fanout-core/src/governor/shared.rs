//! Limits shared with other processes: [`SharedLimits`], which a fleet consults around each
//! request on top of its own governor, so that many processes together stay under one
//! organisation's limits.
//!
//! The exchange mirrors the governor's own reserve-then-correct: before a request is sent,
//! [`SharedLimits::take`] takes one request and its estimated tokens from every shared limit
//! at once (or says how long to wait); after the answer, [`SharedLimits::settle`] corrects
//! the take to what the server counted ([`Used`]), passes on the limits the answer's headers
//! reported, and answers the limits the whole fleet of processes has learned, which the fleet
//! hands to its governor ([`super::Governor::adopt`]).
//!
//! The governor owns this process's rate state; an implementation owns only the fleet-wide
//! counts and lives elsewhere (the run store, in `crate::distributed`). It sends nothing and
//! never retries.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{Cost, Limits};
use crate::provider::RateLimitSnapshot;

/// What a take drew on: the request's estimated cost, and which shared limits it was taken
/// from (a limit nobody knew of at the time is not corrected later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    pub cost: Cost,
    /// Taken from the requests, input tokens, output tokens and combined tokens limits.
    pub from: [bool; 4],
}

/// The answer to a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Taken(Taken),
    /// Nothing was taken; there may be room after this long.
    Wait(Duration),
}

/// What the server counted of a request that was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// Answered: one request, and the tokens its `usage` reports.
    Answered(Cost),
    /// Refused with a 429: not counted at all.
    Refused,
    /// Failed otherwise (a 5xx, a timeout): the request and its input may have been counted,
    /// no output was generated (the governor's own rule).
    Failed,
}

/// A future borrowed from a [`SharedLimits`].
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Limits shared by every process that names the same ones.
pub trait SharedLimits: Send + Sync + std::fmt::Debug {
    /// Take one request of `cost` from every shared limit, or nothing and the wait. Limits
    /// that cannot be reached answer taken (nothing drawn): the process's own governor still
    /// holds it to them.
    fn take(&self, cost: Cost) -> SharedFuture<'_, Take>;

    /// Correct `taken` to what the server counted, pass on the limits `reported` in the
    /// answer's headers, and answer the limits the fleet of processes has learned.
    fn settle(
        &self,
        taken: Taken,
        used: Used,
        reported: Option<RateLimitSnapshot>,
    ) -> SharedFuture<'_, Limits>;

    /// The limits the fleet had learned when last asked (for a fleet being built).
    fn learned(&self) -> Limits;
}
