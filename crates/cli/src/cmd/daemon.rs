//! `cairn daemon`: serves the store (`tvix.castore.v1` BlobService and
//! DirectoryService, `tvix.store.v1` PathInfoService, with reflection and health)
//! over gRPC, on TCP (over TLS with --tls-cert) and on a unix socket in the data
//! directory. The other commands find that socket and use the daemon instead of
//! the data directory, which the daemon holds locked.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use super::store::{data_dir, embedded_url, read_token};
use cairn_castore::server::access::{Access, AnonymousWrites};

/// Path infos the daemon keeps in memory in front of the embedded store (each a few
/// hundred bytes plus references and signatures).
const PATH_INFO_CACHE_ENTRIES: usize = 65_536;

/// Arguments of `cairn daemon`.
#[derive(Args)]
pub struct DaemonArgs {
    /// TCP address to serve gRPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,

    /// Data directory of the embedded store [default: $XDG_DATA_HOME/cairn, or
    /// ~/.local/share/cairn].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Serve blobs from this backend instead of the embedded store
    /// (memory://, redb:///path, grpc+http://host:port, grpc+https://host:port,
    /// grpc+unix:///path).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    blob_service_addr: Option<String>,

    /// Serve directories from this backend instead of the embedded store.
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    directory_service_addr: Option<String>,

    /// Serve path info from this backend instead of the embedded store
    /// (memory://, redb:///path, grpc+http://host:port, grpc+https://host:port,
    /// grpc+unix:///path).
    #[arg(long, env = "PATH_INFO_SERVICE_ADDR")]
    path_info_service_addr: Option<String>,

    /// Do not listen on the unix socket `cairn.sock` in the data directory.
    #[arg(long)]
    no_socket: bool,

    /// Also let members of this group (name or number) connect to the unix
    /// socket, which is otherwise only the daemon's user's (mode 0600 -> 0660).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,

    /// gRPC writes (the Put methods) over TCP must carry the token in this file
    /// as `authorization: Bearer TOKEN` metadata (cairn's commands: --token-file
    /// or CAIRN_TOKEN_FILE); otherwise UNAUTHENTICATED. The unix socket needs no
    /// token: its file permissions decide who connects.
    #[arg(long, value_name = "FILE")]
    grpc_token_file: Option<PathBuf>,

    /// gRPC reads over TCP (all but health and reflection) must carry the token
    /// in this file, or the write token.
    #[arg(long, value_name = "FILE")]
    grpc_read_token_file: Option<PathBuf>,

    /// gRPC connections served at once, per listener (TCP and the socket); more
    /// are closed when accepted.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    grpc_max_connections: usize,

    /// Refuse a directory of more entries than this, as it arrives (gRPC
    /// DirectoryService.Put: RESOURCE_EXHAUSTED; a NAR upload: 413).
    #[arg(long, default_value_t = cairn_castore::model::DEFAULT_MAX_DIRECTORY_ENTRIES, value_name = "N")]
    max_directory_entries: usize,

    /// Accept gRPC writes without a token from anyone who reaches --listen.
    /// Without this or --grpc-token-file, TCP writes are accepted from loopback
    /// peers only, and a non-loopback --listen is refused.
    #[arg(long)]
    allow_anonymous_writes: bool,

    #[command(flatten)]
    http: super::daemon_http::HttpArgs,

    #[command(flatten)]
    tls: super::tls::TlsArgs,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let dir = data_dir(args.data_dir)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let embedded = embedded_url(&dir)?;
    let blob_url = args.blob_service_addr.unwrap_or_else(|| embedded.clone());
    let dir_url = args
        .directory_service_addr
        .unwrap_or_else(|| embedded.clone());
    let info_url = args.path_info_service_addr.unwrap_or(embedded);
    let write_token = read_token(args.grpc_token_file.as_deref(), "gRPC write")?;
    let access = Access {
        anonymous_writes: match (args.allow_anonymous_writes, &write_token) {
            (true, _) => AnonymousWrites::Anyone,
            (false, Some(_)) => AnonymousWrites::Refused,
            (false, None) => AnonymousWrites::Loopback,
        },
        write_token,
        read_token: read_token(args.grpc_read_token_file.as_deref(), "gRPC read")?,
    };
    let socket_gid = args.socket_group.as_deref().map(group_id).transpose()?;
    let tls = super::tls::ServerTls::from_args(&args.tls)?;
    super::tls::trust_ca_file(args.tls.ca_file.as_deref())?;
    cairn_castore::model::set_max_directory_entries(args.max_directory_entries);
    raise_file_limit();

    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let blobs = cairn_castore::blob_service_from_addr(&blob_url)
            .with_context(|| format!("cannot open blob service {blob_url}"))?;
        let directories = cairn_castore::directory_service_from_addr(&dir_url)
            .with_context(|| format!("cannot open directory service {dir_url}"))?;

        let tcp = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let tcp_addr = tcp.local_addr().context("cannot read the listening address")?;
        if !tcp_addr.ip().is_loopback() && access.write_token.is_none() && !args.allow_anonymous_writes {
            anyhow::bail!(
                "refusing to serve gRPC on the non-loopback address {tcp_addr} with writes open: set --grpc-token-file FILE (writes then need that token), or --allow-anonymous-writes to accept writes from anyone who reaches it"
            );
        }
        let writes = match access.anonymous_writes {
            AnonymousWrites::Anyone => "from anyone (--allow-anonymous-writes)",
            AnonymousWrites::Refused => "with the token, or over the socket",
            AnonymousWrites::Loopback => "from loopback peers and the socket",
        };

        let path_info = cairn_store::pathinfo::path_info_service_from_addr(
            &info_url,
            blobs.clone(),
            directories.clone(),
        )
        .with_context(|| format!("cannot open path info service {info_url}"))?;
        // The embedded store's lookups are redb reads on a blocking thread; this one
        // instance serves both gRPC and HTTP, so every write to it passes the cache.
        // Not for a remote service: others may write to it behind our back.
        let path_info: Arc<dyn cairn_store::pathinfo::PathInfoService> =
            if info_url.starts_with("redb://") {
                Arc::new(cairn_store::pathinfo::CachingPathInfoService::new(
                    path_info,
                    PATH_INFO_CACHE_ENTRIES,
                ))
            } else {
                path_info
            };
        let (routes, _health) =
            cairn_store::pathinfo::routes(blobs.clone(), directories.clone(), path_info.clone()).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let mut servers = tokio::task::JoinSet::new();
        servers.spawn(cairn_castore::tls::serve_with(
            tls.as_ref().map(|t| t.grpc()).transpose()?,
            super::tls::GRPC_HANDSHAKE_TIMEOUT,
            routes.clone(),
            access.clone(),
            cairn_castore::server::capped(cairn_castore::server::tcp_incoming(tcp), args.grpc_max_connections),
            stopped(stop_rx.clone()),
        ));
        let (grpc_scheme, http_scheme) = if tls.is_some() { ("grpc+https", "https") } else { ("grpc+http", "http") };
        let mut http_note = String::new();
        let http_tls = tls.as_ref().map(|t| t.http()).transpose()?;
        if let Some((addr, uploads, server)) = super::daemon_http::bind(&args.http, blobs.clone(), directories.clone(), path_info, &dir, http_tls, stopped(stop_rx.clone())).await? {
            servers.spawn(server);
            http_note = format!(", binary cache on {http_scheme}://{addr} (uploads {uploads})");
        }
        let mut socket_note = String::new();
        let socket = dir.join("cairn.sock");
        if !args.no_socket {
            // A socket file left by a daemon that was killed would make bind fail.
            match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", socket.display()));
                }
                _ => {}
            }
            let unix = bind_private_socket(&socket, socket_gid)?;
            servers.spawn(cairn_castore::server::serve_with(
                routes,
                access,
                cairn_castore::server::capped(UnixListenerStream::new(unix), args.grpc_max_connections),
                stopped(stop_rx),
            ));
            socket_note = format!(" and grpc+unix://{}", socket.display());
        }
        // Before the line below: whoever reads it may stop us at once, and a signal
        // that arrives before its handler is installed kills the process instead
        // of shutting it down.
        let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        if let Some(tls) = &tls {
            tls.reload_on_sighup()?;
        }
        // Tests and scripts read this line to learn the port when --listen used port 0.
        eprintln!("cairn daemon: serving {grpc_scheme}://{tcp_addr}{socket_note} (writes {writes}){http_note} (blobs: {blob_url}, directories: {dir_url}, path info: {info_url})");
        tracing::info!(%tcp_addr, "serving");

        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            Some(res) = servers.join_next() => {
                // A server ended on its own: that is an error worth reporting.
                res.context("server task failed")??;
            }
        }
        eprintln!("cairn daemon: shutting down");
        let _ = stop_tx.send(true);
        while let Some(res) = servers.join_next().await {
            res.context("server task failed")??;
        }
        if !args.no_socket {
            let _ = std::fs::remove_file(&socket);
        }
        Ok(())
    })
}

/// Binds the unix socket at `path` so that only the daemon's user (and the group
/// `gid`, if given) can connect: it is bound under a temporary name, given its
/// mode and group, and only then renamed into place, so no one can connect
/// while it is still open to all.
fn bind_private_socket(
    path: &std::path::Path,
    gid: Option<u32>,
) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let unix = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot listen on {}", tmp.display()))?;
    let set_up = || -> anyhow::Result<()> {
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move the socket to {}", path.display()))
    };
    if let Err(e) = set_up() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(unix)
}

/// The id of the group `name` (a number, or a name in /etc/group).
fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name))
                .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
                .flatten()
        })
        .with_context(|| format!("--socket-group {name}: no such group in /etc/group"))
}

/// Raises the soft limit on open files to the hard one: every connection, pack
/// and redb file is a descriptor, and the usual soft limit (1024) is far below
/// the connection caps.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open file limit");
        }
    }
    tracing::debug!(limit = ?getrlimit(Resource::Nofile).current, "open file limit");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn socket_groups() {
        assert_eq!(super::group_id("0").ok(), Some(0));
        assert_eq!(super::group_id("root").ok(), Some(0));
        let err = super::group_id("no-such-group-cairn").unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
    }
}
