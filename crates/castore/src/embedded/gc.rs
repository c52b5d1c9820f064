//! Garbage collection of the embedded store: which index entries are dead,
//! removing them, and giving their pack bytes back to the file system.
//!
//! Age without a timestamp per object: packs are append-only, so an object's
//! location tells when it was written. The committer records, at most once a
//! minute and at every open, the committed length of every pack (`gc_marks`:
//! unix seconds -> (pack id u32, length u64) per pack). An object lying
//! entirely below the lengths of the latest mark older than the grace period
//! was committed before it; any other object is young and kept, with
//! everything it reaches. A write that deduplicates against an old object
//! writes no bytes: while the store tracks lookups
//! ([`EmbeddedStore::track_lookups`], on in the daemon), every lookup a writer
//! or a path info check makes (`has`, a directory read, a chunk or segment
//! found for dedup) records the digest when it finds the object, as does every
//! commit for the blobs and directories it records (before committing), and a
//! recorded digest counts as young. Recorded digests are kept for about twice
//! the grace period, and in any case from the [`Collector::begin`] of a
//! collection until it ends (see `crate::gc`).
//!
//! Races: lookups take the read side of `sweep`, the sweep holds the write side
//! from reading the recorded digests (after its write transaction began, so
//! after any commit in progress) until its transaction commits. So a lookup
//! either came first (its digest is recorded, and kept) or finds the object
//! gone (and the writer stores it anew). Writes only append, so no new write
//! lands in a range the sweep frees; the bytes freed are punched out
//! (`fallocate(PUNCH_HOLE)`) after the durable commit that removed their
//! entries, and only where no remaining entry (chunk, segment, directory, or a
//! chunk location listed inside a remaining segment) refers to them. A reader
//! that opened a blob before the sweep and reads a punched range gets zeros,
//! which fail verification: it errors, never hands out wrong bytes. A kill at
//! any point leaves either the old index (nothing removed) or the new one (the
//! holes are punched again, when 64 KiB or larger, at the next open).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::format::{BlobEntry, ChunkLoc, MAX_CHUNK, MAX_DIRECTORY, MAX_SEGMENT, SegRef};
use super::rewrite::{Ranges, add_range};
use super::{
    BLOBS, CHUNKS, DAMAGED, DIRECTORIES, EmbeddedError, EmbeddedStore, SEGMENTS, db_err,
    read_segment,
};
use crate::gc::{Collector, DigestSet, Epoch, GcOptions, GcReport, Live, mark_with};
use crate::{B3Digest, Directory, Error, Node};

/// Commit-time marks: unix seconds -> per pack (id u32, committed length u64).
pub(super) const MARKS: TableDefinition<u64, &[u8]> = TableDefinition::new("gc_marks");

/// Marks are recorded at most this often.
pub(super) const MARK_EVERY: u64 = 60;

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records `lengths` (committed length per pack) as of `now` in `txn`.
pub(super) fn record_mark(
    txn: &redb::WriteTransaction,
    now: u64,
    lengths: &HashMap<u32, u64>,
) -> Result<(), EmbeddedError> {
    let mut v = Vec::with_capacity(lengths.len() * 12);
    for (id, len) in lengths {
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
    }
    let mut t = txn.open_table(MARKS).map_err(db_err)?;
    t.insert(now, &v[..]).map_err(db_err)?;
    Ok(())
}

fn decode_mark(v: &[u8]) -> Result<HashMap<u32, u64>, EmbeddedError> {
    if !v.len().is_multiple_of(12) {
        return Err(EmbeddedError::Corrupt(format!(
            "gc mark of {} bytes is not whole entries",
            v.len()
        )));
    }
    let mut m = HashMap::new();
    for e in v.chunks_exact(12) {
        let (id, len) = e.split_at(4);
        let id = u32::from_le_bytes(id.try_into().unwrap_or_default());
        let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
        m.insert(id, len);
    }
    Ok(m)
}

/// Digests looked up by writers and path info checks, in two generations of
/// about the grace period each, so memory holds what was looked up within at
/// most twice the grace period, and since the oldest collection in progress
/// began: a generation is dropped only when every such collection began
/// after its last note, so a path registered after a collection read its
/// roots keeps the note of its root however long the collection takes.
struct Generations {
    cur: HashSet<[u8; 32]>,
    prev: HashSet<[u8; 32]>,
    since: Instant,
    period: Duration,
    /// Collections in progress: id -> when they began.
    holds: HashMap<u64, Instant>,
    next_hold: u64,
}

/// The store's side of a collection running while it serves: the lock a sweep
/// takes against lookups, and the digests recently looked up.
#[derive(Default)]
pub(super) struct Tracker {
    sweep: RwLock<()>,
    looked_up: Mutex<Option<Generations>>,
}

impl Tracker {
    /// Held across a lookup whose result a writer may build on.
    pub(super) fn lookup(&self) -> RwLockReadGuard<'_, ()> {
        self.sweep.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the lookup `f` of `digest` under the lookup lock, and records
    /// the digest when `found` says it found it (a miss leaves nothing to
    /// keep: the writer stores the object anew).
    pub(super) fn lookup_found<T>(
        &self,
        digest: &[u8; 32],
        f: impl FnOnce() -> Result<T, EmbeddedError>,
        found: impl Fn(&T) -> bool,
    ) -> Result<T, EmbeddedError> {
        let _lookup = self.lookup();
        let r = f()?;
        if found(&r) {
            self.note(digest);
        }
        Ok(r)
    }

    /// Records that `digest` was looked up (when tracking is on).
    pub(super) fn note(&self, digest: &[u8; 32]) {
        let mut g = self
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = g.as_mut() {
            if g.since.elapsed() > g.period && g.holds.values().all(|b| *b >= g.since) {
                g.prev = std::mem::take(&mut g.cur);
                g.since = Instant::now();
            }
            g.cur.insert(*digest);
        }
    }

    /// Keeps every note from now on until the returned id is released.
    fn hold(&self) -> Option<u64> {
        let mut g = self
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let g = g.as_mut()?;
        let id = g.next_hold;
        g.next_hold += 1;
        g.holds.insert(id, Instant::now());
        Some(id)
    }

    fn release(&self, id: u64) {
        let mut g = self
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = g.as_mut() {
            g.holds.remove(&id);
        }
    }

    fn recent(&self) -> HashSet<[u8; 32]> {
        let g = self
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match g.as_ref() {
            Some(g) => g.cur.union(&g.prev).copied().collect(),
            None => HashSet::new(),
        }
    }
}

/// Calls `f` with every (key, value) of `table`.
pub(super) fn each(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&[u8; 32], &[u8]>,
    mut f: impl FnMut(&[u8; 32], &[u8]) -> Result<(), EmbeddedError>,
) -> Result<(), EmbeddedError> {
    for e in txn
        .open_table(table)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = e.map_err(db_err)?;
        f(k.value(), v.value())?;
    }
    Ok(())
}

/// Calls `keep` with every entry of `table` and removes (unless `dry_run`)
/// those it does not keep, in one pass: nothing is held per entry. The first
/// error of `keep` ends the removals and is returned (the caller aborts its
/// transaction).
fn retain(
    table: &mut redb::Table<&[u8; 32], &[u8]>,
    dry_run: bool,
    mut keep: impl FnMut(&[u8; 32], &[u8]) -> Result<bool, EmbeddedError>,
) -> Result<(), EmbeddedError> {
    let mut failed = None;
    let mut keep = |k: &[u8; 32], v: &[u8]| -> bool {
        failed.is_some()
            || keep(k, v).unwrap_or_else(|e| {
                failed = Some(e);
                true
            })
    };
    if dry_run {
        for e in table.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            keep(k.value(), v.value());
        }
    } else {
        table.retain(|k, v| keep(k, v)).map_err(db_err)?;
    }
    failed.map_or(Ok(()), Err)
}

/// Removes the old entries a table does not keep.
struct Sweep<'a, F: Fn(&ChunkLoc) -> bool> {
    is_old: &'a F,
    dry_run: bool,
    freed: &'a mut Ranges,
    /// Stored bytes of the removed entries.
    stored_bytes: u64,
}

impl<F: Fn(&ChunkLoc) -> bool> Sweep<'_, F> {
    /// Removes (unless dry) the entries of `table` (locations of objects up to
    /// `max_raw` bytes) that `keep` does not keep and that are old, calling
    /// `gone` with each one's digest. Streams: nothing is held per entry.
    fn table(
        &mut self,
        table: &mut redb::Table<&[u8; 32], &[u8]>,
        max_raw: usize,
        keep: impl Fn(&[u8; 32]) -> bool,
        mut gone: impl FnMut(&[u8; 32]),
    ) -> Result<(), EmbeddedError> {
        retain(table, self.dry_run, |k, v| {
            if keep(k) {
                return Ok(true);
            }
            let loc = ChunkLoc::decode(v, max_raw)?;
            if !(self.is_old)(&loc) {
                return Ok(true);
            }
            self.stored_bytes += u64::from(loc.stored_len);
            add_range(self.freed, &loc);
            gone(k);
            Ok(false)
        })
    }
}

impl EmbeddedStore {
    /// Records the digests writers and path info checks look up, for a
    /// collection running in this process while it serves (they count as
    /// written now). Memory: what was looked up within twice `grace`.
    pub fn track_lookups(&self, grace: Duration) {
        let mut g = self
            .inner
            .gc
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if g.is_none() {
            *g = Some(Generations {
                cur: HashSet::new(),
                prev: HashSet::new(),
                since: Instant::now(),
                period: grace.max(Duration::from_secs(1)),
                holds: HashMap::new(),
                next_hold: 0,
            });
        }
    }

    /// Removes what `roots` do not reach and is older than `opts.grace`, then
    /// punches the freed pack bytes out. Blocking.
    pub fn collect_blocking(
        &self,
        roots: &[Node],
        opts: GcOptions,
    ) -> Result<GcReport, EmbeddedError> {
        let db = &self.inner.db;
        let packs = &self.inner.packs;
        let now = now_secs();
        {
            // What is committed now is older than now (for this collection
            // with no grace, and the next ones).
            let txn = db.begin_write().map_err(db_err)?;
            record_mark(&txn, now, &packs.committed_lengths())?;
            txn.commit().map_err(db_err)?;
        }
        let cutoff = now.saturating_sub(opts.grace.as_secs());
        // The lengths below which everything is older than the grace period.
        let (old, mark_time) = {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(MARKS).map_err(db_err)?;
            match t.range(..=cutoff).map_err(db_err)?.next_back() {
                Some(e) => {
                    let (k, v) = e.map_err(db_err)?;
                    (decode_mark(v.value())?, Some(k.value()))
                }
                None => (HashMap::new(), None),
            }
        };
        let is_old = |loc: &ChunkLoc| {
            loc.offset + u64::from(loc.stored_len) <= old.get(&loc.pack).copied().unwrap_or(0)
        };

        // Young objects, and what the roots reach: the blobs kept go into
        // `live.blobs` (compact sets: a store of a million objects).
        let mut live = Live::default();
        let mut young_dirs = Vec::new();
        {
            let txn = db.begin_read().map_err(db_err)?;
            each(&txn, DIRECTORIES, |k, v| {
                if !is_old(&ChunkLoc::decode(v, MAX_DIRECTORY)?) {
                    young_dirs.push(B3Digest::from(*k));
                }
                Ok(())
            })?;
            each(&txn, BLOBS, |k, v| {
                if let BlobEntry::Segmented(segs) = BlobEntry::decode(v)?
                    && segs.iter().any(|s| !is_old(&s.loc))
                {
                    live.blobs.insert(*k);
                }
                Ok(())
            })?;
            each(&txn, CHUNKS, |k, v| {
                if !is_old(&ChunkLoc::decode(v, MAX_CHUNK)?) {
                    live.blobs.insert(*k);
                }
                Ok(())
            })?;
        }
        let recent = self.inner.gc.recent();
        let get = |d: &B3Digest| -> Result<Option<Directory>, Error> {
            let Some(bytes) = self.load_directory(d.as_bytes())? else {
                return Ok(None);
            };
            Directory::decode(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("stored directory {d} does not decode: {e}")))
        };
        let recent_dirs = recent.iter().map(|d| B3Digest::from(*d));
        // A recently looked-up digest that is no directory is skipped by the walk
        // only if absent: so those are checked first.
        let recent_dirs: Vec<B3Digest> = recent_dirs
            .filter(|d| self.directory_stored(d.as_bytes()).unwrap_or(false))
            .collect();
        mark_with(
            &mut live,
            roots,
            young_dirs.into_iter().chain(recent_dirs),
            get,
        )
        .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?;
        live.blobs.extend(recent.iter().copied());

        let _sweep = self
            .inner
            .gc
            .sweep
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // After any commit in progress: a writer records what it commits
        // before the commit (`EmbeddedStore::submit`).
        let mut txn = db.begin_write().map_err(db_err)?;
        // Looked up or committed while the mark ran: kept with what they reach.
        let late: Vec<[u8; 32]> = self
            .inner
            .gc
            .recent()
            .difference(&recent)
            .copied()
            .collect();
        drop(recent);
        let late_dirs: Vec<B3Digest> = late
            .iter()
            .filter(|d| !live.directories.contains(d) && self.directory_stored(d).unwrap_or(false))
            .map(|d| B3Digest::from(*d))
            .collect();
        mark_with(&mut live, &[], late_dirs, get)
            .map_err(|e| EmbeddedError::Corrupt(e.to_string()))?;
        live.blobs.extend(late);
        let keep_blobs = &live.blobs;

        let mut report = GcReport::default();
        let mut freed: Ranges = HashMap::new();
        {
            let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            let mut segments = txn.open_table(SEGMENTS).map_err(db_err)?;
            let mut dirs = txn.open_table(DIRECTORIES).map_err(db_err)?;
            // Chunks and segments of kept blobs; the segments of removed ones
            // (few: a segment is a blob's list of thousands of chunks).
            let mut keep_chunks = DigestSet::default();
            let mut keep_segs = DigestSet::default();
            let mut dead_segs: Vec<SegRef> = Vec::new();
            retain(&mut blobs, opts.dry_run, |k, v| {
                let entry = BlobEntry::decode(v)?;
                if !keep_blobs.contains(k) {
                    report.blobs += 1;
                    if let BlobEntry::Segmented(segs) = entry {
                        dead_segs.extend(segs);
                    }
                    return Ok(false);
                }
                match entry {
                    BlobEntry::Single => {}
                    BlobEntry::Chunked(list) => keep_chunks.extend(list.iter().map(|c| c.0)),
                    BlobEntry::Segmented(segs) => {
                        for s in &segs {
                            if keep_segs.insert(s.digest) {
                                for (c, _) in read_segment(packs, s)? {
                                    keep_chunks.insert(c);
                                }
                            }
                        }
                    }
                }
                Ok(true)
            })?;
            let mut dead_chunk_of_blob = DigestSet::default();
            for s in &dead_segs {
                if keep_segs.contains(&s.digest) {
                    continue;
                }
                // Its chunk locations may name copies no chunk entry
                // does (two writers storing one chunk at once).
                if let Ok(list) = read_segment(packs, s) {
                    for (c, loc) in list {
                        dead_chunk_of_blob.insert(c);
                        add_range(&mut freed, &loc);
                    }
                }
            }
            drop(dead_segs);
            let mut sweep = Sweep {
                is_old: &is_old,
                dry_run: opts.dry_run,
                freed: &mut freed,
                stored_bytes: 0,
            };
            sweep.table(
                &mut segments,
                MAX_SEGMENT,
                |d| keep_segs.contains(d) || keep_blobs.contains(d),
                |_| {},
            )?;
            sweep.table(
                &mut chunks,
                MAX_CHUNK,
                |d| keep_chunks.contains(d) || keep_blobs.contains(d),
                |d| {
                    if dead_chunk_of_blob.contains(d) {
                        report.chunks += 1;
                    } else {
                        report.blobs += 1;
                    }
                },
            )?;
            drop((keep_chunks, keep_segs, dead_chunk_of_blob));
            sweep.table(
                &mut dirs,
                MAX_DIRECTORY,
                |d| live.directories.contains(d),
                |_| report.directories += 1,
            )?;
            report.stored_bytes += sweep.stored_bytes;
            if !opts.dry_run {
                // Damage records of what is gone.
                let mut damaged = txn.open_table(DAMAGED).map_err(db_err)?;
                let gone: Vec<[u8; 32]> = damaged
                    .iter()
                    .map_err(db_err)?
                    .filter_map(|e| e.ok().map(|(k, _)| *k.value()))
                    .filter(|d| {
                        chunks.get(d).ok().flatten().is_none()
                            && blobs.get(d).ok().flatten().is_none()
                            && segments.get(d).ok().flatten().is_none()
                            && dirs.get(d).ok().flatten().is_none()
                    })
                    .collect();
                for d in gone {
                    damaged.remove(&d).map_err(db_err)?;
                }
                // Marks older than the one used are never needed again.
                if let Some(t) = mark_time {
                    let mut marks = txn.open_table(MARKS).map_err(db_err)?;
                    marks.retain_in(..t, |_, _| false).map_err(db_err)?;
                }
            }
        }
        if opts.dry_run {
            txn.abort().map_err(db_err)?;
            return Ok(report);
        }
        txn.set_durability(redb::Durability::Immediate)
            .map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        drop(_sweep);
        report.disk_freed = self.punch_freed(freed)?;
        // The mark's sets go before the rewrite's own scan (peak memory).
        drop(live);
        self.rewrite_after_collection(&mut report);
        Ok(report)
    }

    /// Punches out the `freed` ranges where no remaining entry refers to their
    /// bytes; returns the disk given back.
    fn punch_freed(&self, mut freed: Ranges) -> Result<u64, EmbeddedError> {
        let packs = &self.inner.packs;
        if freed.is_empty() {
            return Ok(0);
        }
        let mut used = super::rewrite::used_ranges(
            &self.inner.db.begin_read().map_err(db_err)?,
            packs,
            |p| freed.contains_key(&p),
        )?;
        let committed = packs.committed_lengths();
        let mut total = 0;
        for (id, ranges) in freed.iter_mut() {
            let Some(&len) = committed.get(id) else {
                continue;
            };
            let mut live = used.remove(id).unwrap_or_default();
            live.sort_unstable();
            ranges.sort_unstable();
            // Freed ranges minus live ones.
            let mut holes = Vec::new();
            let mut li = 0;
            for &(s, e) in ranges.iter() {
                let mut at = s;
                while li < live.len() && live[li].1 <= at {
                    li += 1;
                }
                let mut j = li;
                while at < e {
                    match live.get(j) {
                        Some(&(ls, le)) if ls < e => {
                            if ls > at {
                                holes.push((at, ls));
                            }
                            at = at.max(le);
                            j += 1;
                        }
                        _ => {
                            holes.push((at, e));
                            at = e;
                        }
                    }
                }
            }
            // Adjacent holes as one call.
            holes.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (s, e) in holes {
                let e = e.min(len);
                if s >= e {
                    continue;
                }
                match merged.last_mut() {
                    Some(last) if last.1 >= s => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            if merged.is_empty() {
                continue;
            }
            let before = packs.allocated(*id)?;
            for (s, e) in merged {
                packs.punch(*id, s, e - s)?;
            }
            total += before.saturating_sub(packs.allocated(*id)?);
        }
        Ok(total)
    }
}

#[async_trait]
impl Collector for EmbeddedStore {
    async fn collect(&self, roots: Vec<Node>, opts: GcOptions) -> Result<GcReport, Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.collect_blocking(&roots, opts))
            .await
            .map_err(|e| Error::storage(std::io::Error::other(e.to_string())))?
            .map_err(Error::from)
    }

    fn disk_bytes(&self) -> Result<u64, Error> {
        Ok(self.stats()?.disk_bytes)
    }

    fn begin(&self) -> Epoch {
        /// Releases the hold on the tracker's notes when the epoch ends.
        struct Hold(EmbeddedStore, u64);
        impl Drop for Hold {
            fn drop(&mut self) {
                self.0.inner.gc.release(self.1);
            }
        }
        let hold = self
            .inner
            .gc
            .hold()
            .map(|id| Box::new(Hold(self.clone(), id)) as Box<dyn Send + Sync>);
        Epoch::new(hold)
    }
}
