//! [`StoreFs`]: fuser's [`Filesystem`] over the three services.
//!
//! fuser calls in on its event-loop threads, synchronously. What the inode table
//! answers (getattr, readlink, a lookup seen before) is answered there; anything
//! that needs a service runs as a task on the tokio runtime and replies from it
//! (fuser's replies are `Send`), so a slow blob or a daemon being restarted holds
//! no event-loop thread.
//!
//! Memory: what reads hold is bounded whatever is read and by how many readers.
//! Blob readers (each with its backend's read-ahead) and bytes read past for
//! out-of-order requests take shares of one [`Budget`] of
//! [`Options::read_memory`] bytes; reply buffers take shares of another
//! ([`REPLY_MEMORY`]); the kernel asks for at most [`MAX_READ`] bytes a request.
//! Readers stay open between requests while the budget has room; a request that
//! needs a reader when it has none drops idle ones (least recently read file
//! first) or waits, and while it waits, readers that served about what they
//! hold are not kept after their request (files take turns).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::io::SeekFrom;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use cairn_castore::lru::Lru;
use cairn_castore::{B3Digest, BlobReader, BlobService, Directory, DirectoryService, Node};
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::PathInfoService;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::budget::{Budget, Share};
use crate::inodes::{Entry, Inodes, ROOT};

/// How long the kernel may keep entries and attributes: what a name points at
/// never changes while it exists, so as long as it likes. (A path removed from
/// the store stays visible to lookups the kernel cached; nothing removes paths
/// yet.)
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Nix sets every store file's mtime to 1.
const MTIME: Duration = Duration::from_secs(1);

/// `st_blksize`: tools size their read buffers by it, and each read is a round
/// trip through the kernel and a task here.
const BLKSIZE: u32 = 128 * 1024;

/// The default of [`Options::read_memory`]: room for several large files' blob
/// readers at once (an embedded store's holds up to about 6.5 MiB of read-ahead,
/// a gRPC one about 10 MiB), with the rest of the process under 128 MB.
pub const READ_MEMORY: u64 = 48 << 20;

/// Bytes of reply buffers (each the size of its request) held at once; requests
/// past it wait. The kernel sends at most [`MAX_BACKGROUND`] reads ahead at
/// once, 7 MiB of them; this bounds reads by many processes too.
const REPLY_MEMORY: u64 = 16 << 20;

/// The most the kernel asks for in one read (its `max_pages`, which fuser sizes
/// by max_readahead and max_write at init): a whole [`READ_AHEAD`] window in one
/// request, so that the kernel fills a window's pages in one reply instead
/// of 8. Against 128 KiB, interleaved on one machine, medians of 12: a cold
/// `nix copy --from unix://` of 1 GiB 3.19 s against 3.62 s (Nix's system time
/// 1.08 s against 1.38 s, the daemon's CPU 1.31 s against 1.64 s);
/// `bench/mount.sh`'s many readers 0.76-0.85 s against 1.28-1.46 s.
const MAX_READ: u32 = READ_AHEAD;

/// The kernel's read-ahead window for a file, set on the mount's device after
/// it is mounted (see `mount::widen_read_ahead`): a sequential reader's
/// requests this far ahead arrive together, and must stay within [`SKIP_MAX`]
/// of its stream. Measured on a 1 GiB file read cold, against the kernel's
/// 128 KiB: `nix copy --from unix://` 4.3-4.5 s -> 3.9-4.0 s (3.1 s from a
/// local store), `cat` 1.1-1.5 s -> 1.0-1.25 s; 4 MiB was slower at both
/// (4.2-4.6 s, 1.3-2.0 s: more requests at once, more of them out of order).
pub(crate) const READ_AHEAD: u32 = 1 << 20;

/// How far a read may start past its file's stream position and still be served
/// by that stream, the bytes in between kept for the reads that ask for them.
/// The kernel sends a sequential reader's read-ahead as several requests at once,
/// which arrive here in any order; without this each would seek (and restart the
/// blob reader's own read-ahead). It spans what the kernel can have in flight
/// for one reader ([`MAX_BACKGROUND`] requests of [`MAX_READ`] bytes, a
/// [`READ_AHEAD`] window past them): with less, a stream that lags behind a
/// burst sees the burst's last requests as another reader's, and two streams
/// then leapfrog, seeking back and forth (a 64 MiB file read through a mount
/// of a daemon: 1155 gRPC calls instead of 2). With more, reads of one file at
/// places further apart (20 files read at 0 and at 12.5 MiB at once) are
/// served by one stream skipping the bytes in between, decoded for nothing
/// (2.2x the time with 16 MiB).
const SKIP_MAX: u64 = 8 << 20;

/// Read requests the kernel may send ahead at once, for all files (its
/// `max_background`): [`SKIP_MAX`] bounds what one file may have in flight,
/// so with [`MAX_READ`]'s 1 MiB, 7 (as many bytes as 48 of 128 KiB were).
const MAX_BACKGROUND: u16 = 7;

const _: () = assert!(MAX_BACKGROUND as u64 * MAX_READ as u64 + READ_AHEAD as u64 <= SKIP_MAX);

/// The position of a stream that has not read yet: near no offset.
const UNUSED: u64 = u64::MAX;

/// Streams kept per file: readers of one file at different places (16 threads
/// reading one file) each continue their own instead of moving one back and
/// forth.
const STREAMS_PER_FILE: usize = 4;

/// Files whose streams are kept, the least recently read dropped first. The
/// kernel does not tell when a file is closed (opens are its own, see `open`).
const FILES: usize = 64;

/// Bytes (roughly) of directories kept decoded.
const DIR_CACHE: usize = 16 << 20;

/// What a mount serves and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Whether `readdir` of the root lists every registered store path (a big
    /// store should not be enumerated by an `ls`: off by default).
    pub list_root: bool,
    /// Bytes that blob readers (their read-ahead) and bytes read ahead of
    /// requests may hold together, however many files are read at once
    /// ([`READ_MEMORY`] by default).
    pub read_memory: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            list_root: false,
            read_memory: READ_MEMORY,
        }
    }
}

/// The store as a read-only filesystem: `ROOT/<hash>-<name>` for every registered
/// store path, looked up on demand.
pub struct StoreFs {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

/// The root's entries as `opendir` found them: inode, kind, name.
type Listing = Vec<(u64, FileType, Bytes)>;

struct Inner {
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    path_info: Arc<dyn PathInfoService>,
    options: Options,
    inodes: Inodes,
    dirs: Mutex<Lru<B3Digest, Arc<Directory>>>,
    /// Files read lately, by inode.
    files: Mutex<Lru<u64, Arc<OpenFile>>>,
    /// Whether the kernel handles opens itself (see `open`).
    no_open: AtomicBool,
    /// Whether the kernel handles directory opens itself (see `opendir`).
    no_opendir: AtomicBool,
    /// Root listings taken at `opendir` (with `--list-root`), by handle.
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    next_handle: AtomicU64,
    /// What blob readers and skipped bytes hold (see the module doc).
    budget: Budget,
    /// What reply buffers hold.
    replies: Budget,
    /// What one reader of `blobs` holds at most.
    reader_memory: u64,
    uid: u32,
    gid: u32,
}

/// A file being read: its blob, and streams of it kept open between reads, so
/// that sequential reads continue one (and its read-ahead) instead of seeking.
struct OpenFile {
    digest: B3Digest,
    size: u64,
    streams: [tokio::sync::Mutex<Stream>; STREAMS_PER_FILE],
    /// Each stream's position, readable while another request holds the stream;
    /// [`UNUSED`] before its first read.
    positions: [AtomicU64; STREAMS_PER_FILE],
    /// Held while a request chooses its stream (never across an await).
    choosing: Mutex<()>,
}

impl OpenFile {
    fn new(digest: B3Digest, size: u64) -> Self {
        OpenFile {
            digest,
            size,
            streams: Default::default(),
            positions: std::array::from_fn(|_| AtomicU64::new(UNUSED)),
            choosing: Mutex::new(()),
        }
    }

    /// The stream for a read at `offset`: the nearest one within [`SKIP_MAX`]
    /// of it (either side: what a stream skipped lies behind its position),
    /// once it is free; else a free one, else (all busy) one chosen by the
    /// offset, placed at `offset` as it is chosen.
    ///
    /// One sequential reader stays on one stream: the kernel sends its
    /// read-ahead as many requests at once, which arrive in any order, and each
    /// given to a stream of its own (or to a free near one while the nearest is
    /// busy) would seek past what another read ahead, the blob decoded and
    /// verified again each time (3.6x the CPU of reading a 1 GiB file once;
    /// with a 4 MiB read-ahead window, up to 6x). So the choice and the claim
    /// of a stream's place are one step: a request arriving while the first of
    /// a burst is still opening its reader sees that stream near, and waits
    /// for it.
    async fn stream(&self, offset: u64) -> (usize, tokio::sync::MutexGuard<'_, Stream>) {
        let claimed = {
            let _choosing = self.choosing.lock().unwrap_or_else(PoisonError::into_inner);
            let nearest = (0..STREAMS_PER_FILE)
                .filter_map(|i| {
                    let pos = self.positions[i].load(Ordering::Relaxed);
                    let distance = pos.abs_diff(offset);
                    (pos != UNUSED && distance <= SKIP_MAX).then_some((distance, i))
                })
                .min();
            match nearest {
                Some((_, i)) => Err(i),
                None => {
                    let free = self
                        .streams
                        .iter()
                        .enumerate()
                        .find_map(|(i, stream)| Some((i, stream.try_lock().ok()?)));
                    let i = free
                        .as_ref()
                        .map_or((offset / SKIP_MAX) as usize % STREAMS_PER_FILE, |(i, _)| *i);
                    self.positions[i].store(offset, Ordering::Relaxed);
                    free.ok_or(i)
                }
            }
        };
        match claimed {
            Ok(stream) => stream,
            Err(i) => (i, self.streams[i].lock().await),
        }
    }
}

/// A blob reader kept by a stream.
struct Reader {
    reader: Box<dyn BlobReader>,
    /// Its position.
    pos: u64,
    /// Bytes it served since it was opened.
    served: u64,
    /// Its share of the budget.
    share: Share,
}

#[derive(Default)]
struct Stream {
    reader: Option<Reader>,
    /// Verified bytes the stream read past for reads that came ahead of their
    /// turn, by offset, oldest first, each with its share of the budget; at most
    /// [`SKIP_MAX`] bytes.
    skipped: VecDeque<(u64, Bytes, Share)>,
}

impl Stream {
    /// `len` bytes at `offset` from the skipped bytes, if one piece holds them.
    /// The kernel caches what it was given and asks for each range once, so
    /// the range is no longer kept: what is left of the piece either side of
    /// it stays, as pieces of their own with their parts of its share. (Kept
    /// whole until its end was read, a piece whose ranges came in another
    /// order stayed at its full size, and with the bound reached was dropped
    /// with ranges still to come, which then had to seek back.)
    fn take_skipped(&mut self, offset: u64, len: usize) -> Option<Bytes> {
        let (i, from) = self
            .skipped
            .iter()
            .enumerate()
            .find_map(|(i, (start, bytes, _))| {
                let from = usize::try_from(offset.checked_sub(*start)?).ok()?;
                (from + len <= bytes.len()).then_some((i, from))
            })?;
        let (start, piece, mut share) = self.skipped.remove(i)?;
        let after = piece.slice(from + len..);
        if !after.is_empty()
            && let Some(part) = share.split(after.len().min(share.num_permits()))
        {
            self.skipped.insert(i, (offset + len as u64, after, part));
        }
        if from > 0
            && let Some(part) = share.split(from.min(share.num_permits()))
        {
            self.skipped.insert(i, (start, piece.slice(..from), part));
        }
        // `share` keeps the served range's part, and returns it here.
        Some(piece.slice(from..from + len))
    }

    /// Keeps `bytes` (at `offset`) with their `share` of the budget.
    fn skip(&mut self, offset: u64, bytes: Bytes, share: Share) {
        let mut held: usize = self.skipped.iter().map(|(_, b, _)| b.len()).sum();
        while held + bytes.len() > SKIP_MAX as usize {
            match self.skipped.pop_front() {
                Some((_, old, _)) => held -= old.len(),
                None => break,
            }
        }
        self.skipped.push_back((offset, bytes, share));
    }
}

/// Why a request failed, as the errno the kernel gets. Everything from a service
/// is `EIO` (and logged): a missing blob, a corrupt chunk, a daemon that is away.
fn eio(what: &str, err: impl std::fmt::Display) -> Errno {
    tracing::warn!("{what}: {err}");
    Errno::EIO
}

impl StoreFs {
    /// A filesystem serving the store these services hold; requests that need a
    /// service run on `runtime`.
    pub fn new(
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        path_info: Arc<dyn PathInfoService>,
        runtime: tokio::runtime::Handle,
        options: Options,
    ) -> Self {
        let budget = Budget::new(options.read_memory);
        let reader_memory = blobs.reader_memory();
        StoreFs {
            inner: Arc::new(Inner {
                blobs,
                directories,
                path_info,
                options,
                inodes: Inodes::default(),
                dirs: Mutex::new(Lru::new(DIR_CACHE)),
                files: Mutex::new(Lru::new(FILES)),
                no_open: AtomicBool::new(false),
                no_opendir: AtomicBool::new(false),
                listings: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                budget,
                replies: Budget::new(REPLY_MEMORY),
                reader_memory,
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            }),
            runtime,
        }
    }

    /// Runs `f` on the runtime: it replies when it is done.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(f(self.inner.clone()));
    }
}

impl Inner {
    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink) = match node {
            Node::Directory { .. } => (FileType::Directory, 0o555, 0, 2),
            Node::File {
                size, executable, ..
            } => (
                FileType::RegularFile,
                if *executable { 0o555 } else { 0o444 },
                *size,
                1,
            ),
            Node::Symlink { target } => {
                (FileType::Symlink, 0o777, target.as_bytes().len() as u64, 1)
            }
        };
        self.attr_of(ino, kind, perm, size, nlink)
    }

    fn attr_of(&self, ino: u64, kind: FileType, perm: u16, size: u64, nlink: u32) -> FileAttr {
        let time = UNIX_EPOCH + MTIME;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        self.attr_of(ROOT, FileType::Directory, 0o555, 0, 2)
    }

    /// The directory `digest`, from the cache or the directory service. A
    /// directory a node refers to but the service lacks is damage: `EIO`.
    async fn directory(&self, digest: &B3Digest) -> Result<Arc<Directory>, Errno> {
        if let Some(dir) = self
            .dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
        {
            return Ok(dir.clone());
        }
        let dir = match self.directories.get(digest).await {
            Ok(Some(dir)) => Arc::new(dir),
            Ok(None) => return Err(eio("directory", format!("{digest} not found"))),
            Err(e) => return Err(eio(&format!("directory {digest}"), e)),
        };
        // Decoded size, roughly: a name, a node and the map's overhead an entry.
        let cost = 64 + dir.len() * 128;
        self.dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*digest, dir.clone(), cost);
        Ok(dir)
    }

    /// The node of store path `name` (`<hash>-<name>`), if registered.
    async fn store_path(&self, name: &[u8]) -> Result<Option<Node>, Errno> {
        let Ok(path) = StorePath::from_basename(name) else {
            return Ok(None);
        };
        match self.path_info.get(*path.digest()).await {
            Ok(Some(info)) if info.store_path == path => Ok(Some(info.node)),
            Ok(_) => Ok(None),
            Err(e) => Err(eio(&format!("path info of {}", path.to_absolute()), e)),
        }
    }

    /// The child `name` of directory inode `parent`, its inode counted as looked up.
    async fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Node), Errno> {
        let node = if parent == ROOT {
            self.store_path(name).await?
        } else {
            let Some(Entry { node, .. }) = self.inodes.get(parent) else {
                return Err(Errno::ENOENT);
            };
            let Node::Directory { digest, .. } = node else {
                return Err(Errno::ENOTDIR);
            };
            self.directory(&digest).await?.get(name).cloned()
        };
        let node = node.ok_or(Errno::ENOENT)?;
        Ok((self.inodes.looked_up(parent, name, &node), node))
    }

    /// `len` bytes of `file` at `offset` (the caller clipped them to its size):
    /// bytes its stream skipped earlier, or from the stream, moved there first.
    async fn read(&self, file: &OpenFile, offset: u64, len: usize) -> Result<Bytes, Errno> {
        let what = || format!("blob {}", file.digest);
        let (index, mut stream) = file.stream(offset).await;
        if let Some(bytes) = stream.take_skipped(offset, len) {
            return Ok(bytes);
        }
        let mut r = match stream.reader.take() {
            Some(r) => r,
            None => {
                let share = self
                    .budget
                    .take(self.reader_cost(file.size), || self.drop_idle_reader())
                    .await;
                match self.blobs.open_read(&file.digest).await {
                    Ok(Some(reader)) => Reader {
                        reader,
                        pos: 0,
                        served: 0,
                        share,
                    },
                    Ok(None) => return Err(eio(&what(), "not found")),
                    Err(e) => return Err(eio(&what(), e)),
                }
            }
        };
        let (pos, reader) = (r.pos, &mut r.reader);
        // On any error the reader is dropped: the next read opens a new one (a
        // daemon restarted meanwhile is then reached again).
        let gap = offset.saturating_sub(pos);
        let skip_share = (offset > pos && gap <= SKIP_MAX)
            .then(|| self.budget.try_take(gap))
            .flatten();
        if let Some(skip_share) = skip_share {
            let bytes = read_bytes(reader.as_mut(), gap as usize)
                .await
                .map_err(|e| eio(&what(), e))?;
            stream.skip(pos, bytes, skip_share);
        } else if offset != pos {
            reader
                .seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| eio(&what(), e))?;
        }
        let buf = read_bytes(reader.as_mut(), len)
            .await
            .map_err(|e| eio(&what(), e))?;
        let end = offset + len as u64;
        r.pos = end;
        r.served += len as u64;
        // At the end the reader's read-ahead is of no use. While a request
        // waits for room, its share is better spent there, once this reader
        // served about what it holds: readers of many files take turns instead
        // of each reopening (and reading ahead again) at every request.
        let turn_over = self.budget.wanted() && r.served >= r.share.num_permits() as u64;
        if end < file.size && !turn_over {
            stream.reader = Some(r);
        }
        file.positions[index].store(end, Ordering::Relaxed);
        Ok(buf)
    }

    /// The share of the budget a reader of a file of `size` bytes takes: its
    /// backend's most, or for a small file what it can hold of it (its bytes, a
    /// buffer's slack, a chunk list).
    fn reader_cost(&self, size: u64) -> u64 {
        size.saturating_add(size / 4)
            .saturating_add(64 << 10)
            .min(self.reader_memory)
    }

    /// Drops one blob reader kept between requests (or bytes kept for them),
    /// of the least recently read file that has one; whether there was one.
    fn drop_idle_reader(&self) -> bool {
        let files: Vec<Arc<OpenFile>> = self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for file in files {
            // A stream in use is not idle (the caller's own is one of them).
            for stream in &file.streams {
                let Ok(mut stream) = stream.try_lock() else {
                    continue;
                };
                if stream.reader.take().is_some() || stream.skipped.pop_front().is_some() {
                    return true;
                }
            }
        }
        false
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

/// The next `len` bytes of `reader`, read into spare capacity (zeroing the
/// buffer first cost as much as a tenth of a large file's reading). A blob
/// that ends early is as wrong as one with other bytes: an error.
async fn read_bytes(reader: &mut (dyn BlobReader + '_), len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        if reader.read_buf(&mut (&mut buf).limit(want)).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the blob ends before its size",
            ));
        }
    }
    Ok(buf.freeze())
}

fn file_type(node: &Node) -> FileType {
    match node {
        Node::Directory { .. } => FileType::Directory,
        Node::File { .. } => FileType::RegularFile,
        Node::Symlink { .. } => FileType::Symlink,
    }
}

impl Filesystem for StoreFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.inner.no_open.store(
            config
                .capabilities()
                .contains(InitFlags::FUSE_NO_OPEN_SUPPORT),
            Ordering::Relaxed,
        );
        // Only without --list-root: the root's listing is taken at its opendir.
        self.inner.no_opendir.store(
            !self.inner.options.list_root
                && config
                    .capabilities()
                    .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT),
            Ordering::Relaxed,
        );
        // Each is an optimisation; a kernel without one still works.
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_CACHE_SYMLINKS;
        if let Err(missing) = config.add_capabilities(wanted) {
            let _ = config.add_capabilities(wanted & !missing);
        }
        // Requests of up to MAX_READ: fuser sizes them (max_pages) by both of
        // these (nothing is ever written). The window offered at init cannot
        // be wider than the kernel's default (128 KiB): see READ_AHEAD.
        if let Err(max) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_write(MAX_READ);
        // Read-ahead of several files (a `tar` of small ones) and of one large
        // file in parallel.
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = parent.0;
        if let Some((ino, entry)) = self.inner.inodes.lookup_known(parent, name.as_bytes()) {
            reply.entry(&TTL, &self.inner.attr(ino, &entry.node), Generation(0));
            return;
        }
        let name = Bytes::copy_from_slice(name.as_bytes());
        self.spawn(move |inner| async move {
            match inner.lookup(parent, &name).await {
                Ok((ino, node)) => reply.entry(&TTL, &inner.attr(ino, &node), Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&TTL, &self.inner.root_attr());
        }
        match self.inner.inodes.get(ino.0) {
            Some(entry) => reply.attr(&TTL, &self.inner.attr(ino.0, &entry.node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inner.inodes.get(ino.0).map(|e| e.node) {
            Some(Node::Symlink { target }) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.inner.inodes.get(ino.0).map(|e| e.node) {
            Some(Node::File { .. }) => {}
            Some(Node::Directory { .. }) => return reply.error(Errno::EISDIR),
            Some(Node::Symlink { .. }) => return reply.error(Errno::ELOOP),
            None => return reply.error(Errno::ENOENT),
        }
        // Nothing is kept per open: reads find their file by inode. A kernel
        // that can open files itself is told so by ENOSYS, once: then no open
        // or release is sent at all (two round trips less for each file a
        // `tar` reads), and it keeps cached pages across opens.
        if self.inner.no_open.load(Ordering::Relaxed) {
            return reply.error(Errno::ENOSYS);
        }
        // Contents never change: pages cached by an earlier open stay valid.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = {
            let mut files = self
                .inner
                .files
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match files.get(&ino.0) {
                Some(file) => file.clone(),
                None => {
                    let Some(Node::File { digest, size, .. }) =
                        self.inner.inodes.get(ino.0).map(|e| e.node)
                    else {
                        return reply.error(Errno::EBADF);
                    };
                    let file = Arc::new(OpenFile::new(digest, size));
                    files.insert(ino.0, file.clone(), 1);
                    file
                }
            }
        };
        let len = file.size.saturating_sub(offset).min(u64::from(size));
        if len == 0 {
            return reply.data(&[]);
        }
        // `len` is at most `size`, a u32.
        let len = len as usize;
        self.spawn(move |inner| async move {
            // Taken before anything else, so that a request waiting for it
            // holds nothing another one waits for.
            let _share = inner.replies.take(len as u64, || false).await;
            match inner.read(&file, offset, len).await {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.inner.no_opendir.load(Ordering::Relaxed) {
            // As `open`: the kernel opens directories itself from now on, and
            // caches their listings.
            return reply.error(Errno::ENOSYS);
        }
        if ino.0 != ROOT {
            // A directory's listing never changes: the kernel may cache it.
            return reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            );
        }
        if !self.inner.options.list_root {
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        // The listing is taken once per opendir, so that offsets into it stay
        // valid while paths are added.
        self.spawn(move |inner| async move {
            let mut listing = Vec::new();
            let mut infos = inner.path_info.list();
            while let Some(info) = infos.next().await {
                let info = match info {
                    Ok(info) => info,
                    Err(e) => return reply.error(eio("listing path info", e)),
                };
                let name = Bytes::from(info.store_path.to_string());
                let ino = inner.inodes.listed(ROOT, &name, &info.node);
                listing.push((ino, file_type(&info.node), name));
            }
            let fh = inner.handle();
            inner
                .listings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(fh, Arc::new(listing));
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = ino.0;
        if ino == ROOT {
            let listing = self
                .inner
                .listings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&fh.0)
                .cloned()
                .unwrap_or_default();
            let dots = [
                (ROOT, FileType::Directory, Bytes::from_static(b".")),
                (ROOT, FileType::Directory, Bytes::from_static(b"..")),
            ];
            let entries = dots.iter().chain(listing.iter());
            for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
            return reply.ok();
        }
        let Some(Entry { parent, node }) = self.inner.inodes.get(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Node::Directory { digest, .. } = node else {
            return reply.error(Errno::ENOTDIR);
        };
        self.spawn(move |inner| async move {
            let dir = match inner.directory(&digest).await {
                Ok(dir) => dir,
                Err(e) => return reply.error(e),
            };
            let dots = [(ino, &b"."[..]), (parent, &b".."[..])]
                .map(|(ino, name)| (ino, FileType::Directory, name));
            let children = dir.nodes().map(|(name, node)| {
                let child = inner.inodes.listed(ino, name.as_bytes(), node);
                (child, file_type(node), name.as_bytes())
            });
            let entries = dots.into_iter().chain(children);
            for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(ino), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner
            .listings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written. ENOSYS tells the kernel so once: it stops
        // sending a flush at every close (a round trip per file in a `tar`).
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // Nix stores no extended attributes.
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks the modes (`default_permissions`); asked anyway,
        // everything that exists may be read.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Read-only, with nothing free; sizes of the whole store are not known
        // without enumerating it.
        reply.statfs(0, 0, 0, 0, 0, BLKSIZE, 255, BLKSIZE);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_burst_of_near_reads_waits_for_the_stream_its_first_read_took() {
        let file = OpenFile::new(B3Digest::from([7; 32]), 1 << 30);
        // The first of a burst takes a stream (and holds it while its reader
        // opens); its position is not known to be anywhere yet but `offset`.
        let (first, held) = file.stream(0).await;
        for offset in [128 << 10, 1 << 20, u64::from(READ_AHEAD) - (128 << 10)] {
            assert!(
                file.stream(offset).now_or_never().is_none(),
                "a read at {offset} took another stream instead of waiting"
            );
        }
        // A reader elsewhere in the file gets a stream of its own at once.
        let far = file.stream(SKIP_MAX * 4).now_or_never();
        let (other, far) = far.expect("a far read waited for a busy stream");
        assert_ne!(other, first);
        drop((held, far));
        let (again, _) = file.stream(1 << 20).await;
        assert_eq!(again, first);
    }

    #[test]
    fn skipped_bytes_serve_each_range_once_in_any_order_and_stay_bounded() {
        let budget = Budget::new(SKIP_MAX * 2);
        let total = || SKIP_MAX as usize * 2 - budget.free();
        let skip = |stream: &mut Stream, offset, bytes: Bytes| {
            let share = budget.try_take(bytes.len() as u64).unwrap();
            stream.skip(offset, bytes, share);
        };
        let mut stream = Stream::default();
        let piece: Bytes = (0..=255u8).cycle().take(1000).collect::<Vec<_>>().into();
        skip(&mut stream, 5000, piece.clone());
        assert_eq!(total(), 1000);
        assert_eq!(stream.take_skipped(5100, 10), Some(piece.slice(100..110)));
        // A range is served once, and no longer held.
        assert_eq!(total(), 990);
        assert_eq!(stream.take_skipped(5100, 10), None);
        assert_eq!(stream.take_skipped(5105, 1), None);
        assert_eq!(stream.take_skipped(4999, 10), None);
        assert_eq!(stream.take_skipped(5995, 10), None, "runs past the piece");
        // What is left either side serves its ranges in any order.
        assert_eq!(stream.take_skipped(5110, 890), Some(piece.slice(110..)));
        assert_eq!(stream.take_skipped(5000, 100), Some(piece.slice(..100)));
        assert_eq!(stream.take_skipped(5000, 1), None);
        assert_eq!(total(), 0);
        assert!(stream.skipped.is_empty());
        // Older pieces go first once a stream's bound is reached.
        skip(&mut stream, 0, piece);
        let big = Bytes::from(vec![0; SKIP_MAX as usize - 500]);
        skip(&mut stream, 1 << 30, big);
        assert_eq!(stream.take_skipped(0, 1), None);
        assert_eq!(
            stream.take_skipped(1 << 30, 1),
            Some(Bytes::from_static(&[0]))
        );
        assert_eq!(total(), SKIP_MAX as usize - 501);
        drop(stream);
        assert_eq!(total(), 0);
    }
}
