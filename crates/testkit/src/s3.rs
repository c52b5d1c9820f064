//! A real S3 server on loopback: `s3s-fs` (the s3s project's S3 server storing
//! objects as files under a root directory), with SigV4 authentication on.
//!
//! One server per test process, started on first use by [`server`] on a free port
//! of 127.0.0.1 with a fresh root directory. Statics are never dropped, so a
//! watcher shell stops the server (and removes its root) once the test process is
//! gone. The binary comes from `scripts/install-test-deps.sh`
//! (`$CAIRN_TEST_TOOLS/bin/s3s-fs`, default `/opt/cairn-test-tools`) or `PATH`;
//! missing, it is a test failure saying to run that script, never a skip.
//!
//! Credentials: the server checks one access key and secret ([`ACCESS_KEY`],
//! [`SECRET_KEY`]). The fixture writes them as profile [`PROFILE`] of a shared
//! credentials file in its directory, and the URLs of [`S3Server::bucket`] name
//! that file and profile (`credentials_file=`, `profile=`): they carry nothing
//! secret, and work unchanged in the test process and in daemons it starts,
//! without touching the environment.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "cairn-test-key";
/// The secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "cairn-test-secret-0123456789";
/// The profile of the fixture's credentials file holding them.
pub const PROFILE: &str = "cairn-test";
/// The region the URLs name (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// The running `s3s-fs` of this test process.
pub struct S3Server {
    addr: SocketAddr,
    /// Root directory of the stored data: `<root>/<bucket>/<key>` is an object.
    root: PathBuf,
    credentials: PathBuf,
    /// The directory holding `root` and `credentials`.
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    buckets: AtomicU32,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server shared by the tests of this process, started on first use. A test
/// that stops the server uses one of its own ([`S3Server::private`]).
pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::launch)
}

/// The `s3s-fs` binary: `$CAIRN_TEST_TOOLS/bin/s3s-fs`, else the one on `PATH`.
fn binary() -> PathBuf {
    let tools =
        std::env::var("CAIRN_TEST_TOOLS").unwrap_or_else(|_| "/opt/cairn-test-tools".into());
    let installed = Path::new(&tools).join("bin/s3s-fs");
    if installed.is_file() {
        return installed;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "s3s-fs is missing (looked for {} and on PATH): run scripts/install-test-deps.sh \
             (or set CAIRN_TEST_TOOLS to where it is installed)",
            installed.display()
        )
    })
}

/// `value` with `%`, `&`, `?`, `=` and `#` percent-encoded, for a URL parameter.
pub fn encode_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '%' | '&' | '?' | '=' | '#' | ' ' | '+' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Runs `script` in a detached shell (a child of init, not of the test process,
/// so it leaves no zombie behind and outlives the test process).
fn watch(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("({script}) </dev/null >/dev/null 2>&1 &"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot start a watcher shell: {status}");
}

impl S3Server {
    /// A server of its own (not the shared one of [`server`]), for a test that
    /// stops and restarts it while other tests run; stopped and removed when dropped.
    pub fn private() -> S3Server {
        Self::launch()
    }

    fn launch() -> S3Server {
        binary();
        let dir = tempfile::Builder::new()
            .prefix("cairn-s3s-")
            .tempdir()
            .unwrap()
            .keep();
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        let credentials = dir.join("credentials");
        std::fs::write(
            &credentials,
            format!(
                "[{PROFILE}]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
            ),
        )
        .unwrap();
        // A free port: bound and released here, taken by the server right after
        // (and kept for its restarts).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let server = S3Server {
            addr,
            root,
            credentials,
            dir: dir.clone(),
            child: Mutex::new(None),
            buckets: AtomicU32::new(0),
        };
        server.start();
        // Removes the fixture's directory once the test process is gone (the
        // watchers of `start` stop the servers).
        let pid = std::process::id();
        watch(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; sleep 1; rm -rf '{}'",
            dir.display()
        ));
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The root directory of the stored data: object `key` of bucket `b` is the
    /// file `<root>/<b>/<key>` (tests damage objects there).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared credentials file holding profile [`PROFILE`].
    pub fn credentials_file(&self) -> &Path {
        &self.credentials
    }

    /// A fresh, empty bucket, as the URL of a blob service on it:
    /// `s3://NAME?endpoint=http://127.0.0.1:PORT&region=us-east-1&credentials_file=…&profile=cairn-test`.
    /// The caller appends what else it needs (`&index=…`).
    pub fn bucket(&self) -> String {
        let name = format!("bucket-{}", self.buckets.fetch_add(1, Ordering::Relaxed));
        // s3s-fs keeps a bucket as a directory of its root (its CreateBucket is a
        // mkdir): made directly, without an S3 client in the test kit.
        std::fs::create_dir(self.root.join(&name)).unwrap();
        format!(
            "s3://{name}?endpoint={}&region={REGION}&credentials_file={}&profile={PROFILE}",
            self.endpoint(),
            self.credentials.display()
        )
    }

    /// A fresh bucket's URL with `index=` naming the PostgreSQL database `index`
    /// (percent-encoded, so that its own `?`, `&` and `=` stay inside it).
    pub fn blob_url(&self, index: &str) -> String {
        format!("{}&index={}", self.bucket(), encode_param(index))
    }

    /// Starts the server (again) on its port, with the same data. Waits until it
    /// accepts connections.
    pub fn start(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.is_some() {
            return;
        }
        let mut c = Command::new(binary())
            .arg("--host")
            .arg(self.addr.ip().to_string())
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start s3s-fs: {e}"));
        // Stops this server when the test process is gone, or ends with it.
        let (test, server) = (std::process::id(), c.id());
        watch(&format!(
            "while kill -0 {test} 2>/dev/null && kill -0 {server} 2>/dev/null; do sleep 0.5; done; \
             kill {server} 2>/dev/null"
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "s3s-fs exited at start ({status}); is port {} taken?",
                    self.addr.port()
                );
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {} within 20 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        *child = Some(c);
    }

    /// Stops the server (a kill: as abrupt as a crash); [`S3Server::start`] brings
    /// it back on the same port with the same data.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The status line of a raw, unsigned HTTP request.
    fn status(server: &S3Server, request_line: &str) -> String {
        let mut s = TcpStream::connect(server.addr).unwrap();
        write!(
            s,
            "{request_line} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn serves_with_authentication_and_restarts() {
        let s = S3Server::private();
        let url = s.bucket();
        assert!(
            url.starts_with("s3://bucket-0?endpoint=http://127.0.0.1:"),
            "{url}"
        );
        assert!(s.root().join("bucket-0").is_dir());
        // Unsigned requests are refused: authentication is on.
        let st = status(&s, "GET /bucket-0/x");
        assert!(st.contains(" 403 "), "{st}");
        s.stop();
        assert!(TcpStream::connect(s.addr).is_err(), "stopped");
        s.start();
        let st = status(&s, "GET /bucket-0/x");
        assert!(st.contains(" 403 "), "{st}");
        let dir = s.dir.clone();
        drop(s);
        assert!(!dir.exists(), "removed when dropped");
    }
}
