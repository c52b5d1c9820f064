//! Makes a request stream reset by the client an error for the handlers, never an
//! end of stream.
//!
//! tonic's server-side decoder turns a request stream that failed with `Cancelled`
//! (the client sent `RST_STREAM(CANCEL)`, which hyper and tonic clients do when a
//! call is dropped) into a clean end of stream (tonic 0.14 `codec/decode.rs`). For
//! the client-streaming `Put` calls that would commit a truncated upload, so the
//! request body of every call is wrapped to report that reset as `ABORTED`, which
//! the decoder passes on as the error it is.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;

/// A request body whose `Cancelled` error becomes `Aborted`.
struct ResetIsError(Body);

impl http_body::Body for ResetIsError {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.0).poll_frame(cx).map_err(|status| {
            if status.code() == tonic::Code::Cancelled {
                Status::aborted(format!(
                    "the client reset the request stream before its end: {}",
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A gRPC service whose request streams end only when the client ends them.
#[derive(Clone)]
pub(super) struct NoResetEof<S>(pub S);

impl<S: NamedService> NamedService for NoResetEof<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for NoResetEof<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0
            .call(request.map(|body| Body::new(ResetIsError(body))))
    }
}
