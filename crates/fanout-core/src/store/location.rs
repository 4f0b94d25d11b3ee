//! Where the run store lives: a SQLite file (the default, `<repo>/.fanout/fanout.db`) or a
//! PostgreSQL database named by a `postgres://` URL (`--store`, [`crate::env::FANOUT_STORE`]).
//!
//! A location prints without its password ([`StoreLocation`]'s `Display`), so it can go into
//! error messages and logs as it is.

use std::fmt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The run store's database.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresUrl),
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreLocation::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl StoreLocation {
    /// The store of `repo` as chosen by `flag` (`--store`), else by
    /// [`crate::env::FANOUT_STORE`], else `<repo>/.fanout/fanout.db`.
    pub fn resolve(flag: Option<&str>, repo: &Path) -> Result<StoreLocation, StoreError> {
        let chosen = flag
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
            .or_else(|| crate::env::var(crate::env::FANOUT_STORE));
        match chosen {
            None => Ok(StoreLocation::in_repo(repo)),
            Some(text) => StoreLocation::parse(&text, repo),
        }
    }

    /// `<repo>/.fanout/fanout.db`.
    pub fn in_repo(repo: &Path) -> StoreLocation {
        StoreLocation::Sqlite(super::db_path(repo))
    }

    /// A `postgres://` or `postgresql://` URL, or a path to a SQLite file (relative to `repo`).
    pub fn parse(text: &str, repo: &Path) -> Result<StoreLocation, StoreError> {
        if PostgresUrl::is_postgres(text) {
            return PostgresUrl::parse(text).map(StoreLocation::Postgres);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(StoreError::InvalidLocation {
                location: redact(text),
                reason: format!(
                    "the scheme `{scheme}` is not a store: give a path to a SQLite file or a postgres:// URL"
                ),
            });
        }
        let path = Path::new(text);
        Ok(StoreLocation::Sqlite(if path.is_absolute() {
            path.to_path_buf()
        } else {
            repo.join(path)
        }))
    }

    /// The SQLite file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

/// A PostgreSQL connection URL, checked: no TLS (`sslmode` absent or `disable`), at least a
/// host. Holds the password but never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    /// `host:port/dbname` as a reader can be shown it.
    target: String,
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.url))
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl PostgresUrl {
    fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// Check `text` as a connection URL for the store.
    pub fn parse(text: &str) -> Result<PostgresUrl, StoreError> {
        let invalid = |reason: String| StoreError::InvalidLocation {
            location: redact(text),
            reason,
        };
        if !PostgresUrl::is_postgres(text) {
            return Err(invalid(
                "a PostgreSQL store URL starts with postgres://".into(),
            ));
        }
        // tokio-postgres knows only disable/prefer/require, and would quietly go without
        // TLS on `prefer`; we have no TLS, so anything but `disable` is refused up front.
        if let Some((_, query)) = text.split_once('?') {
            for pair in query.split('&') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if key == "sslmode" && value != "disable" {
                    return Err(StoreError::TlsUnsupported {
                        location: redact(text),
                        sslmode: value.to_owned(),
                    });
                }
            }
        }
        let config: postgres::Config = text
            .parse()
            .map_err(|error: postgres::Error| invalid(error.to_string()))?;
        let host = match config.get_hosts() {
            [] => return Err(invalid("the URL names no host".into())),
            [postgres::config::Host::Tcp(host)] => host.clone(),
            [postgres::config::Host::Unix(path)] => path.display().to_string(),
            _ => return Err(invalid("give one host, not several".into())),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        Ok(PostgresUrl {
            url: text.to_owned(),
            target: format!("{host}:{port}/{dbname}"),
        })
    }

    /// The URL as given, password included: for a client to connect with, never to print.
    pub fn connection_string(&self) -> &str {
        &self.url
    }

    /// `host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The client configuration, TLS off.
    pub(crate) fn config(&self) -> Result<postgres::Config, StoreError> {
        let mut config: postgres::Config =
            self.url
                .parse()
                .map_err(|error: postgres::Error| StoreError::InvalidLocation {
                    location: redact(&self.url),
                    reason: error.to_string(),
                })?;
        config.ssl_mode(postgres::config::SslMode::Disable);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("fanout");
        }
        Ok(config)
    }

    /// The same server and credentials, another database (tests create one per test).
    pub fn with_database(&self, dbname: &str) -> Result<PostgresUrl, StoreError> {
        let (base, query) = match self.url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.url.as_str(), None),
        };
        let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
        let authority_end = base[scheme_end..]
            .find('/')
            .map(|i| scheme_end + i)
            .unwrap_or(base.len());
        let mut url = format!("{}/{dbname}", &base[..authority_end]);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        PostgresUrl::parse(&url)
    }
}

/// `text` with the password of a URL (`user:password@`, `password=`) replaced by `***`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some(scheme_end) = text.find("://").map(|i| i + 3) {
        let rest = &text[scheme_end..];
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            out = format!(
                "{}{}:***{}",
                &text[..scheme_end],
                &authority[..colon],
                &rest[at..]
            );
        }
    }
    if let Some(start) = out.find("password=") {
        let value = start + "password=".len();
        let end = out[value..]
            .find('&')
            .map(|i| value + i)
            .unwrap_or(out.len());
        out.replace_range(value..end, "***");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let url = PostgresUrl::parse("postgres://fan:s3cret@db.example:6543/runs").unwrap();
        assert_eq!(url.to_string(), "postgres://fan:***@db.example:6543/runs");
        assert_eq!(url.target(), "db.example:6543/runs");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            redact("postgres://fan@h/db?password=s3cret&x=1"),
            "postgres://fan@h/db?password=s3cret&x=1".replace("s3cret", "***")
        );
    }

    #[test]
    fn tls_is_refused_by_name() {
        let err = PostgresUrl::parse("postgres://u:pw@h/db?sslmode=require").unwrap_err();
        assert!(matches!(&err, StoreError::TlsUnsupported { sslmode, .. } if sslmode == "require"));
        assert!(!err.to_string().contains("pw@"), "{err}");
        PostgresUrl::parse("postgres://u@h/db?sslmode=disable").unwrap();
    }

    #[test]
    fn paths_and_urls() {
        let repo = Path::new("/r");
        assert_eq!(
            StoreLocation::parse("other.db", repo).unwrap(),
            StoreLocation::Sqlite("/r/other.db".into())
        );
        assert!(
            StoreLocation::parse("postgresql://u@h:5/d", repo)
                .unwrap()
                .is_postgres()
        );
        assert!(matches!(
            StoreLocation::parse("mysql://u:pw@h/d", repo).unwrap_err(),
            StoreError::InvalidLocation { location, .. } if location == "mysql://u:***@h/d"
        ));
        let url = PostgresUrl::parse("postgres://u:pw@h:5/d?connect_timeout=3").unwrap();
        let other = url.with_database("t1").unwrap();
        assert_eq!(other.target(), "h:5/t1");
        assert_eq!(
            other.to_string(),
            "postgres://u:***@h:5/t1?connect_timeout=3"
        );
    }
}
