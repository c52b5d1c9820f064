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
//! contents start in the NAR, computed from the tree alone: no blob is read.

use std::collections::HashMap;

use cairn_castore::{B3Digest, Directory, DirectoryService, Node};
use futures::TryStreamExt as _;

use crate::error::CacheError;

/// Bytes a NAR string of `len` bytes takes: length, contents, zero padding to 8.
fn str_len(len: u64) -> u64 {
    8 + len.div_ceil(8) * 8
}

/// `nix-archive-1`.
const MAGIC_LEN: u64 = 24;
/// `(`, `)`, `type`, `node`, `name`, `entry`, `target`, `regular`, `symlink`,
/// `contents`: each 1..=8 bytes, so 16 in the NAR.
const TOKEN: u64 = 16;
/// `directory` and `executable`: 9 and 10 bytes.
const LONG_TOKEN: u64 = 24;
/// The empty string after `executable`.
const EMPTY: u64 = 8;

/// One directory being listed: its entries still to come.
struct Frame<'a> {
    entries: Box<dyn Iterator<Item = (&'a cairn_castore::PathComponent, &'a Node)> + 'a>,
    first: bool,
}

/// The `.ls` JSON of the NAR of `root`, fetching its directories from `dirs`.
pub async fn listing(dirs: &dyn DirectoryService, root: &Node) -> Result<Vec<u8>, CacheError> {
    let mut tree: HashMap<B3Digest, Directory> = HashMap::new();
    if let Node::Directory { digest, .. } = root {
        let mut stream = dirs.get_recursive(digest);
        while let Some(d) = stream.try_next().await.map_err(CacheError::from_store)? {
            tree.insert(d.digest(), d);
        }
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"version\":1,\"root\":");
    let mut offset = MAGIC_LEN;
    let mut stack: Vec<Frame<'_>> = Vec::new();
    // The node to write next; `None` once the current directory's entries are done.
    let mut next: Option<&Node> = Some(root);
    loop {
        if let Some(node) = next.take() {
            offset += 2 * TOKEN; // `(` `type`
            match node {
                Node::File {
                    size, executable, ..
                } => {
                    offset += TOKEN; // `regular`
                    out.extend_from_slice(
                        format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes(),
                    );
                    if *executable {
                        offset += LONG_TOKEN + EMPTY;
                        out.extend_from_slice(b",\"executable\":true");
                    }
                    offset += TOKEN + 8; // `contents`, length
                    out.extend_from_slice(format!(",\"narOffset\":{offset}}}").as_bytes());
                    offset += size.div_ceil(8) * 8 + TOKEN; // contents, `)`
                }
                Node::Symlink { target } => {
                    offset += 2 * TOKEN + str_len(target.as_bytes().len() as u64) + TOKEN;
                    out.extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
                    cairn_nix::json::push_string(&mut out, target.as_bytes());
                    out.push(b'}');
                }
                Node::Directory { digest, .. } => {
                    let dir = tree.get(digest).ok_or_else(|| {
                        CacheError::Internal(format!("directory {digest} not found"))
                    })?;
                    offset += LONG_TOKEN;
                    out.extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
                    stack.push(Frame {
                        entries: Box::new(dir.nodes()),
                        first: true,
                    });
                }
            }
            if stack.is_empty() {
                break;
            }
            if !matches!(node, Node::Directory { .. }) {
                offset += TOKEN; // the entry's `)`
            }
        }
        let Some(frame) = stack.last_mut() else {
            break;
        };
        match frame.entries.next() {
            Some((name, node)) => {
                if !frame.first {
                    out.push(b',');
                }
                frame.first = false;
                cairn_nix::json::push_string(&mut out, name.as_bytes());
                out.push(b':');
                // `entry` `(` `name` <name> `node`
                offset += 3 * TOKEN + str_len(name.as_bytes().len() as u64) + TOKEN;
                next = Some(node);
            }
            None => {
                stack.pop();
                out.extend_from_slice(b"}}");
                offset += TOKEN; // the directory's `)`
                if stack.is_empty() {
                    break;
                }
                offset += TOKEN; // the entry's `)`
            }
        }
    }
    out.push(b'}');
    Ok(out)
}
