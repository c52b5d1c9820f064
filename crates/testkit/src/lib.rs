//! What cairn's tests and benches share, so that each test states only what it
//! checks: the real Nix run in a scratch environment of its own ([`nix`]), the
//! oracle gRPC client we did not write ([`oracle`]), servers on loopback
//! ([`loopback`]), real PostgreSQL and S3 servers ([`postgres`], [`s3`]), reproducible pseudo-random data ([`data`]), byte streams
//! read up to their first error ([`stream`]) and protobuf encoded by hand
//! ([`pb`]).
//!
//! A dev-dependency only. It panics instead of returning errors: in a test a panic
//! with a message saying what is missing is the failure report. Tests that need
//! Nix or the oracle fail when it is missing; they never skip.
#![allow(clippy::unwrap_used)]

pub mod data;
pub mod loopback;
pub mod nix;
pub mod oracle;
pub mod pb;
pub mod postgres;
pub mod s3;
pub mod stream;
