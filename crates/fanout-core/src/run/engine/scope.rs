//! An agent's write scope around its attempts: before the first, its pre-image is taken and
//! made durable with the attempt's start row (the gate its tools wait for), and it is in
//! flight for checkpoints; after a success it is synced to disk; after a failure it is
//! restored from the pre-image.

use std::path::Path;
use std::sync::Arc;

use futures_util::FutureExt;

use super::{Shared, blocking};
use crate::ids::AgentId;
use crate::run::checkpoint::InFlightScopes;
use crate::run::preimage::{self, Preimage, PreimageError};
use crate::store::AgentStart;

/// Takes an agent out of [`InFlightScopes`] when its task ends, on every path.
pub(super) struct LeaveInFlight {
    pub(super) scopes: Arc<InFlightScopes>,
    pub(super) agent_id: AgentId,
}

impl Drop for LeaveInFlight {
    fn drop(&mut self) {
        self.scopes.leave(&self.agent_id);
    }
}

/// The shared result of an attempt's start: its pre-image (taken now unless `known`) and its
/// start row, both durable. Runs as its own task, so it completes even if the agent is
/// cancelled meanwhile.
pub(super) type StartFuture = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Arc<Preimage>, String>>,
>;

pub(super) fn start_attempt(
    shared: &Arc<Shared>,
    row: AgentStart,
    known: Option<Arc<Preimage>>,
    scope: &[String],
) -> StartFuture {
    let shared = Arc::clone(shared);
    let patterns = scope.to_vec();
    let task = tokio::spawn(async move {
        let (preimage, manifest) = match known {
            Some(preimage) => (preimage, None),
            None => {
                let repo = shared.inputs.repo.clone();
                let run_id = shared.inputs.run_id.clone();
                let agent_id = row.agent_id.clone();
                let for_blobs = Arc::clone(&shared);
                let taken = blocking(move || {
                    let (preimage, sync) = preimage::prepare(
                        &repo,
                        &run_id,
                        &agent_id,
                        &patterns,
                        &for_blobs.base_blobs,
                    )?;
                    let manifest = preimage::manifest_json(&preimage)?;
                    Ok::<_, PreimageError>((preimage, manifest, sync))
                })
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
                let (preimage, manifest, sync) = taken;
                // The git objects it points at are durable before the manifest is.
                shared
                    .durable
                    .sync(sync)
                    .await
                    .map_err(|error| format!("pre-image: {error}"))?;
                (Arc::new(preimage), Some(manifest))
            }
        };
        let recorded = match manifest {
            Some(manifest) => shared.store.start_agent_with_preimage(row, manifest).await,
            None => shared.store.start_agent(row).await,
        };
        recorded.map_err(|error| format!("run store: {error}"))?;
        // Before the gate opens: from here on its tools may change the scope.
        shared.in_flight.enter(Arc::clone(&preimage));
        Ok(preimage)
    });
    async move {
        task.await
            .unwrap_or_else(|error| Err(format!("the start of the agent failed: {error}")))
    }
    .boxed()
    .shared()
}

/// Make the agent's write scope durable, in a shared sync round.
pub(super) async fn sync_scope(shared: &Shared, preimage: &Arc<Preimage>) -> Result<(), String> {
    let repo = shared.inputs.repo.clone();
    let preimage = Arc::clone(preimage);
    let set = match blocking(move || preimage::scope_sync_set(&repo, &preimage)).await {
        Ok(Ok(set)) => set,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(error) => return Err(error.to_string()),
    };
    shared
        .durable
        .sync(set)
        .await
        .map_err(|error| error.to_string())
}

pub(super) async fn restore_scope(repo: &Path, preimage: &Arc<Preimage>) -> Result<(), String> {
    let repo = repo.to_path_buf();
    let preimage = Arc::clone(preimage);
    match blocking(move || preimage::restore(&repo, &preimage)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}
