//! Pack rewriting: packs whose live share fell below a threshold get their
//! live objects copied into the active pack and are deleted, so the space of
//! what garbage collection removed comes back whole (hole punching alone
//! leaves fragmented packs: partly used file system blocks, and packs that
//! never shrink in length). Also which pack bytes the index refers to at all
//! ([`used_ranges`], for the reclaim at open and for collection).
//!
//! What moves (docs/FORMATS.md): the locations in `chunks`, `segments` and
//! `directories`, the segment references of `blobs` entries, and the chunk
//! locations listed inside segments. A segment whose chunk list names a
//! moved chunk is written anew (its digest changes with its content), and
//! every blob entry naming it is pointed at the new one. Bytes are copied as
//! stored (no recompression) after they verified against their digest; an
//! object that fails verification stays where it is, and so does its pack.
//!
//! Order, and why a kill at any point loses nothing:
//! 1. The victims are marked draining: lookups for dedup (`find_chunk`,
//!    `find_segment`, a Directory's location) that find an object in one
//!    say absent, so a writer that starts now stores its own copy rather
//!    than building on a location about to go. If the active pack is a
//!    victim, appends move to a new pack first.
//! 2. Live objects are copied to the active pack, synced, and one durable
//!    redb transaction moves their entries (each only if it is still the one
//!    planned: a concurrent commit wins) and raises the active pack's
//!    committed length. Killed before: the copies lie past the committed
//!    length (cut at the next open) or, if another commit raised it, below
//!    it with no entry referring to them (punched at the next open).
//! 3. Writers that started before step 1 may hold locations in a victim (a
//!    chunk found for dedup, a reused segment) that their commit will record.
//!    Every writer holds a [`InUse`] from its start until its commit is applied;
//!    the rewrite waits (bounded) until every writer older than step 1 is
//!    gone. If one is not, nothing is deleted this time (the next run finds
//!    the packs with nothing live and deletes them).
//! 4. What the index (and every segment) refers to in the victims is computed
//!    again; a victim still referred to (a writer committed such a location
//!    meanwhile) is kept. The others lose their `packs` entry in one durable
//!    transaction, then their files are deleted. Killed between the two: the
//!    open deletes pack files that have no `packs` entry. Killed after step
//!    2 but before this one: the victims' bytes are unreferenced and punched
//!    out at the next open; the next rewrite deletes them.
//!
//! Readers: a reader holds the locations of the blob it opened. Until a
//! victim's file is deleted its bytes stay as they were, so such a reader
//! reads right bytes; the rewrite waits (bounded) for readers opened before
//! step 2's commit. A reader still going afterwards gets an I/O error (the
//! pack is gone), never other bytes: every read is verified by digest, and a
//! deleted pack's id is never read from again in this process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable};

use super::format::{BlobEntry, ChunkLoc, MAX_CHUNK, MAX_DIRECTORY, MAX_SEGMENT, SegRef};
use super::gc::each;
use super::pack::Packs;
use super::{
    BLOBS, CHUNKS, DIRECTORIES, EmbeddedError, EmbeddedStore, Level, PACKS, SEGMENTS,
    append_encoded, db_err, decode_into, encode, format, hex, read_segment,
};

/// Byte ranges [start, end) per pack.
pub(super) type Ranges = HashMap<u32, Vec<(u64, u64)>>;

pub(super) fn add_range(r: &mut Ranges, loc: &ChunkLoc) {
    r.entry(loc.pack)
        .or_default()
        .push((loc.offset, loc.offset + u64::from(loc.stored_len)));
}

/// Sorts `ranges` and merges the overlapping and adjacent ones.
pub(super) fn merge(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *ranges = out;
}

/// Every pack byte range the index refers to, in the packs `want` selects:
/// the locations of `chunks`, `segments` and `directories`, the segments of
/// `blobs` entries, and the chunk locations listed inside those segments (a
/// chunk two writers stored at once is indexed at the first copy, and the
/// second's segment names its own). Reads every segment once: an unreadable
/// one is an error, since what it names is unknown. Unmerged.
pub(super) fn used_ranges(
    txn: &redb::ReadTransaction,
    packs: &Packs,
    want: impl Fn(u32) -> bool,
) -> Result<Ranges, EmbeddedError> {
    let mut used: Ranges = HashMap::new();
    for table in [CHUNKS, SEGMENTS, DIRECTORIES] {
        each(txn, table, |_, v| {
            let loc = ChunkLoc::decode(v, u32::MAX as usize)?;
            if want(loc.pack) {
                add_range(&mut used, &loc);
            }
            Ok(())
        })?;
    }
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    each(txn, BLOBS, |_, v| {
        if let BlobEntry::Segmented(segs) = BlobEntry::decode(v)? {
            for s in &segs {
                if want(s.loc.pack) {
                    add_range(&mut used, &s.loc);
                }
                if !seen.insert(s.digest) {
                    continue;
                }
                for (_, loc) in read_segment(packs, s)? {
                    if want(loc.pack) {
                        add_range(&mut used, &loc);
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(used)
}

/// How packs are rewritten (see [`EmbeddedStore::set_rewrite`]).
#[derive(Clone, Copy, Debug)]
pub struct RewriteOptions {
    /// A pack whose live bytes are below this share of its length is
    /// rewritten (0 disables rewriting; 1 rewrites every pack with any dead
    /// byte).
    pub below: f64,
    /// How long a rewrite waits for writers (and readers) that started before
    /// it to finish before it deletes packs.
    pub wait: Duration,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            below: 0.5,
            wait: Duration::from_secs(30),
        }
    }
}

/// What a rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// Packs whose live objects were copied out.
    pub packs_rewritten: u64,
    /// Pack files deleted.
    pub packs_deleted: u64,
    /// Stored bytes copied (live objects, and segments written anew).
    pub bytes_moved: u64,
    /// Disk given back (allocated blocks of the packs before minus after).
    pub disk_freed: u64,
}

#[derive(Default)]
struct Users {
    epoch: u64,
    /// Live pins per epoch.
    writers: BTreeMap<u64, usize>,
    readers: BTreeMap<u64, usize>,
}

/// The store's side of rewriting: the packs being emptied, the writers and
/// readers that may hold locations in them, and the settings.
#[derive(Default)]
pub(super) struct State {
    any_draining: AtomicBool,
    draining: RwLock<HashSet<u32>>,
    users: Mutex<Users>,
    left: Condvar,
    /// One rewrite at a time.
    running: Mutex<()>,
    options: Mutex<Option<RewriteOptions>>,
}

/// Held by a writer from its start until its commit is applied, or by a
/// reader while it is open: a rewrite waits for the pins older than it.
pub(crate) struct InUse {
    state: Arc<State>,
    epoch: u64,
    reader: bool,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut u = self
            .state
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let map = if self.reader {
            &mut u.readers
        } else {
            &mut u.writers
        };
        if let Some(n) = map.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.epoch);
                self.state.left.notify_all();
            }
        }
    }
}

impl State {
    /// A pin for a writer (`reader` false) or a reader.
    pub(super) fn pin(self: &Arc<Self>, reader: bool) -> InUse {
        let mut u = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = u.epoch;
        let map = if reader {
            &mut u.readers
        } else {
            &mut u.writers
        };
        *map.entry(epoch).or_insert(0) += 1;
        InUse {
            state: self.clone(),
            epoch,
            reader,
        }
    }

    /// Whether pack `id` is being emptied (a dedup lookup that finds an
    /// object there says absent).
    pub(super) fn draining(&self, id: u32) -> bool {
        self.any_draining.load(Ordering::Acquire)
            && self
                .draining
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&id)
    }

    fn set_draining(&self, ids: &HashSet<u32>) {
        let mut d = self
            .draining
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        d.clone_from(ids);
        self.any_draining.store(!d.is_empty(), Ordering::Release);
    }

    /// Starts a new epoch: pins taken from now on are newer than everything
    /// before. Returns it.
    fn advance(&self) -> u64 {
        let mut u = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        u.epoch += 1;
        u.epoch
    }

    /// Waits up to `wait` until no pin of the kind older than `epoch` is
    /// left; whether none is.
    fn wait_older(&self, epoch: u64, reader: bool, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut u = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let map = if reader { &u.readers } else { &u.writers };
            if map.range(..epoch).next().is_none() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            u = self
                .left
                .wait_timeout(u, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Copies verified objects into the active pack, each stored copy once.
struct Copier<'a> {
    packs: &'a Packs,
    /// An object's location (encoded: an empty object shares its offset
    /// with the next) -> its copy (`None`: it failed verification and stays).
    moved: HashMap<[u8; 21], Option<ChunkLoc>>,
    /// Per pack appended to, the end of the appends.
    ends: HashMap<u32, u64>,
    bytes: u64,
    stored: Vec<u8>,
    raw: Vec<u8>,
}

impl Copier<'_> {
    fn note(&mut self, loc: &ChunkLoc) {
        let e = self.ends.entry(loc.pack).or_insert(0);
        *e = (*e).max(loc.offset + u64::from(loc.stored_len));
        self.bytes += u64::from(loc.stored_len);
    }

    /// The copy of the object `digest` stored at `loc`.
    fn copy(
        &mut self,
        loc: &ChunkLoc,
        digest: &[u8; 32],
    ) -> Result<Option<ChunkLoc>, EmbeddedError> {
        if let Some(m) = self.moved.get(&loc.encode()) {
            return Ok(*m);
        }
        self.packs.read_into(
            loc.pack,
            loc.offset,
            loc.stored_len as usize,
            &mut self.stored,
        )?;
        let intact = if loc.compressed {
            self.raw.resize(loc.raw_len as usize, 0);
            matches!(decode_into(&self.stored, &mut self.raw), Ok(n) if n == self.raw.len())
                && blake3::hash(&self.raw).as_bytes() == digest
        } else {
            loc.stored_len == loc.raw_len && blake3::hash(&self.stored).as_bytes() == digest
        };
        let copy = if intact {
            let (pack, offset) = self.packs.append(&self.stored)?;
            let new = ChunkLoc {
                pack,
                offset,
                ..*loc
            };
            self.note(&new);
            Some(new)
        } else {
            tracing::warn!(
                digest = hex(digest),
                pack = loc.pack,
                "object fails verification: left where it is, its pack kept"
            );
            None
        };
        if self.raw.capacity() > 2 * MAX_CHUNK {
            self.raw = Vec::new();
        }
        self.moved.insert(loc.encode(), copy);
        Ok(copy)
    }

    /// Segment `s` with its chunks in `victims` moved: written anew if its
    /// list changed, copied if only it lies in a victim, else itself.
    fn segment(&mut self, s: &SegRef, victims: &HashSet<u32>) -> Result<SegRef, EmbeddedError> {
        let mut list = match read_segment(self.packs, s) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(segment = hex(&s.digest), error = %e, "unreadable segment: left as it is");
                return Ok(*s);
            }
        };
        let mut changed = false;
        for (c, loc) in list.iter_mut() {
            if victims.contains(&loc.pack)
                && let Some(new) = self.copy(loc, c)?
            {
                *loc = new;
                changed = true;
            }
        }
        if changed {
            let bytes = format::encode_segment(&list);
            let encoded = encode(&bytes, Level::Chunk)?;
            let loc = append_encoded(self.packs, &bytes, encoded.as_deref())?;
            self.note(&loc);
            return Ok(SegRef {
                digest: *blake3::hash(&bytes).as_bytes(),
                loc,
                ..*s
            });
        }
        if victims.contains(&s.loc.pack)
            && let Some(loc) = self.copy(&s.loc, &s.digest)?
        {
            return Ok(SegRef { loc, ..*s });
        }
        Ok(*s)
    }
}

/// Entry moves planned from one snapshot of the index.
#[derive(Default)]
struct Plan {
    /// Keys of `chunks` (false) and `directories` (true) entries in a victim
    /// (their copies are in the copier's map; 33 bytes each, as a store of
    /// a million small files moves a million).
    locs: Vec<(bool, [u8; 32])>,
    /// (blob, old entry, new entry).
    blobs: Vec<([u8; 32], Vec<u8>, Vec<u8>)>,
    /// Segments: old digest -> the new reference, where it changed.
    segs: HashMap<[u8; 32], SegRef>,
    /// `segments` entries in a victim that no blob names: dropped (they only
    /// serve dedup).
    orphan_segs: Vec<([u8; 32], ChunkLoc)>,
}

impl EmbeddedStore {
    /// Sets how [`EmbeddedStore::rewrite_packs`] (run by every collection)
    /// chooses packs and how long it waits for older writers and readers.
    pub fn set_rewrite(&self, options: RewriteOptions) {
        *self
            .inner
            .rewrite
            .options
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(options);
    }

    /// Rewrites what a collection left mostly dead ([`Self::rewrite_packs`])
    /// and adds it to the collection's `report`; a failure is logged, as the
    /// collection itself is done.
    pub(super) fn rewrite_after_collection(&self, report: &mut crate::gc::GcReport) {
        match self.rewrite_packs() {
            Ok(r) => {
                report.bytes_moved = r.bytes_moved;
                report.packs_deleted = r.packs_deleted;
                report.disk_freed += r.disk_freed;
            }
            Err(e) => tracing::warn!(error = %e, "packs not rewritten"),
        }
    }

    fn rewrite_options(&self) -> RewriteOptions {
        self.inner
            .rewrite
            .options
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_default()
    }

    /// Rewrites the packs whose live share is below the configured threshold
    /// and deletes them (module doc: the order, and why it is safe while the
    /// store serves and under a kill). Blocking.
    pub fn rewrite_packs(&self) -> Result<RewriteReport, EmbeddedError> {
        let opts = self.rewrite_options();
        let mut report = RewriteReport::default();
        if opts.below <= 0.0 {
            return Ok(report);
        }
        let state = &self.inner.rewrite;
        let _one = state.running.lock().unwrap_or_else(PoisonError::into_inner);
        let packs = &self.inner.packs;
        let db = &self.inner.db;
        packs.flush()?;
        let committed = packs.committed_lengths();
        let active = packs.active_id();
        let mut used = used_ranges(&db.begin_read().map_err(db_err)?, packs, |_| true)?;
        let mut victims = HashSet::new();
        for (&id, &len) in &committed {
            let live: u64 = match used.get_mut(&id) {
                Some(r) => {
                    merge(r);
                    r.iter().map(|(s, e)| e.min(&len).saturating_sub(*s)).sum()
                }
                None => 0,
            };
            if (len == 0 && id != active) || (len > 0 && (live as f64) < opts.below * len as f64) {
                victims.insert(id);
            }
        }
        drop(used);
        if victims.is_empty() {
            return Ok(report);
        }
        let disk_before = self.packs_disk()?;
        tracing::info!(packs = ?victims, "rewriting packs");
        state.set_draining(&victims);
        let r = self.rewrite_victims(&victims, opts, &mut report);
        state.set_draining(&HashSet::new());
        r?;
        report.disk_freed = disk_before.saturating_sub(self.packs_disk()?);
        Ok(report)
    }

    /// Allocated bytes of all packs.
    fn packs_disk(&self) -> Result<u64, EmbeddedError> {
        let packs = &self.inner.packs;
        let mut total = 0;
        for id in packs.committed_lengths().into_keys() {
            total += packs.allocated(id)?;
        }
        Ok(total)
    }

    fn rewrite_victims(
        &self,
        victims: &HashSet<u32>,
        opts: RewriteOptions,
        report: &mut RewriteReport,
    ) -> Result<(), EmbeddedError> {
        let state = &self.inner.rewrite;
        let packs = &self.inner.packs;
        let db = &self.inner.db;
        for &id in victims {
            packs.retire_active(id)?;
        }
        // Writers pinned before this may hold locations in the victims.
        let writers_before = state.advance();

        let mut copier = Copier {
            packs,
            moved: HashMap::new(),
            ends: HashMap::new(),
            bytes: 0,
            stored: Vec::new(),
            raw: Vec::new(),
        };
        let plan = self.plan(victims, &mut copier)?;
        report.bytes_moved = copier.bytes;
        report.packs_rewritten = victims.len() as u64;
        let ends = std::mem::take(&mut copier.ends);
        let moved = std::mem::take(&mut copier.moved);
        drop(copier);
        packs.flush()?;
        for &p in ends.keys() {
            packs.sync(p)?;
        }
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut pt = txn.open_table(PACKS).map_err(db_err)?;
            for (&p, &end) in &ends {
                let old = pt.get(p).map_err(db_err)?.map(|v| v.value()).unwrap_or(0);
                if end > old {
                    pt.insert(p, end).map_err(db_err)?;
                }
            }
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            let mut dirs = txn.open_table(DIRECTORIES).map_err(db_err)?;
            for (is_dir, key) in &plan.locs {
                let t = if *is_dir { &mut dirs } else { &mut chunks };
                // Still where it was planned from (a concurrent commit wins).
                let new = match t.get(key).map_err(db_err)? {
                    Some(v) => v
                        .value()
                        .try_into()
                        .ok()
                        .and_then(|old: [u8; 21]| moved.get(&old).copied().flatten()),
                    None => None,
                };
                if let Some(new) = new {
                    t.insert(key, &new.encode()[..]).map_err(db_err)?;
                }
            }
            let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
            for (key, old, new) in &plan.blobs {
                let same = blobs
                    .get(key)
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() == &old[..]);
                if same {
                    blobs.insert(key, &new[..]).map_err(db_err)?;
                }
            }
            let mut segments = txn.open_table(SEGMENTS).map_err(db_err)?;
            for (old, new) in &plan.segs {
                if *old != new.digest {
                    // A list naming old locations is no longer offered for reuse.
                    segments.remove(old).map_err(db_err)?;
                    if segments.get(&new.digest).map_err(db_err)?.is_none() {
                        segments
                            .insert(&new.digest, &new.loc.encode()[..])
                            .map_err(db_err)?;
                    }
                } else if segments.get(old).map_err(db_err)?.is_some_and(|v| {
                    ChunkLoc::decode(v.value(), MAX_SEGMENT)
                        .is_ok_and(|l| victims.contains(&l.pack))
                }) {
                    segments
                        .insert(old, &new.loc.encode()[..])
                        .map_err(db_err)?;
                }
            }
            for (key, loc) in &plan.orphan_segs {
                let same = segments
                    .get(key)
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() == &loc.encode()[..]);
                if same {
                    segments.remove(key).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        drop((plan, moved));
        for (p, end) in ends {
            packs.committed(p, end);
        }
        // Readers opened before the move hold the old locations.
        let readers_before = state.advance();

        if !state.wait_older(writers_before, false, opts.wait) {
            tracing::info!(
                "writers older than the rewrite are still running: packs deleted at a later collection"
            );
            return Ok(());
        }
        if !state.wait_older(readers_before, true, opts.wait) {
            tracing::info!(
                "readers older than the rewrite still running: they fail if they reach a deleted pack"
            );
        }
        packs.flush()?;
        let still = used_ranges(&db.begin_read().map_err(db_err)?, packs, |p| {
            victims.contains(&p)
        })?;
        let doomed: Vec<u32> = victims
            .iter()
            .copied()
            .filter(|p| !still.contains_key(p))
            .collect();
        for p in still.keys() {
            tracing::info!(pack = p, "pack still referred to: kept");
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(db_err)?;
        {
            let mut pt = txn.open_table(PACKS).map_err(db_err)?;
            for p in &doomed {
                pt.remove(*p).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        for p in doomed {
            packs.delete(p)?;
            report.packs_deleted += 1;
        }
        Ok(())
    }

    /// Copies the live objects of `victims` and plans the entry moves.
    fn plan(&self, victims: &HashSet<u32>, copier: &mut Copier<'_>) -> Result<Plan, EmbeddedError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let mut plan = Plan::default();
        for (is_dir, table, max_raw) in [
            (false, CHUNKS, MAX_CHUNK),
            (true, DIRECTORIES, MAX_DIRECTORY),
        ] {
            each(&txn, table, |k, v| {
                let loc = ChunkLoc::decode(v, max_raw)?;
                if victims.contains(&loc.pack) && copier.copy(&loc, k)?.is_some() {
                    plan.locs.push((is_dir, *k));
                }
                Ok(())
            })?;
        }
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        each(&txn, BLOBS, |k, v| {
            let BlobEntry::Segmented(segs) = BlobEntry::decode(v)? else {
                return Ok(());
            };
            let mut new_segs = Vec::with_capacity(segs.len());
            for s in &segs {
                let ns = match plan.segs.get(&s.digest) {
                    Some(ns) => *ns,
                    None if seen.contains(&s.digest) => *s,
                    None => {
                        seen.insert(s.digest);
                        let ns = copier.segment(s, victims)?;
                        if ns != *s {
                            plan.segs.insert(s.digest, ns);
                        }
                        ns
                    }
                };
                new_segs.push(ns);
            }
            if new_segs != segs {
                plan.blobs
                    .push((*k, v.to_vec(), BlobEntry::Segmented(new_segs).encode()));
            }
            Ok(())
        })?;
        each(&txn, SEGMENTS, |k, v| {
            let loc = ChunkLoc::decode(v, MAX_SEGMENT)?;
            if victims.contains(&loc.pack) && !plan.segs.contains_key(k) {
                plan.orphan_segs.push((*k, loc));
            }
            Ok(())
        })?;
        Ok(plan)
    }
}
