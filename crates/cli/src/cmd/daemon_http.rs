//! The Nix binary cache part of `cairn daemon`: its flags and its HTTP listener
//! (the cache itself is `cairn-cache`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgAction, Args};

use super::store::read_token;

/// Flags of `cairn daemon` for the binary cache.
#[derive(Args)]
pub struct HttpArgs {
    /// TCP address to serve the Nix binary cache on over HTTP (HTTPS with
    /// --tls-cert; port 0 picks a free port): `nix copy --to/--from
    /// http://ADDR`, substituters.
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
    http_listen: String,

    /// Do not serve the binary cache.
    #[arg(long)]
    no_http: bool,

    /// Sign every narinfo served with this secret key file (Nix's format, as
    /// `cairn key generate` or `nix key generate-secret` write it), in addition to
    /// the signatures stored with the path. Repeatable.
    #[arg(long = "sign-key", value_name = "FILE")]
    sign_keys: Vec<PathBuf>,

    /// Accept an uploaded narinfo only if it carries a valid signature by this
    /// public key (`name:base64`, as in Nix's trusted-public-keys); on
    /// --nix-socket, what untrusted clients' paths must be signed by.
    /// Repeatable.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,

    /// Uploads (PUT) must carry the token in this file, as `Authorization: Bearer
    /// TOKEN` or as the password of Basic authentication (a netrc line `machine
    /// HOST login ANY password TOKEN` for Nix). Reads stay open unless
    /// --read-token-file is given.
    #[arg(long, value_name = "FILE")]
    upload_token_file: Option<PathBuf>,

    /// Accept uploads (`nix copy --to`) from anyone who reaches the cache, without
    /// a token. They are then served signed with --sign-key like any other path:
    /// only for a cache on a trusted network. Without this or
    /// --upload-token-file, uploads are refused (403).
    #[arg(long)]
    allow_anonymous_uploads: bool,

    /// Refuse (413) an upload whose NAR decompresses to more than this many bytes
    /// (suffixes K, M, G, T: powers of 1024), as soon as it grows past it; also
    /// the largest NAR accepted on --nix-socket.
    #[arg(long, default_value = "4G", value_name = "SIZE", value_parser = parse_size)]
    max_nar_size: u64,

    /// Binary cache connections served at once; more are closed when accepted.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    http_max_connections: usize,

    /// Seconds a binary cache connection may wait idle for its next request.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    http_idle_timeout: u64,

    /// Seconds a client may take to send a request head once it started one.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    http_header_timeout: u64,

    /// Make the cache private: reads (GET and HEAD of narinfos, NARs, listings,
    /// /nix-cache-info) must carry the token in this file, or the upload token,
    /// in the same forms as uploads (a netrc line for Nix substituters).
    #[arg(long, value_name = "FILE")]
    read_token_file: Option<PathBuf>,

    /// `Priority` in /nix-cache-info (lower is preferred among substituters).
    #[arg(long, default_value_t = 40, value_name = "N")]
    cache_priority: i32,

    /// `WantMassQuery` in /nix-cache-info.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    want_mass_query: bool,

    /// Forget an uploaded NAR whose narinfo has not come this many seconds after
    /// it (an interrupted `nix copy --to`); checked at start and then hourly.
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    pending_upload_max_age: u64,
}

impl HttpArgs {
    /// The --trusted-key values (uploads over HTTP and the Nix daemon protocol
    /// check signatures against the same keys).
    pub fn trusted_keys(&self) -> anyhow::Result<Vec<cairn_nix::signature::VerifyingKey>> {
        super::nix_daemon::parse_keys(&self.trusted_keys)
    }

    /// --max-nar-size (also the Nix daemon protocol's limit).
    pub fn max_nar_size(&self) -> u64 {
        self.max_nar_size
    }

    /// The cache's settings, reading the key and token files.
    fn config(&self) -> anyhow::Result<cairn_cache::CacheConfig> {
        let mut config = cairn_cache::CacheConfig::default();
        config.cache_info.priority = Some(self.cache_priority);
        config.cache_info.want_mass_query = Some(self.want_mass_query);
        config.pending_max_age = std::time::Duration::from_secs(self.pending_upload_max_age);
        for f in &self.sign_keys {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read signing key {}", f.display()))?;
            let key = text
                .trim()
                .parse()
                .with_context(|| format!("signing key {}", f.display()))?;
            config.sign_keys.push(key);
        }
        config.trusted_keys = self.trusted_keys()?;
        config.upload_token = read_token(self.upload_token_file.as_deref(), "upload")?;
        config.read_token = read_token(self.read_token_file.as_deref(), "read")?;
        config.allow_anonymous_uploads = self.allow_anonymous_uploads;
        config.max_nar_size = self.max_nar_size;
        config.max_connections = self.http_max_connections;
        config.idle_timeout = std::time::Duration::from_secs(self.http_idle_timeout);
        config.header_read_timeout = std::time::Duration::from_secs(self.http_header_timeout);
        Ok(config)
    }
}

/// A size in bytes, with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown size suffix {c:?} (K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 8G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Binds the binary cache's listener (unless `--no-http`) and returns its address,
/// who may upload (for the startup line) and the server future (counting into
/// `metrics`, serving them as /metrics unless they have a listener of their
/// own), which runs until `shutdown` completes. Pending uploads are kept in
/// `data_dir`, or in PostgreSQL when `info_url` (the path info service's) is
/// there. With `tls`, the cache is served over HTTPS; with `pull`, paths not
/// in the store are asked of it (upstream caches).
// The daemon's wiring: each argument is one of its parts.
#[allow(clippy::too_many_arguments)]
pub async fn bind(
    args: &HttpArgs,
    store: super::store::Store,
    pull: Option<Arc<dyn cairn_cache::PullThrough>>,
    data_dir: &Path,
    info_url: &str,
    metrics: &super::daemon_metrics::Metrics,
    tls: Option<cairn_castore::tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<
    Option<(
        SocketAddr,
        &'static str,
        impl Future<Output = Result<(), cairn_castore::Error>> + Send + 'static,
    )>,
> {
    if args.no_http {
        return Ok(None);
    }
    let config = args.config()?;
    let pending = match info_url {
        // Several daemons on one database: a NAR uploaded through one is claimed
        // by its narinfo through another.
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let db = cairn_castore::pg::Db::open_shared(url).with_context(|| {
                format!(
                    "cannot open the pending uploads in {}",
                    cairn_castore::redacted(url)
                )
            })?;
            cairn_cache::PendingUploads::postgres(db)
        }
        _ => cairn_cache::PendingUploads::open(data_dir).with_context(|| {
            format!("cannot open the pending uploads in {}", data_dir.display())
        })?,
    };
    let super::store::Store {
        blobs,
        directories,
        path_info,
    } = store;
    let mut cache = cairn_cache::BinaryCache::new(blobs, directories, path_info, pending, config)
        .with_metrics(metrics.http.clone(), metrics.on_cache.clone());
    if let Some(pull) = pull {
        cache = cache.with_pull_through(pull);
    }
    let listener = tokio::net::TcpListener::bind(&args.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let uploads = match (&args.upload_token_file, args.allow_anonymous_uploads) {
        (Some(_), _) => "with the upload token",
        (None, true) => "from anyone (--allow-anonymous-uploads)",
        (None, false) => "refused (no --upload-token-file)",
    };
    Ok(Some((addr, uploads, async move {
        let cache = Arc::new(cache);
        match tls {
            Some(tls) => cairn_cache::serve_tls(listener, cache, tls, shutdown).await,
            None => cairn_cache::serve(listener, cache, shutdown).await,
        }
        .map_err(cairn_castore::Error::Io)
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for (bad, why) in [
            ("12x", "unknown size suffix"),
            ("", "expected a number"),
            ("G", "expected a number"),
            ("-1K", "expected a number"),
            ("99999999999T", "too large"),
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    /// The flag's default is the cache's, and refuses the NAR of the 4 GiB file
    /// that 610 KB of xz expand to (issue 15's example).
    #[test]
    fn default_max_nar_size() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            http: super::HttpArgs,
        }
        let cli = Cli::try_parse_from(["cairn"]).unwrap();
        assert_eq!(cli.http.max_nar_size, cairn_cache::DEFAULT_MAX_NAR_SIZE);
        // A NAR is longer than the one file it holds.
        assert!(cli.http.max_nar_size <= 4 << 30);
    }
}
