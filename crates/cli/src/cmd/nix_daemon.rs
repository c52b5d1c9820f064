//! The Nix daemon protocol (`cairn-nix-daemon`) in the binary: the flags of
//! `cairn daemon` for its socket (`--nix-socket`), and `cairn nix-daemon --stdio`,
//! what `ssh-ng://` runs on the remote side.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

/// Flags of `cairn daemon` for the Nix daemon protocol.
#[derive(Args)]
pub struct NixSocketArgs {
    /// Also serve the Nix daemon protocol on this unix socket, so that Nix
    /// commands use the store as `--store unix://PATH` (e.g.
    /// DATA_DIR/nix-daemon.sock). Off unless given.
    #[arg(long, value_name = "PATH")]
    nix_socket: Option<PathBuf>,

    /// File mode of --nix-socket, in octal. The default lets only the daemon's
    /// user (and root) connect; a wider mode lets others connect as untrusted
    /// clients unless --nix-trusted-user names them.
    #[arg(long, default_value = "600", value_name = "MODE", value_parser = parse_mode)]
    nix_socket_mode: u32,

    /// Treat connections from this user (name or uid, by the peer credentials
    /// the kernel reports) on --nix-socket as trusted, as Nix's trusted-users:
    /// they may add paths without signatures when they ask to skip the check
    /// (`nix copy --no-check-sigs`). Repeatable; `none` trusts no one. Default:
    /// the daemon's own user and root. Untrusted clients can add only paths
    /// signed by a --trusted-key or content-addressed ones.
    #[arg(long = "nix-trusted-user", value_name = "USER")]
    nix_trusted_users: Vec<String>,

    /// Also mount the store read-only on this existing directory (a FUSE mount
    /// as `cairn mount` makes), served by the daemon itself. Nix's `unix://`
    /// client reads a path's contents from its store directory, not over the
    /// socket: with `--nix-mount ROOT/nix/store`, `--store
    /// unix://SOCKET?root=ROOT` reads them from this mount, with neither a
    /// second process nor the gRPC hop a separate `cairn mount` takes.
    /// Unmounted at shutdown.
    #[arg(long, value_name = "DIR")]
    nix_mount: Option<PathBuf>,

    /// Let users other than the daemon's use --nix-mount (FUSE's
    /// `allow_other`; a user other than root needs `user_allow_other` in
    /// /etc/fuse.conf).
    #[arg(long, requires = "nix_mount")]
    nix_mount_allow_other: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?}: expected an octal file mode such as 600 or 660"
        )),
    }
}

/// The uid of `user` (a number, or a name in /etc/passwd).
fn user_id(user: &str) -> anyhow::Result<u32> {
    super::daemon::id_of(user, "/etc/passwd", "--nix-trusted-user")
}

impl NixSocketArgs {
    fn policy(&self) -> anyhow::Result<cairn_nix_daemon::TrustPolicy> {
        let trusted_uids = if self.nix_trusted_users.is_empty() {
            let mut uids = vec![rustix::process::getuid().as_raw(), 0];
            uids.dedup();
            uids
        } else if self.nix_trusted_users.iter().any(|u| u == "none") {
            Vec::new()
        } else {
            self.nix_trusted_users
                .iter()
                .map(|u| user_id(u))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(cairn_nix_daemon::TrustPolicy { trusted_uids })
    }
}

/// What the daemon runs for each of these services until it shuts down.
pub trait Served: Future<Output = Result<(), cairn_castore::Error>> + Send + 'static {}

impl<F: Future<Output = Result<(), cairn_castore::Error>> + Send + 'static> Served for F {}

/// Binds --nix-socket (unless not given) and returns its startup note and the
/// server future, which runs until `shutdown` completes.
pub fn bind(
    args: &NixSocketArgs,
    store: super::store::Store,
    config: cairn_nix_daemon::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<(String, impl Served)>> {
    let Some(path) = &args.nix_socket else {
        return Ok(None);
    };
    let policy = args.policy()?;
    remove_stale_socket(path)?;
    let listener = super::daemon::bind_socket(path, args.nix_socket_mode, None)?;
    let daemon = Arc::new(cairn_nix_daemon::NixDaemon::new(
        store.blobs,
        store.directories,
        store.path_info,
        config,
    ));
    let trusted = if policy.trusted_uids.is_empty() {
        "no one".to_owned()
    } else {
        let uids: Vec<String> = policy.trusted_uids.iter().map(|u| u.to_string()).collect();
        format!("uids {}", uids.join(", "))
    };
    let note = format!(
        ", Nix daemon protocol on unix://{} (mode {:o}, trusted: {trusted})",
        path.display(),
        args.nix_socket_mode
    );
    let path = path.clone();
    Ok(Some((note, async move {
        let served = cairn_nix_daemon::serve_unix(daemon, listener, policy, 1024, shutdown).await;
        let _ = std::fs::remove_file(&path);
        served.map_err(cairn_castore::Error::Io)
    })))
}

/// Mounts the store on --nix-mount (unless not given) and returns its startup
/// note and a future that unmounts it once `shutdown` completes. An unmount
/// from outside is logged and leaves the rest of the daemon serving.
pub fn mount(
    args: &NixSocketArgs,
    store: super::store::Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<(String, impl Served)>> {
    let Some(dir) = &args.nix_mount else {
        return Ok(None);
    };
    let fs = cairn_fuse::StoreFs::new(
        store.blobs,
        store.directories,
        store.path_info,
        tokio::runtime::Handle::current(),
        cairn_fuse::Options::default(),
    );
    let options = cairn_fuse::MountOptions {
        threads: 4,
        allow_other: args.nix_mount_allow_other,
    };
    let mut mount = cairn_fuse::Mount::start(fs, dir, &options)
        .with_context(|| format!("--nix-mount: cannot mount the store on {}", dir.display()))?;
    let note = format!(", the store mounted on {}", dir.display());
    let dir = dir.clone();
    Ok(Some((note, async move {
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            () = mount.ended() => {
                // Not a reason to stop serving the rest.
                tracing::warn!("{} was unmounted from outside; the daemon serves on", dir.display());
                shutdown.await;
                return Ok(());
            }
        }
        match mount.unmount() {
            Ok(cairn_fuse::Unmounted::Done) => {}
            Ok(cairn_fuse::Unmounted::Detached) => {
                // Waiting for its last user could take forever.
                tracing::warn!("{} was in use: detached it", dir.display());
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot unmount {}", dir.display());
                return Ok(());
            }
        }
        tokio::task::spawn_blocking(move || mount.join())
            .await
            .map_err(|e| cairn_castore::Error::Io(std::io::Error::other(e)))?
            .map_err(cairn_castore::Error::Io)
    })))
}

/// Removes a socket left at `path` by a daemon that was killed; anything else
/// there is left alone (and bind then fails naming it).
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the old socket {}", path.display())),
        Ok(_) => anyhow::bail!(
            "--nix-socket {}: something other than a socket is there",
            path.display()
        ),
        Err(_) => Ok(()),
    }
}

/// Arguments of `cairn nix-daemon`.
#[derive(Args)]
pub struct NixDaemonArgs {
    /// Serve one client on stdin and stdout (Nix's `ssh-ng://` runs its
    /// remote-program with `--stdio` on the host). The only mode: a socket is
    /// `cairn daemon --nix-socket`.
    #[arg(long, required = true)]
    stdio: bool,

    /// Treat the client as trusted: it may add paths without signatures when
    /// it asks to skip the check (`nix copy --no-check-sigs`). Without this,
    /// only paths signed by a --trusted-key or content-addressed ones are
    /// accepted.
    #[arg(long)]
    trusted: bool,

    /// Accept paths with a valid signature by this public key (`name:base64`,
    /// as in Nix's trusted-public-keys). Repeatable.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,

    /// Refuse a NAR larger than this many bytes (suffixes K, M, G, T).
    #[arg(long, default_value = "4G", value_name = "SIZE", value_parser = super::daemon_http::parse_size)]
    max_nar_size: u64,

    #[command(flatten)]
    store: super::store::StoreArgs,
}

/// Runs `cairn nix-daemon --stdio`: the store as the other commands find it (the
/// data directory's daemon if one runs, else the embedded store), one client.
pub fn run(args: NixDaemonArgs) -> anyhow::Result<()> {
    let config = cairn_nix_daemon::Config {
        trusted_keys: parse_keys(&args.trusted_keys)?,
        max_nar_size: args.max_nar_size,
        ..cairn_nix_daemon::Config::default()
    };
    super::store::runtime()?.block_on(async {
        let store = args.store.open()?;
        let daemon = Arc::new(cairn_nix_daemon::NixDaemon::new(
            store.blobs,
            store.directories,
            store.path_info,
            config,
        ));
        match cairn_nix_daemon::serve_stdio(daemon, args.trusted).await {
            Ok(()) => Ok(()),
            Err(cairn_nix_daemon::Error::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("nix daemon protocol"),
        }
    })
}

/// Public keys given as `--trusted-key`.
pub fn parse_keys(keys: &[String]) -> anyhow::Result<Vec<cairn_nix::signature::VerifyingKey>> {
    keys.iter()
        .map(|k| k.parse().with_context(|| format!("--trusted-key {k:?}")))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn modes_and_users() {
        assert_eq!(super::parse_mode("600"), Ok(0o600));
        assert_eq!(super::parse_mode("0666"), Ok(0o666));
        assert!(super::parse_mode("800").is_err());
        assert!(super::parse_mode("7777").is_err());
        assert_eq!(super::user_id("0").ok(), Some(0));
        assert_eq!(super::user_id("root").ok(), Some(0));
        assert!(super::user_id("no-such-user-cairn").is_err());
    }

    /// A stale socket is replaced; a file that is not a socket is left alone.
    #[test]
    fn only_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let err = super::remove_stale_socket(&file).unwrap_err();
        assert!(err.to_string().contains("other than a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let sock = dir.path().join("old.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        super::remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        super::remove_stale_socket(&sock).unwrap();
    }
}
