//! [`Db`]: a PostgreSQL database shared by the backends whose URLs name it (the
//! blob index, directories, path info, the binary cache's pending uploads), as one
//! connection pool per URL in the process, plus versioned schema migrations per
//! component ([`Db::migrate`]) and the mapping of PostgreSQL's errors to [`Error`]
//! ([`db_error`]).
//!
//! # URL
//!
//! `postgres://user:password@host:port/dbname?param=value&...` or `postgresql://...`,
//! in libpq's URL syntax as tokio-postgres parses it (a unix socket directory as
//! `?host=/run/postgresql`). cairn adds parameters that it removes before
//! tokio-postgres sees the URL:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `pool_size` | 16 | most connections this process keeps open to the database |
//! | `connect_timeout` | 5 | seconds to wait for a new connection (tokio-postgres's own parameter, given a default) |
//! | `statement_timeout` | 30 | seconds a statement may run before the server cancels it (also the longest wait for a free pooled connection) |
//!
//! Parameters of the components on the database ([`COMPONENT_PARAMS`]: `dir_cache`
//! of the directory service) are read by those components and ignored here, so one
//! URL can name the database for every component and they still share one pool.

pub use {deadpool_postgres, tokio_postgres};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;

use crate::Error;

const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Parameters that components read from a database URL for themselves
/// ([`crate::directoryservice::PgDirectoryService`]'s cache size); [`Db`] ignores
/// them.
pub const COMPONENT_PARAMS: &[&str] = &["dir_cache"];

/// The key of the advisory lock that serialises migrations of every component
/// across processes ("cairn" in ASCII).
const MIGRATION_LOCK: i64 = 0x63_61_69_72_6e;

/// The advisory lock that orders writers against garbage collection's sweep
/// (`blobservice::s3::gc`): every write or lookup transaction that a writer
/// builds on (blob index commits and lookups, directory commits, path info
/// puts) holds it shared; the sweep holds it exclusively from reading what
/// writers touched until its deletes commit ("cairnsw" in ASCII).
pub const SWEEP_LOCK: i64 = 0x63_61_69_72_6e_73_77;

/// The advisory lock one collection holds for its whole run, so that of
/// several daemons on one database only one collects at a time ("cairngc").
pub const COLLECT_LOCK: i64 = 0x63_61_69_72_6e_67_63;

/// A row a writer builds on is touched again (its `touched` set to the
/// database's clock) when its time is older than this, or than the start of
/// the latest collection (`cairn_gc_epoch`): at most one write per row per
/// grain, never one per lookup.
pub const TOUCH_GRAIN_SECS: u32 = 15;

/// SQL: the time below which a row a writer builds on must be touched (see
/// [`TOUCH_GRAIN_SECS`], which it spells out).
pub const TOUCH_BEFORE: &str = "greatest(clock_timestamp() - interval '15 seconds', \
     coalesce((SELECT started FROM cairn_gc_epoch WHERE id = 1), '-infinity'::timestamptz))";

/// A PostgreSQL database shared by the backends that name it: a connection pool.
/// Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// "127.0.0.1:5432 (database cairn)", for messages.
    target: String,
    connect_timeout: Duration,
    statement_timeout: Duration,
    pool_size: usize,
    /// Components migrated by this process: every use of a component asks, so
    /// this is a read lock, not a wait.
    migrated: std::sync::RwLock<HashSet<&'static str>>,
    /// Held during a migration, so that two backends of one process do not both
    /// run it.
    migrating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("target", &self.inner.target)
            .finish()
    }
}

/// Every [`Db`] opened in this process, by URL.
static SHARED: LazyLock<Mutex<HashMap<String, Db>>> = LazyLock::new(Default::default);

/// `url` without its parameter `key`, and that parameter's value if it was there
/// (the last one if repeated). Values are taken verbatim (no percent-decoding):
/// cairn's own parameters are numbers.
pub fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == key {
                value = Some(v.to_string());
                false
            } else {
                !pair.is_empty()
            }
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

fn invalid(url: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {msg}", crate::redacted(url)))
}

fn seconds_param(url: &str, key: &str, value: Option<String>) -> Result<Option<Duration>, Error> {
    value
        .map(|v| match v.parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(invalid(
                url,
                format!("{key}={v:?} is not a positive number of seconds"),
            )),
        })
        .transpose()
}

/// The parsed form of a URL: tokio-postgres's configuration and cairn's settings.
struct Settings {
    config: tokio_postgres::Config,
    pool_size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

fn parse(url: &str) -> Result<Settings, Error> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(
            url,
            "not a PostgreSQL URL (expected postgres://... or postgresql://...)",
        ));
    }
    let mut rest = url.to_string();
    for param in COMPONENT_PARAMS {
        rest = take_param(&rest, param).0;
    }
    let (rest, pool_size) = take_param(&rest, "pool_size");
    let pool_size = match pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(invalid(
                    url,
                    format!("pool_size={v:?} is not a number from 1 to 1000"),
                ));
            }
        },
    };
    let (rest, statement_timeout) = take_param(&rest, "statement_timeout");
    let statement_timeout = seconds_param(url, "statement_timeout", statement_timeout)?
        .unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
    let (rest, connect_timeout) = take_param(&rest, "connect_timeout");
    let connect_timeout =
        seconds_param(url, "connect_timeout", connect_timeout)?.unwrap_or(DEFAULT_CONNECT_TIMEOUT);

    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        invalid(
            url,
            format!(
                "not a valid PostgreSQL URL: {}",
                chain(&e as &dyn std::error::Error)
            ),
        )
    })?;
    if config.get_hosts().is_empty() {
        return Err(invalid(
            url,
            "names no host (postgres://user@host/db, or ?host=/run/postgresql for a unix socket)",
        ));
    }
    if config.get_user().is_none() {
        return Err(invalid(url, "names no user (postgres://user@host/db)"));
    }
    config.connect_timeout(connect_timeout);
    // Every connection cancels statements running longer than this.
    let ms = statement_timeout.as_millis();
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={ms}"),
        _ => format!("-c statement_timeout={ms}"),
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("cairn");
    }
    Ok(Settings {
        config,
        pool_size,
        connect_timeout,
        statement_timeout,
    })
}

/// "127.0.0.1:5432 (database cairn)" or "/run/postgresql:5432 (database cairn)".
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("(default)");
    format!("{} (database {db})", hosts.join(","))
}

/// An error and its causes, "a: b: c", skipping causes whose text is already there.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// A message as an error value for [`Error::Storage`].
#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

impl Db {
    /// The database a `postgres://` / `postgresql://` URL names (see the
    /// [module docs](self) for the parameters cairn adds). One pool per distinct URL
    /// in the process, so backends naming the same URL share it. Does not connect
    /// yet: a daemon starts while the database is down and recovers when it comes
    /// back.
    pub fn open_shared(url: &str) -> Result<Db, Error> {
        let mut key = url.to_string();
        for param in COMPONENT_PARAMS {
            key = take_param(&key, param).0;
        }
        let url = key.as_str();
        let mut shared = SHARED
            .lock()
            .map_err(|_| Error::storage(Msg("PostgreSQL pool registry lock poisoned".into())))?;
        if let Some(db) = shared.get(url) {
            return Ok(db.clone());
        }
        let db = Db::open(url)?;
        shared.insert(url.to_string(), db.clone());
        Ok(db)
    }

    /// A pool of its own for `url` (tests; everything else uses [`Db::open_shared`]).
    pub fn open(url: &str) -> Result<Db, Error> {
        let settings = parse(url)?;
        let target = describe(&settings.config);
        let manager = Manager::from_config(
            settings.config,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A connection whose socket closed (server restarted) is dropped at
                // checkout without a round trip; one that dies later fails its query.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            // Belt and braces: tokio-postgres applies connect_timeout per address.
            .create_timeout(Some(settings.connect_timeout + Duration::from_secs(1)))
            .wait_timeout(Some(settings.statement_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| Error::storage(Msg(format!("PostgreSQL pool for {target}: {e}"))))?;
        Ok(Db {
            inner: Arc::new(Inner {
                pool,
                target,
                connect_timeout: settings.connect_timeout,
                statement_timeout: settings.statement_timeout,
                pool_size: settings.pool_size,
                migrated: Default::default(),
                migrating: Default::default(),
            }),
        })
    }

    /// Where this database is, "host:port (database name)", for messages.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// A pooled connection; waits at most the connect timeout for a new one. An
    /// unreachable database is [`Error::Storage`] (kind `Internal`) whose message
    /// names host, port and database and says what to check.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.inner.pool.get().await.map_err(|e| self.pool_error(e))
    }

    fn pool_error(&self, e: PoolError) -> Error {
        let target = &self.inner.target;
        let msg = match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => format!(
                "no free connection to PostgreSQL at {target} within {}s: all {} pooled connections are busy (raise pool_size?)",
                self.inner.statement_timeout.as_secs(),
                self.inner.pool_size
            ),
            PoolError::Timeout(_) => format!(
                "cannot reach PostgreSQL at {target}: no connection within {}s; is the server running and reachable?",
                self.inner.connect_timeout.as_secs()
            ),
            PoolError::Backend(e) => return connect_error(target, &e),
            PoolError::PostCreateHook(e) => {
                format!("cannot set up a connection to PostgreSQL at {target}: {e}")
            }
            PoolError::Closed | PoolError::NoRuntimeSpecified => {
                format!("PostgreSQL pool for {target}: {e}")
            }
        };
        Error::storage(Msg(msg))
    }

    /// Applies `migrations[i]` (SQL, possibly several statements) for each version
    /// `i + 1` above the one recorded for `component` in table
    /// `cairn_schema(component text primary key, version int not null)`, each in its
    /// own transaction, under `pg_advisory_xact_lock` so that daemons starting
    /// together do not race. Refuses when the recorded version is higher than
    /// `migrations.len()` (a newer cairn migrated the database). Runs once per
    /// (`Db`, component) per process.
    pub async fn migrate(
        &self,
        component: &'static str,
        migrations: &'static [&'static str],
    ) -> Result<(), Error> {
        let done = |inner: &Inner| {
            inner
                .migrated
                .read()
                .is_ok_and(|set| set.contains(component))
        };
        if done(&self.inner) {
            return Ok(());
        }
        let _migrating = self.inner.migrating.lock().await;
        if done(&self.inner) {
            return Ok(());
        }
        let mut client = self.client().await?;
        let failed = |what: &str, e| db_error(&format!("migrating {component}: {what}"), e);
        loop {
            let tx = client.transaction().await.map_err(|e| failed("begin", e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| failed("taking the migration lock", e))?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS cairn_schema (
                    component text PRIMARY KEY,
                    version integer NOT NULL
                )",
            )
            .await
            .map_err(|e| failed("creating cairn_schema", e))?;
            let row = tx
                .query_opt(
                    "SELECT version FROM cairn_schema WHERE component = $1",
                    &[&component],
                )
                .await
                .map_err(|e| failed("reading the schema version", e))?;
            let current: i32 = match row {
                Some(row) => row
                    .try_get(0)
                    .map_err(|e| failed("reading the schema version", e))?,
                None => 0,
            };
            let latest = migrations.len();
            let current = usize::try_from(current).map_err(|_| {
                Error::Corrupt(format!(
                    "database schema of {component} at {}: negative version {current}",
                    self.inner.target
                ))
            })?;
            if current > latest {
                return Err(Error::storage(Msg(format!(
                    "database schema of {component} at {} is at version {current}, newer than this cairn ({latest}): upgrade cairn",
                    self.inner.target
                ))));
            }
            if current == latest {
                tx.commit().await.map_err(|e| failed("commit", e))?;
                break;
            }
            let next = current + 1;
            tx.batch_execute(migrations[current])
                .await
                .map_err(|e| failed(&format!("applying version {next}"), e))?;
            let version = i32::try_from(next)
                .map_err(|_| Error::InvalidArgument(format!("{component}: too many migrations")))?;
            tx.execute(
                "INSERT INTO cairn_schema (component, version) VALUES ($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                &[&component, &version],
            )
            .await
            .map_err(|e| failed("recording the schema version", e))?;
            tx.commit()
                .await
                .map_err(|e| failed(&format!("committing version {next}"), e))?;
            tracing::info!(component, version = next, target = %self.inner.target, "migrated database schema");
        }
        if let Ok(mut set) = self.inner.migrated.write() {
            set.insert(component);
        }
        Ok(())
    }
}

/// The error of a failed connection attempt to `target`.
fn connect_error(target: &str, e: &tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        // The server answered: wrong password, unknown database or role, too many
        // connections, starting up or shutting down.
        return Error::storage(Msg(format!(
            "PostgreSQL at {target} refused the connection: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        )));
    }
    let cause = chain(e);
    Error::storage(Msg(format!(
        "cannot reach PostgreSQL at {target}: {cause}; is the server running and accepting connections there?"
    )))
}

/// Maps a tokio-postgres error to cairn's [`Error`]: a full disk on the server
/// (SQLSTATE 53100) to a `ResourceExhausted` storage error, everything else
/// (connection and I/O failures, statement timeouts, constraint violations) to
/// [`Error::Storage`] (kind `Internal`). The message says what failed (`what`)
/// and the server's own message.
pub fn db_error(what: &str, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let msg = format!(
            "PostgreSQL: {what}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        );
        if *db.code() == SqlState::DISK_FULL {
            return Error::storage(std::io::Error::new(std::io::ErrorKind::StorageFull, msg));
        }
        return Error::storage(Msg(msg));
    }
    let msg = if e.is_closed() {
        format!("PostgreSQL: {what}: the connection was closed (server restarted or unreachable?)")
    } else {
        format!("PostgreSQL: {what}: {}", chain(&e))
    };
    Error::storage(Msg(msg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn take_param_strips_only_its_key() {
        assert_eq!(
            take_param("postgres://u@h/db?pool_size=4&host=/run/pg", "pool_size"),
            (
                "postgres://u@h/db?host=/run/pg".to_string(),
                Some("4".into())
            )
        );
        assert_eq!(
            take_param("postgres://u@h/db?pool_size=4", "pool_size"),
            ("postgres://u@h/db".to_string(), Some("4".into()))
        );
        assert_eq!(
            take_param("postgres://u@h/db?a=1&b=2", "c"),
            ("postgres://u@h/db?a=1&b=2".to_string(), None)
        );
        assert_eq!(
            take_param("postgres://u@h/db", "c"),
            ("postgres://u@h/db".to_string(), None)
        );
    }

    #[test]
    fn parses_cairn_parameters_and_hands_the_rest_on() {
        let s = parse(
            "postgres://cairn@127.0.0.1:5433/store?pool_size=3&connect_timeout=2&statement_timeout=9&application_name=x",
        )
        .unwrap();
        assert_eq!(s.pool_size, 3);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.statement_timeout, Duration::from_secs(9));
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&Duration::from_secs(2))
        );
        assert_eq!(s.config.get_options(), Some("-c statement_timeout=9000"));
        assert_eq!(s.config.get_application_name(), Some("x"));
        assert_eq!(describe(&s.config), "127.0.0.1:5433 (database store)");

        let s = parse("postgresql://cairn@/store?host=/run/postgresql").unwrap();
        assert_eq!(s.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(s.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s.statement_timeout, DEFAULT_STATEMENT_TIMEOUT);
        assert_eq!(describe(&s.config), "/run/postgresql:5432 (database store)");
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        for (url, says) in [
            ("mysql://u@h/db", "not a PostgreSQL URL"),
            ("postgres://u@h/db?pool_size=0", "pool_size=\"0\""),
            ("postgres://u@h/db?pool_size=x", "pool_size=\"x\""),
            (
                "postgres://u@h/db?statement_timeout=-1",
                "statement_timeout",
            ),
            ("postgres://u@h/db?connect_timeout=0", "connect_timeout"),
            ("postgres://u@h/db?bogus=1", "not a valid PostgreSQL URL"),
            ("postgres://u@/db", "names no host"),
            ("postgres://h/db", "names no user"),
        ] {
            let err = parse(url).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
        let err = parse("postgres://u:secret@h/db?bogus=1").err().unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("u:***@h"), "{err}");
    }

    #[test]
    fn open_shared_is_one_pool_per_url() {
        let a = Db::open_shared("postgres://u@127.0.0.1:1/shared_a").unwrap();
        let b = Db::open_shared("postgres://u@127.0.0.1:1/shared_a").unwrap();
        let c = Db::open_shared("postgres://u@127.0.0.1:1/shared_b").unwrap();
        // A component's own parameter does not make another pool.
        let d = Db::open_shared("postgres://u@127.0.0.1:1/shared_a?dir_cache=5").unwrap();
        assert!(Arc::ptr_eq(&a.inner, &d.inner));
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert!(!Arc::ptr_eq(&a.inner, &c.inner));
    }

    #[tokio::test]
    async fn unreachable_database_is_a_clear_storage_error() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let db = Db::open("postgres://cairn@127.0.0.1:1/cairn?connect_timeout=2").unwrap();
        let err = db.client().await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let msg = err.to_string();
        assert!(
            msg.contains("cannot reach PostgreSQL at 127.0.0.1:1 (database cairn)"),
            "{msg}"
        );
        assert!(msg.contains("is the server running"), "{msg}");
    }
}
