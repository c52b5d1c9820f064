//! [`Inodes`]: the inode numbers handed to the kernel, each for one entry (a name
//! in a parent), kept while the kernel keeps it.
//!
//! The kernel counts the lookups it was answered with an inode and gives them
//! back with `forget` when it drops the inode (under memory pressure, or
//! `drop_caches`). An entry is freed when its count is back at 0, so the table
//! holds about what the kernel caches, not every entry ever looked at. A name
//! looked up after that gets a new number: numbers are never reused, so a stale
//! one cannot name another entry.
//!
//! Listings hand out numbers too (`d_ino`), which the kernel does not count.
//! Those entries are kept for a lookup to find, so that `ls -i` and `stat` agree,
//! but only the [`LISTED`] most recent: a listing of a huge directory (or of the
//! root, with `--list-root`) does not pin one entry per name.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use cairn_castore::Node;

/// The root directory's inode (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

/// Entries made by listings and not looked up since that are kept (about 400
/// bytes each).
const LISTED: usize = 16 * 1024;

/// What an inode is: its parent (for `..`) and its node.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The parent directory's inode; [`ROOT`] for store paths.
    pub parent: u64,
    /// The content.
    pub node: Node,
}

struct Slot {
    entry: Entry,
    /// The name in the parent, to drop the name's key with the slot.
    name: Bytes,
    /// Lookups answered with this inode and not forgotten yet.
    lookups: u64,
}

struct Table {
    /// (parent, name) -> inode.
    by_name: HashMap<(u64, Bytes), u64>,
    slots: HashMap<u64, Slot>,
    /// Inodes made by listings, oldest first. Some may have been looked up or
    /// freed since: those are skipped when their turn comes.
    listed: VecDeque<u64>,
    /// The next inode number.
    next: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            by_name: HashMap::new(),
            slots: HashMap::new(),
            listed: VecDeque::new(),
            next: ROOT + 1,
        }
    }
}

impl Table {
    /// The inode of `name` in `parent`, made for `node` if there is none.
    fn get_or_insert(&mut self, parent: u64, name: &[u8], node: &Node) -> (u64, &mut Slot) {
        let key = (parent, Bytes::copy_from_slice(name));
        let next = &mut self.next;
        let ino = *self.by_name.entry(key.clone()).or_insert_with(|| {
            *next += 1;
            *next - 1
        });
        let slot = self.slots.entry(ino).or_insert_with(|| Slot {
            entry: Entry {
                parent,
                node: node.clone(),
            },
            name: key.1,
            lookups: 0,
        });
        (ino, slot)
    }

    fn free(&mut self, ino: u64) {
        if let Some(slot) = self.slots.remove(&ino) {
            self.by_name.remove(&(slot.entry.parent, slot.name));
        }
    }
}

/// The inode table, shared by every request.
#[derive(Default)]
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    /// The inode of `name` in `parent` if there is one, counted as a lookup:
    /// the caller answers the kernel's lookup with it.
    pub fn lookup_known(&self, parent: u64, name: &[u8]) -> Option<(u64, Entry)> {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let ino = *table.by_name.get(&(parent, Bytes::copy_from_slice(name)))?;
        let slot = table.slots.get_mut(&ino)?;
        slot.lookups += 1;
        Some((ino, slot.entry.clone()))
    }

    /// The inode of `name` in `parent`, made for `node` if new, counted as a
    /// lookup (see [`Inodes::lookup_known`]).
    pub fn looked_up(&self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let (ino, slot) = table.get_or_insert(parent, name, node);
        slot.lookups += 1;
        ino
    }

    /// The inode of `name` in `parent` for a listing, made for `node` if new;
    /// not a lookup.
    pub fn listed(&self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let before = table.next;
        let (ino, _) = table.get_or_insert(parent, name, node);
        if table.next != before {
            table.listed.push_back(ino);
            while table.listed.len() > LISTED {
                let Some(old) = table.listed.pop_front() else {
                    break;
                };
                if table.slots.get(&old).is_some_and(|s| s.lookups == 0) {
                    table.free(old);
                }
            }
        }
        ino
    }

    /// The kernel dropped `lookups` of its lookups of `ino`.
    pub fn forget(&self, ino: u64, lookups: u64) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let Some(slot) = table.slots.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(lookups);
        if slot.lookups == 0 {
            table.free(ino);
        }
    }

    /// The entry of `ino`, or `None` for [`ROOT`] and numbers not (or no
    /// longer) handed out.
    pub fn get(&self, ino: u64) -> Option<Entry> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.slots.get(&ino).map(|s| s.entry.clone())
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        debug_assert_eq!(table.slots.len(), table.by_name.len());
        table.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_castore::B3Digest;

    fn file() -> Node {
        Node::File {
            digest: B3Digest::from([1; 32]),
            size: 3,
            executable: false,
        }
    }

    #[test]
    fn same_name_same_inode_and_names_apart() {
        let inodes = Inodes::default();
        let a = inodes.looked_up(ROOT, b"a", &file());
        let b = inodes.listed(ROOT, b"b", &file());
        let a_in_b = inodes.looked_up(b, b"a", &file());
        assert_eq!(a, 2);
        assert_eq!(inodes.looked_up(ROOT, b"a", &file()), a);
        assert_eq!(inodes.listed(ROOT, b"a", &file()), a);
        assert_ne!(a, b);
        assert_ne!(a, a_in_b);
        assert_eq!(
            inodes.lookup_known(b, b"a").map(|(ino, _)| ino),
            Some(a_in_b)
        );
        assert_eq!(inodes.lookup_known(ROOT, b"b").map(|(ino, _)| ino), Some(b));
        assert!(inodes.lookup_known(a, b"a").is_none());
        assert_eq!(inodes.get(a_in_b).map(|e| e.parent), Some(b));
        assert!(inodes.get(ROOT).is_none());
        assert!(inodes.get(99).is_none());
        assert_eq!(inodes.len(), 3);
    }

    #[test]
    fn an_entry_is_freed_when_the_kernel_forgets_every_lookup_of_it() {
        let inodes = Inodes::default();
        let a = inodes.looked_up(ROOT, b"a", &file());
        assert_eq!(inodes.lookup_known(ROOT, b"a").map(|(ino, _)| ino), Some(a));
        let b = inodes.looked_up(ROOT, b"b", &file());
        inodes.forget(a, 1);
        assert!(inodes.get(a).is_some(), "one lookup of two is still held");
        inodes.forget(a, 1);
        assert!(inodes.get(a).is_none());
        assert!(inodes.lookup_known(ROOT, b"a").is_none());
        assert_eq!(inodes.len(), 1);
        // Looked up again, the name gets a number not handed out before.
        let again = inodes.looked_up(ROOT, b"a", &file());
        assert!(again != a && again != b, "{again} reused");
        // More forgotten than counted (a lookup answered twice) frees it too;
        // unknown numbers and the root are ignored.
        inodes.forget(b, 5);
        inodes.forget(ROOT, 1);
        inodes.forget(12345, 1);
        assert!(inodes.get(b).is_none());
        assert_eq!(inodes.len(), 1);
    }

    #[test]
    fn listed_entries_are_kept_up_to_a_bound_unless_looked_up() {
        let inodes = Inodes::default();
        let name = |i: usize| format!("f{i}").into_bytes();
        let first = inodes.listed(ROOT, &name(0), &file());
        let second = inodes.listed(ROOT, &name(1), &file());
        // Looked up after it was listed: the kernel holds it, so it stays.
        assert_eq!(
            inodes.lookup_known(ROOT, &name(1)).map(|(ino, _)| ino),
            Some(second)
        );
        for i in 2..LISTED + 10 {
            inodes.listed(ROOT, &name(i), &file());
        }
        assert!(inodes.get(first).is_none(), "the oldest listed entry stays");
        assert!(inodes.get(second).is_some());
        assert!(inodes.lookup_known(ROOT, &name(LISTED + 9)).is_some());
        assert_eq!(inodes.len(), LISTED + 1);
        // A directory's entries made by listing it stay after the kernel
        // forgets the directory, until the bound drops them.
        let dir = inodes.looked_up(ROOT, b"dir", &file());
        let child = inodes.listed(dir, b"child", &file());
        inodes.forget(dir, 1);
        assert!(inodes.get(dir).is_none());
        assert!(inodes.get(child).is_some());
        for i in 0..LISTED {
            inodes.listed(ROOT, format!("g{i}").as_bytes(), &file());
        }
        assert!(inodes.get(child).is_none());
    }
}
