//! cairn's store as a lazy, read-only FUSE filesystem (`cairn mount`).
//!
//! - [`StoreFs`]: the filesystem. Every registered store path is
//!   `MOUNTPOINT/<hash>-<name>`, found by name through the path info service when
//!   first looked up; directories come from the directory service (a bounded cache
//!   of decoded ones), file contents from verified, seekable blob readers, read at
//!   the offset asked for and kept positioned for the next sequential read. Any
//!   failure of a service (a corrupt chunk, a missing blob, a daemon that is
//!   away) is `EIO`, never wrong bytes.
//! - [`Mount`]: a mounted [`StoreFs`] served by a number of FUSE threads, which
//!   ends when unmounted (by [`Mount::unmount`] or from outside).
//!
//! A crate of its own so that the FUSE library (`fuser`, its pure-Rust mount:
//! the mount syscall as root, else the `fusermount3` helper; no libfuse) and the
//! kernel protocol stay out of the store layers: this crate only reads through
//! the `BlobService`, `DirectoryService` and `PathInfoService` traits, and the
//! binary (`cairn mount`) chooses the backends and handles signals.

mod budget;
mod fs;
mod inodes;
mod mount;

pub use fs::{Options, READ_MEMORY, StoreFs};
pub use mount::{Mount, MountOptions, Unmounted};
