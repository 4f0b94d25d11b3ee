//! The closing synthesis: one call on the orchestrator's model over the agents' records,
//! what was not run, the scope check and the tests, for the engineer who started the run.

use tokio_util::sync::CancellationToken;

use super::orchestrate::not_run_text;
use super::verify::{TestOutcome, Verification, tail};
use super::{AgentRecord, EngineEvent, EngineInputs, Shared};
use crate::plan::TaskId;
use crate::provider::{Message, Request};
use crate::retry::lock;
use crate::run::scheduler::NotRun;
use crate::store::AgentStatus;

/// The synthesis phase (not when cancelled): the summary's text, or why there is none.
pub(super) async fn closing_synthesis(
    shared: &Shared,
    not_run: &[(String, NotRun)],
    verified: &Verification,
    cancel: &CancellationToken,
    on_event: &mut impl FnMut(&EngineEvent),
) -> (Option<String>, Option<String>) {
    let records: Vec<(TaskId, AgentRecord)> = lock(&shared.records)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    if cancel.is_cancelled() {
        return (None, None);
    }
    on_event(&EngineEvent::Phase {
        name: "synthesis".into(),
    });
    match synthesize(
        &shared.inputs,
        &records,
        not_run,
        &verified.out_of_scope,
        verified.test.as_ref(),
        cancel,
    )
    .await
    {
        Ok(text) => (Some(text), None),
        Err(error) => (None, Some(error)),
    }
}

/// Agents listed one by one in the synthesis prompt (the totals are of all).
const LISTED_FINISHED: usize = 400;
const LISTED_NOT_RUN: usize = 100;

/// One call on the orchestrator's model over the results: what was done, what failed, what
/// to review.
async fn synthesize(
    inputs: &EngineInputs,
    records: &[(TaskId, AgentRecord)],
    not_run: &[(String, NotRun)],
    out_of_scope: &[String],
    test: Option<&TestOutcome>,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let model = inputs.config.orchestrator_model();
    let mut request = Request::new(model.model.clone(), 1024);
    request.system = Some(
        "You write the closing summary of a fanout run for the engineer who started it: what \
         was done, what failed and why, and what to review first. Be brief and concrete."
            .into(),
    );
    let mut body = format!(
        "Workflow {} ({} sub-tasks).\n",
        inputs.plan.workflow,
        inputs.plan.subtasks.len()
    );
    // The counts of the whole run: the list below is cut for long runs, and a summary of a
    // 1,000-agent run must not say 400.
    let succeeded = records
        .iter()
        .filter(|(_, record)| record.status == AgentStatus::Success)
        .count();
    body.push_str(&format!(
        "Totals: {} agent(s) finished: {succeeded} succeeded, {} did not; {} not run.\n",
        records.len(),
        records.len() - succeeded,
        not_run.len()
    ));
    if records.len() > LISTED_FINISHED || not_run.len() > LISTED_NOT_RUN {
        body.push_str(&format!(
            "Listed: the first {LISTED_FINISHED} finished and the first {LISTED_NOT_RUN} not run.\n"
        ));
    }
    let mut sorted: Vec<&(TaskId, AgentRecord)> = records.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, record) in sorted.iter().take(LISTED_FINISHED) {
        let description = inputs
            .plan
            .subtasks
            .iter()
            .find(|s| s.task_id == *id)
            .map(|s| s.description.as_str())
            .unwrap_or("");
        body.push_str(&format!(
            "- {id} [{}{}]: {}\n",
            record.status.as_str(),
            if record.escalated {
                ", escalated to default"
            } else {
                ""
            },
            tail(description, 200)
        ));
    }
    for (id, why) in not_run.iter().take(LISTED_NOT_RUN) {
        body.push_str(&format!("- {id} [not run]: {}\n", not_run_text(why)));
    }
    if !out_of_scope.is_empty() {
        body.push_str(&format!(
            "Files changed outside every scope: {}\n",
            out_of_scope.join(", ")
        ));
    }
    if let Some(test) = test {
        body.push_str(&format!(
            "Test command `{}`: {}\n",
            test.command,
            test.verdict()
        ));
    }
    request.messages.push(Message::user(body));
    inputs
        .fleet
        .call(&request, cancel)
        .await
        .map(|outcome| outcome.response.text())
        .map_err(|error| error.to_string())
}
