//! [`Inodes`]: the inode numbers handed to the kernel, each for one entry (a name
//! in a parent) for the life of the mount.
//!
//! A number is allocated the first time the kernel sees an entry (lookup or
//! readdir) and never reused or freed: the content under a name never changes, so
//! the same name always gets the same number, and `forget` has nothing to drop.
//! The table grows with the entries looked at (about 100 bytes each), not with the
//! store's size.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use cairn_castore::Node;

/// The root directory's inode (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

/// What an inode is: its parent (for `..`) and its node.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The parent directory's inode; [`ROOT`] for store paths.
    pub parent: u64,
    /// The content.
    pub node: Node,
}

#[derive(Default)]
struct Table {
    /// (parent, name) -> inode.
    by_name: HashMap<(u64, Bytes), u64>,
    /// inode - 2 -> entry ([`ROOT`] has none).
    entries: Vec<Entry>,
}

/// The inode table, shared by every request.
#[derive(Default)]
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    /// The inode of `name` in `parent`, if the kernel was told of it already.
    pub fn find(&self, parent: u64, name: &[u8]) -> Option<(u64, Entry)> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let ino = *table.by_name.get(&(parent, Bytes::copy_from_slice(name)))?;
        let entry = table.entries.get(index(ino)?)?.clone();
        Some((ino, entry))
    }

    /// The inode of `name` in `parent`, allocated for `node` if new.
    pub fn get_or_insert(&self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let key = (parent, Bytes::copy_from_slice(name));
        if let Some(ino) = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .get(&key)
        {
            return *ino;
        }
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let Table { by_name, entries } = &mut *table;
        *by_name.entry(key).or_insert_with(|| {
            entries.push(Entry {
                parent,
                node: node.clone(),
            });
            entries.len() as u64 + 1
        })
    }

    /// The entry of `ino`, or `None` for [`ROOT`] and numbers never handed out.
    pub fn get(&self, ino: u64) -> Option<Entry> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.entries.get(index(ino)?).cloned()
    }
}

fn index(ino: u64) -> Option<usize> {
    usize::try_from(ino.checked_sub(2)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_castore::B3Digest;

    #[test]
    fn same_name_same_inode_and_names_apart() {
        let inodes = Inodes::default();
        let file = Node::File {
            digest: B3Digest::from([1; 32]),
            size: 3,
            executable: false,
        };
        let a = inodes.get_or_insert(ROOT, b"a", &file);
        let b = inodes.get_or_insert(ROOT, b"b", &file);
        let a_in_b = inodes.get_or_insert(b, b"a", &file);
        assert_eq!(a, 2);
        assert_eq!(inodes.get_or_insert(ROOT, b"a", &file), a);
        assert_ne!(a, b);
        assert_ne!(a, a_in_b);
        assert_eq!(inodes.find(b, b"a").map(|(ino, _)| ino), Some(a_in_b));
        assert!(inodes.find(a, b"a").is_none());
        assert_eq!(inodes.get(a_in_b).map(|e| e.parent), Some(b));
        assert!(inodes.get(ROOT).is_none());
        assert!(inodes.get(99).is_none());
    }
}
