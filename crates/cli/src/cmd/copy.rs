//! `cairn copy`: closures of store paths from a Nix binary cache into the store
//! (`--from`, through `cairn-upstream`'s checks), or from the store into one
//! (`--to`, in the layout `nix copy --to` writes).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_nix::narinfo::FieldText;
use cairn_nix::nixbase32;
use cairn_nix::signature::SigningKey;
use cairn_nix::store_path::{DIGEST_LEN, StorePath};
use cairn_store::pathinfo::PathInfo;
use cairn_upstream::{Options, PullOptions, Puller, Upstream};
use clap::Args;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::store::{Store, StoreArgs, parse_store_paths, runtime};

/// Arguments of `cairn copy`.
#[derive(Args)]
pub struct CopyArgs {
    /// Fetch the closures from this binary cache (http://, https://,
    /// file:///dir; parameters as for `cairn daemon --upstream`) into the store.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "to",
        conflicts_with = "to"
    )]
    from: Option<String>,

    /// Write the closures from the store to this binary cache: file:///dir, or
    /// http(s):// (a cache accepting `nix copy --to` uploads, e.g. a cairn
    /// daemon). NARs are xz-compressed, as Nix writes them.
    #[arg(long, value_name = "URL")]
    to: Option<String>,

    /// Store paths whose closures to copy.
    #[arg(required = true, value_name = "STORE_PATH")]
    paths: Vec<String>,

    /// With --from: accept a narinfo only with a valid signature by this key
    /// (`name:base64`). Repeatable; needed unless --no-check-sigs.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,

    /// With --from: accept narinfos without a trusted signature (the NAR is
    /// still checked against the narinfo's hash and size).
    #[arg(long)]
    no_check_sigs: bool,

    /// With --to: sign each narinfo with this secret key file, in addition to
    /// the signatures stored with the path. Repeatable.
    #[arg(long = "sign-key", value_name = "FILE")]
    sign_keys: Vec<PathBuf>,

    /// With --to an http(s):// cache: send the token in this file as
    /// `Authorization: Bearer`.
    #[arg(long, value_name = "FILE")]
    upload_token_file: Option<PathBuf>,

    /// Paths copied at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    jobs: usize,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `cairn copy`.
pub fn run(args: CopyArgs) -> anyhow::Result<()> {
    let roots = parse_store_paths(&args.paths)?;
    let store = args.store.open()?;
    let rt = runtime()?;
    rt.block_on(async {
        match (&args.from, &args.to) {
            (Some(from), _) => copy_from(&args, from, store, roots).await,
            (None, Some(to)) => copy_to(&args, to, store, roots).await,
            (None, None) => bail!("give --from URL or --to URL"),
        }
    })
}

/// A bar on stderr when it is a terminal.
fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// `order` rearranged so that every path comes after the paths it references
/// (among those in `refs`), in rounds whose members may run at once.
fn rounds(refs: &HashMap<[u8; DIGEST_LEN], Vec<[u8; DIGEST_LEN]>>) -> Vec<Vec<[u8; DIGEST_LEN]>> {
    let mut done: HashSet<[u8; DIGEST_LEN]> = HashSet::new();
    let mut left: Vec<[u8; DIGEST_LEN]> = refs.keys().copied().collect();
    left.sort();
    let mut out = Vec::new();
    while !left.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) = left.iter().copied().partition(|d| {
            refs.get(d).is_none_or(|rs| {
                rs.iter()
                    .all(|r| r == d || done.contains(r) || !refs.contains_key(r))
            })
        });
        // A cycle (impossible between store paths): take the rest as they are.
        let (ready, rest) = if ready.is_empty() {
            (rest, Vec::new())
        } else {
            (ready, rest)
        };
        done.extend(ready.iter().copied());
        out.push(ready);
        left = rest;
    }
    out
}

async fn copy_from(
    args: &CopyArgs,
    url: &str,
    store: Store,
    roots: Vec<StorePath>,
) -> anyhow::Result<()> {
    let trusted_keys = super::nix_daemon::parse_keys(&args.trusted_keys)?;
    let url = if args.no_check_sigs {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}check-signatures=false")
    } else {
        url.to_owned()
    };
    let options = Options {
        trusted_keys,
        ..Options::default()
    };
    let upstream = Upstream::new(&url, &options).context("--from")?;
    let puller = Puller::new(
        vec![upstream],
        store.blobs.clone(),
        store.directories.clone(),
        store.path_info.clone(),
        PullOptions {
            negative_ttl: Duration::ZERO,
            prefetch_references: false,
            // No client waits for a NAR here: nothing is spooled.
            spool_dir: None,
        },
    );
    // The closure from the narinfos, so that each path is stored after its
    // references (a daemon registers a path only once they are).
    let mut refs: HashMap<[u8; DIGEST_LEN], Vec<[u8; DIGEST_LEN]>> = HashMap::new();
    let mut names: HashMap<[u8; DIGEST_LEN], String> = HashMap::new();
    let mut seen: HashSet<[u8; DIGEST_LEN]> = roots.iter().map(|p| *p.digest()).collect();
    let mut pending: Vec<StorePath> = roots;
    let mut stored = 0usize;
    let scan = bar(0, "scanning");
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < args.jobs.max(1)
            && let Some(p) = pending.pop()
        {
            let (puller, store, url) = (puller.clone(), &store, &url);
            running.push(async move {
                let d = *p.digest();
                if let Some(info) = store
                    .path_info
                    .get(d)
                    .await
                    .with_context(|| format!("looking up {}", p.to_absolute()))?
                {
                    return anyhow::Ok((p, None, info.references));
                }
                match puller.upstream_narinfo(d).await? {
                    Some((_, ni)) => {
                        let refs = ni.references.clone();
                        Ok((p, Some(ni), refs))
                    }
                    None => bail!("{} is not in {url}", p.to_absolute()),
                }
            });
        }
        let Some(done) = running.next().await else {
            break;
        };
        let (path, missing, references) = done?;
        scan.inc_length(1);
        scan.inc(1);
        match missing {
            Some(_) => {
                refs.insert(
                    *path.digest(),
                    references.iter().map(|r| *r.digest()).collect(),
                );
                names.insert(*path.digest(), path.to_absolute());
            }
            None => stored += 1,
        }
        for r in references {
            if seen.insert(*r.digest()) {
                pending.push(r);
            }
        }
    }
    scan.finish_and_clear();
    let total = refs.len();
    let progress = bar(total, "copying");
    for round in rounds(&refs) {
        let results = futures::stream::iter(round.into_iter().map(|d| {
            let puller = puller.clone();
            let name = names.get(&d).cloned().unwrap_or_default();
            let progress = progress.clone();
            async move {
                progress.set_message(name.clone());
                let r = puller.pull(d).await;
                progress.inc(1);
                match r {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => bail!("{name}: no longer in the cache"),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("copying {name}"))),
                }
            }
        }))
        .buffer_unordered(args.jobs.max(1))
        .collect::<Vec<_>>()
        .await;
        for r in results {
            r?;
        }
    }
    progress.finish_and_clear();
    eprintln!("copied {total} paths ({stored} already stored)");
    Ok(())
}

async fn copy_to(
    args: &CopyArgs,
    url: &str,
    store: Store,
    roots: Vec<StorePath>,
) -> anyhow::Result<()> {
    let mut sign_keys: Vec<SigningKey> = Vec::new();
    for f in &args.sign_keys {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read signing key {}", f.display()))?;
        sign_keys.push(
            text.trim()
                .parse()
                .with_context(|| format!("signing key {}", f.display()))?,
        );
    }
    let target = Target::new(url, args.upload_token_file.as_deref())?;
    // The closure, from the store.
    let mut infos: HashMap<[u8; DIGEST_LEN], PathInfo> = HashMap::new();
    let mut pending = roots;
    while let Some(p) = pending.pop() {
        if infos.contains_key(p.digest()) {
            continue;
        }
        let info = store.path_info(&p).await?;
        pending.extend(info.references.iter().cloned());
        infos.insert(*p.digest(), info);
    }
    let refs = infos
        .iter()
        .map(|(d, i)| (*d, i.references.iter().map(|r| *r.digest()).collect()))
        .collect();
    target.init().await?;
    let progress = bar(infos.len(), "copying");
    let (sign_keys, target, store) = (Arc::new(sign_keys), Arc::new(target), Arc::new(store));
    let mut skipped = 0usize;
    for round in rounds(&refs) {
        let results = futures::stream::iter(
            round
                .into_iter()
                .filter_map(|d| infos.get(&d).cloned())
                .map(|info| {
                    let (sign_keys, target, store, progress) = (
                        sign_keys.clone(),
                        target.clone(),
                        store.clone(),
                        progress.clone(),
                    );
                    async move {
                        progress.set_message(info.store_path.to_absolute());
                        let r = write_path(&target, &store, &sign_keys, info).await;
                        progress.inc(1);
                        r
                    }
                }),
        )
        .buffer_unordered(args.jobs.max(1))
        .collect::<Vec<_>>()
        .await;
        for r in results {
            if !r? {
                skipped += 1;
            }
        }
    }
    progress.finish_and_clear();
    eprintln!(
        "copied {} paths ({skipped} already there)",
        infos.len() - skipped
    );
    Ok(())
}

/// A binary cache being written.
enum Target {
    Dir(PathBuf),
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
}

impl Target {
    fn new(url: &str, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let url = url.trim_end_matches('/');
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                bail!("--to {url}: file:// needs an absolute path (file:///dir)");
            }
            return Ok(Target::Dir(PathBuf::from(dir)));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let token = match token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .build()
                .context("HTTP client")?;
            return Ok(Target::Http {
                client,
                url: url.to_owned(),
                token,
            });
        }
        bail!("--to {url}: expected file:///dir, http:// or https://")
    }

    /// The cache's `nix-cache-info`, written if absent (a directory).
    async fn init(&self) -> anyhow::Result<()> {
        if let Target::Dir(dir) = self {
            tokio::fs::create_dir_all(dir.join("nar"))
                .await
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let info = dir.join("nix-cache-info");
            if !tokio::fs::try_exists(&info).await.unwrap_or(false) {
                write_atomic(&info, b"StoreDir: /nix/store\n").await?;
            }
        }
        Ok(())
    }

    async fn has(&self, file: &str) -> anyhow::Result<bool> {
        match self {
            Target::Dir(dir) => Ok(tokio::fs::try_exists(dir.join(file)).await.unwrap_or(false)),
            Target::Http { client, url, token } => {
                let r = send(
                    client.head(format!("{url}/{file}")),
                    token,
                    "HEAD",
                    url,
                    file,
                )
                .await?;
                Ok(r.status().is_success())
            }
        }
    }

    /// Puts `file` (a name in the cache) with the contents of `local`.
    async fn put(&self, file: &str, local: &Path, len: u64) -> anyhow::Result<()> {
        match self {
            Target::Dir(dir) => {
                let dest = dir.join(file);
                let tmp = dest.with_extension(format!("tmp.{}", std::process::id()));
                tokio::fs::copy(local, &tmp)
                    .await
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                tokio::fs::rename(&tmp, &dest)
                    .await
                    .with_context(|| format!("cannot write {}", dest.display()))
            }
            Target::Http { client, url, token } => {
                let f = tokio::fs::File::open(local).await?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    f,
                    256 * 1024,
                ));
                let req = client
                    .put(format!("{url}/{file}"))
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body);
                let r = send(req, token, "PUT", url, file).await?;
                if !r.status().is_success() {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    bail!("PUT {url}/{file}: {status}: {}", text.trim());
                }
                Ok(())
            }
        }
    }
}

/// Sends `req` (`method` of `url/file`), with the token if there is one.
async fn send(
    req: reqwest::RequestBuilder,
    token: &Option<String>,
    method: &str,
    url: &str,
    file: &str,
) -> anyhow::Result<reqwest::Response> {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    req.send()
        .await
        .with_context(|| format!("{method} {url}/{file}"))
}

async fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    tokio::fs::write(&tmp, data)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes one path (its NAR, xz, then its narinfo, so that a reader never
/// finds a narinfo without its NAR); false if the cache had it.
async fn write_path(
    target: &Target,
    store: &Store,
    sign_keys: &[SigningKey],
    info: PathInfo,
) -> anyhow::Result<bool> {
    let narinfo_name = format!("{}.narinfo", info.store_path.hash_part());
    if target.has(&narinfo_name).await? {
        return Ok(false);
    }
    // Compressed into a temporary file first: its name is its hash.
    let tmp = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    let nar = cairn_store::nar::render(
        store.blobs.clone(),
        store.directories.clone(),
        info.node.clone(),
    );
    let mut xz = async_compression::tokio::bufread::XzEncoder::new(
        tokio::io::BufReader::with_capacity(256 * 1024, nar),
    );
    let mut out = tokio::fs::File::create(tmp.path()).await?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = xz
            .read(&mut buf)
            .await
            .with_context(|| format!("rendering {}", info.store_path.to_absolute()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n]).await?;
    }
    out.flush().await?;
    drop(out);
    let file_hash: [u8; 32] = hasher.finalize().into();
    let nar_file = format!("nar/{}.nar.xz", nixbase32::encode(&file_hash));
    if !target.has(&nar_file).await? {
        target.put(&nar_file, tmp.path(), size).await?;
    }
    let url = FieldText::try_from(nar_file).map_err(anyhow::Error::msg)?;
    let mut ni = info.to_narinfo(
        url,
        "xz".parse().map_err(anyhow::Error::msg)?,
        Some(cairn_nix::hash::NixHash::Sha256(file_hash)),
        Some(size),
    );
    let fingerprint = ni.fingerprint();
    for k in sign_keys {
        ni.add_signature(k.sign(fingerprint.as_bytes()));
    }
    let text = ni.to_string();
    std::fs::write(tmp.path(), text.as_bytes())?;
    target
        .put(&narinfo_name, tmp.path(), text.len() as u64)
        .await?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Each path comes in a round after the paths it references; references
    /// outside the set, and a path's reference to itself, do not hold it back.
    #[test]
    fn rounds_put_references_first() {
        let d = |n: u8| [n; DIGEST_LEN];
        let refs: HashMap<_, _> = [
            (d(1), vec![d(2), d(3), d(1)]),
            (d(2), vec![d(3), d(9)]),
            (d(3), vec![]),
            (d(4), vec![]),
        ]
        .into_iter()
        .collect();
        let r = rounds(&refs);
        assert_eq!(r, vec![vec![d(3), d(4)], vec![d(2)], vec![d(1)]]);
    }
}
