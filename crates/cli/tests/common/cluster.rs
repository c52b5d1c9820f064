//! A store on S3 and PostgreSQL served by several daemons: the pieces the
//! scale-out tests share.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_nix::signature::{SigningKey, VerifyingKey};
use cairn_testkit::nix::{Nix, ok};

use super::{Daemon, daemon_command, first_line, http_addr};

/// One store on the shared servers: a fresh bucket and a fresh database.
pub struct Store {
    pub blobs: String,
    pub db: String,
}

impl Store {
    /// A fresh bucket and database on the test process's shared servers.
    pub fn shared() -> Store {
        Store::on(
            cairn_testkit::postgres::server().database(),
            cairn_testkit::s3::server().bucket(),
        )
    }

    /// The store of database `db` and bucket `bucket` (an `s3://` URL).
    pub fn on(db: String, bucket: String) -> Store {
        let blobs = format!("{bucket}&index={}", cairn_testkit::s3::encode_param(&db));
        Store { blobs, db }
    }

    pub fn flags(&self) -> Vec<String> {
        [
            "--blob-service-addr",
            &self.blobs,
            "--directory-service-addr",
            &self.db,
            "--path-info-service-addr",
            &self.db,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `psql -tA -c SQL` on the store's database: its output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        ok(Command::new("psql")
            .args(["-X", "-tA", "-c", sql])
            .arg(&self.db))
        .trim()
        .to_owned()
    }
}

/// Keys and tokens of a test, in its directory.
pub struct Setup {
    dir: tempfile::TempDir,
    pub pk: VerifyingKey,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sk = SigningKey::from_seed("cairn-scaleout-1", &[7; 32]).unwrap();
        std::fs::write(dir.path().join("sk"), sk.to_string()).unwrap();
        std::fs::write(dir.path().join("token"), "upl0ad\n").unwrap();
        std::fs::write(
            dir.path().join("netrc"),
            "machine 127.0.0.1 login nix password upl0ad\n",
        )
        .unwrap();
        Setup {
            pk: sk.to_verifying_key(),
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a daemon on `store` with data directory `name`: its binary
    /// cache's URL and its socket's.
    pub fn daemon(&self, store: &Store, name: &str) -> (Daemon, String, String) {
        let data = self.path(name);
        let mut flags = store.flags();
        flags.extend(
            [
                "--sign-key",
                self.path("sk").to_str().unwrap(),
                "--upload-token-file",
                self.path("token").to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut child = daemon_command(&data, &flags).spawn().unwrap();
        let line = first_line(&mut child);
        assert!(
            !line.contains(cairn_testkit::s3::SECRET_KEY),
            "the first line shows no secret: {line}"
        );
        let http = format!("http://{}", http_addr(&line).trim_end_matches(','));
        let socket = format!("grpc+unix://{}", data.join("cairn.sock").display());
        (Daemon(Some(child)), http, socket)
    }
}

pub fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// curl: HTTP status and body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = ok(Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

/// `nix copy --to CACHE PATHS` from `nix`'s store, xz-compressed, the upload
/// token from the netrc.
pub fn copy_to(nix: &Nix, setup: &Setup, xdg: &Path, cache: &str, paths: &[&str]) {
    ok(cairn_testkit::nix::command("nix", xdg)
        .args(["copy", "--option", "netrc-file"])
        .arg(setup.path("netrc"))
        .arg("--store")
        .arg(nix.store())
        .args(["--to", &format!("{cache}?compression=xz")])
        .args(paths));
}

/// The fields of `nix path-info --json` that describe a path.
pub fn described(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            serde_json::json!([
                o["path"],
                o["narHash"],
                o["narSize"],
                o["references"],
                o["ca"]
            ])
        })
        .collect()
}

/// `nix copy --from CACHE` of `paths` into a fresh store, signatures checked
/// against `pk`, then `nix store verify` of the copy.
pub fn copy_from_and_verify(nix: &Nix, cache: &str, pk: &VerifyingKey, paths: &[&str]) {
    let fresh = tempfile::tempdir().unwrap();
    let fresh = fresh.path().join("store");
    nix.run(
        "nix",
        &[
            &["copy", "--option", "trusted-public-keys", &pk.to_string()][..],
            &["--from", cache, "--to", fresh.to_str().unwrap()],
            paths,
        ]
        .concat(),
    );
    // Contents re-hashed, and the signature by `pk` that makes them trusted.
    nix.run(
        "nix",
        &[
            &[
                "store",
                "verify",
                "--option",
                "trusted-public-keys",
                &pk.to_string(),
            ][..],
            &["--store", fresh.to_str().unwrap()],
            paths,
        ]
        .concat(),
    );
}
