//! TLS with rustls (its `ring` provider): the server side of `cairn daemon`
//! (a certificate re-read on demand, handshakes off the accept loop) and the
//! client side of `grpc+https://` addresses (webpki roots plus a private CA).
//!
//! Server: [`ReloadingCert`] holds the certificate and key read from two PEM
//! files and hands the current pair to every new handshake;
//! [`ReloadingCert::reload`] (on SIGHUP) swaps in a new pair, and connections
//! already established keep the one they started with. [`incoming`] wraps a
//! stream of accepted connections (after [`crate::server::capped`], so a
//! connection counts against the cap while it shakes hands) into one of TLS
//! streams, each handshake in its own task with a time limit: a client that
//! connects and sends nothing delays no one else.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

pub use tokio_rustls::TlsAcceptor;

use crate::Error;

/// ALPN protocol id of HTTP/2, which gRPC needs.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!("cannot read TLS {what} {}: {e}", path.display()))
    })
}

/// The certificates of the PEM file `path`, in order; `what` names the file in
/// errors. An error if it holds none.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "TLS {what} {}: not a valid PEM file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "TLS {what} {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a certificate chain (PEM, the server's certificate first) and its
/// private key (PEM: PKCS#8, PKCS#1 or SEC1), and checks the key is the
/// certificate's.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let chain = read_certs(cert, "certificate")?;
    let key_pem = read_pem(key, "key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::InvalidArgument(format!(
            "TLS key {}: no private key in it ({e}; expected a PEM \"PRIVATE KEY\" block)",
            key.display()
        ))
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| Error::InvalidArgument(format!("TLS key {}: unusable: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::InvalidArgument(format!(
                "TLS key {} does not belong to the certificate {} (the first certificate in it must be the server's own)",
                key.display(),
                cert.display()
            )))
        }
        Err(e) => Err(Error::InvalidArgument(format!(
            "TLS certificate {}: {e}",
            cert.display()
        ))),
    }
}

/// The server's certificate and key, read from two PEM files and re-read by
/// [`reload`](Self::reload). Every new handshake gets the pair current then.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Reads the certificate chain `cert` and its key `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, Error> {
        let current = load_certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads both files again and, if they are good, serves them from the next
    /// handshake on; if not, the error says why and the old pair stays.
    pub fn reload(&self) -> Result<(), Error> {
        let new = Arc::new(load_certified_key(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// An acceptor serving this certificate and offering the ALPN protocols
    /// `alpn`, most preferred first (a client that offers none of them is
    /// refused; one that offers no ALPN at all is served).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidArgument(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A panic elsewhere while holding the lock cannot leave a half-written
        // Arc behind: the swap is a single assignment.
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Shakes hands on `io` as the server, giving up after `limit`.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    limit: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(io)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {limit:?}"),
        )),
    }
}

/// The TLS connections made from those of `incoming`: each handshake runs in a
/// task of its own (at most `limit` long), and a connection is passed on once
/// its handshake is done; one that fails is logged (debug) and closed. Accept
/// errors pass through. The listener is dropped once the returned stream is.
pub fn incoming<I, IO, IE>(
    incoming: I,
    acceptor: TlsAcceptor,
    limit: Duration,
) -> impl Stream<Item = Result<TlsConn<IO>, IE>>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: Send + 'static,
{
    use tokio_stream::StreamExt;
    // Room for a burst of finished handshakes; a full channel only makes the
    // handshake tasks wait, not the accept loop below.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let conn = tokio::select! {
                // The server stopped and dropped the stream: stop accepting.
                () = tx.closed() => return,
                conn = incoming.next() => match conn {
                    Some(conn) => conn,
                    None => return,
                },
            };
            match conn {
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Ok(io) => {
                    let tx = tx.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match accept(&acceptor, io, limit).await {
                            Ok(tls) => {
                                let _ = tx.send(Ok(TlsConn(tls))).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// [`crate::server::serve_with`] on the connections of `incoming` (already
/// capped: a connection holds its slot while it shakes hands), over TLS if
/// `tls` is given, each handshake within `limit`.
pub async fn serve_with<I, IO>(
    tls: Option<TlsAcceptor>,
    limit: Duration,
    routes: tonic::service::Routes,
    access: crate::server::access::Access,
    metrics: Option<std::sync::Arc<crate::server::metrics::GrpcMetrics>>,
    incoming: I,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    use crate::server::serve_observed;
    match tls {
        Some(tls) => {
            let incoming = self::incoming(incoming, tls, limit);
            serve_observed(routes, access, metrics, incoming, shutdown).await
        }
        None => serve_observed(routes, access, metrics, incoming, shutdown).await,
    }
}

/// A server-side TLS connection that reports the peer of the connection under it
/// (so access checks see the remote address, as over plain TCP).
pub struct TlsConn<IO>(tokio_rustls::server::TlsStream<IO>);

impl<IO: Connected> Connected for TlsConn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Extra CA certificates this process's `grpc+https://` clients trust.
static CLIENT_CA: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
/// The client configuration, built on first use.
static CLIENT_CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();

/// Makes this process's `grpc+https://` clients trust the CA certificates in the
/// PEM file `path` besides the webpki roots (for a daemon whose certificate a
/// private CA signed). Set once, by the binary, before any client is made.
pub fn set_client_ca_file(path: &Path) -> Result<(), Error> {
    let certs = read_certs(path, "CA file")?;
    CLIENT_CA
        .set(certs)
        .map_err(|_| Error::InvalidArgument("the client CA file is already set".into()))
}

/// The TLS configuration of `grpc+https://` clients: HTTP/2 by ALPN, servers
/// verified against the webpki roots and the CA of [`set_client_ca_file`].
fn client_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    CLIENT_CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in CLIENT_CA.get().into_iter().flatten() {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(Error::InvalidArgument)
}

/// Connects to `hostport` (`host:port`, `[v6]:port`) over TLS, verifying the
/// server's certificate for `host`. Errors say what to do about a certificate
/// that is not trusted or not the host's.
pub(crate) async fn connect(
    hostport: &str,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let (name, config) = client_parts(hostport)?;
    let tcp = tokio::net::TcpStream::connect(hostport).await?;
    // As for plain channels: small gRPC frames must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(hostport, e))
}

fn client_parts(hostport: &str) -> io::Result<(ServerName<'static>, Arc<rustls::ClientConfig>)> {
    let config = client_config().map_err(io::Error::other)?;
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("grpc+https://{hostport}: {host:?} is not a valid TLS server name: {e}"),
        )
    })?;
    Ok((name, config))
}

fn handshake_error(hostport: &str, e: io::Error) -> io::Error {
    let hint = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            " (the server's certificate is not signed by a trusted CA: give the CA's certificate with --ca-file or CAIRN_CA_FILE)"
        }
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => {
            " (the certificate does not name the host in the address: connect by a name or IP address it was issued for)"
        }
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("TLS handshake with {hostport} failed: {e}{hint}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        let name = |hostport: &str| client_parts(hostport).map(|(n, _)| n.to_str().into_owned());
        assert_eq!(name("localhost:443").ok().as_deref(), Some("localhost"));
        assert_eq!(name("127.0.0.1:8443").ok().as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:8443").ok().as_deref(), Some("::1"));
        let err = name("bad_name!:443").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("not a valid TLS server name")),
            "{err:?}"
        );
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let missing = dir.path().join("missing.pem");
        let err = load_certified_key(&missing, &empty)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("cannot read TLS certificate") && err.contains("missing.pem"),
            "{err}"
        );
        let err = set_client_ca_file(&empty)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("no certificate") && err.contains("empty.pem"),
            "{err}"
        );
    }
}
