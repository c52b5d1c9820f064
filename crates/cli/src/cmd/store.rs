//! Opening the store the commands work on, shared by every store command and the
//! daemon: the data directory, and which backend serves blobs, directories and
//! path info.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cairn_castore::{BlobService, DirectoryService};
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::{PathInfo, PathInfoService};
use clap::Args;

/// Where the store is: flags shared by every store command.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Data directory of the embedded store [default: $XDG_DATA_HOME/cairn, or
    /// ~/.local/share/cairn]. While a daemon serves it, commands use the daemon's
    /// socket DIR/cairn.sock instead of opening it.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Use this daemon for blobs, directories and path info
    /// (grpc+http://host:port, grpc+https://host:port or grpc+unix:///path);
    /// overrides the three per-service addresses.
    #[arg(long, env = "CAIRN_STORE")]
    pub store: Option<String>,

    /// Blob service (memory://, redb:///datadir, grpc+http://host:port,
    /// grpc+https://host:port, grpc+unix:///path, or
    /// s3://bucket/prefix?index=postgres://…: see the README) [default: the data
    /// directory's].
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    pub blob_service_addr: Option<String>,

    /// Directory service (the blob service's forms but s3://, or
    /// postgres://user@host/db) [default: the data directory's].
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    pub directory_service_addr: Option<String>,

    /// Path info service (as the directory service) [default: the data
    /// directory's].
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    pub path_info_service_addr: Option<String>,

    /// Send the token in this file to gRPC servers (as `authorization: Bearer`
    /// metadata), for a daemon started with --grpc-token-file or
    /// --grpc-read-token-file. Not needed on the daemon's unix socket.
    #[arg(long, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Trust the CA certificates in this PEM file, besides the webpki roots,
    /// for grpc+https:// addresses (a daemon whose certificate a private CA
    /// signed).
    #[arg(long, env = "CAIRN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The token in `file`, if given; `what` names it in errors. Surrounding
/// whitespace is not part of it.
pub fn read_token(
    file: Option<&Path>,
    what: &str,
) -> anyhow::Result<Option<cairn_castore::auth::Token>> {
    let Some(f) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read {what} token {}", f.display()))?;
    let token = cairn_castore::auth::Token::new(&text)
        .with_context(|| format!("{what} token file {} is empty", f.display()))?;
    Ok(Some(token))
}

/// The data directory: the flag or `CAIRN_DATA_DIR`, else `$XDG_DATA_HOME/cairn`,
/// else `~/.local/share/cairn`.
pub fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("cairn"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot find a data directory: set --data-dir, CAIRN_DATA_DIR or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/cairn"))
}

/// `redb:///absolute/dir`: the embedded store in `dir`.
pub fn embedded_url(dir: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let s = abs
        .to_str()
        .with_context(|| format!("data directory {} is not valid UTF-8", abs.display()))?;
    Ok(format!("redb://{s}"))
}

/// The services a command works on.
pub struct Store {
    /// Blobs.
    pub blobs: Arc<dyn BlobService>,
    /// Directories.
    pub directories: Arc<dyn DirectoryService>,
    /// Path info.
    pub path_info: Arc<dyn PathInfoService>,
}

impl StoreArgs {
    /// The URLs of the blob, directory and path info services. Services without
    /// an address of their own use the data directory: through a running daemon's
    /// socket if one answers there (a daemon holds the embedded store's lock),
    /// else the embedded store itself.
    pub fn urls(&self) -> anyhow::Result<[String; 3]> {
        if let Some(store) = &self.store {
            if !store.starts_with("grpc+") {
                anyhow::bail!(
                    "--store {store}: expected grpc+http://host:port, grpc+https://host:port or grpc+unix:///path"
                );
            }
            return Ok([store.clone(), store.clone(), store.clone()]);
        }
        let explicit = [
            &self.blob_service_addr,
            &self.directory_service_addr,
            &self.path_info_service_addr,
        ];
        let default = if explicit.iter().all(|a| a.is_some()) {
            String::new()
        } else {
            let dir = data_dir(self.data_dir.clone())?;
            let socket = std::path::absolute(dir.join("cairn.sock"))
                .with_context(|| format!("cannot make {} absolute", dir.display()))?;
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                let s = socket
                    .to_str()
                    .with_context(|| format!("{} is not valid UTF-8", socket.display()))?;
                tracing::debug!(socket = s, "using the daemon of the data directory");
                format!("grpc+unix://{s}")
            } else {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create data directory {}", dir.display()))?;
                embedded_url(&dir)?
            }
        };
        Ok(explicit.map(|a| a.clone().unwrap_or_else(|| default.clone())))
    }

    /// Opens the services. Needs a tokio runtime (gRPC clients are created in it).
    pub fn open(&self) -> anyhow::Result<Store> {
        if let Some(token) = read_token(self.token_file.as_deref(), "client")? {
            cairn_castore::set_client_token(&token).context("--token-file")?;
        }
        super::tls::trust_ca_file(self.ca_file.as_deref())?;
        // A daemon that is starting holds the data directory's lock a moment
        // before its socket answers; urls() looks for the socket again each time.
        let dir = self.data_dir.clone();
        when_unlocked(LOCK_WAIT, || data_dir(dir.clone()), || self.open_once())
    }

    fn open_once(&self) -> anyhow::Result<Store> {
        let [blob_url, dir_url, info_url] = self.urls()?;
        let blobs = cairn_castore::blob_service_from_addr(&blob_url).with_context(|| {
            format!(
                "cannot open blob service {}",
                cairn_castore::redacted(&blob_url)
            )
        })?;
        let directories =
            cairn_castore::directory_service_from_addr(&dir_url).with_context(|| {
                format!(
                    "cannot open directory service {}",
                    cairn_castore::redacted(&dir_url)
                )
            })?;
        let path_info = cairn_store::pathinfo::path_info_service_from_addr(
            &info_url,
            blobs.clone(),
            directories.clone(),
        )
        .with_context(|| {
            format!(
                "cannot open path info service {}",
                cairn_castore::redacted(&info_url)
            )
        })?;
        Ok(Store {
            blobs,
            directories,
            path_info,
        })
    }
}

/// How long a command or the daemon waits for a data directory that another
/// process holds: a daemon that is starting (then its socket answers soon), or
/// a short command.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `open` until it succeeds, fails otherwise than on a data directory
/// locked by another process, or `wait` has passed; `dir` names the data
/// directory in the error.
pub fn when_unlocked<T>(
    wait: std::time::Duration,
    dir: impl Fn() -> anyhow::Result<PathBuf>,
    mut open: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match open() {
            Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!("data directory locked by another process: waiting for it");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) if is_locked(&e) => {
                let dir = dir()?;
                return Err(e).with_context(|| {
                    format!(
                        "data directory {} stayed in use by another process for {} s, and no daemon answered on {}: stop the other process, or wait for it",
                        dir.display(),
                        wait.as_secs(),
                        dir.join("cairn.sock").display()
                    )
                });
            }
            r => return r,
        }
    }
}

/// Whether `e` says a data directory is locked by another process.
fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
    })
}

/// A multi-threaded tokio runtime for a command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the tokio runtime")
}

impl Store {
    /// The path info of `path`, or an error saying it is not in the store.
    pub async fn path_info(&self, path: &StorePath) -> anyhow::Result<PathInfo> {
        let info = self
            .path_info
            .get(*path.digest())
            .await
            .with_context(|| format!("looking up {}", path.to_absolute()))?;
        match info {
            Some(info) if info.store_path == *path => Ok(info),
            _ => anyhow::bail!("path '{}' is not in the store", path.to_absolute()),
        }
    }
}

/// Parses an absolute store path argument (`/nix/store/<hash>-<name>`).
pub fn parse_store_path(arg: &str) -> anyhow::Result<StorePath> {
    StorePath::parse_absolute(arg.trim_end_matches('/'))
        .with_context(|| format!("{arg:?} is not a store path"))
}

/// Parses absolute store path arguments.
pub fn parse_store_paths(args: &[String]) -> anyhow::Result<Vec<StorePath>> {
    args.iter().map(|p| parse_store_path(p)).collect()
}
