//! The `tvix.castore.v1` gRPC services over any [`BlobService`] and
//! [`DirectoryService`], and [`routes`]/[`serve`] helpers that add server reflection
//! (v1 and v1alpha) and `grpc.health.v1`.
//!
//! Status codes: `NOT_FOUND` for absent blobs and directories, `INVALID_ARGUMENT`
//! with a message naming the problem for anything malformed the client sent,
//! `DATA_LOSS` for corruption found at rest, `INTERNAL` only for the server's own
//! failures (see [`crate::Error`]'s conversion).

pub mod access;
mod blob;
mod directory;
pub mod metrics;
mod reset;
mod seed;

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::transport::server::Connected;

pub use blob::GrpcBlobServer;
pub use directory::GrpcDirectoryServer;
pub use seed::{SeedBlobServer, SeedDirectoryServer};

use crate::channel::MAX_DECODING_MESSAGE_SIZE;
use crate::proto::blob_service_server::BlobServiceServer;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::seed::blob_service_server::BlobServiceServer as SeedBlobServiceServer;
use crate::proto::seed::directory_service_server::DirectoryServiceServer as SeedDirectoryServiceServer;
use crate::{BlobService, DirectoryService, Error};

/// Largest piece of blob data the server puts in one `BlobChunk`, well under gRPC's
/// 4 MiB default message limit.
pub const MAX_BLOB_MESSAGE: usize = 1 << 20;

/// Encoded file descriptor sets of everything [`routes`] serves, for reflection.
/// A layer above that adds services passes its own sets as `extra_descriptors`.
pub const DESCRIPTOR_SETS: &[&[u8]] = &[
    crate::proto::FILE_DESCRIPTOR_SET,
    crate::proto::seed::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
];

/// The BlobService and DirectoryService servers (as `tvix.castore.v1` and as the
/// seed's `tvix.store.v1`, on the same store), gRPC reflection v1 and v1alpha
/// (describing them and every set in `extra_descriptors`) and `grpc.health.v1`
/// (reporting SERVING overall and for both services). Add more services to the
/// returned `Routes`, and report their health through the returned reporter.
pub async fn routes(
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    extra_descriptors: &[&'static [u8]],
) -> Result<(Routes, tonic_health::server::HealthReporter), Error> {
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure();
        for set in DESCRIPTOR_SETS.iter().chain(extra_descriptors) {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        builder
    };
    let bad_descriptor = |e: tonic_reflection::server::Error| {
        Error::InvalidArgument(format!("cannot build reflection service: {e}"))
    };
    let v1 = reflection().build_v1().map_err(bad_descriptor)?;
    let v1alpha = reflection().build_v1alpha().map_err(bad_descriptor)?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<BlobServiceServer<GrpcBlobServer>>()
        .await;
    reporter
        .set_serving::<DirectoryServiceServer<GrpcDirectoryServer>>()
        .await;
    reporter
        .set_serving::<SeedBlobServiceServer<SeedBlobServer>>()
        .await;
    reporter
        .set_serving::<SeedDirectoryServiceServer<SeedDirectoryServer>>()
        .await;

    let blob_server = GrpcBlobServer::new(blobs);
    let directory_server = GrpcDirectoryServer::new(directories);
    let mut builder = Routes::builder();
    builder
        .add_service(reset::NoResetEof(
            BlobServiceServer::new(blob_server.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
        ))
        .add_service(reset::NoResetEof(
            DirectoryServiceServer::new(directory_server.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
        ))
        .add_service(reset::NoResetEof(
            SeedBlobServiceServer::new(SeedBlobServer(blob_server))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
        ))
        .add_service(reset::NoResetEof(
            SeedDirectoryServiceServer::new(SeedDirectoryServer(directory_server))
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
        ))
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(health);
    Ok((builder.routes(), reporter))
}

/// The connections of a TCP listener with Nagle's algorithm off. gRPC writes a
/// small response (a Stat, a short blob) as separate frames; with Nagle on, the last
/// one waits for the client's delayed ACK, about 40 ms per request on Linux.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        // Not fatal: the connection works, only slower.
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Ok(conn)
    })
}

/// The connections of `incoming`, at most `max` at once: one beyond is closed as
/// soon as it is accepted, so a flood of idle connections cannot take every file
/// descriptor of the process (and stall its other listeners).
pub fn capped<I, IO, IE>(incoming: I, max: usize) -> impl Stream<Item = Result<Capped<IO>, IE>>
where
    I: Stream<Item = Result<IO, IE>>,
{
    use tokio_stream::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut refused = 0u64;
    incoming.filter_map(move |conn| match conn {
        Err(e) => Some(Err(e)),
        Ok(io) => match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Ok(Capped { io, _slot: slot })),
            Err(_) => {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        refused,
                        "gRPC at its connection limit: closing new connections"
                    );
                }
                None
            }
        },
    })
}

/// A connection holding one of [`capped`]'s slots until it is dropped.
pub struct Capped<IO> {
    io: IO,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<IO: Connected> Connected for Capped<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Capped<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Capped<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `routes` on the connections of `incoming` (a TCP or unix listener
/// stream) until `shutdown` completes, with the default [`access::Access`]:
/// writes from loopback peers and the socket only.
pub async fn serve<I, IO, IE>(
    routes: Routes,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(routes, access::Access::default(), incoming, shutdown).await
}

/// [`serve`] with the access policy `access`.
pub async fn serve_with<I, IO, IE>(
    routes: Routes,
    access: access::Access,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_observed(routes, access, None, incoming, shutdown).await
}

/// [`serve_with`], counting every call in `metrics` if given.
pub async fn serve_observed<I, IO, IE>(
    routes: Routes,
    access: access::Access,
    metrics: Option<Arc<metrics::GrpcMetrics>>,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use crate::channel::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        // A peer that went away without closing is noticed and its connection
        // dropped, instead of holding a descriptor for good.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .max_concurrent_streams(Some(1024))
        .layer(metrics::MetricsLayer(metrics))
        .layer(access::AccessLayer(access))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
