//! Who may call what: a layer in front of every gRPC service the daemon serves.
//!
//! Writes are the `Put` methods (blobs, directories, path info, under both
//! package names). With a write token configured, a write must carry it as
//! `authorization: Bearer TOKEN` metadata (or Basic with it as the password);
//! without one, writes are taken from loopback peers only, unless the operator
//! opened them to anyone. With a read token, every other call (but health and
//! reflection, which say nothing about the store) needs it or the write token.
//! A peer on the unix socket is trusted: the socket's file permissions are its
//! authentication.
//!
//! Refusals are `UNAUTHENTICATED` (no or a wrong token) and `PERMISSION_DENIED`
//! (writes not open to that peer), saying what the operator or client must do.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};

use crate::auth::Token;

/// Who may write without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnonymousWrites {
    /// Nobody: every write needs the write token (or comes over the socket).
    Refused,
    /// Peers on a loopback address (the default without a write token).
    Loopback,
    /// Anyone who reaches the port (`--allow-anonymous-writes`).
    Anyone,
}

/// The access policy of a gRPC server.
#[derive(Clone, Debug)]
pub struct Access {
    /// Writes carrying this token are accepted from anywhere.
    pub write_token: Option<Token>,
    /// If set, reads need this token or the write token.
    pub read_token: Option<Token>,
    /// Writes without the token.
    pub anonymous_writes: AnonymousWrites,
}

impl Default for Access {
    /// No tokens; writes from loopback peers and the socket only.
    fn default() -> Self {
        Self {
            write_token: None,
            read_token: None,
            anonymous_writes: AnonymousWrites::Loopback,
        }
    }
}

/// What a call does, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
    /// Health and reflection.
    Open,
}

fn kind(path: &str) -> Kind {
    const WRITE_SERVICES: &[&str] = &[
        "/tvix.castore.v1.BlobService/",
        "/tvix.castore.v1.DirectoryService/",
        "/tvix.store.v1.BlobService/",
        "/tvix.store.v1.DirectoryService/",
        "/tvix.store.v1.PathInfoService/",
    ];
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        return Kind::Open;
    }
    match path.rsplit_once('/') {
        Some((service, "Put")) if WRITE_SERVICES.iter().any(|s| s[..s.len() - 1] == *service) => {
            Kind::Write
        }
        _ => Kind::Read,
    }
}

/// The peer of a request, from what the transport recorded.
enum Peer {
    Socket,
    Tcp(Option<SocketAddr>),
}

impl Access {
    /// `Ok` if the call may go on, else the status to answer with.
    fn check<B>(&self, request: &Request<B>) -> Result<(), Status> {
        let kind = kind(request.uri().path());
        if kind == Kind::Open {
            return Ok(());
        }
        let peer = match request.extensions().get::<TcpConnectInfo>() {
            Some(info) => Peer::Tcp(info.remote_addr()),
            None if request.extensions().get::<UdsConnectInfo>().is_some() => Peer::Socket,
            // Neither: an in-process transport, as trusted as the socket.
            None => Peer::Socket,
        };
        let Peer::Tcp(addr) = peer else {
            return Ok(());
        };
        let carries = |t: &Option<Token>| t.as_ref().is_some_and(|t| t.check(request.headers()));
        match kind {
            Kind::Open => Ok(()),
            Kind::Read => {
                if self.read_token.is_none()
                    || carries(&self.read_token)
                    || carries(&self.write_token)
                {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(
                        "reads on this server need a token: send `authorization: Bearer TOKEN` metadata (cairn: --token-file FILE or CAIRN_TOKEN_FILE)",
                    ))
                }
            }
            Kind::Write => {
                if carries(&self.write_token) {
                    return Ok(());
                }
                let loopback = addr.is_some_and(|a| a.ip().is_loopback());
                match self.anonymous_writes {
                    AnonymousWrites::Anyone => Ok(()),
                    AnonymousWrites::Loopback if loopback => Ok(()),
                    _ if self.write_token.is_some() => Err(Status::unauthenticated(
                        "writes on this server need the write token: send `authorization: Bearer TOKEN` metadata (cairn: --token-file FILE or CAIRN_TOKEN_FILE)",
                    )),
                    _ => Err(Status::permission_denied(format!(
                        "writes from {} are refused: the server accepts writes from loopback peers only; its operator can set --grpc-token-file (clients then send the token) or --allow-anonymous-writes",
                        addr.map_or_else(|| "this peer".to_string(), |a| a.to_string())
                    ))),
                }
            }
        }
    }
}

/// A tower layer applying an [`Access`] policy.
#[derive(Clone, Debug)]
pub struct AccessLayer(pub Access);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            access: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`AccessLayer`].
#[derive(Clone, Debug)]
pub struct AccessService<S> {
    access: Access,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for AccessService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.access.check(&request) {
            Ok(()) => self.inner.call(request).boxed(),
            Err(status) => {
                tracing::debug!(path = request.uri().path(), status = %status.message(), "call refused");
                futures::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(path: &str, peer: Option<&str>, auth: Option<&str>) -> Request<()> {
        let mut r = Request::builder().uri(path);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let mut r = r.body(()).unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(p.parse().unwrap()),
            });
        }
        r
    }

    const PUT: &str = "/tvix.store.v1.PathInfoService/Put";
    const GET: &str = "/tvix.store.v1.PathInfoService/Get";

    fn code(access: &Access, path: &str, peer: Option<&str>, auth: Option<&str>) -> tonic::Code {
        match access.check(&request(path, peer, auth)) {
            Ok(()) => tonic::Code::Ok,
            Err(s) => s.code(),
        }
    }

    #[test]
    fn default_writes_from_loopback_and_socket_only() {
        let a = Access::default();
        assert_eq!(code(&a, PUT, Some("127.0.0.1:5000"), None), tonic::Code::Ok);
        assert_eq!(code(&a, PUT, Some("[::1]:5000"), None), tonic::Code::Ok);
        assert_eq!(code(&a, PUT, None, None), tonic::Code::Ok);
        assert_eq!(
            code(&a, PUT, Some("10.1.2.3:5000"), None),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code(&a, GET, Some("10.1.2.3:5000"), None), tonic::Code::Ok);
        let open = Access {
            anonymous_writes: AnonymousWrites::Anyone,
            ..Access::default()
        };
        assert_eq!(
            code(&open, PUT, Some("10.1.2.3:5000"), None),
            tonic::Code::Ok
        );
    }

    #[test]
    fn tokens() {
        let a = Access {
            write_token: Token::new("w"),
            read_token: Token::new("r"),
            anonymous_writes: AnonymousWrites::Refused,
        };
        let far = Some("10.1.2.3:5000");
        let near = Some("127.0.0.1:5000");
        for peer in [far, near] {
            assert_eq!(code(&a, PUT, peer, None), tonic::Code::Unauthenticated);
            assert_eq!(
                code(&a, PUT, peer, Some("Bearer r")),
                tonic::Code::Unauthenticated
            );
            assert_eq!(code(&a, PUT, peer, Some("Bearer w")), tonic::Code::Ok);
            assert_eq!(code(&a, GET, peer, None), tonic::Code::Unauthenticated);
            assert_eq!(
                code(&a, GET, peer, Some("Bearer x")),
                tonic::Code::Unauthenticated
            );
            assert_eq!(code(&a, GET, peer, Some("Bearer r")), tonic::Code::Ok);
            assert_eq!(code(&a, GET, peer, Some("Bearer w")), tonic::Code::Ok);
            assert_eq!(
                code(&a, "/grpc.health.v1.Health/Check", peer, None),
                tonic::Code::Ok
            );
        }
        // The socket's permissions are its authentication.
        assert_eq!(code(&a, PUT, None, None), tonic::Code::Ok);
        assert_eq!(code(&a, GET, None, None), tonic::Code::Ok);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("/tvix.castore.v1.BlobService/Put"), Kind::Write);
        assert_eq!(kind("/tvix.store.v1.PathInfoService/Put"), Kind::Write);
        assert_eq!(kind("/tvix.store.v1.DirectoryService/Put"), Kind::Write);
        assert_eq!(kind("/tvix.castore.v1.BlobService/Read"), Kind::Read);
        assert_eq!(
            kind("/tvix.store.v1.PathInfoService/CalculateNAR"),
            Kind::Read
        );
        assert_eq!(kind("/other.Service/Put"), Kind::Read);
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Kind::Open);
        assert_eq!(
            kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Kind::Open
        );
    }
}
