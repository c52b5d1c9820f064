//! TLS flags: the daemon's certificate (`--tls-cert`/`--tls-key`, re-read on
//! SIGHUP) and the private CA of `grpc+https://` clients (`--ca-file`). The TLS
//! itself is `cairn_castore::tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_castore::tls::{ALPN_H2, ALPN_HTTP1, ReloadingCert, TlsAcceptor};
use clap::Args;

/// How long a gRPC client may take to finish its TLS handshake (the binary
/// cache uses its --http-header-timeout).
pub const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `cairn daemon` for TLS.
#[derive(Args)]
pub struct TlsArgs {
    /// Serve gRPC on --listen and the binary cache on --http-listen over TLS
    /// with this certificate chain (PEM, the server's certificate first);
    /// needs --tls-key. Both files are read again on SIGHUP: new connections
    /// get the new certificate, open ones keep theirs. The unix socket stays
    /// plaintext.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Trust the CA certificates in this PEM file, besides the webpki roots,
    /// for grpc+https:// backends (--blob-service-addr and the others).
    #[arg(long, env = "CAIRN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The daemon's TLS: its certificate, re-read on SIGHUP.
pub struct ServerTls {
    cert: Arc<ReloadingCert>,
}

impl ServerTls {
    /// The certificate of `--tls-cert`/`--tls-key`, if given (clap makes sure
    /// both or neither are).
    pub fn from_args(args: &TlsArgs) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        let cert = ReloadingCert::load(cert, key).context(
            "cannot set up TLS from --tls-cert and --tls-key (PEM files: the certificate chain, and its private key)",
        )?;
        Ok(Some(Self { cert }))
    }

    /// An acceptor for gRPC: HTTP/2 only.
    pub fn grpc(&self) -> anyhow::Result<TlsAcceptor> {
        Ok(self.cert.acceptor(&[ALPN_H2])?)
    }

    /// An acceptor for the binary cache, which speaks HTTP/1.1.
    pub fn http(&self) -> anyhow::Result<TlsAcceptor> {
        Ok(self.cert.acceptor(&[ALPN_HTTP1])?)
    }

    /// Re-reads the certificate on every SIGHUP, from a task of its own; a bad
    /// one is reported and the old one kept. Call in the runtime, before the
    /// daemon says it is ready (a SIGHUP before this kills the process).
    pub fn reload_on_sighup(&self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup =
            signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let cert = self.cert.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match cert.reload() {
                    Ok(()) => eprintln!(
                        "cairn daemon: reloaded the TLS certificate {}",
                        cert.cert_path().display()
                    ),
                    Err(e) => eprintln!(
                        "cairn daemon: cannot reload the TLS certificate, still serving the old one: {e}"
                    ),
                }
            }
        });
        Ok(())
    }
}

/// Makes this process's `grpc+https://` clients trust the CA in `file` (if
/// given) besides the webpki roots.
pub fn trust_ca_file(file: Option<&Path>) -> anyhow::Result<()> {
    if let Some(file) = file {
        cairn_castore::tls::set_client_ca_file(file).context("--ca-file")?;
    }
    Ok(())
}
