//! `PathInfo`'s Nix views against the real Nix 2.8, at test time: a chroot store
//! gets content-addressed paths (recursive, flat sha256 and sha1, text `.drv`s with
//! references) and built input-addressed paths (references, a self-reference, a
//! deriver, two signatures), is copied to an uncompressed `file://` cache, and for
//! every path:
//! - the narinfo Nix wrote, parsed and turned into a `PathInfo`, renders back
//!   byte-for-byte (`to_narinfo`);
//! - `to_json` equals the object `nix path-info --json --all` prints for it, minus
//!   `registrationTime` and `ultimate` (local database facts a PathInfo lacks);
//! - every signature Nix made verifies against `fingerprint()`;
//! - the protobuf round trip keeps it.
//!
//! Needs Nix on PATH (`../shared/oracle/install.sh` or Debian's `nix-bin`); fails
//! without it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use cairn_castore::{Node, SymlinkTarget};
use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::VerifyingKey;
use cairn_store::pathinfo::PathInfo;
use cairn_store::proto;
use cairn_testkit::nix::Nix;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Splits the JSON array `nix path-info --json` prints into its objects, by path.
/// The objects hold no nested objects, and no value contains a brace.
fn split_json(array: &str) -> BTreeMap<String, String> {
    let inner = array
        .trim()
        .strip_prefix("[{")
        .unwrap()
        .strip_suffix("}]")
        .unwrap();
    inner
        .split("},{")
        .map(|o| {
            let o = format!("{{{o}}}");
            let path = o
                .strip_prefix("{\"path\":\"")
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned();
            (path, o)
        })
        .collect()
}

/// Drops `"registrationTime":<n>` and `"ultimate":true` from one object.
fn without_local_fields(o: &str) -> String {
    let mut s = o.replace(",\"ultimate\":true", "");
    let key = ",\"registrationTime\":";
    let at = s
        .find(key)
        .unwrap_or_else(|| panic!("no registrationTime in {o}"));
    let digits = s[at + key.len()..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    assert!(digits > 0, "{o}");
    s.replace_range(at..at + key.len() + digits, "");
    s
}

#[test]
fn narinfo_json_and_fingerprint_match_nix() {
    let env = Nix::new();

    // Content-addressed paths.
    write(&env.path("src/tree/file"), "hello\n");
    write(&env.path("src/tree/sub/run"), "#!/bin/sh\n");
    std::fs::set_permissions(
        env.path("src/tree/sub/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("file", env.path("src/tree/link")).unwrap();
    write(&env.path("src/flat"), "flat contents\n");
    let tree = env.in_store(
        "nix-store",
        &["--add", env.path("src/tree").to_str().unwrap()],
    );
    let flat = env.in_store(
        "nix-store",
        &[
            "--add-fixed",
            "sha256",
            env.path("src/flat").to_str().unwrap(),
        ],
    );
    env.in_store(
        "nix-store",
        &[
            "--add-fixed",
            "sha1",
            env.path("src/flat").to_str().unwrap(),
        ],
    );

    // Built paths (and their `.drv`s, text-addressed with references).
    write(
        &env.path("ia.nix"),
        r#"let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
  dep = mk "pi-dep" "mkdir $out; echo dep > $out/file; ln -s file $out/link";
  dep2 = mk "a-pi-dep" "echo x > $out";
in mk "pi-top" "mkdir $out; echo ${dep}/file ${dep2} > $out/ref; echo $out > $out/self"
"#,
    );
    let top = env.in_store(
        "nix-build",
        &[
            "--option",
            "extra-sandbox-paths",
            "/bin /lib /lib64 /usr",
            "--no-out-link",
            env.path("ia.nix").to_str().unwrap(),
        ],
    );

    // Two keys; the closure of `top` signed by both, one CA path by one.
    let mut keys = Vec::new();
    for name in ["pi-test-1", "another-2"] {
        let (sk, pk) = (
            env.path(&format!("{name}.sk")),
            env.path(&format!("{name}.pk")),
        );
        cairn_testkit::nix::ok(
            env.command("nix-store")
                .args(["--generate-binary-cache-key", name])
                .arg(&sk)
                .arg(&pk),
        );
        let sk = sk.to_str().unwrap().to_owned();
        env.in_store("nix", &["store", "sign", "--key-file", &sk, "-r", &top]);
        keys.push(
            std::fs::read_to_string(&pk)
                .unwrap()
                .parse::<VerifyingKey>()
                .unwrap(),
        );
    }
    let sk = env.path("pi-test-1.sk").to_str().unwrap().to_owned();
    env.in_store("nix", &["store", "sign", "--key-file", &sk, &tree, &flat]);

    let json = split_json(&env.in_store("nix", &["path-info", "--json", "--all"]));
    let cache = env.path("cache");
    env.in_store(
        "nix",
        &[
            "copy",
            "--all",
            "--to",
            &format!("file://{}?compression=none", cache.display()),
        ],
    );

    let dummy = Node::Symlink {
        target: SymlinkTarget::try_from(&b"x"[..]).unwrap(),
    };
    let mut seen = 0;
    let (mut with_ca, mut with_deriver, mut with_sigs, mut with_refs) = (0, 0, 0, 0);
    for entry in std::fs::read_dir(&cache).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|e| e != "narinfo") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let narinfo = NarInfo::parse(&text).unwrap();
        let info = PathInfo::from_narinfo(&narinfo, dummy.clone()).unwrap();
        let path = info.store_path.to_absolute();

        let rendered = info.to_narinfo(
            narinfo.url.clone(),
            narinfo.compression.clone(),
            narinfo.file_hash,
            narinfo.file_size,
        );
        assert_eq!(rendered.to_string(), text, "{path}");

        let nix_json = json
            .get(&path)
            .unwrap_or_else(|| panic!("{path} not in {json:?}"));
        assert_eq!(info.to_json(), without_local_fields(nix_json), "{path}");

        for sig in &info.signatures {
            let key = keys.iter().find(|k| k.name() == sig.name()).unwrap();
            assert!(
                key.verify(info.fingerprint().as_bytes(), sig),
                "{path}: {sig} does not verify against {}",
                info.fingerprint()
            );
        }

        let back = PathInfo::try_from(proto::PathInfo::from(&info)).unwrap();
        assert_eq!(back, info);

        seen += 1;
        with_ca += usize::from(info.ca.is_some());
        with_deriver += usize::from(info.deriver.is_some());
        with_sigs += usize::from(info.signatures.len() >= 2);
        with_refs += usize::from(info.references.len() >= 2);
    }
    // Three CA paths, three .drvs, three outputs.
    assert_eq!(seen, 9);
    assert_eq!(with_ca, 6);
    assert_eq!(with_deriver, 3);
    assert_eq!(with_sigs, 3);
    assert!(with_refs >= 2);
}

/// What Nix 2.8 accepts in a narinfo and what it refuses, against `PathInfo`: a
/// path's narinfo from a `file://` cache is rewritten (references repeated and out
/// of order; an all-zero NarHash; NarSize 0) and `nix path-info --json` reads it.
/// Where Nix accepts it, the `PathInfo` carrying the same values converts from
/// protobuf and its JSON view and fingerprint are Nix's; where Nix calls it
/// corrupt, the conversion fails naming the field.
#[test]
fn accepted_and_refused_like_nix() {
    let env = Nix::new();
    let add = |name: &str, content: &str| {
        write(&env.path(&format!("src/{name}")), content);
        env.in_store(
            "nix-store",
            &["--add", env.path(&format!("src/{name}")).to_str().unwrap()],
        )
    };
    let dep_a = add("a-dep", "a\n");
    let dep_b = add("b-dep", "b\n");
    let top = add("top", "top\n");
    let cache = env.path("cache");
    env.in_store(
        "nix",
        &[
            "copy",
            "--to",
            &format!("file://{}?compression=none", cache.display()),
            &dep_a,
            &dep_b,
            &top,
        ],
    );
    let top_path = cairn_nix::store_path::StorePath::parse_absolute(&top).unwrap();
    let narinfo_file = cache.join(format!("{}.narinfo", top_path.hash_part()));
    let original = std::fs::read_to_string(&narinfo_file).unwrap();
    let basename = |p: &str| p.strip_prefix("/nix/store/").unwrap().to_owned();
    let (a, b) = (basename(&dep_a), basename(&dep_b));
    let dummy = Node::Symlink {
        target: SymlinkTarget::try_from(&b"x"[..]).unwrap(),
    };
    let info = PathInfo::from_narinfo(&NarInfo::parse(&original).unwrap(), dummy).unwrap();

    // Rewrites one line of the narinfo (and drops CA: a fixed-output path with
    // references is not what is tested); what `nix path-info --json` then says.
    let nix_reads = |field: &str, value: &str| {
        let text: String = original
            .lines()
            .filter(|l| !l.starts_with("CA: "))
            .map(|l| {
                if l.starts_with(&format!("{field}: ")) {
                    format!("{field}: {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&narinfo_file, text).unwrap();
        let out = cairn_testkit::nix::output(
            env.command("nix")
                .args(["path-info", "--json", "--store"])
                .arg(format!("file://{}", cache.display()))
                .arg(&top),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nix's JSON for a cache path ends with url, downloadHash, downloadSize.
    let without_download_fields = |o: &str| -> String {
        let at = o
            .find(",\"url\":")
            .unwrap_or_else(|| panic!("no url in {o}"));
        format!("{}}}", &o[..at])
    };

    // References repeated and out of order: Nix reads them as a set.
    let (ok, out, err) = nix_reads("References", &format!("{b} {a} {b}"));
    assert!(ok, "{err}");
    let mut p = proto::PathInfo::from(&info);
    p.references = [&b, &a, &b]
        .iter()
        .map(|n| {
            let sp = cairn_nix::store_path::StorePath::from_basename(n.as_str()).unwrap();
            bytes::Bytes::copy_from_slice(sp.digest())
        })
        .collect();
    p.narinfo.as_mut().unwrap().reference_names = vec![b.clone(), a.clone(), b.clone()];
    p.narinfo.as_mut().unwrap().ca = None;
    let dup = PathInfo::try_from(p).unwrap();
    assert_eq!(dup.references.len(), 3);
    let nix_json = split_json(&out);
    let nix_json = nix_json.values().next().unwrap();
    assert_eq!(dup.to_json(), without_download_fields(nix_json));
    let sorted = PathInfo {
        references: vec![dup.references[1].clone(), dup.references[0].clone()],
        ..dup.clone()
    };
    assert_eq!(dup.fingerprint(), sorted.fingerprint());
    assert!(dup.fingerprint().ends_with(&format!(";{dep_a},{dep_b}")));

    // An all-zero NarHash is read (only a download would find the mismatch).
    let zero = format!("sha256:{}", "0".repeat(52));
    let (ok, out, err) = nix_reads("NarHash", &zero);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("\"narHash\":\"sha256-{}=\"", "A".repeat(43))),
        "{out}"
    );
    let mut p = proto::PathInfo::from(&info);
    p.narinfo.as_mut().unwrap().nar_sha256 = bytes::Bytes::from_static(&[0; 32]);
    assert!(PathInfo::try_from(p).is_ok());

    // NarSize 0: Nix calls the narinfo corrupt.
    let (ok, _, err) = nix_reads("NarSize", "0");
    assert!(!ok && err.contains("is corrupt"), "{err}");
    let mut p = proto::PathInfo::from(&info);
    p.narinfo.as_mut().unwrap().nar_size = 0;
    let e = PathInfo::try_from(p).unwrap_err();
    assert!(e.to_string().starts_with("narinfo.nar_size"), "{e}");
    let zero_size = PathInfo {
        nar_size: 0,
        ..info.clone()
    };
    assert!(zero_size.validate().is_err());
}
