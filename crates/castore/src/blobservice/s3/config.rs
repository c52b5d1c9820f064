//! The `s3://` URL of [`super::S3BlobService`] and where its credentials come from.

use std::path::{Path, PathBuf};

use crate::Error;

/// In-memory cache of verified chunks when the URL names no `cache_size`.
pub const DEFAULT_CACHE_SIZE: usize = 32 << 20;

/// Local disk cache of verified chunks when the URL names a `disk_cache` but no
/// `disk_cache_size`.
pub const DEFAULT_DISK_CACHE_SIZE: u64 = 4 << 30;

/// An access key, its secret and an optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID` / `aws_access_key_id`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY` / `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN` / `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, never the token.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Everything an [`super::S3BlobService`] needs, parsed from its URL.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix of everything the service stores, without leading or trailing
    /// `/` (empty: the bucket's root).
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// The `postgres://` URL of the database holding the chunk index.
    pub index: String,
    /// The credentials requests are signed with.
    pub credentials: Credentials,
    /// Bytes of verified, decompressed chunks kept in memory.
    pub cache_size: usize,
    /// A local directory of verified chunks ([`crate::blobservice::DiskChunkCache`])
    /// behind the memory cache, and its size bound in bytes.
    pub disk_cache: Option<(PathBuf, u64)>,
    /// Whether request bodies are hashed into the SigV4 signature. Without it
    /// they are sent as `UNSIGNED-PAYLOAD`, which spares client and server a
    /// SHA-256 of every byte uploaded; over TLS the body is protected anyway.
    pub sign_payload: bool,
}

fn invalid(url: &str, msg: impl std::fmt::Display) -> Error {
    // The index URL inside may hold the database's password.
    Error::InvalidArgument(format!("{:?}: {msg}", crate::redacted(url)))
}

/// `%XX` escapes decoded (and nothing else: `+` stays a plus).
fn percent_decode(url: &str, s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(url, format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(url, format!("{s:?} is not UTF-8 once decoded")))
}

impl S3Config {
    /// Parses `s3://bucket[/prefix]?index=postgres://…[&endpoint=…][&region=…]
    /// [&profile=…][&credentials_file=…][&cache_size=…]` (see the module doc of
    /// [`super`]), reading the credentials from the environment or a shared
    /// credentials file.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        Self::parse(url, &|k| std::env::var(k).ok())
    }

    /// [`S3Config::from_url`] with the environment given as a function.
    pub(crate) fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(url, "not an s3:// URL"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !valid_bucket {
            return Err(invalid(
                url,
                format!("bucket name {bucket:?} is not 3 to 63 of a-z, 0-9, '-' and '.'"),
            ));
        }
        let prefix = percent_decode(url, prefix.trim_matches('/'))?;
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(invalid(
                url,
                format!("key prefix {prefix:?} has an empty, . or .. part"),
            ));
        }
        let mut params: Vec<(&str, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid(url, format!("parameter {pair:?} has no value")))?;
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(invalid(url, format!("parameter {k} given twice")));
            }
            params.push((k, percent_decode(url, v)?));
        }
        let mut take = |name: &str| {
            params
                .iter()
                .position(|(k, _)| *k == name)
                .map(|i| params.remove(i).1)
        };
        let endpoint = take("endpoint");
        if let Some(e) = &endpoint {
            let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
            if !scheme_ok || e.len() <= "https://".len() {
                return Err(invalid(
                    url,
                    format!("endpoint {e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        let region = take("region").unwrap_or_else(|| "us-east-1".into());
        let index = take("index").ok_or_else(|| {
            invalid(
                url,
                "s3:// needs index=postgres://… (the PostgreSQL database of the chunk index; \
                 percent-encode '&' in it as %26)",
            )
        })?;
        if !(index.starts_with("postgres://") || index.starts_with("postgresql://")) {
            return Err(invalid(
                url,
                format!("index {index:?} is not a postgres:// URL"),
            ));
        }
        let cache_size = match take("cache_size") {
            None => DEFAULT_CACHE_SIZE,
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| invalid(url, format!("cache_size {s:?} is not a number of bytes")))?,
        };
        let disk_cache_size = match take("disk_cache_size") {
            None => DEFAULT_DISK_CACHE_SIZE,
            Some(s) => s.parse::<u64>().map_err(|_| {
                invalid(
                    url,
                    format!("disk_cache_size {s:?} is not a number of bytes"),
                )
            })?,
        };
        let disk_cache = match take("disk_cache") {
            None => None,
            Some(dir) if dir.starts_with('/') => Some((PathBuf::from(dir), disk_cache_size)),
            Some(dir) => {
                return Err(invalid(
                    url,
                    format!("disk_cache {dir:?} is not an absolute directory path"),
                ));
            }
        };
        // As the AWS SDKs do: a signed body where nothing else protects it in
        // transit (plain HTTP), TLS's integrity where there is TLS.
        let sign_payload = match take("sign_payload").as_deref() {
            None => endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
            Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err(invalid(
                    url,
                    format!("sign_payload {v:?} is not true or false"),
                ));
            }
        };
        let profile = take("profile");
        let file = take("credentials_file");
        if let Some((k, _)) = params.first() {
            return Err(invalid(
                url,
                format!(
                    "unknown parameter {k} (known: endpoint, region, index, profile, \
                     credentials_file, cache_size, disk_cache, disk_cache_size, sign_payload)"
                ),
            ));
        }
        let credentials =
            credentials(profile, file.map(PathBuf::from), env).map_err(|e| invalid(url, e))?;
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix,
            endpoint,
            region,
            index,
            sign_payload,
            credentials,
            cache_size,
            disk_cache,
        })
    }

    /// The endpoint as said in messages: the URL given, or AWS's for the region.
    pub fn endpoint_name(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }
}

/// The credentials: the URL's `profile`/`credentials_file` if it names either;
/// else `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`)
/// if set; else profile `AWS_PROFILE` (default `default`) of the shared
/// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
fn credentials(
    profile: Option<String>,
    file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    if profile.is_none()
        && file.is_none()
        && let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            access_key_id: k,
            secret_access_key: s,
            session_token: env("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        });
    }
    let profile = profile
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let file = file
        .or_else(|| env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from))
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")))
        .ok_or(
            "no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set, nor HOME",
        )?;
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set, and the \
             credentials file {} cannot be read: {e}",
            file.display()
        )
    })?;
    profile_of(&text, &profile).ok_or_else(|| {
        format!(
            "no S3 credentials: profile [{profile}] of {} has no aws_access_key_id and \
             aws_secret_access_key",
            file.display()
        )
    })
}

/// Profile `[name]` of a shared credentials file (INI: `key = value` lines,
/// `#`/`;` comments).
fn profile_of(text: &str, name: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            continue;
        }
        let Some((k, v)) = line.split_once('=').filter(|_| inside) else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim() {
            "aws_access_key_id" => key = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(Credentials {
        access_key_id: key?,
        secret_access_key: secret?,
        session_token: token.filter(|t| !t.is_empty()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const IDX: &str = "index=postgres://u@127.0.0.1:5432/db%3Fhost%3D%2Frun%26pool_size%3D4";

    fn env_keys(k: &str) -> Option<String> {
        match k {
            "AWS_ACCESS_KEY_ID" => Some("AK".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("SK".into()),
            _ => None,
        }
    }

    #[test]
    fn parses_every_parameter() {
        let url = format!(
            "s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9000&region=eu-west-1&{IDX}&cache_size=1000"
        );
        let c = S3Config::parse(&url, &env_keys).unwrap();
        assert_eq!(c.bucket, "my-bucket");
        assert_eq!(c.prefix, "a/b");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(
            c.index,
            "postgres://u@127.0.0.1:5432/db?host=/run&pool_size=4"
        );
        assert_eq!(c.cache_size, 1000);
        assert_eq!(c.credentials.access_key_id, "AK");
        assert_eq!(c.credentials.secret_access_key, "SK");
        assert!(
            !format!("{c:?}").contains("SK"),
            "the secret is not printed"
        );
        let plain = S3Config::parse(&format!("s3://bkt?{IDX}"), &env_keys).unwrap();
        assert_eq!(
            (plain.prefix.as_str(), plain.region.as_str()),
            ("", "us-east-1")
        );
        assert_eq!(plain.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(plain.disk_cache, None);
        let disk = format!("s3://bkt?{IDX}&disk_cache=/var/cache/c%26d");
        let disk = S3Config::parse(&disk, &env_keys).unwrap();
        assert_eq!(
            disk.disk_cache,
            Some(("/var/cache/c&d".into(), DEFAULT_DISK_CACHE_SIZE))
        );
        let sized = format!("s3://bkt?{IDX}&disk_cache=/c&disk_cache_size=4096");
        let sized = S3Config::parse(&sized, &env_keys).unwrap();
        assert_eq!(sized.disk_cache, Some(("/c".into(), 4096)));
        assert_eq!(plain.endpoint_name(), "https://s3.us-east-1.amazonaws.com");
        // Bodies are signed where only the signature protects them.
        assert!(c.sign_payload, "plain HTTP signs bodies");
        assert!(!plain.sign_payload, "TLS to AWS does not");
        let tls = format!("s3://bkt?{IDX}&endpoint=https://s3.example");
        assert!(!S3Config::parse(&tls, &env_keys).unwrap().sign_payload);
        let off = format!("s3://bkt?{IDX}&endpoint=http://h:1&sign_payload=false");
        assert!(!S3Config::parse(&off, &env_keys).unwrap().sign_payload);
        let on = format!("s3://bkt?{IDX}&sign_payload=true");
        assert!(S3Config::parse(&on, &env_keys).unwrap().sign_payload);
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "s3://".to_string(),
            format!("s3://B?{IDX}"),
            format!("s3://ab?{IDX}"),
            "s3://bucket".into(),
            "s3://bucket?index=mysql://x".into(),
            format!("s3://bucket?{IDX}&endpoint=ftp://x"),
            format!("s3://bucket?{IDX}&cache_size=lots"),
            format!("s3://bucket?{IDX}&colour=blue"),
            format!("s3://bucket?{IDX}&region=a&region=b"),
            format!("s3://bucket?{IDX}&region"),
            format!("s3://bucket/a/../b?{IDX}"),
            format!("s3://bucket?{IDX}%zz"),
            format!("s3://bucket?{IDX}&disk_cache=relative/dir"),
            format!("s3://bucket?{IDX}&disk_cache=/c&disk_cache_size=big"),
            format!("s3://bucket?{IDX}&sign_payload=yes"),
        ] {
            let e = S3Config::parse(&url, &env_keys).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{url}: {e}");
        }
    }

    #[test]
    fn credentials_from_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "# comment\n[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             [other]\naws_access_key_id=O\naws_secret_access_key=OS\naws_session_token=T\n",
        )
        .unwrap();
        let f = file.display().to_string();
        let env = |k: &str| match k {
            "AWS_SHARED_CREDENTIALS_FILE" => Some(f.clone()),
            _ => None,
        };
        let c = S3Config::parse(&format!("s3://bkt?{IDX}"), &env).unwrap();
        assert_eq!(c.credentials.access_key_id, "D");
        let c = S3Config::parse(&format!("s3://bkt?{IDX}&profile=other"), &env).unwrap();
        assert_eq!(c.credentials.secret_access_key, "OS");
        assert_eq!(c.credentials.session_token.as_deref(), Some("T"));
        // A URL naming a profile wins over keys in the environment.
        let both = |k: &str| env_keys(k).or_else(|| env(k));
        let c = S3Config::parse(&format!("s3://bkt?{IDX}&profile=other"), &both).unwrap();
        assert_eq!(c.credentials.access_key_id, "O");
        let c =
            S3Config::parse(&format!("s3://bkt?{IDX}&credentials_file={f}"), &|_| None).unwrap();
        assert_eq!(c.credentials.access_key_id, "D");
        let e = S3Config::parse(&format!("s3://bkt?{IDX}&profile=absent"), &env).unwrap_err();
        assert!(e.to_string().contains("profile [absent]"), "{e}");
        let e = S3Config::parse(&format!("s3://bkt?{IDX}"), &|_| None).unwrap_err();
        assert!(e.to_string().contains("no S3 credentials"), "{e}");
    }
}
