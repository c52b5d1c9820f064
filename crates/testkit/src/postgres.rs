//! A real PostgreSQL server for tests: one per test process, started on first use
//! from Debian's `postgresql` package (binaries under `/usr/lib/postgresql/*/bin`,
//! the newest version found; `CAIRN_PG_BIN` overrides the directory) on a free
//! 127.0.0.1 port, with a scratch data directory and its unix socket in the same
//! temporary directory.
//!
//! - `initdb` and `postgres` refuse to run as root, and CI runs as root: then every
//!   server command runs as the `postgres` system user (`runuser -u postgres --`),
//!   which owns the temporary directory.
//! - The data is scratch, so the server runs with `fsync=off` (and without
//!   synchronous commit or full-page writes) for speed. Stopping and starting the
//!   server ([`PgServer::stop`], [`PgServer::start`]) still keeps everything
//!   committed: the files are written, only not flushed, and the OS holds them.
//! - Statics are never dropped, so a watcher process (`sh` polling `kill -0` on the
//!   test process) stops the server and removes the directory once the test
//!   process has exited, however it exits.
//! - Authentication is `trust` (only this machine reaches 127.0.0.1); URLs name the
//!   `postgres` superuser.
//!
//! A missing server binary panics with a message saying to run
//! `scripts/install-test-deps.sh`: tests using this fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The test process's PostgreSQL server.
pub struct PgServer {
    bin: PathBuf,
    /// Holds `data/`, the unix socket and the server log.
    root: PathBuf,
    port: u16,
    /// Whether server commands run as the `postgres` user (we are root).
    as_postgres: bool,
    databases: AtomicUsize,
}

/// The test process's server, started on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::launch)
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `postgres` and `initdb`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAIRN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             run scripts/install-test-deps.sh (installs Debian's postgresql package)"
        ),
    }
}

fn is_root() -> bool {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}

impl PgServer {
    fn launch() -> PgServer {
        let bin = bin_dir();
        let as_postgres = is_root();
        let root = std::env::temp_dir().join(format!(
            "cairn-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir(&root).expect("creating the PostgreSQL scratch directory");
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&root));
        }
        let server = PgServer {
            bin,
            root,
            port: free_port(),
            as_postgres,
            databases: AtomicUsize::new(0),
        };
        server.watch();
        run(server
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(server.data()));
        let conf = format!(
            "\n# cairn test fixture: scratch data, so no flushing (see cairn_testkit::postgres)\n\
             listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 300\nlogging_collector = off\n",
            server.port,
            server.root.display()
        );
        let conf_path = server.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("reading postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("writing postgresql.conf");
        server.start();
        server
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A server command (`initdb`, `pg_ctl`, `createdb`), as `postgres` when root.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Stops the server and removes its directory once this process has exited.
    fn watch(&self) {
        let pg_ctl = if self.as_postgres {
            format!(
                "runuser -u postgres -- '{}'",
                self.bin.join("pg_ctl").display()
            )
        } else {
            format!("'{}'", self.bin.join("pg_ctl").display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {pg_ctl} -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            data = self.data().display(),
            root = self.root.display(),
        );
        // setsid: a Ctrl-C to the test's process group must not end the watcher
        // first; -f forks it off, so setsid itself exits at once (no zombie).
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("starting the PostgreSQL watcher");
        assert!(
            status.success(),
            "starting the PostgreSQL watcher: {status}"
        );
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's unix socket (for `?host=<dir>` URLs).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }

    /// Creates a fresh, empty database and returns its `postgres://` URL (TCP on
    /// 127.0.0.1, user `postgres`).
    pub fn database(&self) -> String {
        let name = format!(
            "cairn_test_{}",
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        run(self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", &name]));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server (fast shutdown: open connections are closed); the data stays.
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "fast", "-w"]));
    }

    /// Starts the server (again) on the same port with the same data, and waits
    /// until it accepts connections.
    pub fn start(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("log"))
            .args(["start", "-w", "-t", "60"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

/// Runs a command to completion, panicking with its output if it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
