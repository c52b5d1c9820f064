//! Nix's own formats, byte-exact with Nix 2.x: everything cairn must read and write
//! exactly as Nix does, and nothing else.
//!
//! - [`nixbase32`]: Nix's base-32 alphabet and bit order.
//! - [`hash`]: md5/sha1/sha256/sha512 digests in hex, nixbase32, base64 and SRI.
//! - [`store_path`]: store path parsing, name rules, and store path computation
//!   (`makeStorePath`, fixed-output and text paths).
//! - [`nar`]: the NAR archive format, a strict streaming reader and a streaming
//!   writer, sync and async.
//! - [`json`]: JSON strings escaped as Nix's JSON writer escapes them.
//! - [`narinfo`] and [`cache_info`]: the binary cache's text formats.
//! - [`signature`]: ed25519 keys and signatures in Nix's `name:base64` text form, and
//!   the fingerprint they sign.
//!
//! This crate does no storage and no networking: content-addressed storage lives in
//! `cairn-castore`, the store layer in `cairn-store`. It uses tokio only for the
//! `AsyncRead`/`AsyncWrite` traits of the async NAR reader and writer.

pub mod cache_info;
pub mod hash;
pub mod json;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod signature;
pub mod store_path;
