//! The run store. `conformance` is one suite of behaviours written once and run against
//! both backends: SQLite always, PostgreSQL when `FANOUT_TEST_POSTGRES_URL` names a server
//! the tests may create databases on (`scripts/with-postgres.sh` starts one; under CI it
//! must be set). `sqlite` holds what only the embedded backend has (WAL, `user_version`,
//! ten thousand agents through one file).

mod conformance;
mod shared;
mod sqlite;
mod units;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentFinish, AgentStart, AgentStatus, NewRun, PostgresUrl, RunStatus, StoreLocation,
};

pub(crate) fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000 + seconds)
}

pub(crate) fn new_run(run_id: &str, seconds: u64) -> NewRun {
    NewRun {
        run_id: run_id.into(),
        workflow: "auth-refactor".to_owned(),
        config_path: Some("claude-workflows.yaml".into()),
        plan_hash: Some("sha256:abc".to_owned()),
        repo: None,
        status: RunStatus::Running,
        started_at: at(seconds),
        base_commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        agents_planned: 3,
        simulated: false,
    }
}

pub(crate) fn start(run_id: &str, agent_id: &str, mode: Mode) -> AgentStart {
    AgentStart {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        attempt: 1,
        task_description: format!("edit {agent_id}"),
        mode,
        model: Some("claude-opus-4-8".to_owned()),
        escalated: false,
        started_at: at(10),
    }
}

pub(crate) fn finish(run_id: &str, agent_id: &str, status: AgentStatus) -> AgentFinish {
    AgentFinish {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        attempt: 1,
        status,
        files_accessed: vec![format!("src/{agent_id}.rs")],
        tools_called: vec!["read_file".to_owned(), "edit_file".to_owned()],
        input_tokens: 1000,
        output_tokens: 234,
        cost_usd: 0.01,
        cache_read_tokens: 600,
        cache_write_tokens: 100,
        cache_saved_usd: 0.001,
        error: None,
        checkpoint: None,
        ended_at: at(12),
    }
}

/// An empty store on one backend, removed when dropped.
pub(crate) struct Fresh {
    pub location: StoreLocation,
    /// The directory a run's log (and a SQLite store) goes in.
    pub dir: tempfile::TempDir,
    database: Option<(PostgresUrl, String)>,
}

impl Fresh {
    pub(crate) fn sqlite() -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        Fresh {
            location: StoreLocation::in_repo(dir.path()),
            dir,
            database: None,
        }
    }

    /// A new database on the test server, or `None` when there is none (an error under CI,
    /// where `scripts/test` always starts one).
    pub(crate) fn postgres() -> Option<Fresh> {
        let Some(url) = fanout_core::env::var(fanout_core::env::FANOUT_TEST_POSTGRES_URL) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is unset under CI: run the tests through scripts/with-postgres.sh",
                fanout_core::env::FANOUT_TEST_POSTGRES_URL
            );
            eprintln!(
                "skipping: {} is unset (scripts/with-postgres.sh sets it)",
                fanout_core::env::FANOUT_TEST_POSTGRES_URL
            );
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fanout_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = PostgresUrl::parse(&url).unwrap();
        admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        Some(Fresh {
            location: StoreLocation::Postgres(admin.with_database(&name).unwrap()),
            dir: tempfile::tempdir().unwrap(),
            database: Some((admin, name)),
        })
    }

    /// Run `sql` on this store's database directly (to play a newer fanout, say).
    pub(crate) fn sql(&self, sql: &str) {
        match &self.location {
            StoreLocation::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            StoreLocation::Postgres(url) => admin_sql(url, sql),
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.database.take() {
            admin_sql(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

/// Run `sql` on the server of `url` from a thread of its own (the sync client may not run
/// inside the tests' tokio runtime).
fn admin_sql(url: &PostgresUrl, sql: &str) {
    let config: postgres::Config = url.connection_string().parse().unwrap();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let mut client = config.connect(postgres::NoTls).unwrap();
        client.batch_execute(&sql).unwrap();
    })
    .join()
    .unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let location = StoreLocation::parse(
        &format!("postgres://fanout:hunter2@127.0.0.1:{port}/runs?connect_timeout=5"),
        std::path::Path::new("/unused"),
    )
    .unwrap();
    assert_eq!(
        location.to_string(),
        format!("postgres://fanout:***@127.0.0.1:{port}/runs?connect_timeout=5")
    );
    for err in [
        fanout_core::store::Store::open_at(&location).unwrap_err(),
        fanout_core::store::StoreReader::open_at(&location).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            matches!(&err, fanout_core::store::StoreError::Connect { target, .. }
                if *target == format!("127.0.0.1:{port}/runs")),
            "{message}"
        );
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("user fanout"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn a_malformed_location_is_refused_with_its_reason() {
    let repo = std::path::Path::new("/repo");
    for (text, expected) in [
        ("postgres://u:pw@host:notaport/db", "invalid"),
        ("postgres://u:pw@host/db?sslmode=require", "TLS"),
        ("redis://u:pw@host/0", "not a store"),
    ] {
        let err = StoreLocation::parse(text, repo).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
        assert!(!err.contains("pw@"), "{text}: {err}");
    }
}
