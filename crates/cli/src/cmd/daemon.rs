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
    /// Read options from this TOML file: a key for each option of this command,
    /// under its long name without the dashes (`http-listen = "0.0.0.0:9000"`,
    /// `sign-key = ["/etc/cairn/sk"]`, `no-socket = true`). The command line
    /// and the environment override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration (defaults, --config, environment and
    /// command line) as a config file, and exit. Secrets appear as the paths of
    /// their files.
    #[arg(long)]
    print_config: bool,

    /// TCP address to serve gRPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,

    /// Data directory of the embedded store [default: $XDG_DATA_HOME/cairn, or
    /// ~/.local/share/cairn].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Serve blobs from this backend instead of the embedded store
    /// (memory://, redb:///path, grpc+http://host:port, grpc+https://host:port,
    /// grpc+unix:///path, or s3://bucket/prefix?index=postgres://…, with a local
    /// chunk cache in DATA_DIR/s3-cache: see the README).
    #[arg(long, env = "BLOB_SERVICE_ADDR")]
    blob_service_addr: Option<String>,

    /// Serve directories from this backend instead of the embedded store
    /// (the blob service's forms but s3://, or postgres://user@host/db).
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR")]
    directory_service_addr: Option<String>,

    /// Serve path info from this backend instead of the embedded store (as
    /// directories; on postgres:// the binary cache's pending uploads go there
    /// too, so several daemons share them).
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

    /// On SIGTERM or SIGINT, seconds to let requests in flight and downloads
    /// from --upstream finish before they are dropped (an upload or a
    /// download dropped so registers nothing).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    shutdown_timeout: u64,

    /// Run a garbage collection this often while serving (e.g. 1h), with the
    /// policy of --max-age, --max-size and --grace (as `cairn gc`). Needs the
    /// embedded store (no --*-service-addr), or an S3 + PostgreSQL store with
    /// the blob index, directories and path info in one database (several
    /// daemons on it take turns: one collects, the others skip the round).
    #[arg(long, value_name = "DURATION", value_parser = super::gc::parse_duration)]
    gc_interval: Option<std::time::Duration>,

    #[command(flatten)]
    gc: super::gc::PolicyArgs,

    #[command(flatten)]
    http: super::daemon_http::HttpArgs,

    #[command(flatten)]
    nix: super::nix_daemon::NixSocketArgs,

    #[command(flatten)]
    upstream: super::upstream::UpstreamArgs,

    #[command(flatten)]
    metrics: super::daemon_metrics::MetricsArgs,

    #[command(flatten)]
    tls: super::tls::TlsArgs,
}

/// An `s3://` blob service keeps the chunks it reads in `DATA_DIR/s3-cache`
/// unless its URL names a `disk_cache` of its own: a hot NAR is then served
/// from local disk, not fetched from S3 again.
fn with_disk_cache(url: String, dir: &std::path::Path) -> String {
    if !url.starts_with("s3://") || url.contains("disk_cache=") {
        return url;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let cache = dir.join("s3-cache");
    // The path goes in as a parameter value: '%' and '&' would change its meaning.
    let path: String = cache
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '%' => "%25".to_owned(),
            '&' => "%26".to_owned(),
            '#' => "%23".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!("{url}{sep}disk_cache={path}")
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let dir = data_dir(args.data_dir)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let embedded = embedded_url(&dir)?;
    let blob_url = with_disk_cache(
        args.blob_service_addr.unwrap_or_else(|| embedded.clone()),
        &dir,
    );
    let dir_url = args
        .directory_service_addr
        .unwrap_or_else(|| embedded.clone());
    let info_url = args.path_info_service_addr.unwrap_or(embedded.clone());
    let urls = [blob_url.clone(), dir_url.clone(), info_url.clone()];
    let s3pg = super::gc::is_s3pg(&urls);
    if args.gc_interval.is_some() && !s3pg && urls.iter().any(|u| *u != embedded) {
        anyhow::bail!(
            "--gc-interval needs the embedded store of the data directory for blobs, directories and path info, or an S3 + PostgreSQL store (s3://…?index=DB, directories and path info in DB)"
        );
    }
    // The collector of an S3 + PostgreSQL store works on the services the
    // daemon serves, so that it empties their caches of what it removes.
    let s3pg_services = if args.gc_interval.is_some() && s3pg {
        let blobs =
            cairn_castore::blobservice::S3BlobService::from_url(&blob_url).with_context(|| {
                format!(
                    "cannot open blob service {}",
                    cairn_castore::redacted(&blob_url)
                )
            })?;
        let dirs = cairn_castore::directoryservice::PgDirectoryService::from_url(&dir_url)
            .with_context(|| {
                format!(
                    "cannot open directory service {}",
                    cairn_castore::redacted(&dir_url)
                )
            })?;
        let gc = super::gc::pg_collector(&urls, &blobs, dirs.clone())?;
        Some((blobs, dirs, gc))
    } else {
        None
    };
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
        // A command may hold the data directory for a moment (or a daemon that
        // is stopping): wait for it as the commands wait for a starting daemon.
        let (blobs, directories) = super::store::when_unlocked(
            super::store::LOCK_WAIT,
            || Ok(dir.clone()),
            || {
                if let Some((blobs, dirs, _)) = &s3pg_services {
                    let blobs: Arc<dyn cairn_castore::BlobService> = Arc::new(blobs.clone());
                    let dirs: Arc<dyn cairn_castore::DirectoryService> = Arc::new(dirs.clone());
                    return Ok((blobs, dirs));
                }
                let blobs = cairn_castore::blob_service_from_addr(&blob_url)
                    .with_context(|| format!("cannot open blob service {}", cairn_castore::redacted(&blob_url)))?;
                let directories = cairn_castore::directory_service_from_addr(&dir_url)
                    .with_context(|| format!("cannot open directory service {}", cairn_castore::redacted(&dir_url)))?;
                Ok((blobs, directories))
            },
        )?;
        let path_info = cairn_store::pathinfo::path_info_service_from_addr(
            &info_url,
            blobs.clone(),
            directories.clone(),
        )
        .with_context(|| format!("cannot open path info service {}", cairn_castore::redacted(&info_url)))?;
        // The embedded store's lookups are redb reads on a blocking thread; this one
        // instance serves both gRPC and HTTP, so every write to it passes the cache.
        // Not for a remote service: others may write to it behind our back.
        let path_info_cache = info_url.starts_with("redb://").then(|| {
            Arc::new(cairn_store::pathinfo::CachingPathInfoService::new(
                path_info.clone(),
                PATH_INFO_CACHE_ENTRIES,
            ))
        });
        let path_info: Arc<dyn cairn_store::pathinfo::PathInfoService> = match &path_info_cache {
            Some(cache) => cache.clone(),
            None => path_info,
        };
        // Pull-through: gRPC gets (and the store commands through the daemon)
        // pull a missing path whole; the binary cache streams a pulled NAR to its
        // client. Uploads, the Nix socket and GC see the store as it is.
        let puller = args.upstream.puller(
            super::store::Store { blobs: blobs.clone(), directories: directories.clone(), path_info: path_info.clone() },
            args.http.max_nar_size(),
            // The data directory: a NAR spooled there is as big as what it
            // becomes in the store, and a temporary directory may be in memory.
            &dir,
        )?;
        let skip_uploads = args.upstream.upstream_skip_uploads;
        let grpc_path_info: Arc<dyn cairn_store::pathinfo::PathInfoService> = match &puller {
            Some(p) => Arc::new(
                cairn_upstream::PullThroughPathInfoService::new(path_info.clone(), p.clone()).skip_uploads(skip_uploads),
            ),
            None => path_info.clone(),
        };
        // What HTTP uploads and the Nix socket put into (their reads see the
        // store as it is: the binary cache pulls by itself).
        let upload_path_info: Arc<dyn cairn_store::pathinfo::PathInfoService> = match &puller {
            Some(p) if skip_uploads => Arc::new(
                cairn_upstream::PullThroughPathInfoService::new(path_info.clone(), p.clone())
                    .pull_misses(false)
                    .skip_uploads(true),
            ),
            _ => path_info.clone(),
        };
        let (routes, _health) =
            cairn_store::pathinfo::routes(blobs.clone(), directories.clone(), grpc_path_info).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut servers = tokio::task::JoinSet::new();
        if let Some(every) = args.gc_interval {
            let gc = match s3pg_services {
                Some((_, _, gc)) => super::gc::Gc::Pg(Box::new(gc)),
                None => {
                    let store = cairn_castore::embedded::EmbeddedStore::open_shared(&dir)
                        .with_context(|| format!("cannot open data directory {}", dir.display()))?;
                    // Before serving: every lookup from here on counts for the sweep.
                    store.track_lookups(args.gc.grace);
                    store.set_rewrite(args.gc.rewrite());
                    super::gc::Gc::Embedded(store)
                }
            };
            tokio::spawn(super::gc::every(every, args.gc.policy(false), path_info.clone(), gc, stopped(stop_rx.clone())));
        }

        // The socket first: a script that waits for the TCP port and then runs a
        // store command must find the socket (the command would otherwise find
        // the data directory locked by this daemon). Connections wait in its
        // backlog until it is served, below.
        let mut socket_note = String::new();
        let socket = dir.join("cairn.sock");
        let unix = if args.no_socket {
            None
        } else {
            // A socket file left by a daemon that was killed would make bind fail.
            match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", socket.display()));
                }
                _ => {}
            }
            Some(bind_private_socket(&socket, socket_gid)?)
        };
        let served = async {
            let sources = super::daemon_metrics::StoreSources {
                blob_url: &blob_url,
                info_url: &info_url,
                blobs: blobs.clone(),
                directories: directories.clone(),
                path_info_cache,
                puller: puller.clone(),
            };
            let (metrics, metrics_server) =
                super::daemon_metrics::setup(&args.metrics, sources, stopped(stop_rx.clone())).await?;
            if let Some(unix) = unix {
                servers.spawn(cairn_castore::server::serve_observed(
                    routes.clone(),
                    access.clone(),
                    metrics.grpc.clone(),
                    cairn_castore::server::capped(UnixListenerStream::new(unix), args.grpc_max_connections),
                    stopped(stop_rx.clone()),
                ));
                socket_note = format!(" and grpc+unix://{}", socket.display());
            }
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
            let mut metrics_note = String::new();
            if let Some((addr, server)) = metrics_server {
                servers.spawn(server);
                metrics_note = format!(", metrics on http://{addr}/metrics");
            }
            servers.spawn(cairn_castore::tls::serve_with(
                tls.as_ref().map(|t| t.grpc()).transpose()?,
                super::tls::GRPC_HANDSHAKE_TIMEOUT,
                routes,
                access.clone(),
                metrics.grpc.clone(),
                cairn_castore::server::capped(cairn_castore::server::tcp_incoming(tcp), args.grpc_max_connections),
                stopped(stop_rx.clone()),
            ));
            let (grpc_scheme, http_scheme) = if tls.is_some() { ("grpc+https", "https") } else { ("grpc+http", "http") };
            let mut http_note = String::new();
            let http_tls = tls.as_ref().map(|t| t.http()).transpose()?;
            let store = || super::store::Store { blobs: blobs.clone(), directories: directories.clone(), path_info: upload_path_info.clone() };
            let pull = puller.clone().map(|p| p as Arc<dyn cairn_cache::PullThrough>);
            if let Some((addr, uploads, server)) = super::daemon_http::bind(&args.http, store(), pull, &dir, &info_url, &metrics, http_tls, stopped(stop_rx.clone())).await? {
                servers.spawn(server);
                http_note = format!(", binary cache on {http_scheme}://{addr} (uploads {uploads})");
            }
            let nix_config = cairn_nix_daemon::Config {
                trusted_keys: args.http.trusted_keys()?,
                max_nar_size: args.http.max_nar_size(),
                ..cairn_nix_daemon::Config::default()
            };
            if let Some((note, server)) = super::nix_daemon::bind(&args.nix, store(), nix_config, stopped(stop_rx.clone()))? {
                servers.spawn(server);
                http_note.push_str(&note);
            }
            if let Some((note, unmount)) = super::nix_daemon::mount(&args.nix, store(), stopped(stop_rx.clone()))? {
                servers.spawn(unmount);
                http_note.push_str(&note);
            }
            // Before the line below: whoever reads it may stop us at once, and a
            // signal that arrives before its handler is installed kills the
            // process instead of shutting it down.
            let sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
            let sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
            match &tls {
                Some(tls) => tls.reload_on_sighup()?,
                // SIGHUP's default would kill the daemon (and `systemctl reload`
                // sends it): without a certificate there is nothing to reload.
                None => {
                    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
                    tokio::spawn(async move {
                        while hangup.recv().await.is_some() {
                            eprintln!("cairn daemon: SIGHUP: nothing to reload (no --tls-cert)");
                        }
                    });
                }
            }
            // Ready: the store is open and every listener bound. Tests and scripts
            // read this line to learn the ports when they asked for port 0.
            http_note.push_str(&args.upstream.note());
            eprintln!("cairn daemon: serving {grpc_scheme}://{tcp_addr}{socket_note} (writes {writes}){http_note}{metrics_note} (blobs: {}, directories: {}, path info: {})", cairn_castore::redacted(&blob_url), cairn_castore::redacted(&dir_url), cairn_castore::redacted(&info_url));
            tracing::info!(%tcp_addr, "serving");
            notify_systemd("READY=1");
            Ok((sigterm, sigint))
        }
        .await;
        let (mut sigterm, mut sigint) = match served {
            Ok(signals) => signals,
            Err(e) => {
                if !args.no_socket {
                    let _ = std::fs::remove_file(&socket);
                }
                return Err(e);
            }
        };

        let mut ended = Ok(());
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            Some(res) = servers.join_next() => {
                // A server ended on its own: that is an error worth reporting.
                ended = res.context("server task failed").and_then(|r| r.map_err(Into::into));
            }
        }
        eprintln!("cairn daemon: shutting down");
        notify_systemd("STOPPING=1");
        let _ = stop_tx.send(true);
        // Requests in flight finish (an upload either completes or registers
        // nothing), and so do downloads from upstream that a client started
        // (and may have left), up to the timeout; then the rest are dropped.
        let drained = tokio::time::timeout(std::time::Duration::from_secs(args.shutdown_timeout), async {
            while let Some(res) = servers.join_next().await {
                if let Err(e) = res.context("server task failed").and_then(|r| r.map_err(anyhow::Error::from)) {
                    tracing::warn!(error = format!("{e:#}"), "while shutting down");
                }
            }
            if let Some(puller) = &puller {
                puller.drain().await;
            }
        })
        .await;
        if drained.is_err() {
            eprintln!(
                "cairn daemon: requests or downloads from upstream still running after --shutdown-timeout {} s: dropping them",
                args.shutdown_timeout
            );
            servers.shutdown().await;
        }
        if !args.no_socket {
            let _ = std::fs::remove_file(&socket);
        }
        ended
    })
}

/// Tells systemd about the daemon's state (`READY=1`, `STOPPING=1`) when it
/// started the daemon as `Type=notify` (it sets NOTIFY_SOCKET); else nothing.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let send = || -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        // '@' names a socket in the abstract namespace.
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    };
    if let Err(e) = send() {
        tracing::warn!(error = %e, "cannot notify systemd of {state}");
    }
}

/// Binds the unix socket at `path` so that only the daemon's user (and the group
/// `gid`, if given) can connect.
fn bind_private_socket(
    path: &std::path::Path,
    gid: Option<u32>,
) -> anyhow::Result<tokio::net::UnixListener> {
    bind_socket(path, if gid.is_some() { 0o660 } else { 0o600 }, gid)
}

/// Binds the unix socket at `path` with `mode` (and group `gid`, if given): it is
/// bound under a temporary name, given its mode and group, and only then renamed
/// into place, so no one can connect while it is still open to all.
pub fn bind_socket(
    path: &std::path::Path,
    mode: u32,
    gid: Option<u32>,
) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let unix = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot listen on {}", tmp.display()))?;
    let set_up = || -> anyhow::Result<()> {
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
    id_of(name, "/etc/group", "--socket-group")
}

/// The id of `name` in `file` (/etc/passwd or /etc/group: the third field of
/// the line whose first field is `name`), or `name` itself if it is a number;
/// `flag` names the option in the error.
pub fn id_of(name: &str, file: &str, flag: &str) -> anyhow::Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let table = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    table
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name))
                .then(|| fields.nth(1).and_then(|id| id.parse().ok()))
                .flatten()
        })
        .with_context(|| format!("{flag} {name}: not found in {file}"))
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
        assert!(err.to_string().contains("not found in /etc/group"), "{err}");
    }
}
