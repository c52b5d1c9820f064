//! Store path parsing, name rules and path computation against fixtures made by the
//! real Nix (`tests/fixtures/*.txt`, from `gen_fixtures.py`), plus properties.
#![allow(clippy::unwrap_used)]

use cairn_nix::hash::{HashAlgo, NixHash};
use cairn_nix::nixbase32;
use cairn_nix::store_path::{
    self, FileIngestionMethod, STORE_DIR, StoreDir, StorePath, StorePathError,
};
use proptest::prelude::*;

/// Non-comment lines of a fixture file, split at tabs.
fn fixture(name: &str) -> Vec<Vec<String>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert!(rows.len() >= 3, "{path} is nearly empty");
    rows
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn method(s: &str) -> FileIngestionMethod {
    match s {
        "flat" => FileIngestionMethod::Flat,
        "recursive" => FileIngestionMethod::Recursive,
        _ => panic!("bad method {s}"),
    }
}

fn refs(s: &str) -> Vec<StorePath> {
    if s == "-" {
        return vec![];
    }
    s.split(' ')
        .map(|p| StorePath::parse_absolute(p).unwrap())
        .collect()
}

/// Parses `path` and checks it prints back the same, with `name`.
fn parse_and_check(path: &str, name: &str) -> StorePath {
    let p = StorePath::parse_absolute(path).unwrap();
    assert_eq!(p.to_absolute(), path);
    assert_eq!(p.name(), name);
    assert_eq!(format!("{STORE_DIR}/{p}"), path);
    assert_eq!(p.to_string().parse::<StorePath>().unwrap(), p);
    p
}

fn check_fixed(file: &str) {
    let mut seen = std::collections::HashSet::new();
    for r in fixture(file) {
        let (m, hash, name, path) = (method(&r[0]), &r[1], &r[2], &r[3]);
        let hash = NixHash::parse_any_prefixed(hash).unwrap();
        seen.insert((r[0].clone(), hash.algo()));
        let expected = parse_and_check(path, name);
        let got = store_path::make_fixed_output_path(m, &hash, name, [], false).unwrap();
        assert_eq!(got, expected, "{r:?}");
    }
    // Every method with every algorithm is covered.
    assert_eq!(seen.len(), 8, "{file}: {seen:?}");
}

#[test]
fn print_fixed_path_fixtures() {
    check_fixed("fixed_paths.txt");
}

#[test]
fn added_path_fixtures() {
    check_fixed("add_paths.txt");
}

#[test]
fn text_path_fixtures() {
    let mut with_refs = 0;
    for r in fixture("text_paths.txt") {
        let (name, contents, refs, path) = (&r[0], unhex(&r[1]), refs(&r[2]), &r[3]);
        with_refs += usize::from(!refs.is_empty());
        let expected = parse_and_check(path, name);
        let got = store_path::make_text_path_for_content(name, &contents, &refs).unwrap();
        assert_eq!(got, expected, "{r:?}");
        // References in any order give the same path.
        let reversed: Vec<StorePath> = refs.iter().rev().cloned().collect();
        let got = store_path::make_text_path_for_content(name, &contents, &reversed).unwrap();
        assert_eq!(got, expected, "{r:?}");
    }
    assert!(
        with_refs >= 10,
        "too few fixtures with references: {with_refs}"
    );
}

#[test]
fn self_reference_fixtures() {
    for r in fixture("self_ref.txt") {
        let (name, hash, refs, self_ref, path) = (&r[0], &r[1], refs(&r[2]), &r[3], &r[4]);
        let hash = NixHash::parse_any_prefixed(hash).unwrap();
        let expected = parse_and_check(path, name);
        let got = store_path::make_fixed_output_path(
            FileIngestionMethod::Recursive,
            &hash,
            name,
            &refs,
            self_ref == "1",
        )
        .unwrap();
        assert_eq!(got, expected, "{r:?}");
    }
}

#[test]
fn name_fixtures() {
    let (mut ok, mut err) = (0, 0);
    for r in fixture("names.txt") {
        let name = if r[0] == "-" { vec![] } else { unhex(&r[0]) };
        let (status, detail) = r[1].split_once(' ').unwrap();
        let res = store_path::validate_name(&name);
        match status {
            "ok" => {
                ok += 1;
                assert_eq!(res, Ok(()), "{r:?}");
                let name = std::str::from_utf8(&name).unwrap();
                let got = store_path::make_text_path_for_content(name, b"", []).unwrap();
                assert_eq!(got, parse_and_check(detail, name));
            }
            "err" => {
                err += 1;
                let e = res.expect_err(&r[1]);
                let kind_matches = match e {
                    StorePathError::EmptyName { .. } => detail.contains("has an empty name"),
                    StorePathError::NameTooLong { .. } => {
                        detail.contains("has a name longer than 211 characters")
                    }
                    StorePathError::InvalidNameChar { byte, .. } => {
                        // Nix names the first bad byte too (shown as one byte).
                        detail.contains("contains illegal character")
                            && name.iter().position(|&c| c == byte)
                                == name.iter().position(|&c| !store_path::is_name_char(c))
                    }
                    _ => false,
                };
                assert!(kind_matches, "{e} vs Nix: {detail}");
            }
            _ => panic!("bad status {status}"),
        }
    }
    assert!(ok >= 10 && err >= 30, "ok {ok} err {err}");
}

#[test]
fn make_store_path_and_errors() {
    let h =
        NixHash::parse_any_prefixed("sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")
            .unwrap();
    // `nix-store --print-fixed-path --recursive sha256 <h> empty` is a "source" path:
    // the same as make_store_path("source", ...).
    let a = store_path::make_fixed_output_path(FileIngestionMethod::Recursive, &h, "x", [], false)
        .unwrap();
    let b = store_path::make_store_path("source", &h, "x").unwrap();
    assert_eq!(a, b);
    let r = a.clone();
    assert!(matches!(
        store_path::make_fixed_output_path(FileIngestionMethod::Flat, &h, "x", [&r], false),
        Err(StorePathError::ReferencesNotAllowed)
    ));
    assert!(matches!(
        store_path::make_fixed_output_path(FileIngestionMethod::Flat, &h, "x", [], true),
        Err(StorePathError::ReferencesNotAllowed)
    ));
    let sha1 = HashAlgo::Sha1.digest(b"");
    assert!(matches!(
        store_path::make_fixed_output_path(FileIngestionMethod::Recursive, &sha1, "x", [&r], false),
        Err(StorePathError::ReferencesNotAllowed)
    ));
    assert!(matches!(
        store_path::make_store_path("source", &h, "a b"),
        Err(StorePathError::InvalidNameChar { .. })
    ));
}

#[test]
fn other_store_dir() {
    // The fingerprint includes the store dir, so the path changes with it.
    let dir = StoreDir::new("/tmp/store").unwrap();
    let h = HashAlgo::Sha256.digest(b"x");
    let p = dir
        .make_fixed_output_path(FileIngestionMethod::Flat, &h, "x", [], false)
        .unwrap();
    let q =
        store_path::make_fixed_output_path(FileIngestionMethod::Flat, &h, "x", [], false).unwrap();
    assert_ne!(p, q);
    let abs = dir.absolute(&p);
    assert!(abs.starts_with("/tmp/store/"));
    assert_eq!(dir.parse_absolute(&abs).unwrap(), p);
    assert!(matches!(
        StorePath::parse_absolute(&abs),
        Err(StorePathError::NotInStore { .. })
    ));
}

#[test]
fn absolute_path_forms() {
    let base = "00bgd045z0d4icpbc2yyz4gx48ak44la-hello";
    let ok = format!("/nix/store/{base}");
    assert!(StorePath::parse_absolute(&ok).is_ok());
    for bad in [
        format!("/nix/store/{base}/"),
        format!("/nix/store/{base}/bin"),
        format!("/nix/store//{base}"),
        format!("/nix/store/./{base}"),
        format!("nix/store/{base}"),
        format!("/nix/storex/{base}"),
        base.to_owned(),
        "/nix/store".to_owned(),
        "/nix/store/".to_owned(),
    ] {
        assert!(StorePath::parse_absolute(&bad).is_err(), "{bad}");
    }
    for (input, rest) in [
        (ok.clone(), ""),
        (format!("{ok}/"), "/"),
        (format!("{ok}/bin/hello"), "/bin/hello"),
        (format!("{ok}//x"), "//x"),
    ] {
        let (p, r) = StorePath::parse_absolute_with_subpath(&input).unwrap();
        assert_eq!((p.to_string().as_str(), r), (base, rest));
    }
    for bad in [
        format!("/nix/store/{base}x y/z"),
        "/nix/store//x".to_owned(),
        "/nix/store/".to_owned(),
        "/nix/store".to_owned(),
    ] {
        assert!(
            StorePath::parse_absolute_with_subpath(&bad).is_err(),
            "{bad}"
        );
    }
}

fn basename_strategy() -> impl Strategy<Value = String> {
    ("[0-9a-df-np-sv-z]{32}", "[A-Za-z0-9+\\-._?=]{1,211}").prop_map(|(h, n)| format!("{h}-{n}"))
}

proptest! {
    #[test]
    fn basename_roundtrip(b in basename_strategy()) {
        let p = StorePath::from_basename(&b).unwrap();
        prop_assert_eq!(p.to_string(), b.clone());
        prop_assert_eq!(&p.hash_part(), &b[..32]);
        prop_assert_eq!(p.name(), &b[33..]);
        prop_assert_eq!(nixbase32::encode(p.digest()), p.hash_part());
        let abs = p.to_absolute();
        prop_assert_eq!(StorePath::parse_absolute(&abs).unwrap(), p.clone());
        let sub = format!("{abs}/a/b");
        let (q, rest) = StorePath::parse_absolute_with_subpath(&sub).unwrap();
        prop_assert_eq!((q, rest), (p, "/a/b"));
    }

    #[test]
    fn basename_parse_arbitrary(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = StorePath::from_basename(&input) {
            let printed = p.to_string();
            prop_assert_eq!(printed.as_bytes(), &input[..]);
        }
    }

    #[test]
    fn basename_parse_mutated(b in basename_strategy(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = b.into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        if let Ok(p) = StorePath::from_basename(&bytes) {
            let printed = p.to_string();
            prop_assert_eq!(printed.as_bytes(), &bytes[..]);
        }
    }

    #[test]
    fn order_is_basename_order(a in basename_strategy(), b in basename_strategy()) {
        let (pa, pb) = (StorePath::from_basename(&a).unwrap(), StorePath::from_basename(&b).unwrap());
        prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
    }

    #[test]
    fn order_same_hash(h in "[0-9a-df-np-sv-z]{32}", a in "[A-Za-z0-9+\\-._?=]{1,20}", b in "[A-Za-z0-9+\\-._?=]{1,20}") {
        let (a, b) = (format!("{h}-{a}"), format!("{h}-{b}"));
        let (pa, pb) = (StorePath::from_basename(&a).unwrap(), StorePath::from_basename(&b).unwrap());
        prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
    }
}
