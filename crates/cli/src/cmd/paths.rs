//! The commands on store paths already in the store: `dump`, `export`, `add-nar`,
//! `path-info`, `ls`, `cat` and `verify`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cairn_castore::Node;
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::PathInfo;
use clap::Args;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::store::{Store, StoreArgs, parse_store_path, parse_store_paths, runtime};
use crate::stdout;

/// Bytes copied to stdout at a time.
const OUT_BUF: usize = 256 * 1024;
/// A piece of a NAR this long is written to stdout from where it is (the store's
/// verified buffer), not gathered with its neighbours first.
const WRITE_DIRECT: usize = 64 * 1024;

/// Arguments of `cairn dump`.
#[derive(Args)]
pub struct DumpArgs {
    /// Store path (/nix/store/<hash>-<name>) whose NAR to write.
    path: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn export`.
#[derive(Args)]
pub struct ExportArgs {
    /// Store path to materialize.
    path: String,
    /// Where to create it; must not exist yet (its parent must).
    dest: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn add-nar`.
#[derive(Args)]
pub struct AddNarArgs {
    /// NAR file to add; `-` reads stdin.
    file: PathBuf,
    /// Name of the store path.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn path-info`.
#[derive(Args)]
pub struct PathInfoArgs {
    /// Store paths.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Print a JSON array, as `nix path-info --json` does (without its
    /// `registrationTime`, which belongs to a local store's database).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn ls`.
#[derive(Args)]
pub struct LsArgs {
    /// Store path, optionally followed by a path inside it
    /// (/nix/store/<hash>-<name>/sub/dir).
    path: String,
    /// Show type, permissions and size, as `nix store ls -l`.
    #[arg(short = 'l', long)]
    long: bool,
    /// List subdirectories too.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print JSON, as `nix store ls --json`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn cat`.
#[derive(Args)]
pub struct CatArgs {
    /// A file in a store path (/nix/store/<hash>-<name>[/sub/file]).
    path: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Store paths to check [default: every path in the store].
    paths: Vec<String>,
    /// Drop what is damaged (chunks failing verification) from the embedded
    /// store, so that importing or uploading the same content again restores
    /// it; names the paths that need their content again. Works on the data
    /// directory itself: stop a daemon serving it first.
    #[arg(long)]
    repair: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// Copies `r` to stdout.
async fn to_stdout(mut r: impl tokio::io::AsyncRead + Unpin) -> anyhow::Result<()> {
    let mut out = stdout::raw()?;
    let mut buf = vec![0u8; OUT_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // A blocking write: stdout is a pipe or file the runtime cannot poll.
        tokio::task::block_in_place(|| out.write_all(&buf[..n]))?;
    }
}

/// Writes the pieces of `s` to stdout: small ones (NAR framing, small files)
/// gathered into writes of up to [`OUT_BUF`] bytes, long ones as they are.
async fn stream_to_stdout(
    mut s: impl futures::Stream<Item = std::io::Result<impl AsRef<[u8]>>> + Unpin,
) -> anyhow::Result<()> {
    let mut out = stdout::raw()?;
    let mut buf = Vec::with_capacity(OUT_BUF);
    while let Some(piece) = s.next().await {
        let piece = piece?;
        let piece = piece.as_ref();
        if buf.len() + piece.len() > OUT_BUF || piece.len() >= WRITE_DIRECT {
            // A blocking write: stdout is a pipe or file the runtime cannot poll.
            tokio::task::block_in_place(|| out.write_all(&buf))?;
            buf.clear();
        }
        if piece.len() >= WRITE_DIRECT {
            tokio::task::block_in_place(|| out.write_all(piece))?;
        } else {
            buf.extend_from_slice(piece);
        }
    }
    tokio::task::block_in_place(|| out.write_all(&buf))?;
    Ok(())
}

/// Runs `cairn dump`.
pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let path = parse_store_path(&args.path)?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let info = store.path_info(&path).await?;
        let nar =
            cairn_store::nar::render(store.blobs.clone(), store.directories.clone(), info.node);
        stream_to_stdout(nar.into_stream())
            .await
            .with_context(|| format!("writing the NAR of {}", path.to_absolute()))
    })
}

/// Runs `cairn export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let path = parse_store_path(&args.path)?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let info = store.path_info(&path).await?;
        cairn_store::fs::export(
            store.blobs.clone(),
            &*store.directories,
            &info.node,
            &args.dest,
        )
        .await
        .with_context(|| {
            format!(
                "exporting {} to {}",
                path.to_absolute(),
                args.dest.display()
            )
        })
    })
}

/// Runs `cairn add-nar`.
pub fn add_nar(args: AddNarArgs) -> anyhow::Result<()> {
    // Check the name before reading anything.
    cairn_nix::store_path::validate_name(&args.name)
        .with_context(|| format!("cannot name a store path {:?}", args.name))?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let what = if args.file.as_os_str() == "-" {
            "stdin".to_string()
        } else {
            args.file.display().to_string()
        };
        let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if args.file.as_os_str() == "-" {
            Box::new(tokio::io::stdin())
        } else {
            Box::new(
                tokio::fs::File::open(&args.file)
                    .await
                    .with_context(|| format!("cannot open {what}"))?,
            )
        };
        let input = tokio::io::BufReader::with_capacity(OUT_BUF, input);
        let ingested = cairn_store::nar::ingest(&*store.blobs, &*store.directories, input)
            .await
            .with_context(|| format!("adding the NAR {what}"))?;
        let path = super::import::register_ca(
            &store,
            &args.name,
            ingested.root,
            ingested.nar_size,
            ingested.nar_sha256,
        )
        .await?;
        let mut out = stdout::locked();
        writeln!(out, "{}", path.to_absolute())?;
        out.flush()?;
        Ok(())
    })
}

/// Runs `cairn path-info`.
pub fn path_info(args: PathInfoArgs) -> anyhow::Result<()> {
    let paths = parse_store_paths(&args.paths)?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let mut infos = Vec::new();
        for path in &paths {
            infos.push(store.path_info(path).await?);
        }
        // Nix prints a set of paths: sorted, each once.
        infos.sort_by(|a, b| a.store_path.cmp(&b.store_path));
        infos.dedup_by(|a, b| a.store_path == b.store_path);
        let mut out = stdout::locked();
        if args.json {
            let items: Vec<String> = infos.iter().map(PathInfo::to_json).collect();
            write!(out, "[{}]", items.join(","))?;
        } else {
            for info in &infos {
                writeln!(out, "{}", info.store_path.to_absolute())?;
            }
        }
        out.flush()?;
        Ok(())
    })
}

/// A path inside a store path: the store path, the node there, and the name to
/// show for it.
struct Resolved {
    node: Node,
    /// What `nix store ls` prints for the node itself: the last component.
    name: String,
}

/// Resolves `/nix/store/<hash>-<name>[/sub/path]` to a node, without following
/// symlinks.
async fn resolve(store: &Store, arg: &str) -> anyhow::Result<Resolved> {
    let (path, sub) = StorePath::parse_absolute_with_subpath(arg)
        .with_context(|| format!("{arg:?} is not a path in the store"))?;
    let info = store.path_info(&path).await?;
    let mut node = info.node;
    let mut name = path.to_string();
    for component in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let Node::Directory { digest, .. } = node else {
            bail!("path '{arg}' does not exist");
        };
        let dir = store
            .directories
            .get(&digest)
            .await
            .with_context(|| format!("reading directory {digest} of {arg}"))?
            .with_context(|| format!("directory {digest} of {arg} is missing"))?;
        node = match dir.get(component.as_bytes()) {
            Some(n) => n.clone(),
            None => bail!("path '{arg}' does not exist"),
        };
        name = component.to_string();
    }
    Ok(Resolved { node, name })
}

/// Runs `cairn ls`.
pub fn ls(args: LsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let target = resolve(&store, args.path.trim_end_matches('/')).await?;
        let mut out = Vec::new();
        if args.json {
            ls_json(&store, &target.node, args.recursive, true, &mut out).await?;
        } else {
            let rel = match target.node {
                Node::Directory { .. } => ".".to_string(),
                _ => target.name,
            };
            ls_text(
                &store,
                &target.node,
                rel.into_bytes(),
                &args,
                true,
                &mut out,
            )
            .await?;
        }
        let mut stdout = stdout::locked();
        stdout.write_all(&out)?;
        stdout.flush()?;
        Ok(())
    })
}

/// `nix store ls` (Nix 2.8 `MixLs`): a directory lists its entries as `./name`
/// (recursively with -R), anything else is shown as itself; with -l, each line is
/// `{type and mode} {size:>20} {path}[ -> {target}]`.
fn ls_text<'a>(
    store: &'a Store,
    node: &'a Node,
    rel: Vec<u8>,
    args: &'a LsArgs,
    top: bool,
    out: &'a mut Vec<u8>,
) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move {
        if let (Node::Directory { digest, .. }, true) = (node, top || args.recursive) {
            let dir = store
                .directories
                .get(digest)
                .await?
                .with_context(|| format!("directory {digest} is missing"))?;
            for (name, child) in dir.nodes() {
                let mut child_rel = rel.clone();
                child_rel.push(b'/');
                child_rel.extend_from_slice(name.as_bytes());
                show(node_line(child, &child_rel, args.long), out);
                if matches!(child, Node::Directory { .. }) && args.recursive {
                    ls_text(store, child, child_rel, args, false, out).await?;
                }
            }
            return Ok(());
        }
        show(node_line(node, &rel, args.long), out);
        Ok(())
    })
}

fn show(line: Vec<u8>, out: &mut Vec<u8>) {
    out.extend_from_slice(&line);
    out.push(b'\n');
}

fn node_line(node: &Node, rel: &[u8], long: bool) -> Vec<u8> {
    if !long {
        return rel.to_vec();
    }
    let (mode, size) = match node {
        Node::File {
            executable: true,
            size,
            ..
        } => ("-r-xr-xr-x", *size),
        Node::File { size, .. } => ("-r--r--r--", *size),
        Node::Symlink { .. } => ("lrwxrwxrwx", 0),
        Node::Directory { .. } => ("dr-xr-xr-x", 0),
    };
    let mut line = format!("{mode} {size:>20} ").into_bytes();
    line.extend_from_slice(rel);
    if let Node::Symlink { target } = node {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(target.as_bytes());
    }
    line
}

/// `nix store ls --json`: a directory's entries are `{}` unless recursive.
fn ls_json<'a>(
    store: &'a Store,
    node: &'a Node,
    recursive: bool,
    top: bool,
    out: &'a mut Vec<u8>,
) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move {
        match node {
            Node::File {
                size, executable, ..
            } => {
                out.extend_from_slice(format!(r#"{{"type":"regular","size":{size}"#).as_bytes());
                if *executable {
                    out.extend_from_slice(br#","executable":true"#);
                }
                out.push(b'}');
            }
            Node::Symlink { target } => {
                out.extend_from_slice(br#"{"type":"symlink","target":"#);
                cairn_nix::json::push_string(out, target.as_bytes());
                out.push(b'}');
            }
            Node::Directory { digest, .. } => {
                out.extend_from_slice(br#"{"type":"directory","entries":{"#);
                if top || recursive {
                    let dir = store
                        .directories
                        .get(digest)
                        .await?
                        .with_context(|| format!("directory {digest} is missing"))?;
                    for (i, (name, child)) in dir.nodes().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        cairn_nix::json::push_string(out, name.as_bytes());
                        out.push(b':');
                        if recursive {
                            ls_json(store, child, recursive, false, out).await?;
                        } else {
                            out.extend_from_slice(b"{}");
                        }
                    }
                }
                out.extend_from_slice(b"}}");
            }
        }
        Ok(())
    })
}

/// Runs `cairn cat`.
pub fn cat(args: CatArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let target = resolve(&store, &args.path).await?;
        let Node::File { digest, size, .. } = target.node else {
            bail!("path '{}' is not a regular file", args.path);
        };
        let reader = store
            .blobs
            .open_read(&digest)
            .await
            .with_context(|| format!("reading {}", args.path))?
            .with_context(|| format!("blob {digest} of {} is missing", args.path))?;
        // Exactly the size the directory records: a longer blob is an error below.
        let mut limited = reader.take(size + 1);
        let mut counted = Counted {
            inner: &mut limited,
            n: 0,
        };
        to_stdout(&mut counted).await?;
        if counted.n != size {
            bail!(
                "{}: blob {digest} has {} bytes, its directory says {size}",
                args.path,
                counted.n
            );
        }
        Ok(())
    })
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.n += n;
        r
    }
}

/// Runs `cairn verify`: re-renders each path's NAR (every blob read is checked
/// against its BLAKE3 digest) and compares its size and sha256 with the path info.
pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let paths = parse_store_paths(&args.paths)?;
    runtime()?.block_on(async {
        let store = args.store.open()?;
        let repair = if args.repair {
            let urls = args.store.urls()?;
            let Some(dir) = urls[0].strip_prefix("redb://") else {
                bail!(
                    "--repair works on the data directory itself, not on {}: stop the daemon serving it first",
                    urls[0]
                );
            };
            Some(cairn_castore::embedded::EmbeddedStore::open_shared(dir)?)
        } else {
            None
        };
        let mut failed = 0usize;
        let mut checked = 0usize;
        let mut check = async |info: PathInfo| {
            checked += 1;
            let path = info.store_path.to_absolute();
            // A substituter fetching this path would fail on a reference that is
            // not here.
            let mut missing = Vec::new();
            for r in &info.references {
                match store.path_info.get(*r.digest()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => missing.push(r.to_absolute()),
                    Err(e) => missing.push(format!("{} ({e})", r.to_absolute())),
                }
            }
            // A daemon's collection may remove a path (and its references
            // and content) while this runs: that is no damage.
            let gone = async || matches!(store.path_info.get(*info.store_path.digest()).await, Ok(None));
            if !missing.is_empty() {
                if gone().await {
                    eprintln!("path '{path}' was removed (garbage collected) while being verified");
                    checked -= 1;
                    return;
                }
                failed += 1;
                eprintln!(
                    "path '{path}' references paths that are not in the store: {}",
                    missing.join(", ")
                );
                return;
            }
            match cairn_store::nar::calculate(&*store.blobs, &*store.directories, &info.node)
                .await
            {
                Ok((size, sha256)) if size == info.nar_size && sha256 == info.nar_sha256 => {}
                Ok((size, sha256)) => {
                    failed += 1;
                    eprintln!(
                        "path '{path}' was modified! expected NAR hash '{}' ({} bytes), got '{}' ({size} bytes)",
                        info.nar_hash().to_sri(),
                        info.nar_size,
                        cairn_nix::hash::NixHash::Sha256(sha256).to_sri()
                    );
                }
                Err(_) if repair.is_none() && gone().await => {
                    eprintln!("path '{path}' was removed (garbage collected) while being verified");
                    checked -= 1;
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("path '{path}' is damaged: {e}");
                    if let Some(embedded) = &repair {
                        match drop_damaged(embedded, &*store.directories, &info.node).await {
                            Ok(n) => eprintln!(
                                "path '{path}': {n} damaged chunks dropped; it needs its content again (import or upload it again)"
                            ),
                            Err(e) => eprintln!("path '{path}': cannot drop what is damaged: {e:#}"),
                        }
                    }
                }
            }
        };
        if paths.is_empty() {
            let mut all = store.path_info.list();
            while let Some(info) = all.next().await {
                check(info.context("listing the store's paths")?).await;
            }
        } else {
            for path in &paths {
                let info = store.path_info(path).await?;
                check(info).await;
            }
        }
        if failed > 0 {
            bail!("{failed} of {checked} paths failed verification");
        }
        Ok(())
    })
}

/// Drops the damaged chunks of every file of the tree at `node` from the
/// embedded store; returns how many.
async fn drop_damaged(
    store: &cairn_castore::embedded::EmbeddedStore,
    directories: &dyn cairn_castore::DirectoryService,
    node: &Node,
) -> anyhow::Result<usize> {
    let mut files = Vec::new();
    match node {
        Node::File { digest, .. } => files.push(*digest),
        Node::Directory { digest, .. } => {
            let mut closure = directories.get_recursive(digest);
            while let Some(dir) = closure.next().await {
                for (_, child) in dir?.nodes() {
                    if let Node::File { digest, .. } = child {
                        files.push(*digest);
                    }
                }
            }
        }
        Node::Symlink { .. } => {}
    }
    let mut dropped = 0;
    for d in files {
        dropped += store.drop_damaged(d.as_bytes()).await?;
    }
    Ok(dropped)
}
