//! Uploaded NARs waiting for their narinfo, durably.
//!
//! `nix copy --to http://` sends a path's NAR first and its narinfo after. The NAR's
//! content goes into the blob and directory services as it streams in (durable
//! there); what the narinfo will be checked against (root node, NAR hash and size,
//! file size, compression) is recorded here under the file's SHA-256 (the hash in
//! the NAR's URL), in a redb file `cache-uploads.redb` in the data directory, so
//! that a daemon restart between the NAR and its narinfo loses nothing.
//!
//! Table `pending`: file SHA-256 (32 bytes) -> `1` (format version), compression
//! (1 byte: its index in [`Compression::ALL`]), NAR SHA-256 (32 bytes), NAR size
//! (u64 LE), file size (u64 LE), then the root node's protobuf `Node` encoding
//! (with an empty name). A record is one small row per uploaded NAR. It is
//! never served: `GET` and `HEAD` of an uploaded file's URL both answer 404.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cairn_castore::Node;
use prost::Message as _;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::compression::Compression;
use crate::error::CacheError;

const PENDING: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pending");

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "cache-uploads.redb";

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 1 + 32 + 8 + 8;

/// What an uploaded NAR file turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNar {
    /// The NAR's content, stored in the castore.
    pub root: Node,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// SHA-256 of the uncompressed NAR.
    pub nar_sha256: [u8; 32],
    /// Size of the file as uploaded (compressed).
    pub file_size: u64,
    /// Its compression.
    pub compression: Compression,
}

impl PendingNar {
    fn encode(&self) -> Vec<u8> {
        let node = self.root.clone().into_proto(Bytes::new()).encode_to_vec();
        let mut out = Vec::with_capacity(HEADER_LEN + node.len());
        out.push(VERSION);
        let ci = Compression::ALL
            .iter()
            .position(|c| *c == self.compression)
            .unwrap_or(0);
        out.push(ci as u8);
        out.extend_from_slice(&self.nar_sha256);
        out.extend_from_slice(&self.nar_size.to_le_bytes());
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&node);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!("{} bytes, shorter than a record", bytes.len()));
        }
        if bytes[0] != VERSION {
            return Err(format!("unknown record version {}", bytes[0]));
        }
        let compression = *Compression::ALL
            .get(usize::from(bytes[1]))
            .ok_or_else(|| format!("unknown compression {}", bytes[1]))?;
        let mut nar_sha256 = [0u8; 32];
        nar_sha256.copy_from_slice(&bytes[2..34]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let nar_size = u64_at(34);
        let file_size = u64_at(42);
        let proto = cairn_castore::proto::Node::decode(&bytes[HEADER_LEN..])
            .map_err(|e| format!("root node: {e}"))?;
        let (_, root) =
            Node::try_from_proto_unnamed(proto).map_err(|e| format!("root node: {e}"))?;
        Ok(Self {
            root,
            nar_size,
            nar_sha256,
            file_size,
            compression,
        })
    }
}

/// The table of pending uploads. Cheap to clone.
#[derive(Clone)]
pub struct PendingUploads {
    db: Arc<Database>,
}

fn internal<E: std::fmt::Display>(e: E) -> CacheError {
    CacheError::Internal(format!("{FILE_NAME}: {e}"))
}

impl PendingUploads {
    /// Opens (creating if needed) `cache-uploads.redb` in data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| CacheError::Internal(format!("cannot open {}: {e}", path.display())))?;
        Self::init(db)
    }

    /// A table that lives in memory only (for a cache over in-memory services,
    /// and tests).
    pub fn in_memory() -> Result<Self, CacheError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(internal)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Self, CacheError> {
        let txn = db.begin_write().map_err(internal)?;
        txn.open_table(PENDING).map_err(internal)?;
        txn.commit().map_err(internal)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Records an upload; durable when this returns.
    pub async fn put(&self, file_sha256: [u8; 32], nar: &PendingNar) -> Result<(), CacheError> {
        let db = self.db.clone();
        let value = nar.encode();
        blocking(move || {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut t = txn.open_table(PENDING).map_err(internal)?;
                t.insert(&file_sha256, value.as_slice()).map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    /// The upload whose file has this SHA-256.
    pub async fn get(&self, file_sha256: [u8; 32]) -> Result<Option<PendingNar>, CacheError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            let t = txn.open_table(PENDING).map_err(internal)?;
            let Some(v) = t.get(&file_sha256).map_err(internal)? else {
                return Ok(None);
            };
            PendingNar::decode(v.value()).map(Some).map_err(|e| {
                CacheError::Internal(format!(
                    "{FILE_NAME}: record {}: {e}",
                    cairn_nix::nixbase32::encode(&file_sha256)
                ))
            })
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cairn_castore::B3Digest;

    use super::*;

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let nar = PendingNar {
            root: Node::File {
                digest: B3Digest::of(b"x"),
                size: 1,
                executable: true,
            },
            nar_size: 128,
            nar_sha256: [7; 32],
            file_size: 99,
            compression: Compression::Zstd,
        };
        {
            let p = PendingUploads::open(dir.path()).unwrap();
            assert_eq!(p.get([1; 32]).await.unwrap(), None);
            p.put([1; 32], &nar).await.unwrap();
        }
        let p = PendingUploads::open(dir.path()).unwrap();
        assert_eq!(p.get([1; 32]).await.unwrap(), Some(nar));
        assert_eq!(p.get([2; 32]).await.unwrap(), None);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(PendingNar::decode(&[1, 0]).is_err());
        let mut bad = vec![9u8; HEADER_LEN];
        assert!(PendingNar::decode(&bad).unwrap_err().contains("version"));
        bad[0] = 1;
        assert!(
            PendingNar::decode(&bad)
                .unwrap_err()
                .contains("compression")
        );
        bad[1] = 0;
        // An empty protobuf Node has no node set.
        assert!(PendingNar::decode(&bad).unwrap_err().contains("root node"));
    }
}
