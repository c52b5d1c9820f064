//! Servers on loopback TCP and on unix sockets, for tests and benches that talk to
//! a real server over a real socket.

use std::future::Future;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// A server task listening on a fresh port or socket; dropping it stops the server
/// (and removes the socket's directory).
pub struct Server {
    /// `grpc+http://127.0.0.1:PORT` or `grpc+unix:///…/NAME.sock`.
    pub url: String,
    /// The address, for TCP.
    pub tcp: Option<std::net::SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `serve` on a listener bound to a free port of 127.0.0.1.
pub async fn tcp<F, Fut, E>(serve: F) -> Server
where
    F: FnOnce(TcpListenerStream) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = serve(TcpListenerStream::new(listener));
    Server {
        url: format!("grpc+http://{addr}"),
        tcp: Some(addr),
        task: tokio::spawn(async move { served.await.unwrap() }),
        _dir: None,
    }
}

/// Runs `serve` on a unix socket named `name` in a fresh temporary directory.
pub async fn unix<F, Fut, E>(name: &str, serve: F) -> Server
where
    F: FnOnce(UnixListenerStream) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let served = serve(UnixListenerStream::new(listener));
    Server {
        url: format!("grpc+unix://{}", path.display()),
        tcp: None,
        task: tokio::spawn(async move { served.await.unwrap() }),
        _dir: Some(dir),
    }
}
