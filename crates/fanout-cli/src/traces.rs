//! After a run ends: its OpenTelemetry traces, sent when the environment names a collector
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`; see `fanout_core::telemetry`). A failure is a warning on
//! stderr; it never changes the run's exit code.

use std::path::Path;

use fanout_core::telemetry::Exporter;

pub async fn export(
    repo: &Path,
    store: &fanout_core::store::StoreLocation,
    run_id: &fanout_core::plan::RunId,
) {
    let exporter = match Exporter::from_env() {
        Ok(Some(exporter)) => exporter,
        Ok(None) => return,
        Err(err) => {
            eprintln!("warning: traces not sent: {err}");
            return;
        }
    };
    match exporter.export_run(repo, store, run_id).await {
        Ok(sent) => eprintln!(
            "fanout: traces sent to {}: {} span(s), trace id {}",
            sent.url, sent.spans, sent.trace_id
        ),
        Err(err) => eprintln!("warning: traces not sent: {err}"),
    }
}
