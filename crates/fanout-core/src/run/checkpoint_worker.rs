//! Checkpoints off the agents' path: a background task that takes the run's checkpoints on the
//! checkpoint policy's schedule while agents keep completing.
//!
//! Agents report each durable completion with [`CheckpointWorker::completed`] and go on at
//! once. The worker counts completions; when the policy says a checkpoint is due it takes one
//! (a few git processes). Completions that arrive while a checkpoint is being taken are counted
//! for the next one, so under a burst (1,000 agents finishing within a second) checkpoints
//! coalesce instead of queueing: one checkpoint may then cover more than `checkpoint_interval`
//! completions, but none is ever skipped for long, and no agent waits for git. When the
//! completions come slower than a checkpoint takes, every checkpoint covers exactly the
//! policy's interval. [`CheckpointWorker::finish`] waits for the checkpoint in progress (but
//! starts no further one: the run's final checkpoint, taken right after, covers every
//! completion) and hands the checkpointer back for that final checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checkpoint::{CheckpointError, CheckpointId, CheckpointPolicy, Checkpointer};

/// What the worker reports after each checkpoint.
pub type CheckpointResult = Result<CheckpointId, CheckpointError>;

/// Handle to the background checkpoint task of one run.
#[derive(Debug)]
pub struct CheckpointWorker {
    completions: mpsc::UnboundedSender<bool>,
    /// Set by [`CheckpointWorker::finish`]: count what is left, take no more checkpoints.
    closing: Arc<AtomicBool>,
    task: JoinHandle<Checkpointer>,
}

impl CheckpointWorker {
    /// Start the worker. `report` sees every checkpoint taken (or its error), in order.
    pub fn spawn(
        mut checkpointer: Checkpointer,
        mut policy: CheckpointPolicy,
        completed_so_far: u64,
        report: impl Fn(CheckpointResult) + Send + Sync + 'static,
    ) -> CheckpointWorker {
        let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
        let closing = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&closing);
        let task = tokio::spawn(async move {
            let mut completed = completed_so_far;
            let mut due = false;
            loop {
                if !due {
                    // Wait for the next completion, or for the run to close the channel.
                    match rx.recv().await {
                        Some(destructive) => {
                            completed += 1;
                            due |= policy.record_completion(destructive);
                        }
                        None => break,
                    }
                }
                // Fold in everything that arrived meanwhile before deciding.
                while let Ok(destructive) = rx.try_recv() {
                    completed += 1;
                    due |= policy.record_completion(destructive);
                }
                if closed.load(Ordering::Acquire) {
                    // The run's final checkpoint follows at once: count, do not checkpoint.
                    while let Some(_destructive) = rx.recv().await {
                        completed += 1;
                    }
                    break;
                }
                if due {
                    due = false;
                    policy.reset();
                    checkpointer.set_completed_agents(completed);
                    let label = format!("after {completed} completions");
                    report(checkpointer.checkpoint(&label).await);
                }
            }
            checkpointer.set_completed_agents(completed);
            checkpointer
        });
        CheckpointWorker {
            completions: tx,
            closing,
            task,
        }
    }

    /// An agent's completion is durable in the run store; `destructive` if it deleted or
    /// renamed files (which tightens the interval).
    pub fn completed(&self, destructive: bool) {
        // The receiver lives until `finish`; a send can only fail after it, when nothing is
        // left to checkpoint for.
        let _ = self.completions.send(destructive);
    }

    /// Stop taking checkpoints (after the one in progress; completions since the last one are
    /// left to the caller's final checkpoint) and return the checkpointer.
    pub async fn finish(self) -> Result<Checkpointer, CheckpointError> {
        self.closing.store(true, Ordering::Release);
        drop(self.completions);
        self.task.await.map_err(|err| CheckpointError::Join {
            message: err.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::process::Command;

    use super::*;

    fn repository() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "-A"][..],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "init",
            ][..],
        ] {
            let ok = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        dir
    }

    #[tokio::test]
    async fn completions_at_the_policy_pace_get_one_checkpoint_per_interval() {
        let repo = repository();
        let mut checkpointer = Checkpointer::new(repo.path(), &"run-worker".into()).unwrap();
        checkpointer.base().await.unwrap();
        let (tx, mut taken) = tokio::sync::mpsc::unbounded_channel();
        let worker = CheckpointWorker::spawn(
            checkpointer,
            CheckpointPolicy::new(10, 1),
            0,
            move |result| {
                tx.send(result.map(|id| id.seq)).unwrap();
            },
        );
        for wave in 1..=3u64 {
            for _ in 0..10 {
                worker.completed(false);
            }
            assert_eq!(taken.recv().await.unwrap().unwrap(), wave);
        }
        // Nine more are not enough for another; a destructive one makes it due at once.
        for _ in 0..9 {
            worker.completed(false);
        }
        worker.completed(true);
        assert_eq!(taken.recv().await.unwrap().unwrap(), 4);
        let checkpointer = worker.finish().await.unwrap();
        assert_eq!(checkpointer.next_seq(), 5);
        assert!(taken.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_burst_is_coalesced_and_nothing_is_lost() {
        let repo = repository();
        let mut checkpointer = Checkpointer::new(repo.path(), &"run-burst".into()).unwrap();
        checkpointer.base().await.unwrap();
        let (tx, mut taken) = tokio::sync::mpsc::unbounded_channel();
        let worker =
            CheckpointWorker::spawn(checkpointer, CheckpointPolicy::new(10, 10), 0, move |r| {
                tx.send(r.is_ok()).unwrap();
            });
        for _ in 0..1000 {
            worker.completed(false);
        }
        // The burst is taken in (at least) one checkpoint while the run goes on.
        assert!(taken.recv().await.unwrap());
        let checkpointer = worker.finish().await.unwrap();
        let mut count = 1;
        while let Ok(ok) = taken.try_recv() {
            assert!(ok);
            count += 1;
        }
        assert!(
            (1..100).contains(&count),
            "{count} checkpoints for a burst of 1,000"
        );
        assert_eq!(checkpointer.next_seq(), 1 + count);
    }

    #[tokio::test]
    async fn finishing_takes_no_further_checkpoint() {
        let repo = repository();
        let mut checkpointer = Checkpointer::new(repo.path(), &"run-finish".into()).unwrap();
        checkpointer.base().await.unwrap();
        let (tx, mut taken) = tokio::sync::mpsc::unbounded_channel();
        let worker =
            CheckpointWorker::spawn(checkpointer, CheckpointPolicy::new(10, 10), 0, move |r| {
                tx.send(r.is_ok()).unwrap();
            });
        for _ in 0..25 {
            worker.completed(false);
        }
        let mut checkpointer = worker.finish().await.unwrap();
        let mut count = 0;
        while let Ok(ok) = taken.try_recv() {
            assert!(ok);
            count += 1;
        }
        assert!(count <= 1, "{count} checkpoints after finish was called");
        assert_eq!(checkpointer.next_seq(), 1 + count);
        // The caller's final checkpoint records all 25.
        let last = checkpointer.checkpoint("final").await.unwrap();
        assert_eq!(last.seq, 1 + count);
    }
}
