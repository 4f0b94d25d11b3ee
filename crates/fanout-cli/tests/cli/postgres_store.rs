//! `--store postgres://…`: the quickstart run live with `--sim` into a PostgreSQL database,
//! then `runs`, `show` and `report` reading it back from there, agreeing with the run's
//! closing report, and nothing written to the repository's `.fanout/fanout.db`. Runs when
//! `FANOUT_TEST_POSTGRES_URL` names a server (`scripts/with-postgres.sh`; required under CI).

use super::*;

/// A database of its own on the test server, dropped afterwards; `None` without a server.
pub(crate) struct Database {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) fn create() -> Option<Database> {
        Database::create_for("db")
    }

    /// A database named for `tag` (and numbered), so tests in one process do not share one.
    pub(crate) fn create_for(tag: &str) -> Option<Database> {
        let Ok(admin) = std::env::var("FANOUT_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "FANOUT_TEST_POSTGRES_URL is unset under CI: run the tests through scripts/with-postgres.sh"
            );
            eprintln!("skipping: FANOUT_TEST_POSTGRES_URL is unset");
            return None;
        };
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "fanout_cli_{}_{tag}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        // One statement each: CREATE DATABASE cannot share a transaction.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = fanout_core::store::PostgresUrl::parse(&admin)
            .unwrap()
            .with_database(&name)
            .unwrap()
            .connection_string()
            .to_owned();
        Some(Database { admin, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The number after `label` in `text` (`Attempts: 9;` → 9).
fn number_after(text: &str, label: &str) -> u64 {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        + label.len();
    text[start..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn the_quickstart_runs_on_a_postgres_store_and_reads_back_from_it() {
    let Some(database) = Database::create() else {
        return;
    };
    let work = super::reports::quickstart();
    let repo = work.path().join("repo");
    let repo_arg = repo.display().to_string();
    let output = super::reports::run_quickstart(work.path(), &["--store", &database.url]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let run_id = printed
        .lines()
        .find_map(|line| line.strip_prefix("Run ")?.strip_suffix(": completed"))
        .unwrap_or_else(|| panic!("no completed run in {printed}"))
        .to_owned();
    // The closing report names the store the follow-up commands must read.
    assert!(printed.contains(" --store postgres://"), "{printed}");
    assert!(
        !repo.join(".fanout/fanout.db").exists(),
        "nothing goes to the SQLite file"
    );

    // `fanout runs`: the run, with the counts the closing report printed.
    let runs = fanout_in(
        work.path(),
        &[
            "runs",
            "--repo",
            &repo_arg,
            "--store",
            &database.url,
            "--json",
        ],
    );
    assert_eq!(runs.status.code(), Some(0), "{runs:?}");
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["status"], "completed");
    assert!(run["simulated"].is_null() || run["simulated"] == true);
    let agents = &run["agents"];
    assert_eq!(
        printed
            .lines()
            .find(|line| line.starts_with("Agents: "))
            .unwrap(),
        format!(
            "Agents: {} succeeded (of {})",
            agents["success"], agents["planned"]
        )
    );
    assert_eq!(
        number_after(&printed, "Attempts:"),
        agents["attempts"].as_u64().unwrap()
    );
    assert_eq!(
        number_after(&printed, "tool calls:"),
        agents["tool_calls"].as_u64().unwrap()
    );
    assert_eq!(
        number_after(&printed, "denied requests:"),
        agents["denials"].as_u64().unwrap()
    );
    let dollars = agents["dollars"].as_f64().unwrap();
    assert!(
        printed.contains(&format!("cost ${dollars:.2}")),
        "{printed}"
    );
    assert!(dollars > 0.0);

    // `fanout show`: every attempt, from PostgreSQL.
    let show = fanout_in(
        work.path(),
        &[
            "show",
            &run_id,
            "--repo",
            &repo_arg,
            "--store",
            &database.url,
            "--json",
        ],
    );
    assert_eq!(show.status.code(), Some(0), "{show:?}");
    let detail: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let attempts = detail["agent_runs"].as_array().unwrap();
    assert_eq!(attempts.len() as u64, agents["attempts"].as_u64().unwrap());
    assert!(
        attempts.iter().all(|a| a["status"] == "success"),
        "{detail}"
    );
    let labels: Vec<&str> = detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        (labels.first(), labels.last()),
        (Some(&"base"), Some(&"final")),
        "{labels:?}"
    );
    let total: u64 = attempts
        .iter()
        .map(|a| a["token_count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, run["total_tokens"].as_u64().unwrap());

    // `fanout report`, with the store from FANOUT_STORE this time.
    let report = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["report", &run_id, "--repo", &repo_arg])
        .env("FANOUT_STORE", &database.url)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let page = repo
        .canonicalize()
        .unwrap()
        .join(".fanout/runs")
        .join(&run_id)
        .join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&run_id));

    // Without --store the repository's own (empty) store answers: the run is not there.
    let local = fanout_in(work.path(), &["runs", "--repo", &repo_arg, "--json"]);
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim(), "[]");
    assert!(!repo.join(".fanout/fanout.db").exists());
}

/// A `--store` that names no usable store is an argument error (exit 2); a PostgreSQL store
/// that cannot be reached means the command is not ready (exit 4). Neither leaves a SQLite
/// file behind, and the password in the URL is never printed.
#[test]
fn a_store_location_that_cannot_be_used_says_why_and_exits_by_class() {
    let repo = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cases = [
        (
            "mysql://db.example/runs".to_owned(),
            2,
            "is not a run store location",
        ),
        (
            format!("postgres://fanout@127.0.0.1:{port}/runs?sslmode=require"),
            2,
            "sslmode=require asks for TLS",
        ),
        (
            format!("postgres://fanout:hunter2secret@127.0.0.1:{port}/runs"),
            4,
            "cannot reach the PostgreSQL run store at 127.0.0.1",
        ),
    ];
    for (store, code, says) in cases {
        for args in [vec!["runs"], vec!["show", "20260101T000000Z-000000"]] {
            let mut args = args.clone();
            args.extend(["--store", store.as_str()]);
            let output = fanout(&args, repo.path());
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert!(!stderr.contains("hunter2secret"), "{stderr}");
            // Each cause said once.
            assert_eq!(
                stderr.matches("error connecting to server").count(),
                usize::from(code == 4),
                "{stderr}"
            );
        }
    }
    assert!(!repo.path().join(".fanout/fanout.db").exists());
}
