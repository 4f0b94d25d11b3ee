//! Units that are not a plan's agents — an item run's chunks — and the code a worker runs
//! them with.
//!
//! `distributed` sits below `items` in the crate's layers, so the worker cannot name the item
//! runner. Instead a layer above hands the worker a [`UnitHandler`] per extra [`UnitKind`]
//! (`fanout worker` gives the item chunk handler; so does an item run's coordinator for its
//! own slots): the worker leases only the kinds it has a handler for, and passes each such
//! lease to its handler with what the unit needs from the worker ([`UnitContext`]). The
//! worker keeps the lease, the heartbeat and the commit; the handler only turns a lease into
//! the [`UnitCommit`] to make.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::store::{Lease, Store, StoreLocation, UnitCommit, UnitKind};

/// Why a handler could not run its unit (the worker commits it as a failure).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler's run gives back: the commit to make, or `None` when it was cancelled.
pub type HandlerRun<'a> =
    Pin<Box<dyn Future<Output = Result<Option<UnitCommit>, HandlerError>> + Send + 'a>>;

/// What a leased unit gets from the worker that holds it.
pub struct UnitContext<'a> {
    pub lease: &'a Lease,
    /// The worker's store handle: start rows and events as the unit goes.
    pub store: &'a Store,
    pub location: &'a StoreLocation,
    /// The model API every run's fleet is built on.
    pub backend: &'a Arc<Backend>,
    /// The worker's name on its leases.
    pub owner: &'a str,
}

/// Runs the units of one kind.
pub trait UnitHandler: Send + Sync {
    fn kind(&self) -> UnitKind;

    /// Run the leased unit to the commit its worker makes. `cancel` is cancelled when the
    /// worker stops or loses the lease: return `Ok(None)` then, and nothing is committed.
    fn run<'a>(&'a self, unit: UnitContext<'a>, cancel: &'a CancellationToken) -> HandlerRun<'a>;
}

/// The handlers a worker has, beside the plan agents it always runs.
#[derive(Clone, Default)]
pub struct UnitHandlers(Vec<Arc<dyn UnitHandler>>);

impl UnitHandlers {
    pub fn new(handlers: Vec<Arc<dyn UnitHandler>>) -> UnitHandlers {
        UnitHandlers(handlers)
    }

    /// The kinds the worker leases: agents, and one per handler.
    pub fn kinds(&self) -> Vec<UnitKind> {
        let mut kinds = vec![UnitKind::Agent];
        kinds.extend(self.0.iter().map(|handler| handler.kind()));
        kinds
    }

    pub fn get(&self, kind: UnitKind) -> Option<&Arc<dyn UnitHandler>> {
        self.0.iter().find(|handler| handler.kind() == kind)
    }
}

impl std::fmt::Debug for UnitHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|handler| handler.kind()))
            .finish()
    }
}
