//! narinfo, nix-cache-info and signatures against files written by the real Nix 2.8
//! (`tests/fixtures/narinfo/`, made by its `generate.sh`), and against Nix run at
//! test time.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use cairn_nix::cache_info::CacheInfo;
use cairn_nix::narinfo::{ContentAddress, NarInfo, NarInfoError};
use cairn_nix::signature::{SigningKey, VerifyingKey};
use cairn_nix::store_path::{FileIngestionMethod, StoreDir};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/narinfo")
}

/// Every `.narinfo` under the fixtures, as (path relative to fixtures, contents).
fn narinfo_fixtures() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() || dir.file_name().unwrap() == "keys" {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "narinfo") {
                let rel = f.strip_prefix(fixtures()).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&f).unwrap()));
            }
        }
    }
    out.sort();
    // The generator writes 25 narinfos; fewer means the fixtures are incomplete.
    assert!(out.len() >= 25, "only {} narinfo fixtures", out.len());
    out
}

fn key(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("keys").join(name)).unwrap()
}

fn public_keys() -> Vec<VerifyingKey> {
    ["a.pk", "b.pk", "legacy.pk"]
        .iter()
        .map(|k| key(k).parse().unwrap())
        .collect()
}

#[test]
fn every_fixture_renders_back_byte_identical() {
    for (name, text) in narinfo_fixtures() {
        let info: NarInfo = text.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.to_string(), text, "{name}");
        assert!(!info.references.is_empty() || text.contains("\nReferences: \n"));
    }
}

#[test]
fn fixtures_cover_every_kind_of_path() {
    let all: Vec<NarInfo> = narinfo_fixtures()
        .iter()
        .map(|(_, t)| t.parse().unwrap())
        .collect();
    let has = |f: &dyn Fn(&NarInfo) -> bool| all.iter().any(f);
    assert!(has(&|i| matches!(i.ca, Some(ContentAddress::Text { .. }))));
    assert!(has(&|i| matches!(
        i.ca,
        Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Flat,
            ..
        })
    )));
    assert!(has(&|i| matches!(
        i.ca,
        Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            ..
        })
    )));
    assert!(has(&|i| i.ca.is_none() && i.deriver.is_some()));
    assert!(has(&|i| i.references.len() >= 3));
    assert!(has(&|i| i.references.contains(&i.store_path)));
    assert!(has(&|i| i.signatures.len() == 3));
    for c in ["none", "xz", "bzip2", "zstd"] {
        assert!(has(&|i| i.compression.as_str() == c), "{c}");
    }
    let ca_texts: Vec<String> = all
        .iter()
        .filter_map(|i| i.ca.as_ref().map(ToString::to_string))
        .collect();
    for prefix in [
        "text:sha256:",
        "fixed:sha1:",
        "fixed:sha256:",
        "fixed:sha512:",
        "fixed:r:sha1:",
        "fixed:r:sha256:",
    ] {
        assert!(ca_texts.iter().any(|c| c.starts_with(prefix)), "{prefix}");
    }
}

#[test]
fn content_addresses_give_the_store_path() {
    // The CA field, references and name determine a CA path's store path: checks the
    // CA parser against Nix's paths (and the store path module against the CA).
    let mut checked = 0;
    for (name, text) in narinfo_fixtures() {
        let info: NarInfo = text.parse().unwrap();
        let Some(ca) = &info.ca else { continue };
        let self_ref = info.references.contains(&info.store_path);
        let others = info.references.iter().filter(|r| **r != info.store_path);
        let dir = StoreDir::default();
        let path = match ca {
            ContentAddress::Text { sha256 } => {
                assert!(!self_ref, "{name}");
                dir.make_text_path(info.store_path.name(), sha256, others)
            }
            ContentAddress::Fixed { method, hash } => {
                dir.make_fixed_output_path(*method, hash, info.store_path.name(), others, self_ref)
            }
        }
        .unwrap();
        assert_eq!(path, info.store_path, "{name}");
        assert_eq!(ca.to_string().parse::<ContentAddress>().unwrap(), *ca);
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn nix_cache_info_fixtures_round_trip() {
    for c in ["cache-unsigned", "cache-signed3"] {
        let text = std::fs::read_to_string(fixtures().join(c).join("nix-cache-info")).unwrap();
        let info: CacheInfo = text.parse().unwrap();
        assert_eq!(info.store_dir(), Some("/nix/store"));
        assert_eq!(info.to_string(), text);
    }
}

#[test]
fn nix_keys_load_and_derive_nix_public_keys() {
    for k in ["a", "b", "legacy"] {
        let sk: SigningKey = key(&format!("{k}.sk")).parse().unwrap();
        let pk_text = key(&format!("{k}.pk"));
        // `nix key convert-secret-to-public` writes no newline,
        // `nix-store --generate-binary-cache-key` writes none either.
        assert_eq!(sk.to_verifying_key().to_string(), pk_text.trim_end());
        assert_eq!(sk.to_string(), key(&format!("{k}.sk")).trim_end());
    }
}

#[test]
fn nix_signatures_in_fixtures_verify() {
    let keys = public_keys();
    let mut checked = 0;
    for (name, text) in narinfo_fixtures() {
        let info: NarInfo = text.parse().unwrap();
        assert_eq!(info.verify(&keys), info.signatures.len(), "{name}");
        checked += info.signatures.len();
        if !info.signatures.is_empty() {
            // Any change to what is signed breaks every signature.
            let mut tampered = info.clone();
            tampered.nar_size += 1;
            assert_eq!(tampered.verify(&keys), 0, "{name}");
            let mut tampered = info.clone();
            tampered.references.clear();
            if !info.references.is_empty() {
                assert_eq!(tampered.verify(&keys), 0, "{name}");
            }
            // Without the right key, nothing verifies.
            assert_eq!(info.verify(&keys[..0]), 0);
        }
    }
    assert!(checked >= 20, "only {checked} signatures checked");
}

#[test]
fn our_signatures_equal_nix_signatures() {
    // Ed25519 is deterministic: signing the same fingerprint with the same key gives
    // the same bytes, so this checks the fingerprint and the signing byte for byte.
    let sks: Vec<SigningKey> = ["a.sk", "b.sk", "legacy.sk"]
        .iter()
        .map(|k| key(k).parse().unwrap())
        .collect();
    let mut compared = 0;
    for (name, text) in narinfo_fixtures() {
        let info: NarInfo = text.parse().unwrap();
        if info.signatures.is_empty() {
            continue;
        }
        let mut ours = info.clone();
        ours.signatures.clear();
        for sk in &sks {
            if info.signatures.iter().any(|s| s.name() == sk.name()) {
                ours.sign(sk);
            }
        }
        assert_eq!(ours.to_string(), text, "{name}");
        compared += 1;
    }
    assert!(compared >= 10);
}

/// A narinfo Nix wrote, to derive bad inputs from.
const GOOD: &str = "StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqa-fixture-top
URL: nar/17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx.nar
Compression: none
FileHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx
FileSize: 888
NarHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx
NarSize: 888
References: 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep ds7i3mbvkxlc17md770my2y5n3v9q1nq-fixture-self
Deriver: f0b3bq1magm6pz6458zkycdv3cw27s52-fixture-top.drv
Sig: b-2:blwFB5hyQR0ExIAt7tbS2QnggvvBv473e+OPrE8j+tsYMR/JFXih64MnjxMnsEfNhoaBl5Y+MbOIBvzHewq0BA==
";

fn replace_line(field: &str, new: &str) -> String {
    GOOD.lines()
        .map(|l| {
            if l.starts_with(&format!("{field}:")) {
                new.to_owned()
            } else {
                l.to_owned()
            }
        })
        .filter(|l| !l.is_empty())
        .map(|l| l + "\n")
        .collect()
}

fn invalid(text: &str) -> (usize, &'static str, String) {
    match NarInfo::parse(text) {
        Err(NarInfoError::InvalidValue {
            line,
            field,
            reason,
            ..
        }) => (line, field, reason),
        other => panic!("expected InvalidValue for {text:?}, got {other:?}"),
    }
}

#[test]
fn good_base_parses() {
    let info = NarInfo::parse(GOOD).unwrap();
    assert_eq!(info.to_string(), GOOD);
}

#[test]
fn rejects_duplicate_fields() {
    for (field, line) in [
        (
            "StorePath",
            "StorePath: /nix/store/5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep",
        ),
        ("NarSize", "NarSize: 888"),
        ("References", "References: "),
        (
            "Deriver",
            "Deriver: f0b3bq1magm6pz6458zkycdv3cw27s52-fixture-top.drv",
        ),
    ] {
        let text = format!("{GOOD}{line}\n");
        assert_eq!(
            NarInfo::parse(&text),
            Err(NarInfoError::Duplicate {
                line: 11,
                field: match field {
                    "StorePath" => "StorePath",
                    "NarSize" => "NarSize",
                    "References" => "References",
                    _ => "Deriver",
                },
                first: GOOD.lines().position(|l| l.starts_with(field)).unwrap() + 1,
            }),
            "{field}"
        );
    }
    let sig = GOOD.lines().find(|l| l.starts_with("Sig:")).unwrap();
    assert_eq!(
        NarInfo::parse(&format!("{GOOD}{sig}\n")),
        Err(NarInfoError::Duplicate {
            line: 11,
            field: "Sig",
            first: 10
        })
    );
    let refs = "References: 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep";
    let (line, field, reason) = invalid(&replace_line("References", refs));
    assert_eq!((line, field), (8, "References"));
    assert!(reason.contains("duplicate reference"), "{reason}");
}

#[test]
fn rejects_bad_hashes() {
    // `e` is not in Nix's alphabet.
    let (line, field, _) = invalid(&replace_line(
        "NarHash",
        "NarHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926ye",
    ));
    assert_eq!((line, field), (6, "NarHash"));
    let (line, field, _) = invalid(&replace_line("FileHash", "FileHash: sha256:17fk"));
    assert_eq!((line, field), (4, "FileHash"));
    let (line, field, reason) = invalid(&replace_line(
        "NarHash",
        "NarHash: sha1:dyx0ryw8s1srxlwfj4fkk9k5qln6swhb",
    ));
    assert_eq!((line, field), (6, "NarHash"));
    assert!(reason.contains("sha256"), "{reason}");
    let (line, field, _) = invalid(&format!("{GOOD}CA: fixed:r:sha256:xyz\n"));
    assert_eq!((line, field), (11, "CA"));
    let (_, field, reason) = invalid(&format!(
        "{GOOD}CA: text:sha1:dyx0ryw8s1srxlwfj4fkk9k5qln6swhb\n"
    ));
    assert_eq!(field, "CA");
    assert!(reason.contains("sha256"), "{reason}");
    let (_, field, _) = invalid(&format!(
        "{GOOD}CA: source:sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx\n"
    ));
    assert_eq!(field, "CA");
}

#[test]
fn rejects_bad_sizes() {
    for bad in ["-1", "+888", "0888", "88 8", "18446744073709551616", "x"] {
        let (line, field, _) = invalid(&replace_line("NarSize", &format!("NarSize: {bad}")));
        assert_eq!((line, field), (7, "NarSize"), "{bad}");
        let (line, field, _) = invalid(&replace_line("FileSize", &format!("FileSize: {bad}")));
        assert_eq!((line, field), (5, "FileSize"), "{bad}");
    }
    let (line, field, reason) = invalid(&replace_line("NarSize", "NarSize: 0"));
    assert_eq!((line, field), (7, "NarSize"));
    assert!(reason.contains('0'));
    // FileSize 0 is fine (an empty compressed file is odd, but not invalid to Nix).
    assert!(NarInfo::parse(&replace_line("FileSize", "FileSize: 0")).is_ok());
}

#[test]
fn rejects_bad_store_paths() {
    for (field, line, new) in [
        (
            "StorePath",
            1,
            "StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqa",
        ),
        (
            "StorePath",
            1,
            "StorePath: s57i4ffs9d4hk5njbpz4n2520r99kcqa-fixture-top",
        ),
        (
            "StorePath",
            1,
            "StorePath: /tmp/s57i4ffs9d4hk5njbpz4n2520r99kcqa-fixture-top",
        ),
        (
            "StorePath",
            1,
            "StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqe-fixture-top",
        ),
        (
            "StorePath",
            1,
            "StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqa-bad name",
        ),
        (
            "References",
            8,
            "References: 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep  ds7i3mbvkxlc17md770my2y5n3v9q1nq-fixture-self",
        ),
        (
            "References",
            8,
            "References: /nix/store/5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep",
        ),
        (
            "References",
            8,
            "References: 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep ",
        ),
        (
            "Deriver",
            9,
            "Deriver: /nix/store/f0b3bq1magm6pz6458zkycdv3cw27s52-fixture-top.drv",
        ),
    ] {
        let (l, f, _) = invalid(&replace_line(field, new));
        assert_eq!((l, f), (line, field), "{new}");
    }
}

#[test]
fn rejects_missing_fields() {
    for field in ["StorePath", "URL", "NarHash", "NarSize"] {
        let text: String = GOOD
            .lines()
            .filter(|l| !l.starts_with(&format!("{field}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(NarInfo::parse(&text), Err(NarInfoError::Missing { field }));
    }
    // Absent Compression means bzip2, as in Nix, and is then written out.
    let text: String = GOOD
        .lines()
        .filter(|l| !l.starts_with("Compression:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let info = NarInfo::parse(&text).unwrap();
    assert_eq!(info.compression.as_str(), "bzip2");
    assert_eq!(
        info.to_string(),
        GOOD.replace("Compression: none", "Compression: bzip2")
    );
}

#[test]
fn rejects_bad_signatures() {
    for bad in [
        "b-2:blwFB5hyQR0ExIAt7tbS2QnggvvBv473e+OPrE8j+tsYMR/JFXih64MnjxMnsEfNhoaBl5Y+MbOIBvzHewq0BA=",
        "b-2:blwFB5hyQR0ExIAt7tbS2QnggvvBv473e+OPrE8j+tsYMR/JFXih64MnjxMnsEfNhoaBl5Y+MbOIBvzHewq0B!==",
        "b-2:AAAA",
        "blwFB5hyQR0ExIAt7tbS2QnggvvBv473e+OPrE8j+tsYMR/JFXih64MnjxMnsEfNhoaBl5Y+MbOIBvzHewq0BA==",
        ":blwFB5hyQR0ExIAt7tbS2QnggvvBv473e+OPrE8j+tsYMR/JFXih64MnjxMnsEfNhoaBl5Y+MbOIBvzHewq0BA==",
    ] {
        let (line, field, _) = invalid(&replace_line("Sig", &format!("Sig: {bad}")));
        assert_eq!((line, field), (10, "Sig"), "{bad}");
    }
}

#[test]
fn rejects_malformed_lines() {
    let cases: [(String, NarInfoError); 5] = [
        (
            GOOD.trim_end().to_owned(),
            NarInfoError::MissingNewline { line: 10 },
        ),
        (
            format!("{GOOD}\n"),
            NarInfoError::MalformedLine {
                line: 11,
                text: String::new(),
            },
        ),
        (
            GOOD.replace("URL: ", "URL:"),
            NarInfoError::MalformedLine {
                line: 2,
                text: "URL:nar/17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx.nar".into(),
            },
        ),
        (
            format!("{GOOD}no colon here\n"),
            NarInfoError::MalformedLine {
                line: 11,
                text: "no colon here".into(),
            },
        ),
        (
            format!("{GOOD}Two Words: x\n"),
            NarInfoError::MalformedLine {
                line: 11,
                text: "Two Words: x".into(),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(NarInfo::parse(&text), Err(want));
    }
    let (line, field, _) = invalid(&GOOD.replace('\n', "\r\n"));
    assert_eq!((line, field), (1, "StorePath"));
    let (line, field, _) = invalid(&replace_line("URL", "URL: "));
    assert_eq!((line, field), (2, "URL"));
    let (line, field, _) = invalid(&replace_line("Compression", "Compression: x z"));
    assert_eq!((line, field), (3, "Compression"));
    // Unknown keys are ignored, as Nix does.
    let info = NarInfo::parse(&format!("{GOOD}X-Cairn: whatever\n")).unwrap();
    assert_eq!(info.to_string(), GOOD);
    // `unknown-deriver` is Nix's spelling of "none".
    let info = NarInfo::parse(&replace_line("Deriver", "Deriver: unknown-deriver")).unwrap();
    assert_eq!(info.deriver, None);
}
