//! Signatures and narinfo files made by cairn, checked by the real Nix at test time:
//! Nix must accept what we sign and render, with keys made by us or by Nix.
//!
//! Needs Nix (`nix`, `nix-build`) on PATH: `../shared/oracle/install.sh` or Debian's
//! `nix-bin`. Without it these tests fail; they never skip.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::{SigningKey, VerifyingKey};
use cairn_testkit::nix::Nix;

/// A scratch dir with a chroot store holding one built (input-addressed) path and its
/// dependency, copied to an uncompressed `file://` cache.
struct Env {
    nix: Nix,
    paths: Vec<String>,
}

impl Env {
    fn nix(&self, program: &str) -> Command {
        self.nix.command(program)
    }

    fn run(&self, cmd: &mut Command) -> Output {
        cairn_testkit::nix::output(cmd)
    }

    fn ok(&self, cmd: &mut Command) -> String {
        cairn_testkit::nix::ok(cmd)
    }

    fn dir(&self) -> &Path {
        self.nix.dir()
    }

    fn store(&self) -> PathBuf {
        self.nix.store()
    }

    fn cache(&self) -> PathBuf {
        self.nix.path("cache")
    }

    fn new() -> Self {
        let nix = Nix::new();
        let [top, dep] = nix.build_closure("cairn-sig");
        let env = Env {
            nix,
            paths: vec![top.clone(), dep],
        };
        env.ok(env
            .nix("nix")
            .args(["copy", "--store"])
            .arg(env.store())
            .arg("--to")
            .arg(format!("file://{}?compression=none", env.cache().display()))
            .arg(&top));
        env
    }

    fn narinfo_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.cache())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
            .collect();
        v.sort();
        assert_eq!(v.len(), 2);
        v
    }

    /// Replaces every narinfo's signatures with ours, re-rendering the file.
    fn sign_cache(&self, keys: &[&SigningKey]) {
        for f in self.narinfo_files() {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut info: NarInfo = text.parse().unwrap();
            assert!(info.signatures.is_empty(), "{text}");
            for k in keys {
                info.sign(k);
            }
            assert_eq!(info.signatures.len(), keys.len());
            std::fs::write(&f, info.to_string()).unwrap();
        }
    }

    /// Whether `nix store verify` accepts every path of the cache, contents and
    /// signatures, with `trusted` as the only trusted keys.
    fn nix_verifies(&self, trusted: &[VerifyingKey], sigs_needed: usize) -> bool {
        let keys: Vec<String> = trusted.iter().map(ToString::to_string).collect();
        let out = self.run(
            self.nix("nix")
                .args(["store", "verify", "--store"])
                .arg(format!("file://{}", self.cache().display()))
                .arg("--trusted-public-keys")
                .arg(keys.join(" "))
                .arg("--sigs-needed")
                .arg(sigs_needed.to_string())
                .args(&self.paths),
        );
        out.status.success()
    }
}

fn nix_generated_key(env: &Env, name: &str) -> (SigningKey, String) {
    let sk = env.ok(env
        .nix("nix")
        .args(["key", "generate-secret", "--key-name", name]));
    let pk = env.ok(env
        .nix("nix")
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(write(env.dir(), name, &sk)).unwrap()));
    (sk.parse().unwrap(), pk)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.key"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn nix_accepts_our_signatures_with_our_and_nix_keys() {
    let env = Env::new();
    let ours = SigningKey::generate("cairn-test-1").unwrap();
    let (nixs, nix_pk) = nix_generated_key(&env, "nix-made-1");
    // Our key's public half, as Nix computes it, is what we compute.
    let our_sk_file = write(env.dir(), "ours", &ours.to_string());
    let nix_view = env.ok(env
        .nix("nix")
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(&our_sk_file).unwrap()));
    assert_eq!(nix_view, ours.to_verifying_key().to_string());
    assert_eq!(nixs.to_verifying_key().to_string(), nix_pk);

    // Unsigned input-addressed paths are refused: the check below can fail.
    assert!(!env.nix_verifies(&[ours.to_verifying_key()], 1));

    env.sign_cache(&[&ours, &nixs]);
    assert!(env.nix_verifies(&[ours.to_verifying_key()], 1));
    assert!(env.nix_verifies(&[nix_pk.parse().unwrap()], 1));
    assert!(env.nix_verifies(&[ours.to_verifying_key(), nix_pk.parse().unwrap()], 2));
    let stranger = SigningKey::generate("cairn-test-1").unwrap();
    assert!(!env.nix_verifies(&[stranger.to_verifying_key()], 1));

    // And Nix copies from the cache we signed, into a fresh store.
    env.ok(env
        .nix("nix")
        .args(["copy", "--from"])
        .arg(format!("file://{}", env.cache().display()))
        .arg("--to")
        .arg(env.dir().join("store2"))
        .args(["--option", "trusted-public-keys"])
        .arg(ours.to_verifying_key().to_string())
        .args(&env.paths));
}

#[test]
fn nix_store_sign_with_our_key_verifies_with_ours() {
    let env = Env::new();
    let ours = SigningKey::generate("cairn-test-2").unwrap();
    let sk_file = write(env.dir(), "ours", &ours.to_string());
    env.ok(env
        .nix("nix")
        .args(["store", "sign", "--store"])
        .arg(env.store())
        .arg("--key-file")
        .arg(&sk_file)
        .args(&env.paths));
    // Copy again now that the store has signatures: the narinfos carry them.
    std::fs::remove_dir_all(env.cache()).unwrap();
    env.ok(env
        .nix("nix")
        .args(["copy", "--store"])
        .arg(env.store())
        .arg("--to")
        .arg(format!("file://{}?compression=none", env.cache().display()))
        .args(&env.paths));
    for f in env.narinfo_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let info: NarInfo = text.parse().unwrap();
        assert_eq!(info.to_string(), text);
        assert_eq!(info.signatures.len(), 1, "{text}");
        assert_eq!(info.verify(&[ours.to_verifying_key()]), 1, "{text}");
        // Deterministic Ed25519: our signature of the same fingerprint is Nix's.
        let mut resigned = info.clone();
        resigned.signatures.clear();
        resigned.sign(&ours);
        assert_eq!(resigned, info);
    }
    assert!(env.nix_verifies(&[ours.to_verifying_key()], 1));
}
