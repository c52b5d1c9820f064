//! `cairn gc`, `cairn delete`, `cairn pin`, `cairn unpin`, `cairn pins`:
//! garbage collection of the embedded store and of S3 + PostgreSQL stores
//! (`cairn_store::gc` decides which paths go, the castore's collector removes
//! what no path reaches).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_castore::blobservice::{PgCollector, S3BlobService};
use cairn_castore::directoryservice::PgDirectoryService;
use cairn_castore::embedded::EmbeddedStore;
use cairn_castore::gc::{Collector, GcOptions, GcReport};
use cairn_store::gc::{Policy, Report};
use cairn_store::pathinfo::PgPathInfoService;
use clap::Args;

use super::daemon_http::parse_size;
use super::store::{StoreArgs, parse_store_paths, runtime};

/// A duration: a number with a unit s, m, h, d or w (`90m`, `30d`); a bare
/// number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let mult: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 7 * 86400,
        c => return Err(format!("{s:?}: unknown unit {c:?} (s, m, h, d or w)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90m, 12h or 30d"))?;
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// The collection options shared by `cairn gc` and `cairn daemon`.
#[derive(Args, Clone, Debug)]
pub struct PolicyArgs {
    /// Remove paths not read (narinfo or NAR served, gRPC get) nor uploaded
    /// within this long (e.g. 30d). Pinned paths and their closures stay; a
    /// path stays while a path that stays references it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Remove least recently used paths (referrers before what they
    /// reference) until the store takes at most this much disk (e.g. 50G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Keep content written within this long even if no path reaches it: an
    /// upload in progress registers its path last.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub grace: Duration,
    /// Rewrite the pack files whose live bytes fall below this share of
    /// their length (0 to 1): their live objects move to the newest pack and
    /// the old files are deleted. 0 only punches the freed ranges out.
    #[arg(long, value_name = "FRACTION", value_parser = parse_share, default_value = "0.5")]
    pub rewrite_below: f64,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

impl PolicyArgs {
    /// How packs are rewritten.
    pub fn rewrite(&self) -> cairn_castore::embedded::RewriteOptions {
        cairn_castore::embedded::RewriteOptions {
            below: self.rewrite_below,
            ..Default::default()
        }
    }

    /// The policy, dry or not.
    pub fn policy(&self, dry_run: bool) -> Policy {
        Policy {
            max_age: self.max_age,
            max_size: self.max_size,
            castore: GcOptions {
                grace: self.grace,
                dry_run,
                began: None,
            },
        }
    }
}

/// `cairn gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Print what would be removed and how many bytes it takes; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    store: StoreArgs,
}

/// `cairn delete`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Store paths to remove. Refused, naming them, while paths not given here
    /// reference one of them; refused for a pinned path.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep content written within this long even if no path reaches it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    grace: Duration,
    /// Rewrite the pack files whose live bytes fall below this share of
    /// their length (see `cairn gc --help`).
    #[arg(long, value_name = "FRACTION", value_parser = parse_share, default_value = "0.5")]
    rewrite_below: f64,
    #[command(flatten)]
    store: StoreArgs,
}

/// `cairn pin` and `cairn unpin`.
#[derive(Args, Debug)]
pub struct PinArgs {
    /// Store paths (registered ones, for `pin`).
    #[arg(required = true)]
    paths: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `cairn pins`.
#[derive(Args, Debug)]
pub struct PinsArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// The store's collector: the embedded store of the data directory (opened in
/// this process: it needs the data directory itself), or the collector of an
/// S3 + PostgreSQL store (several processes may collect it; one at a time).
pub enum Gc {
    /// `redb://DATA_DIR`.
    Embedded(EmbeddedStore),
    /// `s3://…?index=postgres://DB` with directories and path info in `DB`.
    Pg(Box<PgCollector>),
}

impl Gc {
    fn collector(&self) -> &dyn Collector {
        match self {
            Gc::Embedded(s) => s,
            Gc::Pg(c) => c.as_ref(),
        }
    }

    /// Takes the store's collection lock (S3 + PostgreSQL: false if another
    /// process holds it) before the roots are read.
    async fn begin(&self) -> anyhow::Result<bool> {
        match self {
            Gc::Embedded(_) => Ok(true),
            Gc::Pg(c) => Ok(c.begin().await?),
        }
    }

    /// When packs are rewritten (the embedded store's; S3 packs are never
    /// rewritten: one with a live chunk stays whole).
    fn set_rewrite(&self, opts: cairn_castore::embedded::RewriteOptions) {
        if let Gc::Embedded(s) = self {
            s.set_rewrite(opts);
        }
    }

    async fn end(&self) {
        if let Gc::Pg(c) = self {
            c.end().await;
        }
    }
}

/// Whether the URLs name an S3 + PostgreSQL store.
pub fn is_s3pg(urls: &[String; 3]) -> bool {
    let pg = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
    urls[0].starts_with("s3://") && pg(&urls[1]) && pg(&urls[2])
}

/// The collector of the S3 + PostgreSQL store of `urls` (blobs, directories,
/// path info), on the services given (so that it forgets what it removes
/// from their caches).
pub fn pg_collector(
    urls: &[String; 3],
    blobs: &S3BlobService,
    directories: PgDirectoryService,
) -> anyhow::Result<PgCollector> {
    let info_db = cairn_castore::pg::Db::open_shared(&urls[2])?;
    if info_db.target() != directories.db().target() {
        bail!(
            "garbage collection needs path info, directories and the blob index in one database (path info is in {}, directories in {})",
            info_db.target(),
            directories.db().target()
        );
    }
    Ok(PgCollector::new(
        blobs,
        directories,
        Some(PgPathInfoService::late_roots()),
    )?)
}

/// The collector of the store `store` names.
fn collector(store: &StoreArgs) -> anyhow::Result<Gc> {
    let urls = store.urls()?;
    if is_s3pg(&urls) {
        let blobs = S3BlobService::from_url(&urls[0])?;
        let dirs = PgDirectoryService::from_url(&urls[1])?;
        return Ok(Gc::Pg(Box::new(pg_collector(&urls, &blobs, dirs)?)));
    }
    let Some(dir) = urls[0].strip_prefix("redb://") else {
        bail!(
            "garbage collection works on the data directory itself or on an S3 + PostgreSQL store, not on {}: stop the daemon serving it, or run collections in it (cairn daemon --gc-interval)",
            cairn_castore::redacted(&urls[0])
        );
    };
    if urls.iter().any(|u| u != &urls[0]) {
        bail!("garbage collection needs blobs, directories and path info in one data directory");
    }
    Ok(Gc::Embedded(EmbeddedStore::open_shared(dir).with_context(
        || format!("cannot open data directory {dir}"),
    )?))
}

/// Runs `f` inside the store's collection lock; an S3 + PostgreSQL store that
/// another process is collecting is an error.
async fn locked<T>(
    gc: &Gc,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    if !gc.begin().await? {
        bail!("another process is collecting garbage on this store: try again later");
    }
    let r = f.await;
    gc.end().await;
    r
}

/// After a collection that removed something: compacts the index and the path
/// info file (redb keeps freed pages in its file otherwise) once `store` is the
/// last handle on them.
async fn compact(gc: Gc, report: &Report, dry_run: bool) {
    let Gc::Embedded(store) = gc else {
        return;
    };
    if dry_run || (report.castore == GcReport::default() && report.paths.is_empty()) {
        return;
    }
    let dir = store.dir().to_owned();
    let files = [
        dir.join("index.redb"),
        dir.join(cairn_store::pathinfo::REDB_FILE_NAME),
    ];
    let size = || -> u64 {
        files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum()
    };
    let before = size();
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        store.close_and_compact()?;
        cairn_store::pathinfo::compact_redb_file(&dir)?;
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => eprintln!(
            "index and path info compacted: {} -> {}",
            indicatif::HumanBytes(before),
            indicatif::HumanBytes(size())
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "index not compacted"),
        Err(e) => tracing::warn!(error = %e, "index not compacted"),
    }
}

/// A spinner on stderr when it is a terminal.
fn spinner() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// Prints the report (stderr for the summary, stdout for the paths).
pub fn print_report(r: &Report, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    for p in &r.paths {
        println!("{}", p.to_absolute());
    }
    let c = &r.castore;
    eprintln!(
        "{verb} {} paths ({} NAR bytes), {} directories, {} blobs, {} chunks ({} stored)",
        r.paths.len(),
        r.nar_bytes,
        c.directories,
        c.blobs,
        c.chunks,
        indicatif::HumanBytes(c.stored_bytes),
    );
    if c.bytes_moved > 0 || c.packs_deleted > 0 {
        eprintln!(
            "rewrote mostly dead packs: moved {} of live objects, deleted {} pack files",
            indicatif::HumanBytes(c.bytes_moved),
            c.packs_deleted
        );
    }
    if dry_run {
        eprintln!(
            "disk in use: {}; would free about {} (dry run: nothing removed) in {:.1} s",
            indicatif::HumanBytes(r.disk_before),
            indicatif::HumanBytes(c.stored_bytes),
            r.elapsed.as_secs_f64()
        );
    } else {
        eprintln!(
            "freed {} on disk ({} -> {}) in {:.1} s",
            indicatif::HumanBytes(r.disk_before.saturating_sub(r.disk_after)),
            indicatif::HumanBytes(r.disk_before),
            indicatif::HumanBytes(r.disk_after),
            r.elapsed.as_secs_f64()
        );
    }
}

/// `cairn gc`.
pub fn gc(args: GcArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let collector = collector(&args.store)?;
        collector.set_rewrite(args.policy.rewrite());
        let store = args.store.open()?;
        let bar = spinner();
        let progress = |what: &str| {
            if let Some(b) = &bar {
                b.set_message(what.to_owned());
            }
            tracing::info!("gc: {what}");
        };
        let report = locked(&collector, async {
            Ok(cairn_store::gc::run(
                store.path_info.as_ref(),
                collector.collector(),
                &args.policy.policy(args.dry_run),
                &progress,
            )
            .await?)
        })
        .await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        print_report(&report, args.dry_run);
        drop(store);
        compact(collector, &report, args.dry_run).await;
        Ok(())
    })
}

/// `cairn delete`.
pub fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let paths = parse_store_paths(&args.paths)?;
    runtime()?.block_on(async {
        let collector = collector(&args.store)?;
        collector.set_rewrite(cairn_castore::embedded::RewriteOptions {
            below: args.rewrite_below,
            ..Default::default()
        });
        let store = args.store.open()?;
        let report = locked(&collector, async {
            Ok(cairn_store::gc::delete(
                store.path_info.as_ref(),
                collector.collector(),
                &paths,
                GcOptions {
                    grace: args.grace,
                    dry_run: args.dry_run,
                    began: None,
                },
            )
            .await?)
        })
        .await?;
        print_report(&report, args.dry_run);
        drop(store);
        compact(collector, &report, args.dry_run).await;
        Ok(())
    })
}

/// `cairn pin` (`pinned`) and `cairn unpin`.
pub fn pin(args: PinArgs, pinned: bool) -> anyhow::Result<()> {
    let paths = parse_store_paths(&args.paths)?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        if pinned {
            for p in &paths {
                store.path_info(p).await?;
            }
        }
        let digests: Vec<[u8; 20]> = paths.iter().map(|p| *p.digest()).collect();
        store.path_info.set_pinned(&digests, pinned).await?;
        Ok(())
    })
}

/// `cairn pins`: the pinned paths, one per line.
pub fn pins(args: PinsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let mut names = Vec::new();
        for d in store.path_info.pins().await? {
            match store.path_info.get(d).await? {
                Some(info) => names.push(info.store_path.to_absolute()),
                // Pinned, then deleted by hand: the pin outlived its path.
                None => names.push(format!(
                    "{} (not in the store)",
                    cairn_nix::nixbase32::encode(&d)
                )),
            }
        }
        names.sort();
        for n in names {
            println!("{n}");
        }
        Ok(())
    })
}

/// The daemon's collections: `policy` every `every`, until `stop` completes.
/// A failed collection is logged, and the next one runs on time. On an S3 +
/// PostgreSQL store, a round another daemon is collecting is skipped.
pub async fn every(
    every: Duration,
    policy: Policy,
    paths: Arc<dyn cairn_store::pathinfo::PathInfoService>,
    store: Gc,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store.begin().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("garbage collection skipped: another daemon is collecting");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "garbage collection failed");
                continue;
            }
        }
        let progress = |what: &str| tracing::debug!("gc: {what}");
        let result =
            cairn_store::gc::run(paths.as_ref(), store.collector(), &policy, &progress).await;
        store.end().await;
        match result {
            Ok(r) => {
                let c = &r.castore;
                tracing::info!(
                    paths = r.paths.len(),
                    directories = c.directories,
                    blobs = c.blobs,
                    chunks = c.chunks,
                    moved = c.bytes_moved,
                    packs_deleted = c.packs_deleted,
                    freed = r.disk_before.saturating_sub(r.disk_after),
                    disk = r.disk_after,
                    seconds = r.elapsed.as_secs_f64(),
                    "garbage collection done"
                );
                for p in &r.paths {
                    tracing::info!(path = p.to_absolute(), "gc removed");
                }
            }
            Err(e) => tracing::error!(error = %e, "garbage collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrite_below_takes_only_a_share_between_0_and_1() {
        assert_eq!(super::parse_share("0"), Ok(0.0));
        assert_eq!(super::parse_share("0.5"), Ok(0.5));
        assert_eq!(super::parse_share("1"), Ok(1.0));
        for bad in ["", "-0.1", "1.5", "half", "NaN", "inf"] {
            assert_eq!(
                super::parse_share(bad),
                Err(format!("{bad:?} is not a share between 0 and 1")),
                "{bad}"
            );
        }
    }
}
