//! Garbage collection of a store: which paths go (explicit deletes, and the
//! `--max-age` and `--max-size` policies), then the castore's collector for the
//! content no remaining path reaches.
//!
//! Rules:
//! - A path is never removed while a path that stays references it: an
//!   explicit delete naming a path whose referrers stay is refused, naming
//!   them; policies remove referrers before what they reference.
//! - Pinned paths and their closures are never removed by a policy; an
//!   explicit delete of a pinned path is refused.
//! - `--max-age`: paths neither read nor uploaded within the age go. A path
//!   without a recorded access time (a store older than access tracking) gets
//!   one now, so it ages from the first collection on.
//! - `--max-size`: least recently used paths go (among those no remaining path
//!   references) until the store's disk use is at most the size: removed in
//!   rounds, each sized by the disk taken per NAR byte, then measured; it
//!   stops short (with a warning) when a round frees less than a quarter of
//!   its estimate, as when the index, which keeps its pages, is most of the
//!   disk.
//! - Path entries are removed (durably) before their content is collected: a
//!   kill in between leaves content no path reaches, collected next time.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_castore::Error;
use cairn_castore::gc::{Collector, GcOptions, GcReport};
use cairn_nix::store_path::StorePath;
use futures::TryStreamExt;

use crate::pathinfo::{PathInfo, PathInfoService};

/// What to remove besides unreachable content.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Remove paths not accessed within this long.
    pub max_age: Option<Duration>,
    /// Remove least recently used paths until the disk use is at most this.
    pub max_size: Option<u64>,
    /// Grace period and dry run, for the castore's collector.
    pub castore: GcOptions,
}

/// What a collection did (or, dry, would do).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The paths removed, in the order they were chosen.
    pub paths: Vec<StorePath>,
    /// Their NAR bytes.
    pub nar_bytes: u64,
    /// What the castore's collector removed.
    pub castore: GcReport,
    /// Disk use before and after.
    pub disk_before: u64,
    /// Disk use after (equal to before when dry).
    pub disk_after: u64,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// Why a delete was refused.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A path to delete is not registered.
    #[error("path '{0}' is not in the store")]
    NotFound(String),
    /// A path to delete is referenced by paths that stay.
    #[error("path '{path}' is referenced by {}: delete those too", .referrers.join(", "))]
    Referenced {
        /// The path.
        path: String,
        /// Its referrers that stay.
        referrers: Vec<String>,
    },
    /// A path to delete is pinned.
    #[error("path '{0}' is pinned: unpin it first")]
    Pinned(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The registered paths with their references, referrers and access times.
struct Graph {
    infos: HashMap<[u8; 20], PathInfo>,
    /// Path -> the other paths referencing it.
    referrers: HashMap<[u8; 20], Vec<[u8; 20]>>,
    pinned_closure: HashSet<[u8; 20]>,
    access: HashMap<[u8; 20], u64>,
}

impl Graph {
    async fn load(paths: &dyn PathInfoService) -> Result<Graph, Error> {
        let infos: HashMap<[u8; 20], PathInfo> = paths
            .list()
            .map_ok(|i| (*i.store_path.digest(), i))
            .try_collect()
            .await?;
        let mut referrers: HashMap<[u8; 20], Vec<[u8; 20]>> = HashMap::new();
        for (d, info) in &infos {
            for r in &info.references {
                if r.digest() != d {
                    referrers.entry(*r.digest()).or_default().push(*d);
                }
            }
        }
        let mut pinned_closure = HashSet::new();
        let mut todo = paths.pins().await?;
        while let Some(d) = todo.pop() {
            if !pinned_closure.insert(d) {
                continue;
            }
            if let Some(info) = infos.get(&d) {
                todo.extend(info.references.iter().map(|r| *r.digest()));
            }
        }
        let mut access = paths.access_times().await?;
        let now = crate::pathinfo::now_secs();
        for d in infos.keys() {
            if !access.contains_key(d) {
                // Starts aging now.
                paths.note_access(*d);
                access.insert(*d, now);
            }
        }
        Ok(Graph {
            infos,
            referrers,
            pinned_closure,
            access,
        })
    }

    fn name(&self, d: &[u8; 20]) -> String {
        self.infos
            .get(d)
            .map(|i| i.store_path.to_absolute())
            .unwrap_or_else(|| cairn_nix::nixbase32::encode(d))
    }

    /// Paths among `candidates` that can go together: repeatedly drops any
    /// whose referrers do not all go.
    fn removable(&self, mut candidates: HashSet<[u8; 20]>) -> HashSet<[u8; 20]> {
        loop {
            let keep: Vec<[u8; 20]> = candidates
                .iter()
                .filter(|d| {
                    self.referrers
                        .get(*d)
                        .is_some_and(|rs| rs.iter().any(|r| !candidates.contains(r)))
                })
                .copied()
                .collect();
            if keep.is_empty() {
                return candidates;
            }
            for d in keep {
                candidates.remove(&d);
            }
        }
    }

    /// Unpinned paths in the order `--max-size` removes them: least recently
    /// used first among those no remaining path references.
    fn lru_order(&self) -> Vec<[u8; 20]> {
        let mut left: HashMap<[u8; 20], usize> = self
            .infos
            .keys()
            .map(|d| (*d, self.referrers.get(d).map_or(0, Vec::len)))
            .collect();
        let mut heap = BinaryHeap::new();
        let at = |d: &[u8; 20]| self.access.get(d).copied().unwrap_or(0);
        for (d, n) in &left {
            if *n == 0 && !self.pinned_closure.contains(d) {
                heap.push(std::cmp::Reverse((at(d), *d)));
            }
        }
        let mut order = Vec::new();
        while let Some(std::cmp::Reverse((_, d))) = heap.pop() {
            order.push(d);
            let Some(info) = self.infos.get(&d) else {
                continue;
            };
            for r in &info.references {
                let r = r.digest();
                if r == &d {
                    continue;
                }
                if let Some(n) = left.get_mut(r) {
                    *n = n.saturating_sub(1);
                    if *n == 0 && !self.pinned_closure.contains(r) {
                        heap.push(std::cmp::Reverse((at(r), *r)));
                    }
                }
            }
        }
        order
    }
}

/// Removes the paths (after checking nothing that stays references them and
/// none is pinned), then collects the content nothing reaches any more.
pub async fn delete(
    paths: &dyn PathInfoService,
    collector: &dyn Collector,
    targets: &[StorePath],
    opts: GcOptions,
) -> Result<Report, GcError> {
    let start = Instant::now();
    let epoch = collector.begin();
    let opts = GcOptions {
        began: Some(epoch.began()),
        ..opts
    };
    let graph = Graph::load(paths).await?;
    let pins: HashSet<[u8; 20]> = paths.pins().await?.into_iter().collect();
    let set: HashSet<[u8; 20]> = targets.iter().map(|p| *p.digest()).collect();
    for p in targets {
        let d = p.digest();
        if graph.infos.get(d).is_none_or(|i| i.store_path != *p) {
            return Err(GcError::NotFound(p.to_absolute()));
        }
        if pins.contains(d) {
            return Err(GcError::Pinned(p.to_absolute()));
        }
        let mut stay: Vec<String> = graph
            .referrers
            .get(d)
            .into_iter()
            .flatten()
            .filter(|r| !set.contains(*r))
            .map(|r| graph.name(r))
            .collect();
        if !stay.is_empty() {
            stay.sort();
            return Err(GcError::Referenced {
                path: p.to_absolute(),
                referrers: stay,
            });
        }
    }
    let order: Vec<[u8; 20]> = targets.iter().map(|p| *p.digest()).collect();
    remove_and_collect(paths, collector, &graph, order, opts, start).await
}

async fn remove_and_collect(
    paths: &dyn PathInfoService,
    collector: &dyn Collector,
    graph: &Graph,
    order: Vec<[u8; 20]>,
    opts: GcOptions,
    start: Instant,
) -> Result<Report, GcError> {
    let disk_before = collector.disk_bytes()?;
    let mut report = Report {
        disk_before,
        ..Default::default()
    };
    let gone: HashSet<[u8; 20]> = order.iter().copied().collect();
    for d in &order {
        if let Some(i) = graph.infos.get(d) {
            report.paths.push(i.store_path.clone());
            report.nar_bytes += i.nar_size;
        }
    }
    if !opts.dry_run && !order.is_empty() {
        paths.delete(&order).await?;
    }
    let roots = graph
        .infos
        .iter()
        .filter(|(d, _)| !gone.contains(*d))
        .map(|(_, i)| i.node.clone())
        .collect();
    report.castore = collector.collect(roots, opts).await?;
    report.disk_after = collector.disk_bytes()?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Runs the policy: removes what `--max-age` and `--max-size` select (never a
/// pinned path's closure, referrers first), then collects unreachable
/// content. `progress` hears what is being done.
pub async fn run(
    paths: &dyn PathInfoService,
    collector: &dyn Collector,
    policy: &Policy,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, GcError> {
    let start = Instant::now();
    // Before the roots are read: a path registered from here on keeps its
    // content (see `cairn_castore::gc`).
    let epoch = collector.begin();
    let mut policy = policy.clone();
    policy.castore.began = Some(epoch.began());
    let policy = &policy;
    progress("reading path info");
    let mut graph = Graph::load(paths).await?;
    let mut chosen: Vec<[u8; 20]> = Vec::new();
    if let Some(age) = policy.max_age {
        let cutoff = crate::pathinfo::now_secs().saturating_sub(age.as_secs());
        let old: HashSet<[u8; 20]> = graph
            .infos
            .keys()
            .filter(|d| {
                !graph.pinned_closure.contains(*d)
                    && graph.access.get(*d).copied().unwrap_or(0) < cutoff
            })
            .copied()
            .collect();
        let go = graph.removable(old);
        // Referrers first.
        chosen = graph
            .lru_order()
            .into_iter()
            .filter(|d| go.contains(d))
            .collect();
    }
    progress("collecting");
    let mut report = remove_and_collect(
        paths,
        collector,
        &graph,
        chosen.clone(),
        policy.castore,
        start,
    )
    .await?;
    let Some(limit) = policy.max_size else {
        return Ok(report);
    };
    let gone: HashSet<[u8; 20]> = chosen.iter().copied().collect();
    graph.infos.retain(|d, _| !gone.contains(d));
    for rs in graph.referrers.values_mut() {
        rs.retain(|r| !gone.contains(r));
    }
    let disk_before = report.disk_before;
    let mut disk = if policy.castore.dry_run {
        report
            .disk_after
            .saturating_sub(report.castore.stored_bytes)
    } else {
        report.disk_after
    };
    let mut order = graph.lru_order().into_iter();
    // Rounds: remove about the excess (by disk per NAR byte), measure again.
    while disk > limit {
        let nar_total: u64 = graph.infos.values().map(|i| i.nar_size).sum();
        if nar_total == 0 {
            break;
        }
        let per_nar_byte = disk as f64 / nar_total as f64;
        let excess = (disk - limit) as f64;
        let mut round = Vec::new();
        let mut estimate = 0.0;
        for d in order.by_ref() {
            let n = graph.infos.get(&d).map_or(0, |i| i.nar_size);
            round.push(d);
            estimate += n as f64 * per_nar_byte;
            if estimate >= excess {
                break;
            }
        }
        if round.is_empty() {
            break;
        }
        progress(&format!(
            "removing {} least recently used paths",
            round.len()
        ));
        let r = remove_and_collect(
            paths,
            collector,
            &graph,
            round.clone(),
            policy.castore,
            start,
        )
        .await?;
        for d in &round {
            graph.infos.remove(d);
        }
        report.paths.extend(r.paths);
        report.nar_bytes += r.nar_bytes;
        if policy.castore.dry_run {
            // A dry round counts again what the earlier ones found.
            report.castore = r.castore;
        } else {
            report.castore += r.castore;
        }
        let was = disk;
        disk = if policy.castore.dry_run {
            disk.saturating_sub(estimate as u64)
        } else {
            r.disk_after
        };
        report.disk_after = r.disk_after;
        if disk > limit && ((was - disk.min(was)) as f64) < estimate / 4.0 {
            // The disk no longer follows the paths removed (the index keeps
            // its pages until compacted): removing more would empty the store
            // for little.
            tracing::warn!(
                disk,
                limit,
                "--max-size not reached: removing paths frees too little disk now"
            );
            break;
        }
    }
    report.disk_before = disk_before;
    report.elapsed = start.elapsed();
    Ok(report)
}
