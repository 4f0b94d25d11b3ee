//! How a worker waits out a run store it cannot reach for a moment: an operation that fails
//! with a transient error ([`StoreError::is_transient`]: the connection was lost, the server
//! restarted, the file was locked past its wait) is sent again after a pause that doubles from
//! [`FIRST_PAUSE`] up to [`LONGEST_PAUSE`], until it succeeds, the store answers with a
//! refusal, or the store has been unreachable for the worker's patience.
//!
//! It owns the waiting only. What an operation is, and what a refusal after a lost answer
//! means (a commit whose answer was lost may have landed), are the caller's. Nothing is
//! printed: the caller hears how long it waited and reports it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// The pause before the first retry.
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two retries.
pub const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Why an operation did not succeed.
#[derive(Debug)]
pub(super) enum Gave {
    /// The store answered with an error that sending again cannot change. `after_retry`: an
    /// earlier send failed on its way, so it may have been applied all the same.
    Refused {
        error: StoreError,
        after_retry: bool,
    },
    /// The store could not be reached for `waited`, the whole patience: its last error.
    Unreachable { waited: Duration, last: StoreError },
    /// Cancelled while waiting to send again.
    Cancelled,
}

/// What waiting cost one operation that failed at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waited {
    /// Sends after the first.
    pub retries: u64,
    /// From the first failure to the end (success, refusal or giving up).
    pub waited: Duration,
}

/// Run `op` until it succeeds, the store refuses it, the store has been unreachable for
/// `patience` since the first failure, or `cancel`. `on_waited` hears what it cost when an
/// operation needed more than one send.
pub(super) async fn persist<T, F, Fut>(
    patience: Duration,
    cancel: &CancellationToken,
    on_waited: impl FnOnce(Waited),
    mut op: F,
) -> Result<T, Gave>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = FIRST_PAUSE;
    let mut failing_since: Option<Instant> = None;
    let mut retries = 0;
    let result = loop {
        let error = match op().await {
            Ok(value) => break Ok(value),
            Err(error) if !error.is_transient() => {
                break Err(Gave::Refused {
                    error,
                    after_retry: failing_since.is_some(),
                });
            }
            Err(error) => error,
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        if waited >= patience {
            break Err(Gave::Unreachable {
                waited,
                last: error,
            });
        }
        tokio::select! {
            () = cancel.cancelled() => break Err(Gave::Cancelled),
            () = tokio::time::sleep(pause.min(patience - waited)) => {}
        }
        retries += 1;
        pause = (pause * 2).min(LONGEST_PAUSE);
    };
    if let Some(since) = failing_since {
        on_waited(Waited {
            retries,
            waited: since.elapsed(),
        });
    }
    result
}
