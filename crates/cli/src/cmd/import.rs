//! `cairn import`: files and trees into the store as content-addressed store paths,
//! the ones `nix-store --add` gives them.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_castore::Node;
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::ContentAddress;
use cairn_nix::store_path::{FileIngestionMethod, StorePath, make_fixed_output_path};
use cairn_store::fs::{Imported, Progress, import_path};
use cairn_store::pathinfo::PathInfo;
use clap::Args;

use super::store::{Store, StoreArgs, runtime};

/// Arguments of `cairn import`.
#[derive(Args)]
pub struct ImportArgs {
    /// Files, directories or symlinks to add (a symlink is stored, not followed).
    #[arg(required = true)]
    paths: Vec<PathBuf>,

    /// Store path name [default: the last component of PATH]. Only with one PATH.
    #[arg(long)]
    name: Option<String>,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `cairn import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    if args.name.is_some() && args.paths.len() > 1 {
        bail!("--name applies to one path; import the paths one at a time");
    }
    let rt = runtime()?;
    rt.block_on(async {
        let store = args.store.open()?;
        let mut out = crate::stdout::locked();
        for path in &args.paths {
            let name = match &args.name {
                Some(n) => n.clone(),
                None => default_name(path)?,
            };
            let store_path = import_one(&store, path, &name).await?;
            // One line per path as soon as it is stored: a script reading this
            // knows everything printed is complete.
            writeln!(out, "{}", store_path.to_absolute())?;
            out.flush()?;
        }
        Ok(())
    })
}

/// Nix's name for `nix-store --add PATH`: `baseNameOf(PATH)` of the argument as
/// given, without normalising it (Nix 2.8 names `dir/.` "."): the text after the
/// last `/`, ignoring one trailing `/`.
fn default_name(path: &Path) -> anyhow::Result<String> {
    let raw = path.as_os_str().as_bytes();
    let trimmed = match raw {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => raw,
    };
    let name = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    };
    std::str::from_utf8(name).map(str::to_owned).map_err(|_| {
        anyhow::anyhow!(
            "{}: the name is not valid UTF-8, which a store path name must be; use --name",
            path.display()
        )
    })
}

/// Imports one path and returns its store path.
pub async fn import_one(store: &Store, path: &Path, name: &str) -> anyhow::Result<StorePath> {
    // Check the name before reading anything.
    make_fixed_output_path(
        FileIngestionMethod::Recursive,
        &NixHash::Sha256([0; 32]),
        name,
        [],
        false,
    )
    .with_context(|| format!("{}: cannot name a store path {name:?}", path.display()))?;

    let progress = Arc::new(Progress::new());
    let bar = progress_bar(&progress, path);
    let result = import_path(
        store.blobs.clone(),
        &*store.directories,
        path,
        progress.clone(),
    )
    .await;
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        bar.finish_and_clear();
    }
    let Imported {
        root,
        nar_size,
        nar_sha256,
    } = result.with_context(|| format!("importing {}", path.display()))?;
    register_ca(store, name, root, nar_size, nar_sha256).await
}

/// Registers a tree just stored as the content-addressed ("source", recursive
/// sha256 of the NAR) store path `name`, without references, and returns its path.
pub async fn register_ca(
    store: &Store,
    name: &str,
    root: Node,
    nar_size: u64,
    nar_sha256: [u8; 32],
) -> anyhow::Result<StorePath> {
    let hash = NixHash::Sha256(nar_sha256);
    let store_path =
        make_fixed_output_path(FileIngestionMethod::Recursive, &hash, name, [], false)?;
    let info = PathInfo {
        store_path: store_path.clone(),
        node: root,
        references: Vec::new(),
        nar_size,
        nar_sha256,
        signatures: Vec::new(),
        deriver: None,
        ca: Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash,
        }),
    };
    // Registered already (the same tree imported again): write nothing.
    let known = store
        .path_info
        .get(*store_path.digest())
        .await
        .with_context(|| format!("looking up {}", store_path.to_absolute()))?;
    if known.as_ref() == Some(&info) {
        return Ok(store_path);
    }
    store
        .path_info
        .put(info)
        .await
        .with_context(|| format!("registering {}", store_path.to_absolute()))?;
    Ok(store_path)
}

/// A spinner with counts on stderr when it is a terminal, updated by a task.
fn progress_bar(
    progress: &Arc<Progress>,
    path: &Path,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let label = path.display().to_string();
    let (b, p) = (bar.clone(), progress.clone());
    let ticker = tokio::spawn(async move {
        loop {
            b.set_message(format!(
                "{label}: {} files, {} read, {} files stored",
                p.files(),
                indicatif::HumanBytes(p.bytes()),
                p.stored()
            ));
            b.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Some((bar, ticker))
}
