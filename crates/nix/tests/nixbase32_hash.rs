//! nixbase32 and hash text forms against fixtures made by the real Nix
//! (`tests/fixtures/hashes.txt`, from `gen_fixtures.py`), plus properties.
#![allow(clippy::unwrap_used)]

use cairn_nix::hash::{HashAlgo, HashEncoding, HashError, NixHash};
use cairn_nix::nixbase32::{self, Nixbase32Error};
use proptest::prelude::*;

/// Non-comment lines of a fixture file, split at tabs.
fn fixture(name: &str) -> Vec<Vec<String>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Row {
    algo: HashAlgo,
    digest: Vec<u8>,
    hex: String,
    nix32: String,
    base64: String,
    sri: String,
}

fn hash_rows() -> Vec<Row> {
    let rows: Vec<Row> = fixture("hashes.txt")
        .into_iter()
        .map(|r| Row {
            algo: r[0].parse().unwrap(),
            digest: unhex(&r[1]),
            hex: r[1].clone(),
            nix32: r[2].clone(),
            base64: r[3].clone(),
            sri: r[4].clone(),
        })
        .collect();
    // Guard against an empty or truncated fixture silently passing.
    for algo in HashAlgo::ALL {
        assert!(
            rows.iter().filter(|r| r.algo == algo).count() >= 60,
            "{algo}"
        );
    }
    rows
}

#[test]
fn nixbase32_matches_nix() {
    for r in hash_rows() {
        assert_eq!(nixbase32::encode(&r.digest), r.nix32, "{}", r.hex);
        assert_eq!(
            nixbase32::decode(&r.nix32).unwrap(),
            r.digest,
            "{}",
            r.nix32
        );
        assert_eq!(nixbase32::encoded_len(r.digest.len()), r.nix32.len());
        assert_eq!(nixbase32::decoded_len(r.nix32.len()), Some(r.digest.len()));
    }
}

#[test]
fn hash_printing_matches_nix() {
    for r in hash_rows() {
        let h = NixHash::from_digest(r.algo, &r.digest).unwrap();
        assert_eq!(h.algo(), r.algo);
        assert_eq!(h.digest(), &r.digest[..]);
        assert_eq!(h.to_hex(), r.hex);
        assert_eq!(h.to_nix32(), r.nix32);
        assert_eq!(h.to_base64(), r.base64);
        assert_eq!(h.to_sri(), r.sri);
        assert_eq!(h.to_nix32_prefixed(), format!("{}:{}", r.algo, r.nix32));
        assert_eq!(h.to_hex_prefixed(), format!("{}:{}", r.algo, r.hex));
        assert_eq!(
            h.encode_prefixed(HashEncoding::Base64),
            format!("{}:{}", r.algo, r.base64)
        );
        assert_eq!(h.to_string(), h.to_nix32_prefixed());
    }
}

#[test]
fn hash_parsing_matches_nix() {
    for r in hash_rows() {
        let h = NixHash::from_digest(r.algo, &r.digest).unwrap();
        let a = r.algo;
        for bare in [&r.hex, &r.nix32, &r.base64, &r.hex.to_uppercase()] {
            let prefixed = format!("{a}:{bare}");
            assert_eq!(
                NixHash::parse_any_prefixed(&prefixed).unwrap(),
                h,
                "{prefixed}"
            );
            assert_eq!(prefixed.parse::<NixHash>().unwrap(), h);
            assert_eq!(NixHash::parse_any(&prefixed, Some(a)).unwrap(), h);
            assert_eq!(NixHash::parse_any(&prefixed, None).unwrap(), h);
            assert_eq!(NixHash::parse_any(bare, Some(a)).unwrap(), h);
            assert_eq!(NixHash::parse_non_sri_unprefixed(bare, a).unwrap(), h);
            assert!(matches!(
                NixHash::parse_any(bare, None),
                Err(HashError::MissingAlgo { .. })
            ));
            // SRI is base64 only, whatever the length.
            if bare != &r.base64 {
                assert!(
                    NixHash::parse_sri(&format!("{a}-{bare}")).is_err(),
                    "{bare}"
                );
            }
        }
        assert_eq!(NixHash::parse_sri(&r.sri).unwrap(), h);
        assert_eq!(NixHash::parse_any_prefixed(&r.sri).unwrap(), h);
        assert_eq!(NixHash::parse_any(&r.sri, Some(a)).unwrap(), h);
        // SRI without padding.
        let unpadded = r.sri.trim_end_matches('=');
        assert_eq!(NixHash::parse_sri(unpadded).unwrap(), h);
        for other in HashAlgo::ALL.into_iter().filter(|&o| o != a) {
            assert!(matches!(
                NixHash::parse_any(&r.sri, Some(other)),
                Err(HashError::AlgoMismatch { .. })
            ));
            // A digest of the wrong length for the algorithm, unless it happens to be
            // another valid form for it (sha1's nix32 "000…" is md5 hex).
            let also_hex =
                r.nix32.len() == other.hex_len() && r.nix32.bytes().all(|c| c.is_ascii_hexdigit());
            assert_eq!(
                NixHash::parse_non_sri_unprefixed(&r.nix32, other).is_err(),
                !also_hex,
                "{} as {other}",
                r.nix32
            );
            assert!(NixHash::from_digest(other, &r.digest).is_err());
        }
    }
}

#[test]
fn hash_rejects_malformed() {
    let r = &hash_rows()[10];
    let a = r.algo;
    for (bad, what) in [
        (format!("sha3:{}", r.hex), "unknown algo"),
        (format!("SHA256:{}", r.hex), "algo names are lowercase"),
        (format!("{a}:{}", &r.hex[1..]), "short hex"),
        (format!("{a}:{}0", r.hex), "long hex"),
        (
            format!("{a}:{}", r.hex.replacen(|_| true, "g", 1)),
            "bad hex",
        ),
        (format!("{a}:e{}", &r.nix32[1..]), "bad nix32 char"),
        (
            format!("{a}:{}", r.base64.replacen(|_| true, "!", 1)),
            "bad base64",
        ),
        (format!("{a}-{}", r.hex), "SRI with hex"),
        (format!("{a}-{}==", r.base64), "SRI with extra padding"),
        (format!("{a}-"), "empty SRI"),
        (String::new(), "empty"),
        (format!("{a}:"), "empty after prefix"),
        (format!("{a}:{}\n", r.base64), "trailing newline"),
    ] {
        assert!(NixHash::parse_any_prefixed(&bad).is_err(), "{what}: {bad}");
    }
}

#[test]
fn nixbase32_errors_name_the_problem() {
    assert_eq!(
        nixbase32::decode("00000000000000000000000000000o00"),
        Err(Nixbase32Error::InvalidChar {
            position: 29,
            byte: b'o'
        })
    );
    // 52 characters carry 260 bits for a 256-bit digest: the first character must
    // be 0 or 1 (Nix rejects the others; the oracle test checks that live).
    let mut s = "0".repeat(52);
    s.replace_range(0..1, "2");
    assert_eq!(
        nixbase32::decode(&s),
        Err(Nixbase32Error::NonZeroPadding { byte: b'2' })
    );
    assert_eq!(
        nixbase32::decode("0"),
        Err(Nixbase32Error::InvalidLength { len: 1 })
    );
    assert_eq!(nixbase32::decode(""), Ok(vec![]));
    assert!(matches!(
        nixbase32::decode_fixed::<32>("0".repeat(51)),
        Err(Nixbase32Error::WrongLength {
            len: 51,
            expected: 52,
            expected_bytes: 32
        })
    ));
}

proptest! {
    #[test]
    fn nixbase32_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let s = nixbase32::encode(&bytes);
        prop_assert_eq!(s.len(), nixbase32::encoded_len(bytes.len()));
        prop_assert!(s.bytes().all(nixbase32::is_valid_char));
        prop_assert_eq!(nixbase32::decode(&s).unwrap(), bytes);
    }

    #[test]
    fn nixbase32_decode_is_canonical(s in "[0-9a-z]{0,60}") {
        // Whatever decodes must be the one encoding of its bytes.
        if let Ok(bytes) = nixbase32::decode(&s) {
            prop_assert_eq!(nixbase32::encode(&bytes), s);
        }
    }

    #[test]
    fn nixbase32_decode_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(bytes) = nixbase32::decode(&input) {
            let encoded = nixbase32::encode(&bytes);
            prop_assert_eq!(encoded.as_bytes(), &input[..]);
        }
    }

    #[test]
    fn hash_parse_never_panics_and_is_consistent(s in ".{0,120}") {
        if let Ok(h) = NixHash::parse_any_prefixed(&s) {
            prop_assert_eq!(h.digest().len(), h.algo().digest_len());
            prop_assert_eq!(NixHash::parse_any_prefixed(&h.to_sri()).unwrap(), h);
        }
    }

    #[test]
    fn hash_all_forms_roundtrip(algo in prop::sample::select(HashAlgo::ALL.to_vec()),
                                seed in proptest::collection::vec(any::<u8>(), 64)) {
        let h = NixHash::from_digest(algo, &seed[..algo.digest_len()]).unwrap();
        for s in [h.to_hex_prefixed(), h.to_nix32_prefixed(),
                  h.encode_prefixed(HashEncoding::Base64), h.to_sri()] {
            prop_assert_eq!(NixHash::parse_any_prefixed(&s).unwrap(), h);
        }
        for enc in [HashEncoding::Hex, HashEncoding::Nix32, HashEncoding::Base64] {
            prop_assert_eq!(NixHash::parse_non_sri_unprefixed(&h.encode(enc), algo).unwrap(), h);
        }
    }

    #[test]
    fn hasher_streaming_equals_oneshot(data in proptest::collection::vec(any::<u8>(), 0..3000),
                                       cuts in proptest::collection::vec(0usize..3000, 0..8)) {
        for algo in HashAlgo::ALL {
            let mut h = algo.hasher();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                std::io::Write::write_all(&mut h, &data[start..c]).unwrap();
                start = c;
            }
            prop_assert_eq!(h.finalize(), algo.digest(&data));
        }
    }
}
