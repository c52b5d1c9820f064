//! The operations, each read and answered as Nix's daemon (`daemon.cc`) does for
//! the session's protocol version: the request's arguments, then `STDERR_LAST`
//! and the result, or `STDERR_ERROR` (the connection then goes on, unless the
//! request itself was malformed).

use std::collections::BTreeSet;

use cairn_castore::{B3Digest, Node};
use cairn_nix::hash::{HashAlgo, Hasher, NixHash};
use cairn_nix::narinfo::ContentAddress;
use cairn_nix::signature::Signature;
use cairn_nix::store_path::{FileIngestionMethod, StorePath};
use cairn_store::pathinfo::PathInfo;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::wire::{self, Error, Framed, Tunnel, minor};
use crate::{NO_BUILDS, NixDaemon};

/// Longest store path string read (a store path is at most 211 bytes of name
/// after `/nix/store/` and its hash).
const MAX_PATH: usize = 4096;
/// Most entries of a list of paths or strings.
const MAX_LIST: usize = 1 << 20;
/// Longest other string (option values, signatures, content addresses).
const MAX_STRING: usize = 64 * 1024;
/// Largest text file (`AddTextToStore`, `AddToStore` with `text:`), held in
/// memory as Nix's daemon holds it.
const MAX_TEXT: usize = 64 << 20;

mod op {
    pub const IS_VALID_PATH: u64 = 1;
    pub const HAS_SUBSTITUTES: u64 = 3;
    pub const QUERY_REFERRERS: u64 = 6;
    pub const ADD_TO_STORE: u64 = 7;
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    pub const BUILD_PATHS: u64 = 9;
    pub const ENSURE_PATH: u64 = 10;
    pub const ADD_TEMP_ROOT: u64 = 11;
    pub const ADD_INDIRECT_ROOT: u64 = 12;
    pub const SYNC_WITH_GC: u64 = 13;
    pub const FIND_ROOTS: u64 = 14;
    pub const SET_OPTIONS: u64 = 19;
    pub const COLLECT_GARBAGE: u64 = 20;
    pub const QUERY_SUBSTITUTABLE_PATH_INFO: u64 = 21;
    pub const QUERY_ALL_VALID_PATHS: u64 = 23;
    pub const QUERY_PATH_INFO: u64 = 26;
    pub const QUERY_PATH_FROM_HASH_PART: u64 = 29;
    pub const QUERY_SUBSTITUTABLE_PATH_INFOS: u64 = 30;
    pub const QUERY_VALID_PATHS: u64 = 31;
    pub const QUERY_SUBSTITUTABLE_PATHS: u64 = 32;
    pub const QUERY_VALID_DERIVERS: u64 = 33;
    pub const OPTIMISE_STORE: u64 = 34;
    pub const VERIFY_STORE: u64 = 35;
    pub const BUILD_DERIVATION: u64 = 36;
    pub const ADD_SIGNATURES: u64 = 37;
    pub const NAR_FROM_PATH: u64 = 38;
    pub const ADD_TO_STORE_NAR: u64 = 39;
    pub const QUERY_MISSING: u64 = 40;
    pub const QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;
    pub const REGISTER_DRV_OUTPUT: u64 = 42;
    pub const QUERY_REALISATION: u64 = 43;
    pub const ADD_MULTIPLE_TO_STORE: u64 = 44;
    pub const ADD_BUILD_LOG: u64 = 45;
    pub const BUILD_PATHS_WITH_RESULTS: u64 = 46;
    pub const ADD_PERM_ROOT: u64 = 47;
}

/// A connection after its greeting.
pub(crate) struct Conn<'d, R, W> {
    pub daemon: &'d NixDaemon,
    pub from: BufReader<R>,
    pub to: BufWriter<W>,
    pub version: u64,
    pub trusted: bool,
}

/// A path's metadata as a client declares it (`AddToStoreNar`,
/// `AddMultipleToStore`), parsed.
struct Declared {
    path: StorePath,
    deriver: Option<StorePath>,
    nar_sha256: [u8; 32],
    nar_size: u64,
    references: Vec<StorePath>,
    signatures: Vec<Signature>,
    ca: Option<ContentAddress>,
}

/// The fields of a `ValidPathInfo` as sent, before they are checked.
struct RawInfo {
    path: StorePath,
    deriver: Option<StorePath>,
    nar_hash: String,
    references: Vec<StorePath>,
    nar_size: u64,
    signatures: Vec<String>,
    ca: String,
}

async fn read_path<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Result<StorePath, Error> {
    let s = wire::read_string(r, MAX_PATH, what).await?;
    parse_path(&s)
}

fn parse_path(s: &str) -> Result<StorePath, Error> {
    StorePath::parse_absolute(s)
        .map_err(|e| Error::protocol(format!("path '{s}' is not a valid store path: {e}")))
}

async fn read_opt_path<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &str,
) -> Result<Option<StorePath>, Error> {
    let s = wire::read_string(r, MAX_PATH, what).await?;
    if s.is_empty() {
        Ok(None)
    } else {
        parse_path(&s).map(Some)
    }
}

async fn read_paths<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Result<Vec<StorePath>, Error> {
    let n = wire::read_u64(r).await?;
    if n > MAX_LIST as u64 {
        return Err(Error::protocol(format!(
            "{what}: {n} paths, more than the {MAX_LIST} allowed"
        )));
    }
    // n <= MAX_LIST: fits; reserved only up to a bound, filled as paths arrive.
    let mut out = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        out.push(read_path(r, what).await?);
    }
    Ok(out)
}

/// A derived path (`BuildPaths`, `QueryMissing`) as the session's version means
/// it: `DRV!OUTPUTS` is a derivation's outputs (`*` for all); a bare path is that
/// path, except that before 1.30 a bare `.drv` path stands for all its outputs
/// (Nix's `parsePathWithOutputs(...).toDerivedPath()`).
fn derived_path(t: &str, version: u64) -> Result<(StorePath, Option<&str>), Error> {
    match t.split_once('!') {
        Some((drv, wanted)) => Ok((parse_path(drv)?, Some(wanted))),
        None => {
            let p = parse_path(t)?;
            if minor(version) < 30 && p.name().ends_with(".drv") {
                Ok((p, Some("*")))
            } else {
                Ok((p, None))
            }
        }
    }
}

/// A `ValidPathInfo` in the worker protocol's format (with the 1.16 fields,
/// which every version served has): path, deriver, NAR hash, references,
/// registration time, NAR size, ultimate, signatures, content address.
async fn read_info<R: AsyncRead + Unpin>(r: &mut R) -> Result<RawInfo, Error> {
    let path = read_path(r, "path").await?;
    let deriver = read_opt_path(r, "deriver").await?;
    let nar_hash = wire::read_string(r, MAX_STRING, "narHash").await?;
    let references = read_paths(r, "references").await?;
    let _registration_time = wire::read_u64(r).await?;
    let nar_size = wire::read_u64(r).await?;
    let _ultimate = wire::read_bool(r).await?;
    let signatures = wire::read_strings(r, 1024, MAX_STRING, "sigs").await?;
    let ca = wire::read_string(r, MAX_STRING, "ca").await?;
    Ok(RawInfo {
        path,
        deriver,
        nar_hash,
        references,
        nar_size,
        signatures,
        ca,
    })
}

impl RawInfo {
    fn parse(self) -> Result<Declared, Error> {
        let p = self.path.to_absolute();
        let nar_sha256 = match NixHash::parse_any(&self.nar_hash, Some(HashAlgo::Sha256)) {
            Ok(NixHash::Sha256(d)) => d,
            Ok(other) => {
                return Err(Error::op(format!(
                    "path '{p}': NAR hash '{}' is not SHA-256",
                    other.to_sri()
                )));
            }
            Err(e) => {
                return Err(Error::op(format!(
                    "path '{p}': bad NAR hash '{}': {e}",
                    self.nar_hash
                )));
            }
        };
        let signatures = self
            .signatures
            .iter()
            .map(|s| {
                s.parse::<Signature>()
                    .map_err(|e| Error::op(format!("path '{p}': bad signature '{s}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ca = if self.ca.is_empty() {
            None
        } else {
            Some(self.ca.parse::<ContentAddress>().map_err(|e| {
                Error::op(format!(
                    "path '{p}': bad content address '{}': {e}",
                    self.ca
                ))
            })?)
        };
        Ok(Declared {
            path: self.path,
            deriver: self.deriver,
            nar_sha256,
            nar_size: self.nar_size,
            references: self.references,
            signatures,
            ca,
        })
    }
}

/// How an `AddToStore` dump is hashed.
#[derive(Clone, Copy, Debug)]
enum CaMethod {
    Text,
    Fixed(FileIngestionMethod, HashAlgo),
}

fn parse_ca_method(s: &str) -> Result<CaMethod, Error> {
    let bad = || Error::op(format!("unsupported content-address method '{s}'"));
    if s == "text:sha256" {
        return Ok(CaMethod::Text);
    }
    let rest = s.strip_prefix("fixed:").ok_or_else(bad)?;
    let (method, algo) = match rest.strip_prefix("r:") {
        Some(algo) => (FileIngestionMethod::Recursive, algo),
        None => (FileIngestionMethod::Flat, rest),
    };
    let algo = HashAlgo::from_name(algo).ok_or_else(bad)?;
    Ok(CaMethod::Fixed(method, algo))
}

/// The path info of a content-addressed path the daemon made itself.
fn content_addressed(
    store_path: StorePath,
    node: Node,
    references: Vec<StorePath>,
    (nar_size, nar_sha256): (u64, [u8; 32]),
    ca: Option<ContentAddress>,
) -> PathInfo {
    PathInfo {
        store_path,
        node,
        references,
        nar_size,
        nar_sha256,
        signatures: Vec::new(),
        deriver: None,
        ca,
    }
}

/// An error from inside a framed stream that was then read to its end: the
/// connection is in step again, so even a read error (the stream ended before
/// what it declared) is the operation's, reported, not the connection's.
fn in_step(e: Error) -> Error {
    match e {
        Error::Io(e) => Error::op(format!("the framed stream ended early: {e}")),
        e => e,
    }
}

/// Nix's message for a NAR of another size than declared.
fn size_mismatch(d: &Declared, got: u64) -> Error {
    Error::op(format!(
        "size mismatch importing path '{}';\n  specified: {}\n  got:       {}",
        d.path.to_absolute(),
        d.nar_size,
        got
    ))
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::op(e.to_string())
}

/// Hashes what is read through it with one of Nix's algorithms.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = res {
            this.hasher.update(&buf.filled()[before..]);
        }
        res
    }
}

impl NixDaemon {
    /// The path info of `path`, if the store has it under that very name.
    async fn lookup(&self, path: &StorePath) -> Result<Option<PathInfo>, Error> {
        Ok(self
            .path_info
            .get(*path.digest())
            .await
            .map_err(store_err)?
            .filter(|i| i.store_path == *path))
    }

    /// Refuses, before its NAR is read, a path the client may not add: an
    /// oversized NAR, or (when signatures are checked) one with neither a
    /// content address giving its path nor a valid signature by a trusted key.
    fn precheck(&self, d: &Declared, check_sigs: bool) -> Result<(), Error> {
        let p = d.path.to_absolute();
        if d.nar_size > self.config.max_nar_size {
            return Err(Error::op(format!(
                "cannot add path '{p}': its NAR of {} bytes is larger than the {} bytes allowed",
                d.nar_size, self.config.max_nar_size
            )));
        }
        if !check_sigs {
            return Ok(());
        }
        let as_info = PathInfo {
            store_path: d.path.clone(),
            node: Node::File {
                digest: B3Digest::from([0; 32]),
                size: 0,
                executable: false,
            },
            references: d.references.clone(),
            nar_size: d.nar_size,
            nar_sha256: d.nar_sha256,
            signatures: d.signatures.clone(),
            deriver: None,
            ca: d.ca.clone(),
        };
        if d.ca.is_some() && as_info.validate().is_ok() {
            return Ok(());
        }
        let fp = as_info.fingerprint();
        let signed = d.signatures.iter().any(|s| {
            self.config
                .trusted_keys
                .iter()
                .any(|k| k.verify(fp.as_bytes(), s))
        });
        if signed {
            Ok(())
        } else {
            Err(Error::op(format!(
                "cannot add path '{p}' because it lacks a signature by a trusted key"
            )))
        }
    }

    /// Ingests a NAR from `nar`, which yields at most the declared size.
    async fn ingest<R: AsyncRead + Unpin + Send>(
        &self,
        d: &Declared,
        nar: R,
    ) -> Result<cairn_store::nar::Ingested, Error> {
        cairn_store::nar::ingest(&*self.blobs, &*self.directories, nar)
            .await
            .map_err(|e| {
                Error::op(format!(
                    "cannot add path '{}': bad NAR: {e}",
                    d.path.to_absolute()
                ))
            })
    }

    /// Checks the ingested NAR against the declaration and the references
    /// against the store, then registers the path.
    async fn register(
        &self,
        d: Declared,
        nar: cairn_store::nar::Ingested,
    ) -> Result<PathInfo, Error> {
        let p = d.path.to_absolute();
        if nar.nar_size != d.nar_size {
            return Err(size_mismatch(&d, nar.nar_size));
        }
        if nar.nar_sha256 != d.nar_sha256 {
            return Err(Error::op(format!(
                "hash mismatch importing path '{p}';\n  specified: {}\n  got:       {}",
                NixHash::Sha256(d.nar_sha256).to_nix32_prefixed(),
                NixHash::Sha256(nar.nar_sha256).to_nix32_prefixed()
            )));
        }
        let info = PathInfo {
            store_path: d.path,
            node: nar.root,
            references: d.references,
            nar_size: nar.nar_size,
            nar_sha256: nar.nar_sha256,
            signatures: d.signatures,
            deriver: d.deriver,
            ca: d.ca,
        };
        self.put(info).await
    }

    /// Registers `info` once its references are valid.
    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        let p = info.store_path.to_absolute();
        for r in &info.references {
            if *r != info.store_path && self.lookup(r).await?.is_none() {
                return Err(Error::op(format!(
                    "cannot add path '{p}' because its reference '{}' is not valid",
                    r.to_absolute()
                )));
            }
        }
        info.validate()
            .map_err(|e| Error::op(format!("cannot add path '{p}': {e}")))?;
        self.path_info.put(info).await.map_err(store_err)
    }

    /// A reader of the blob holding the contents of `what`.
    async fn open_blob(
        &self,
        digest: &B3Digest,
        what: &str,
    ) -> Result<Box<dyn cairn_castore::BlobReader>, Error> {
        self.blobs
            .open_read(digest)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Error::op(format!(
                    "the contents of '{what}' (blob {digest}) are missing"
                ))
            })
    }

    /// Stores `data` as a blob.
    async fn put_blob(&self, data: &[u8]) -> Result<B3Digest, Error> {
        let mut w = self.blobs.open_write().await;
        w.write_all(data).await.map_err(store_err)?;
        w.flush().await.map_err(store_err)?;
        w.close().await.map_err(store_err)
    }

    /// What `VerifyStore` reports of `info`, if anything: a reference the
    /// store lacks (the last, as before), or, checking `contents`, a NAR that
    /// no longer matches or cannot be read.
    async fn verify_path(&self, info: &PathInfo, contents: bool) -> Result<Option<String>, Error> {
        let missing = futures::future::try_join_all(
            info.references
                .iter()
                .filter(|r| **r != info.store_path)
                .map(
                    |r| async move { Ok::<_, Error>(self.lookup(r).await?.is_none().then_some(r)) },
                ),
        )
        .await?;
        if let Some(r) = missing.into_iter().flatten().last() {
            return Ok(Some(format!(
                "path '{}' refers to the invalid path '{}'",
                info.store_path.to_absolute(),
                r.to_absolute()
            )));
        }
        if !contents {
            return Ok(None);
        }
        Ok(match self.nar_of(&info.node).await {
            Ok((size, sha)) if size == info.nar_size && sha == info.nar_sha256 => None,
            Ok((_, sha)) => Some(format!(
                "path '{}' was modified! expected hash '{}', got '{}'",
                info.store_path.to_absolute(),
                info.nar_hash().to_nix32_prefixed(),
                NixHash::Sha256(sha).to_nix32_prefixed()
            )),
            Err(e) => Some(format!(
                "path '{}' cannot be read: {e}",
                info.store_path.to_absolute()
            )),
        })
    }

    /// A file root's NAR size and hash.
    async fn nar_of(&self, node: &Node) -> Result<(u64, [u8; 32]), Error> {
        cairn_store::nar::calculate(&*self.blobs, &*self.directories, node)
            .await
            .map_err(store_err)
    }

    /// Adds a text file (`builtins.toFile`, `.drv`): CA `text:sha256`.
    async fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: Vec<StorePath>,
    ) -> Result<PathInfo, Error> {
        let NixHash::Sha256(sha256) = HashAlgo::Sha256.digest(contents) else {
            unreachable!("HashAlgo::Sha256 yields a Sha256 hash")
        };
        let path = cairn_nix::store_path::make_text_path(name, &sha256, &references)
            .map_err(|e| Error::op(format!("cannot add text file '{name}': {e}")))?;
        if let Some(info) = self.lookup(&path).await? {
            return Ok(info);
        }
        let digest = self.put_blob(contents).await?;
        let node = Node::File {
            digest,
            size: contents.len() as u64,
            executable: false,
        };
        let (nar_size, nar_sha256) = self.nar_of(&node).await?;
        self.put(content_addressed(
            path,
            node,
            references,
            (nar_size, nar_sha256),
            Some(ContentAddress::Text { sha256 }),
        ))
        .await
    }

    /// Adds a fixed-output dump read from `dump` (a NAR for recursive, the
    /// file's bytes for flat), whose path the daemon computes.
    async fn add_fixed<R: AsyncRead + Unpin + Send>(
        &self,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
        references: Vec<StorePath>,
        dump: R,
    ) -> Result<PathInfo, Error> {
        let mut hashing = HashingReader {
            inner: dump,
            hasher: Hasher::new(algo),
        };
        let (node, nar) = match method {
            FileIngestionMethod::Recursive => {
                let nar = cairn_store::nar::ingest(&*self.blobs, &*self.directories, &mut hashing)
                    .await
                    .map_err(|e| Error::op(format!("cannot add '{name}': bad NAR: {e}")))?;
                (nar.root.clone(), (nar.nar_size, nar.nar_sha256))
            }
            FileIngestionMethod::Flat => {
                let mut w = self.blobs.open_write().await;
                let size = tokio::io::copy(&mut hashing, &mut w)
                    .await
                    .map_err(|e| Error::op(format!("cannot add '{name}': {e}")))?;
                w.flush().await.map_err(store_err)?;
                let digest = w.close().await.map_err(store_err)?;
                let node = Node::File {
                    digest,
                    size,
                    executable: false,
                };
                let nar = self.nar_of(&node).await?;
                (node, nar)
            }
        };
        let hash = hashing.hasher.finalize();
        let path =
            cairn_nix::store_path::make_fixed_output_path(method, &hash, name, &references, false)
                .map_err(|e| Error::op(format!("cannot add '{name}': {e}")))?;
        if let Some(info) = self.lookup(&path).await? {
            return Ok(info);
        }
        self.put(content_addressed(
            path,
            node,
            references,
            (nar.0, nar.1),
            Some(ContentAddress::Fixed { method, hash }),
        ))
        .await
    }

    /// Adds a flat fixed-output file sent as the NAR of a single regular file
    /// (`AddToStore` before 1.25): the CA hash is of the file's contents.
    async fn add_flat_from_nar<R: AsyncRead + Unpin + Send>(
        &self,
        name: &str,
        algo: HashAlgo,
        nar: R,
    ) -> Result<PathInfo, Error> {
        let ingested = cairn_store::nar::ingest(&*self.blobs, &*self.directories, nar)
            .await
            .map_err(|e| Error::op(format!("cannot add '{name}': bad NAR: {e}")))?;
        let Node::File { digest, size, .. } = ingested.root else {
            return Err(Error::op(format!(
                "cannot add '{name}' flat: the NAR does not hold a regular file"
            )));
        };
        let mut contents = self.open_blob(&digest, name).await?;
        let mut hasher = Hasher::new(algo);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = contents.read(&mut buf).await.map_err(store_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hash = hasher.finalize();
        let path = cairn_nix::store_path::make_fixed_output_path(
            FileIngestionMethod::Flat,
            &hash,
            name,
            [],
            false,
        )
        .map_err(|e| Error::op(format!("cannot add '{name}': {e}")))?;
        if let Some(info) = self.lookup(&path).await? {
            return Ok(info);
        }
        let node = Node::File {
            digest,
            size,
            executable: false,
        };
        let (nar_size, nar_sha256) = self.nar_of(&node).await?;
        self.put(content_addressed(
            path,
            node,
            Vec::new(),
            (nar_size, nar_sha256),
            Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Flat,
                hash,
            }),
        ))
        .await
    }

    /// The outputs `wanted` (`*` or names separated by commas) of the stored
    /// derivation `drv`, if it is stored and each of them is a valid path.
    async fn valid_outputs(
        &self,
        drv: &StorePath,
        wanted: &str,
    ) -> Result<Option<Vec<(String, StorePath)>>, Error> {
        if self.lookup(drv).await?.is_none() {
            return Ok(None);
        }
        let all = self.derivation_outputs(drv).await?;
        let names: Vec<&str> = wanted.split(',').collect();
        if names != ["*"] && names.iter().any(|n| !all.iter().any(|(name, _)| name == n)) {
            return Ok(None);
        }
        let mut valid = Vec::new();
        for (name, path) in all {
            if names != ["*"] && !names.contains(&name.as_str()) {
                continue;
            }
            let Ok(path) = StorePath::parse_absolute(&path) else {
                return Ok(None);
            };
            if self.lookup(&path).await?.is_none() {
                return Ok(None);
            }
            valid.push((name, path));
        }
        Ok(Some(valid))
    }

    /// The outputs a stored `.drv` declares: (name, path or "" for a floating
    /// content-addressed output), sorted by name.
    async fn derivation_outputs(&self, drv: &StorePath) -> Result<Vec<(String, String)>, Error> {
        let p = drv.to_absolute();
        let info = self
            .lookup(drv)
            .await?
            .ok_or_else(|| Error::op(format!("path '{p}' is not valid")))?;
        let Node::File { digest, size, .. } = info.node else {
            return Err(Error::op(format!("'{p}' is not a derivation file")));
        };
        if size > MAX_TEXT as u64 {
            return Err(Error::op(format!(
                "derivation '{p}' is larger than {MAX_TEXT} bytes"
            )));
        }
        let mut reader = self.open_blob(&digest, &p).await?;
        let mut text = Vec::new();
        (&mut reader)
            .take(MAX_TEXT as u64)
            .read_to_end(&mut text)
            .await
            .map_err(store_err)?;
        let mut outputs = crate::drv::outputs(&text)
            .map_err(|e| Error::op(format!("cannot parse derivation '{p}': {e}")))?;
        outputs.sort();
        Ok(outputs)
    }
}

impl<R, W> Conn<'_, R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Serves operations until the client leaves, a request breaks the protocol
    /// or `stop` completes between operations.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let mut stop = std::pin::pin!(stop);
        loop {
            let op = tokio::select! {
                op = read_op(&mut self.from) => op?,
                _ = &mut stop => return Ok(()),
            };
            let Some(op) = op else { return Ok(()) };
            tracing::debug!(op, "nix daemon operation");
            match self.op(op).await {
                Ok(()) => {}
                Err(Error::Op(msg)) => {
                    tracing::debug!(op, error = %msg, "nix daemon operation failed");
                    wire::write_error(&mut self.to, self.version, &msg).await?;
                }
                Err(Error::Protocol(msg)) => {
                    wire::write_error(&mut self.to, self.version, &msg).await?;
                    self.to.flush().await?;
                    return Err(Error::Reported(msg));
                }
                Err(e) => return Err(e),
            }
            self.to.flush().await?;
        }
    }

    async fn last(&mut self) -> Result<(), Error> {
        wire::write_u64(&mut self.to, wire::STDERR_LAST).await?;
        Ok(())
    }

    async fn u64(&mut self) -> Result<u64, Error> {
        wire::read_u64(&mut self.from).await
    }

    async fn path(&mut self) -> Result<StorePath, Error> {
        read_path(&mut self.from, "path").await
    }

    async fn paths(&mut self) -> Result<Vec<StorePath>, Error> {
        read_paths(&mut self.from, "paths").await
    }

    async fn string(&mut self, what: &str) -> Result<String, Error> {
        wire::read_string(&mut self.from, MAX_STRING, what).await
    }

    async fn write_u64(&mut self, v: u64) -> Result<(), Error> {
        Ok(wire::write_u64(&mut self.to, v).await?)
    }

    async fn write_str(&mut self, s: &str) -> Result<(), Error> {
        Ok(wire::write_bytes(&mut self.to, s.as_bytes()).await?)
    }

    async fn write_paths(
        &mut self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<(), Error> {
        let set: BTreeSet<String> = paths.into_iter().map(|p| p.to_absolute()).collect();
        Ok(wire::write_strings(&mut self.to, set.iter()).await?)
    }

    /// The fields of an `UnkeyedValidPathInfo`.
    async fn write_unkeyed(&mut self, info: &PathInfo) -> Result<(), Error> {
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| d.to_absolute())
            .unwrap_or_default();
        self.write_str(&deriver).await?;
        self.write_str(&info.nar_hash().to_hex()).await?;
        self.write_paths(info.sorted_references()).await?;
        self.write_u64(0).await?; // registration time: not recorded
        self.write_u64(info.nar_size).await?;
        self.write_u64(0).await?; // ultimate: cairn built nothing
        let sigs: Vec<String> = info
            .sorted_signatures()
            .iter()
            .map(|s| s.to_string())
            .collect();
        wire::write_strings(&mut self.to, sigs.iter()).await?;
        let ca = info.ca.as_ref().map(|c| c.to_string()).unwrap_or_default();
        self.write_str(&ca).await
    }

    async fn op(&mut self, op: u64) -> Result<(), Error> {
        let d = self.daemon;
        match op {
            op::IS_VALID_PATH => {
                let path = self.path().await?;
                let valid = d.lookup(&path).await?.is_some();
                self.last().await?;
                self.write_u64(valid.into()).await
            }
            op::QUERY_VALID_PATHS => {
                let paths = self.paths().await?;
                if minor(self.version) >= 27 {
                    // Substitute: cairn has no substituters.
                    self.u64().await?;
                }
                let valid: Vec<StorePath> = futures::stream::iter(paths)
                    .map(|p| async move { Ok::<_, Error>(d.lookup(&p).await?.map(|_| p)) })
                    .buffered(32)
                    .try_filter_map(|p| async move { Ok(p) })
                    .try_collect()
                    .await?;
                self.last().await?;
                self.write_paths(valid).await
            }
            op::QUERY_PATH_INFO => {
                let path = self.path().await?;
                let info = d.lookup(&path).await?;
                self.last().await?;
                match info {
                    Some(info) => {
                        self.write_u64(1).await?;
                        self.write_unkeyed(&info).await
                    }
                    None => self.write_u64(0).await,
                }
            }
            op::QUERY_PATH_FROM_HASH_PART => {
                let hash_part = self.string("hash part").await?;
                let found = match cairn_nix::nixbase32::decode_fixed::<20>(&hash_part) {
                    Ok(digest) => d.path_info.get(digest).await.map_err(store_err)?,
                    Err(_) => None,
                };
                self.last().await?;
                let p = found
                    .map(|i| i.store_path.to_absolute())
                    .unwrap_or_default();
                self.write_str(&p).await
            }
            op::NAR_FROM_PATH => {
                let path = self.path().await?;
                let Some(info) = d.lookup(&path).await? else {
                    return Err(Error::op(format!(
                        "path '{}' is not valid",
                        path.to_absolute()
                    )));
                };
                self.last().await?;
                let mut nar = cairn_store::nar::render(
                    d.blobs.clone(),
                    d.directories.clone(),
                    info.node.clone(),
                )
                .into_stream();
                // After STDERR_LAST the NAR is raw bytes: an error part way can
                // only end the connection (the client then sees a short NAR).
                while let Some(piece) = nar.next().await {
                    let piece = piece.map_err(|e| {
                        tracing::warn!(path = %path, error = %e, "NAR render failed; closing the connection");
                        Error::Io(e)
                    })?;
                    self.to.write_all(&piece).await?;
                }
                Ok(())
            }
            op::SET_OPTIONS => {
                for _ in 0..12 {
                    self.u64().await?;
                }
                if minor(self.version) >= 12 {
                    let n = self.u64().await?;
                    if n > 4096 {
                        return Err(Error::protocol(format!("SetOptions: {n} overrides")));
                    }
                    for _ in 0..n {
                        self.string("setting name").await?;
                        self.string("setting value").await?;
                    }
                }
                // Build and substitution settings mean nothing to a store that
                // neither builds nor substitutes.
                self.last().await
            }
            op::ADD_TEMP_ROOT | op::ADD_INDIRECT_ROOT => {
                // cairn never deletes a path yet (issue 18): every root holds.
                if op == op::ADD_TEMP_ROOT {
                    self.path().await?;
                } else {
                    wire::read_string(&mut self.from, MAX_PATH, "root").await?;
                }
                self.last().await?;
                self.write_u64(1).await
            }
            op::ADD_PERM_ROOT => {
                self.path().await?;
                wire::read_string(&mut self.from, MAX_PATH, "root").await?;
                Err(Error::op(
                    "cairn cannot create permanent GC roots: they are symlinks on the client's file system; create them there",
                ))
            }
            op::ENSURE_PATH => {
                let path = self.path().await?;
                if d.lookup(&path).await?.is_none() {
                    return Err(Error::op(format!(
                        "path '{}' is not valid, and cairn neither substitutes nor builds",
                        path.to_absolute()
                    )));
                }
                self.last().await?;
                self.write_u64(1).await
            }
            op::SYNC_WITH_GC | op::OPTIMISE_STORE => {
                self.last().await?;
                self.write_u64(1).await
            }
            op::FIND_ROOTS => {
                self.last().await?;
                self.write_u64(0).await
            }
            op::COLLECT_GARBAGE => {
                self.u64().await?; // action
                self.paths().await?;
                for _ in 0..5 {
                    self.u64().await?;
                }
                Err(Error::op(
                    "cairn does not collect garbage over the Nix daemon protocol",
                ))
            }
            op::QUERY_REFERRERS => {
                let path = self.path().await?;
                let referrers = d
                    .path_info
                    .referrers(*path.digest())
                    .await
                    .map_err(store_err)?;
                self.last().await?;
                self.write_paths(referrers).await
            }
            op::QUERY_VALID_DERIVERS => {
                let path = self.path().await?;
                let mut derivers = Vec::new();
                if let Some(drv) = d.lookup(&path).await?.and_then(|i| i.deriver)
                    && d.lookup(&drv).await?.is_some()
                {
                    derivers.push(drv);
                }
                self.last().await?;
                self.write_paths(derivers).await
            }
            op::QUERY_ALL_VALID_PATHS => {
                let all: Vec<StorePath> = d
                    .path_info
                    .list()
                    .map_ok(|i| i.store_path)
                    .try_collect()
                    .await
                    .map_err(store_err)?;
                self.last().await?;
                self.write_paths(all).await
            }
            op::QUERY_MISSING => {
                let targets =
                    wire::read_strings(&mut self.from, MAX_LIST, MAX_STRING, "targets").await?;
                let (mut will_build, mut unknown) = (Vec::new(), Vec::new());
                for t in &targets {
                    match derived_path(t, self.version)? {
                        // A derivation's outputs: missing unless every output
                        // asked for is valid; building them is refused later.
                        (drv, Some(wanted)) => {
                            if d.lookup(&drv).await?.is_none() {
                                unknown.push(drv);
                            } else if d.valid_outputs(&drv, wanted).await?.is_none() {
                                will_build.push(drv);
                            }
                        }
                        (p, None) => {
                            if d.lookup(&p).await?.is_none() {
                                unknown.push(p);
                            }
                        }
                    }
                }
                self.last().await?;
                self.write_paths(will_build).await?;
                self.write_paths([]).await?; // willSubstitute
                self.write_paths(unknown).await?;
                self.write_u64(0).await?; // downloadSize
                self.write_u64(0).await // narSize
            }
            op::HAS_SUBSTITUTES | op::QUERY_SUBSTITUTABLE_PATH_INFO => {
                self.path().await?;
                self.last().await?;
                self.write_u64(0).await
            }
            op::QUERY_SUBSTITUTABLE_PATHS => {
                self.paths().await?;
                self.last().await?;
                self.write_paths([]).await
            }
            op::QUERY_SUBSTITUTABLE_PATH_INFOS => {
                if minor(self.version) < 22 {
                    self.paths().await?;
                } else {
                    let n = self.u64().await?;
                    if n > MAX_LIST as u64 {
                        return Err(Error::protocol(format!("{n} paths")));
                    }
                    for _ in 0..n {
                        self.path().await?;
                        self.string("ca").await?;
                    }
                }
                self.last().await?;
                self.write_u64(0).await
            }
            op::QUERY_DERIVATION_OUTPUT_MAP => {
                let path = self.path().await?;
                let outputs = d.derivation_outputs(&path).await?;
                self.last().await?;
                self.write_u64(outputs.len() as u64).await?;
                for (name, out) in outputs {
                    self.write_str(&name).await?;
                    self.write_str(&out).await?;
                }
                Ok(())
            }
            op::QUERY_REALISATION => {
                self.string("output id").await?;
                self.last().await?;
                // No realisations: an empty set of output paths (before 1.31)
                // or of realisations.
                self.write_u64(0).await
            }
            op::REGISTER_DRV_OUTPUT => {
                self.string("realisation").await?;
                if minor(self.version) < 31 {
                    self.path().await?;
                }
                Err(Error::op("cairn does not record realisations"))
            }
            op::VERIFY_STORE => {
                let check_contents = wire::read_bool(&mut self.from).await?;
                let repair = wire::read_bool(&mut self.from).await?;
                if repair {
                    return Err(Error::op(if self.trusted {
                        "cairn cannot repair paths"
                    } else {
                        "you are not privileged to repair paths"
                    }));
                }
                let mut errors = false;
                // Several paths at once: each is a few lookups (or a NAR
                // read), which a remote backend answers with a round trip.
                let at_once = if check_contents { 2 } else { 16 };
                let mut problems = d
                    .path_info
                    .list()
                    .map(|info| async move {
                        d.verify_path(&info.map_err(store_err)?, check_contents)
                            .await
                    })
                    .buffered(at_once);
                while let Some(problem) = problems.next().await {
                    if let Some(msg) = problem? {
                        errors = true;
                        wire::write_u64(&mut self.to, wire::STDERR_NEXT).await?;
                        self.write_str(&format!("{msg}\n")).await?;
                    }
                }
                self.last().await?;
                self.write_u64(errors.into()).await
            }
            op::ADD_SIGNATURES => {
                let path = self.path().await?;
                let sigs = wire::read_strings(&mut self.from, 1024, MAX_STRING, "sigs").await?;
                let Some(mut info) = d.lookup(&path).await? else {
                    return Err(Error::op(format!(
                        "path '{}' is not valid",
                        path.to_absolute()
                    )));
                };
                let fp = info.fingerprint();
                for s in &sigs {
                    let sig: Signature = s
                        .parse()
                        .map_err(|e| Error::op(format!("bad signature '{s}': {e}")))?;
                    // Anyone may add a signature a trusted key vouches for; only a
                    // trusted client may add others.
                    if !self.trusted
                        && !d
                            .config
                            .trusted_keys
                            .iter()
                            .any(|k| k.verify(fp.as_bytes(), &sig))
                    {
                        return Err(Error::op(format!(
                            "you are not privileged to add signature '{s}': it is not a valid signature by a trusted key"
                        )));
                    }
                    if !info.signatures.contains(&sig) {
                        info.signatures.push(sig);
                    }
                }
                d.path_info.put(info).await.map_err(store_err)?;
                self.last().await?;
                self.write_u64(1).await
            }
            op::ADD_TO_STORE_NAR => self.add_to_store_nar().await,
            op::ADD_MULTIPLE_TO_STORE => self.add_multiple_to_store().await,
            op::ADD_TO_STORE => self.add_to_store().await,
            op::ADD_TEXT_TO_STORE => {
                let name = self.string("name").await?;
                let contents = wire::read_bytes(&mut self.from, MAX_TEXT, "text").await?;
                let refs = self.paths().await?;
                let info = d.add_text(&name, &contents, refs).await?;
                self.last().await?;
                self.write_str(&info.store_path.to_absolute()).await
            }
            op::BUILD_PATHS | op::BUILD_PATHS_WITH_RESULTS => {
                let targets =
                    wire::read_strings(&mut self.from, MAX_LIST, MAX_STRING, "derived paths")
                        .await?;
                if minor(self.version) >= 15 {
                    self.u64().await?; // build mode
                }
                // Building what is already valid is nothing to do (`nix copy
                // --from` asks for that, and a derivation whose outputs were
                // copied here is built); anything else needs a builder.
                let mut results = Vec::with_capacity(targets.len().min(1024));
                for t in &targets {
                    let outputs = match derived_path(t, self.version)? {
                        (drv, Some(wanted)) => match d.valid_outputs(&drv, wanted).await? {
                            Some(outputs) => outputs,
                            None => return Err(Error::op(NO_BUILDS)),
                        },
                        (p, None) => {
                            if d.lookup(&p).await?.is_none() {
                                return Err(Error::op(format!(
                                    "path '{t}' is not valid, and {NO_BUILDS}"
                                )));
                            }
                            Vec::new()
                        }
                    };
                    results.push((t, outputs));
                }
                self.last().await?;
                if op == op::BUILD_PATHS {
                    return self.write_u64(1).await;
                }
                self.write_u64(results.len() as u64).await?;
                for (t, outputs) in results {
                    // KeyedBuildResult: the path, then status AlreadyValid (2),
                    // no error, and the fields each version added.
                    self.write_str(t).await?;
                    self.write_u64(2).await?;
                    self.write_str("").await?;
                    let mut zeros = 0;
                    if minor(self.version) >= 29 {
                        zeros += 4; // timesBuilt, isNonDeterministic, startTime, stopTime
                    }
                    if minor(self.version) >= 37 {
                        zeros += 2; // cpuUser, cpuSystem: absent
                    }
                    for _ in 0..zeros {
                        self.write_u64(0).await?;
                    }
                    if minor(self.version) >= 28 {
                        // builtOutputs: DrvOutput id -> Realisation JSON. The id's
                        // hash (the derivation's hash modulo) is not computed here;
                        // clients read only the output name and path from it, as
                        // Nix's own daemon relies on since it stopped having one.
                        self.write_u64(outputs.len() as u64).await?;
                        for (name, out) in outputs {
                            let id = format!("sha256:{}!{name}", "0".repeat(64));
                            self.write_str(&id).await?;
                            self.write_str(&format!(
                                "{{\"dependentRealisations\":{{}},\"id\":\"{id}\",\"outPath\":\"{}-{}\",\"signatures\":[]}}",
                                out.hash_part(),
                                out.name()
                            ))
                            .await?;
                        }
                    }
                }
                Ok(())
            }
            op::BUILD_DERIVATION => {
                self.path().await?;
                // BasicDerivation: outputs (name, path, hash algo, hash), input
                // sources, platform, builder, args, environment.
                let outputs = self.u64().await?;
                if outputs > 4096 {
                    return Err(Error::protocol(format!("{outputs} derivation outputs")));
                }
                for _ in 0..outputs * 4 {
                    self.string("output").await?;
                }
                self.paths().await?;
                self.string("platform").await?;
                self.string("builder").await?;
                wire::read_strings(&mut self.from, MAX_LIST, MAX_TEXT, "args").await?;
                let env = self.u64().await?;
                if env > MAX_LIST as u64 {
                    return Err(Error::protocol(format!("{env} environment variables")));
                }
                for _ in 0..env * 2 {
                    wire::read_bytes(&mut self.from, MAX_TEXT, "environment").await?;
                }
                self.u64().await?; // build mode
                Err(Error::op(NO_BUILDS))
            }
            op::ADD_BUILD_LOG => {
                wire::read_string(&mut self.from, MAX_PATH, "path").await?;
                Framed::new(&mut self.from).drain().await?;
                Err(Error::op("cairn does not keep build logs"))
            }
            other => Err(Error::protocol(format!("invalid operation {other}"))),
        }
    }

    async fn add_to_store_nar(&mut self) -> Result<(), Error> {
        let d = self.daemon;
        let raw = read_info(&mut self.from).await?;
        let _repair = wire::read_bool(&mut self.from).await?;
        let dont_check_sigs = wire::read_bool(&mut self.from).await?;
        let check_sigs = !(self.trusted && dont_check_sigs);
        let declared = raw.parse().and_then(|dec| {
            d.precheck(&dec, check_sigs)?;
            Ok(dec)
        });
        if minor(self.version) >= 23 {
            let mut framed = Framed::new(&mut self.from);
            let result = async {
                let dec = declared?;
                if d.lookup(&dec.path).await?.is_some() {
                    return Ok(None);
                }
                framed.set_limit(Some(dec.nar_size));
                let nar = d.ingest(&dec, &mut framed).await?;
                if framed.limit() != Some(0) {
                    return Err(size_mismatch(&dec, nar.nar_size));
                }
                framed.set_limit(None);
                Ok::<_, Error>(Some((dec, nar)))
            }
            .await;
            // The rest of the stream is read whatever happened, so the
            // connection stays in step (an error is reported after it).
            let extra = framed.drain().await?;
            let Some((dec, nar)) = result.map_err(in_step)? else {
                self.last().await?;
                return Ok(());
            };
            if extra > 0 {
                return Err(Error::op(format!(
                    "cannot add path '{}': {extra} bytes follow its NAR",
                    dec.path.to_absolute()
                )));
            }
            d.register(dec, nar).await?;
        } else {
            // 1.21-1.22: the NAR is asked for piece by piece; nothing of it is
            // on the wire before the first STDERR_READ.
            let dec = declared?;
            if d.lookup(&dec.path).await?.is_none() {
                let mut tunnel = Tunnel::new(&mut self.from, &mut self.to, dec.nar_size);
                let nar = d.ingest(&dec, tunnel.reader()).await?;
                d.register(dec, nar).await?;
            }
        }
        self.last().await
    }

    async fn add_multiple_to_store(&mut self) -> Result<(), Error> {
        let d = self.daemon;
        let _repair = wire::read_bool(&mut self.from).await?;
        let dont_check_sigs = wire::read_bool(&mut self.from).await?;
        let check_sigs = !(self.trusted && dont_check_sigs);
        let mut framed = Framed::new(&mut self.from);
        let result = async {
            let count = wire::read_u64(&mut framed).await?;
            for _ in 0..count {
                let raw = read_info(&mut framed).await?;
                let nar_size = raw.nar_size;
                let dec = raw.parse()?;
                d.precheck(&dec, check_sigs)?;
                framed.set_limit(Some(nar_size));
                if d.lookup(&dec.path).await?.is_some() {
                    tokio::io::copy(&mut framed, &mut tokio::io::sink()).await?;
                } else {
                    let nar = d.ingest(&dec, &mut framed).await?;
                    if framed.limit() != Some(0) {
                        return Err(size_mismatch(&dec, nar.nar_size));
                    }
                    framed.set_limit(None);
                    d.register(dec, nar).await?;
                }
                framed.set_limit(None);
            }
            Ok::<_, Error>(())
        }
        .await;
        let extra = framed.drain().await?;
        result.map_err(in_step)?;
        if extra > 0 {
            return Err(Error::op(format!(
                "{extra} bytes follow the last path of AddMultipleToStore"
            )));
        }
        self.last().await
    }

    /// `AddToStore` before 1.25: name, fixed (obsolete), recursive, hash
    /// algorithm, then the dump as an unframed NAR (a NAR of the file for flat
    /// too). Any failure closes the connection: the NAR's end cannot be found
    /// once it went wrong.
    async fn add_to_store_old(&mut self) -> Result<(), Error> {
        let d = self.daemon;
        let name = self.string("name").await?;
        let fixed = wire::read_bool(&mut self.from).await?;
        let recursive = wire::read_bool(&mut self.from).await?;
        let algo = self.string("hash algorithm").await?;
        let (method, algo) = if fixed {
            let algo = HashAlgo::from_name(&algo)
                .ok_or_else(|| Error::protocol(format!("unknown hash algorithm '{algo}'")))?;
            let method = if recursive {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            };
            (method, algo)
        } else {
            // Nix's compatibility rule: not fixed means recursive SHA-256.
            (FileIngestionMethod::Recursive, HashAlgo::Sha256)
        };
        let (mut pipe_in, pipe_out) = tokio::io::duplex(256 * 1024);
        let max = d.config.max_nar_size;
        let copy = async {
            let copied = wire::copy_unframed_nar(&mut self.from, &mut pipe_in, max).await;
            drop(pipe_in);
            copied
        };
        let add = async {
            match method {
                FileIngestionMethod::Recursive => {
                    d.add_fixed(&name, method, algo, Vec::new(), pipe_out).await
                }
                FileIngestionMethod::Flat => d.add_flat_from_nar(&name, algo, pipe_out).await,
            }
        };
        let info = match tokio::join!(copy, add) {
            (Ok(_), Ok(info)) => info,
            // The NAR was refused downstream before its end: say why.
            (Err(Error::Io(e)), Err(refused)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Err(Error::Protocol(refused.to_string()));
            }
            (Err(e), _) => return Err(e),
            (Ok(_), Err(refused)) => return Err(Error::Protocol(refused.to_string())),
        };
        self.last().await?;
        self.write_str(&info.store_path.to_absolute()).await
    }

    async fn add_to_store(&mut self) -> Result<(), Error> {
        let d = self.daemon;
        if minor(self.version) < 25 {
            return self.add_to_store_old().await;
        }
        let name = self.string("name").await?;
        let method = self.string("content-address method").await?;
        let refs = self.paths().await?;
        let _repair = wire::read_bool(&mut self.from).await?;
        let method = parse_ca_method(&method);
        let mut framed = Framed::new(&mut self.from);
        let result = async {
            match method? {
                CaMethod::Text => {
                    framed.set_limit(Some(MAX_TEXT as u64 + 1));
                    let mut contents = Vec::new();
                    framed.read_to_end(&mut contents).await?;
                    if contents.len() > MAX_TEXT {
                        return Err(Error::op(format!(
                            "text file '{name}' is larger than {MAX_TEXT} bytes"
                        )));
                    }
                    d.add_text(&name, &contents, refs).await
                }
                CaMethod::Fixed(method, algo) => {
                    framed.set_limit(Some(d.config.max_nar_size.saturating_add(1)));
                    let info = d.add_fixed(&name, method, algo, refs, &mut framed).await;
                    if framed.limit() == Some(0) {
                        return Err(Error::op(format!(
                            "cannot add '{name}': larger than the {} bytes allowed",
                            d.config.max_nar_size
                        )));
                    }
                    info
                }
            }
        }
        .await;
        let extra = framed.drain().await?;
        let info = result.map_err(in_step)?;
        if extra > 0 {
            return Err(Error::op(format!(
                "cannot add '{name}': {extra} bytes follow its NAR"
            )));
        }
        self.last().await?;
        self.write_str(&info.store_path.to_absolute()).await?;
        self.write_unkeyed(&info).await
    }
}

/// The next operation code, `None` if the client closed the connection.
async fn read_op<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u64>, Error> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::protocol(
                    "the connection ended inside an operation code",
                ))
            };
        }
        got += n;
    }
    Ok(Some(u64::from_le_bytes(b)))
}
