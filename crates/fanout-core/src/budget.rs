//! A run's dollar budget: the one rule that says whether the next task may start, used by the
//! local scheduler ([`crate::run::scheduler`]) and by the run store's leases, where workers on
//! many machines draw on one run's budget ([`crate::store::units`]).
//!
//! The budget holds actual spend. Before a task starts, its estimated cost, scaled by how the
//! actual costs of the tasks finished so far compared with their estimates, is reserved; the
//! actual cost replaces the reservation when the task ends. When the budget cannot cover the
//! next task it waits for running tasks to settle; once nothing runs and it still cannot be
//! covered, nothing more starts. The first task may start on a budget its raw estimate exceeds
//! (nothing has been learned yet), so an over-estimate never refuses a run on its own.
//!
//! Spend can therefore pass the budget by what running tasks cost beyond their reservations:
//! nothing stops a task that has started.
//!
//! It owns no state and does no I/O: the caller keeps the ledger.

/// What a run has spent and holds, in dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ledger {
    /// Actual cost of the tasks that ended.
    pub spent: f64,
    /// Reservations of the tasks running now.
    pub reserved: f64,
    /// Raw estimates of the tasks that ended (what `spent` is compared with).
    pub estimated_done: f64,
}

impl Ledger {
    /// How actual costs compared with estimates so far (1 until a task has ended), kept
    /// within 0.01–10 so one odd task does not swing the rest.
    pub fn scale(&self) -> f64 {
        if self.estimated_done > 0.0 {
            (self.spent / self.estimated_done).clamp(0.01, 10.0)
        } else {
            1.0
        }
    }
}

/// Whether the next task may start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Start it, holding this many dollars until it ends.
    Reserve(f64),
    /// Not now: running tasks may free their reservations.
    Wait,
    /// Never: nothing runs, and the budget cannot cover it.
    Exhausted,
}

/// Whether a task of raw estimate `estimate` may start under `budget` (`None`: no cap), given
/// the `ledger`, whether any task is `running` now and whether any has `finished`.
pub fn admit(
    budget: Option<f64>,
    ledger: &Ledger,
    estimate: f64,
    running: bool,
    finished: bool,
) -> Admission {
    let reservation = estimate.max(0.0) * ledger.scale();
    let Some(budget) = budget else {
        return Admission::Reserve(reservation);
    };
    if ledger.spent + ledger.reserved + reservation <= budget {
        return Admission::Reserve(reservation);
    }
    let first = !running && !finished && ledger.spent < budget;
    if first {
        Admission::Reserve(reservation)
    } else if running {
        Admission::Wait
    } else {
        Admission::Exhausted
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_scaled_by_what_finished_tasks_cost() {
        let ledger = Ledger {
            spent: 1.0,
            reserved: 0.0,
            estimated_done: 4.0,
        };
        assert_eq!(
            admit(Some(10.0), &ledger, 2.0, false, true),
            Admission::Reserve(0.5)
        );
    }

    #[test]
    fn a_task_the_budget_cannot_cover_waits_while_others_run_and_is_refused_after() {
        let ledger = Ledger {
            spent: 3.0,
            reserved: 1.0,
            estimated_done: 3.0,
        };
        assert_eq!(admit(Some(4.5), &ledger, 1.0, true, true), Admission::Wait);
        let settled = Ledger {
            spent: 4.0,
            reserved: 0.0,
            estimated_done: 4.0,
        };
        assert_eq!(
            admit(Some(4.5), &settled, 1.0, false, true),
            Admission::Exhausted
        );
    }

    #[test]
    fn the_first_task_starts_on_an_over_estimate() {
        let fresh = Ledger::default();
        assert_eq!(
            admit(Some(0.05), &fresh, 0.22, false, false),
            Admission::Reserve(0.22)
        );
        assert_eq!(
            admit(Some(0.05), &fresh, 0.22, true, false),
            Admission::Wait
        );
    }
}
