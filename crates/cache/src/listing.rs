//! `.ls` files: a store path's NAR listing as JSON, byte-identical to what Nix 2.8
//! writes with `write-nar-listing=true`:
//!
//! ```text
//! {"version":1,"root":{"type":"directory","entries":{"run":{"type":"regular","size":10,"executable":true,"narOffset":640},"link":{"type":"symlink","target":"sub/file"}}}}
//! ```
//!
//! Keys come in Nix's insertion order (`type`, `size`, `executable`, `narOffset`;
//! `type`, `target`; `type`, `entries`), entries in NAR (bytewise name) order,
//! strings escaped as Nix's own JSON writer does (`"` and `\` backslashed, `\n`,
//! `\r`, `\t`, other bytes below 0x20 as `\u00XX`, every other byte as is, so a
//! non-UTF-8 name gives non-UTF-8 output as with Nix). `narOffset` is where a file's
//! contents start in the NAR, as [`cairn_store::nar::walk`] computes it from the
//! directories alone: no blob is read, directories are fetched one at a time and
//! the JSON leaves in chunks, so memory is bounded by the depth and width of the
//! directories open at once, not by the tree.

use std::sync::Arc;

use bytes::Bytes;
use cairn_castore::{DirectoryService, Node};
use futures::TryStreamExt as _;
use futures::stream::BoxStream;

use crate::error::CacheError;

/// Output is sent in chunks of about this many bytes.
const CHUNK: usize = 64 * 1024;

/// The `.ls` JSON of the NAR of `root`, in chunks, fetching its directories from
/// `directories` as it goes. A directory missing from the store is an error
/// item, after which the stream ends.
pub fn listing(
    directories: Arc<dyn DirectoryService>,
    root: Node,
) -> BoxStream<'static, Result<Bytes, CacheError>> {
    Box::pin(async_stream::try_stream! {
        let mut entries = cairn_store::nar::walk(directories.as_ref(), root);
        let mut out = Vec::with_capacity(CHUNK + 256);
        out.extend_from_slice(b"{\"version\":1,\"root\":");
        // For each directory being listed, whether it has had an entry yet.
        let mut open: Vec<bool> = Vec::new();
        while let Some(e) = entries
            .try_next()
            .await
            .map_err(|e| CacheError::Internal(format!("listing: {e}")))?
        {
            // Entries come depth first: one at depth `d` follows the end of every
            // directory deeper than its parent.
            let depth = e.path.len();
            while open.len() > depth {
                open.pop();
                out.extend_from_slice(b"}}");
            }
            if let (Some(name), Some(had_entry)) = (e.path.last(), open.last_mut()) {
                if *had_entry {
                    out.push(b',');
                }
                *had_entry = true;
                cairn_nix::json::push_string(&mut out, name.as_bytes());
                out.push(b':');
            }
            match &e.node {
                Node::File {
                    size, executable, ..
                } => {
                    out.extend_from_slice(
                        format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes(),
                    );
                    if *executable {
                        out.extend_from_slice(b",\"executable\":true");
                    }
                    out.extend_from_slice(
                        format!(",\"narOffset\":{}}}", e.nar_offset).as_bytes(),
                    );
                }
                Node::Symlink { target } => {
                    out.extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
                    cairn_nix::json::push_string(&mut out, target.as_bytes());
                    out.push(b'}');
                }
                Node::Directory { .. } => {
                    out.extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
                    open.push(false);
                }
            }
            if out.len() >= CHUNK {
                yield Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(CHUNK + 256)));
            }
        }
        for _ in open {
            out.extend_from_slice(b"}}");
        }
        out.push(b'}');
        yield Bytes::from(out);
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cairn_castore::{B3Digest, Directory, PathComponent};

    use super::*;

    /// The whole `.ls` JSON of the NAR of `root`.
    async fn listing_bytes(
        directories: Arc<dyn DirectoryService>,
        root: Node,
    ) -> Result<Vec<u8>, CacheError> {
        listing(directories, root)
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await
    }

    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let root = Node::Directory {
            digest: B3Digest::of(b"absent"),
            size: 0,
        };
        let err = listing_bytes(dirs, root).await.unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn large_listings_come_in_chunks() {
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let mut dir = Directory::new();
        for i in 0..5000 {
            dir.add(
                PathComponent::try_from(format!("file-{i:05}").as_str()).unwrap(),
                Node::File {
                    digest: B3Digest::of(b""),
                    size: 0,
                    executable: false,
                },
            )
            .unwrap();
        }
        let size = dir.size();
        let digest = dirs.put(dir).await.unwrap();
        let root = Node::Directory { digest, size };
        let chunks: Vec<Bytes> = listing(dirs.clone(), root.clone())
            .try_collect()
            .await
            .unwrap();
        assert!(chunks.len() > 1, "{} chunk(s)", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < 2 * CHUNK));
        let whole = listing_bytes(dirs, root).await.unwrap();
        assert_eq!(whole, chunks.concat());
        let json: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        let entries = json["root"]["entries"].as_object().unwrap();
        assert_eq!(entries.len(), 5000);
        assert_eq!(entries["file-04999"]["size"], 0);
    }
}
