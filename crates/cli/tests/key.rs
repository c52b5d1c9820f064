//! `cairn key generate` / `cairn key public` against `nix key generate-secret`,
//! `nix key convert-secret-to-public` and `nix store sign`, run at test time.
//!
//! Needs Nix on PATH (`nix-bin`); without it these tests fail, they never skip.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::{SigningKey, VerifyingKey};

fn cairn(args: &[&str], stdin: &[u8]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_cairn")).args(args), stdin)
}

fn nix_cmd(program: &str, scratch: &Path) -> Command {
    cairn_testkit::nix::command(program, &scratch.join("xdg"))
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {cmd:?}: {e} (these tests need the real Nix: apt-get install nix-bin)"
            )
        });
    // May fail with EPIPE when the command stops reading early, which is fine: the
    // callers check the exit status and output.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn generate_prints_a_key_like_nix() {
    let scratch = tempfile::tempdir().unwrap();
    let ours = ok(cairn(&["key", "generate", "cache.example.org-1"], b""));
    let nixs = ok(run(
        nix_cmd("nix", scratch.path()).args([
            "key",
            "generate-secret",
            "--key-name",
            "cache.example.org-1",
        ]),
        b"",
    ));
    // Same shape as Nix's: name, ':', 88 base64 characters, no newline.
    for k in [&ours, &nixs] {
        let (name, b64) = k.split_once(':').unwrap();
        assert_eq!(name, "cache.example.org-1");
        assert_eq!(b64.len(), 88, "{k:?}");
        assert!(b64.ends_with("=="));
        assert!(!k.ends_with('\n'));
    }
    assert_ne!(ours, nixs);
    // Two runs give two different keys.
    assert_ne!(
        ours,
        ok(cairn(&["key", "generate", "cache.example.org-1"], b""))
    );
}

#[test]
fn public_matches_nix_both_ways() {
    let scratch = tempfile::tempdir().unwrap();
    let ours = ok(cairn(&["key", "generate", "k-1"], b""));
    let nixs = ok(run(
        nix_cmd("nix", scratch.path()).args(["key", "generate-secret", "--key-name", "n-1"]),
        b"",
    ));
    for sk in [&ours, &nixs] {
        let nix_pk = ok(run(
            nix_cmd("nix", scratch.path()).args(["key", "convert-secret-to-public"]),
            sk.as_bytes(),
        ));
        let our_pk = ok(cairn(&["key", "public"], sk.as_bytes()));
        assert_eq!(our_pk, nix_pk, "{sk}");
        // With a trailing newline (a key file written by an editor) too.
        let our_pk = ok(cairn(&["key", "public"], format!("{sk}\n").as_bytes()));
        assert_eq!(our_pk, nix_pk);
    }
}

#[test]
fn nix_store_sign_accepts_our_key() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let sk_text = ok(cairn(&["key", "generate", "cairn-cli-1"], b""));
    let pk_text = ok(cairn(&["key", "public"], sk_text.as_bytes()));
    std::fs::write(dir.join("sk"), &sk_text).unwrap();
    std::fs::write(dir.join("file"), "signed by cairn's key\n").unwrap();
    let store = dir.join("store");
    let path = ok(run(
        nix_cmd("nix-store", dir)
            .arg("--store")
            .arg(&store)
            .arg("--add")
            .arg(dir.join("file")),
        b"",
    ));
    let path = path.trim();
    ok(run(
        nix_cmd("nix", dir)
            .args(["store", "sign", "--store"])
            .arg(&store)
            .arg("--key-file")
            .arg(dir.join("sk"))
            .arg(path),
        b"",
    ));
    let cache = format!("file://{}?compression=none", dir.join("cache").display());
    ok(run(
        nix_cmd("nix", dir)
            .args(["copy", "--store"])
            .arg(&store)
            .args(["--to", &cache, path]),
        b"",
    ));
    let hash = path
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap();
    let text = std::fs::read_to_string(dir.join("cache").join(format!("{hash}.narinfo"))).unwrap();
    let info: NarInfo = text.parse().unwrap();
    assert_eq!(info.signatures.len(), 1, "{text}");
    assert_eq!(info.signatures[0].name(), "cairn-cli-1");
    let pk: VerifyingKey = pk_text.parse().unwrap();
    assert_eq!(info.verify(&[pk]), 1, "{text}");
    // Nix signed exactly what we would sign.
    let mut ours = info.clone();
    ours.signatures.clear();
    ours.sign(&sk_text.parse::<SigningKey>().unwrap());
    assert_eq!(ours, info);
}

#[test]
fn clear_errors() {
    for (args, stdin, want) in [
        (&["key", "generate", "a:b"][..], "", "contains `:`"),
        (&["key", "generate", "a b"][..], "", "whitespace"),
        (&["key", "generate", ""][..], "", "empty"),
        (&["key", "public"][..], "", "no `:`"),
        (&["key", "public"][..], "x:AAAA", "3 bytes, expected 64"),
        (&["key", "public"][..], "x:@@@@", "bad base64"),
    ] {
        let out = cairn(args, stdin.as_bytes());
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(want), "{args:?} {stdin:?}: {err}");
    }
    // A huge stdin is refused without reading it all.
    let out = cairn(&["key", "public"], &vec![b'a'; 1 << 20]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not a secret key")
    );
}
