//! gRPC channels for the `grpc+http://`, `grpc+https://` and `grpc+unix://` client
//! backends.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Request, header};
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::auth::Token;

/// The credential this process's gRPC clients send, if any.
static CLIENT_TOKEN: OnceLock<HeaderValue> = OnceLock::new();

/// Makes every gRPC client of this process send `token` (as `authorization:
/// Bearer TOKEN` metadata), for servers that require one. Set once, by the
/// binary, before any client is made; later calls fail.
pub fn set_client_token(token: &Token) -> Result<(), Error> {
    let value = token.bearer().ok_or_else(|| {
        Error::InvalidArgument("the token holds characters not allowed in a header".into())
    })?;
    CLIENT_TOKEN
        .set(value)
        .map_err(|_| Error::InvalidArgument("the client token is already set".into()))
}

/// A [`Channel`] that adds the process's client token (see [`set_client_token`])
/// to every call.
#[derive(Clone, Debug)]
pub struct GrpcChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

impl GrpcChannel {
    fn new(inner: Channel) -> Self {
        Self {
            inner,
            authorization: CLIENT_TOKEN.get().cloned(),
        }
    }
}

impl tower::Service<Request<Body>> for GrpcChannel {
    type Response = <Channel as tower::Service<Request<Body>>>::Response;
    type Error = <Channel as tower::Service<Request<Body>>>::Error;
    type Future = <Channel as tower::Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

/// Largest message a client or server of ours decodes. Blob data is sent in pieces
/// of at most [`crate::server::MAX_BLOB_MESSAGE`]; only a huge flat directory can
/// come near this, and such a directory must still be transferable.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 << 20;

/// HTTP/2 flow-control windows and frame size of our clients and servers. The
/// defaults (64 KiB windows, 16 KiB frames) stall a blob stream once per 64 KiB
/// waiting for a WINDOW_UPDATE; these let a 1 MiB blob message travel in one frame
/// and several of them be in flight. Memory: a server buffers at most one
/// connection window per connection; a client one stream window per stream it
/// keeps open (see [`CLIENT_CONNECTION_WINDOW`]).
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
/// The servers' connection window. See [`STREAM_WINDOW`].
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;
/// See [`STREAM_WINDOW`].
pub(crate) const MAX_FRAME: u32 = 1 << 20;

/// A client's connection window: the largest HTTP/2 allows. A client keeps
/// streams open that it does not read for a while (`cairn mount` keeps blob
/// readers between the kernel's reads); what the server sent them counts
/// against the connection window until read, and with a window of a few
/// streams' worth every other stream on the connection stalled for good.
/// What the client buffers stays bounded by the stream window per stream, and
/// it decides how many streams it opens.
const CLIENT_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

fn tuned(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
}

/// Where a gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcAddr {
    /// `grpc+http://host:port`: plaintext HTTP/2 over TCP.
    Http(String),
    /// `grpc+https://host:port`: HTTP/2 over TLS over TCP, the server's
    /// certificate verified for `host` (see [`crate::tls`]).
    Https(String),
    /// `grpc+unix:///path`: plaintext HTTP/2 over a unix socket.
    Unix(PathBuf),
}

impl GrpcAddr {
    /// Parses `grpc+http://host:port`, `grpc+https://host:port` or
    /// `grpc+unix:///absolute/path`; `None` for other schemes, an error for a
    /// malformed address of these schemes.
    pub fn parse(url: &str) -> Option<Result<Self, Error>> {
        for (scheme, make) in [
            ("grpc+http://", GrpcAddr::Http as fn(String) -> Self),
            ("grpc+https://", GrpcAddr::Https),
        ] {
            let Some(rest) = url.strip_prefix(scheme) else {
                continue;
            };
            let ok = !rest.is_empty()
                && !rest.contains(['/', '?', '#', '@'])
                && rest.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
            return Some(if ok {
                Ok(make(rest.to_string()))
            } else {
                Err(Error::InvalidArgument(format!(
                    "{url:?}: expected {scheme}host:port"
                )))
            });
        }
        if let Some(rest) = url.strip_prefix("grpc+unix://") {
            return Some(
                if rest.starts_with('/') && rest.len() > 1 && !rest.contains(['?', '#']) {
                    Ok(GrpcAddr::Unix(PathBuf::from(rest)))
                } else {
                    Err(Error::InvalidArgument(format!(
                        "{url:?}: expected grpc+unix:///absolute/path"
                    )))
                },
            );
        }
        None
    }

    /// A channel that connects on first use (and reconnects when needed), so a
    /// client can be set up before its server is up.
    pub fn channel(&self) -> Result<GrpcChannel, Error> {
        self.plain_channel().map(GrpcChannel::new)
    }

    fn plain_channel(&self) -> Result<Channel, Error> {
        match self {
            GrpcAddr::Http(hostport) => {
                let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
                    .map_err(|e| Error::InvalidArgument(format!("grpc+http://{hostport}: {e}")))?;
                Ok(tuned(endpoint).connect_lazy())
            }
            GrpcAddr::Https(hostport) => {
                let endpoint = Endpoint::from_shared(format!("https://{hostport}"))
                    .map_err(|e| Error::InvalidArgument(format!("grpc+https://{hostport}: {e}")))?;
                let hostport = hostport.clone();
                // Our own connector rather than tonic's TLS: it is the same rustls,
                // and its errors can say what to do about an untrusted certificate.
                Ok(
                    tuned(endpoint).connect_with_connector_lazy(tower::service_fn(
                        move |_: tonic::transport::Uri| {
                            let hostport = hostport.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(
                                    crate::tls::connect(&hostport).await?,
                                ))
                            }
                        },
                    )),
                )
            }
            GrpcAddr::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused: the connector decides.
                let endpoint = tuned(Endpoint::from_static("http://[::]:50051"));
                Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
                    move |_: tonic::transport::Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    },
                )))
            }
        }
    }
}
