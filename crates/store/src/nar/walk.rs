//! [`walk`]: the entries of a tree in NAR order with their NAR offsets, from the
//! directories alone (for listings with Nix's `narOffset`).

use cairn_castore::{DirectoryService, Node, PathComponent};
use futures::stream::BoxStream;

use super::NarError;
use super::layout::{self, CLOSE_LEN, DIRECTORY_START_LEN, MAGIC_LEN};
use super::segments::get_directory;

/// One node of a tree, as [`walk`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Entry names from the root down; empty for the root node itself.
    pub path: Vec<PathComponent>,
    /// The node.
    pub node: Node,
    /// For a file, the NAR offset of its contents' first byte (Nix's `narOffset`);
    /// otherwise the offset where the node starts (its `"("`).
    pub nar_offset: u64,
}

/// Every node of the tree under `root` (the root first), in NAR order (depth
/// first, entries sorted by name), with its NAR offset. Reads directories one by
/// one and no blob; memory is bounded by the width and depth of the directories
/// open at once.
pub fn walk(
    directories: &dyn DirectoryService,
    root: Node,
) -> BoxStream<'_, Result<Entry, NarError>> {
    Box::pin(async_stream::try_stream! {
        let mut pos = MAGIC_LEN;
        let mut path: Vec<PathComponent> = Vec::new();
        // Each open directory's remaining entries.
        let mut stack: Vec<std::vec::IntoIter<(PathComponent, Node)>> = Vec::new();
        yield Entry { path: Vec::new(), node: root.clone(), nar_offset: offset_of(&root, pos) };
        match &root {
            Node::Directory { digest, .. } => {
                let dir = get_directory(directories, *digest).await?;
                pos += DIRECTORY_START_LEN;
                stack.push(entries(&dir));
            }
            _ => return,
        }
        while let Some(top) = stack.last_mut() {
            let Some((name, node)) = top.next() else {
                stack.pop();
                pos += CLOSE_LEN;
                if !stack.is_empty() {
                    // The end of the entry holding this directory.
                    pos += CLOSE_LEN;
                    path.pop();
                }
                continue;
            };
            pos += layout::entry_start_len(name.as_bytes().len() as u64);
            path.push(name);
            yield Entry { path: path.clone(), node: node.clone(), nar_offset: offset_of(&node, pos) };
            match (&node, layout::leaf_len(&node)) {
                (_, Some(len)) => {
                    pos += len + CLOSE_LEN;
                    path.pop();
                }
                (Node::Directory { digest, .. }, None) => {
                    let dir = get_directory(directories, *digest).await?;
                    pos += DIRECTORY_START_LEN;
                    stack.push(entries(&dir));
                }
                _ => unreachable!("leaf_len is None only for directories"),
            }
        }
    })
}

fn entries(dir: &cairn_castore::Directory) -> std::vec::IntoIter<(PathComponent, Node)> {
    dir.nodes()
        .map(|(name, node)| (name.clone(), node.clone()))
        .collect::<Vec<_>>()
        .into_iter()
}

fn offset_of(node: &Node, pos: u64) -> u64 {
    match node {
        Node::File { executable, .. } => pos + layout::file_start_len(*executable),
        _ => pos,
    }
}
