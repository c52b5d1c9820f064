//! Property tests: rendering any narinfo, nix-cache-info or key and parsing it back
//! gives the same value; rendering is a fixed point after one parse.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use cairn_nix::cache_info::CacheInfo;
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::{ContentAddress, NarInfo};
use cairn_nix::signature::{Signature, SigningKey, VerifyingKey};
use cairn_nix::store_path::{FileIngestionMethod, StorePath};
use proptest::prelude::*;

fn store_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-zA-Z0-9+_?=][a-zA-Z0-9+._?=-]{0,50}")
        .prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn sha256() -> impl Strategy<Value = NixHash> {
    any::<[u8; 32]>().prop_map(NixHash::Sha256)
}

fn any_hash() -> impl Strategy<Value = NixHash> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(NixHash::Md5),
        any::<[u8; 20]>().prop_map(NixHash::Sha1),
        sha256(),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut d = [0u8; 64];
            d[..32].copy_from_slice(&a);
            d[32..].copy_from_slice(&b);
            NixHash::Sha512(d)
        }),
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    // Anything without ':', whitespace or control characters, including non-ASCII.
    "[a-zA-Z0-9.+_=/é-]{1,30}"
}

fn signature() -> impl Strategy<Value = Signature> {
    (key_name(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(n, a, b)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature::new(&n, bytes).unwrap()
    })
}

fn content_address() -> impl Strategy<Value = ContentAddress> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|sha256| ContentAddress::Text { sha256 }),
        (any::<bool>(), any_hash()).prop_map(|(r, hash)| ContentAddress::Fixed {
            method: if r {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            },
            hash,
        }),
    ]
}

prop_compose! {
    fn narinfo()(
        store_path in store_path(),
        url in "[a-zA-Z0-9/._:?=&%~ é-]{0,80}[a-z]",
        compression in prop_oneof![
            Just("none".to_owned()), Just("xz".to_owned()), Just("bzip2".to_owned()),
            Just("zstd".to_owned()), Just("br".to_owned()), "[a-zA-Z0-9._+-]{1,10}"
        ],
        file_hash in proptest::option::of(sha256()),
        file_size in proptest::option::of(any::<u64>()),
        nar_hash in sha256(),
        nar_size in 1..=u64::MAX,
        references in proptest::collection::btree_set(store_path(), 0..8),
        deriver in proptest::option::of(store_path()),
        system in proptest::option::of("[a-z0-9_-]{1,20}"),
        signatures in proptest::collection::vec(signature(), 0..4),
        ca in proptest::option::of(content_address()),
    ) -> NarInfo {
        let mut sigs = signatures;
        sigs.dedup();
        NarInfo {
            store_path,
            url: url.parse().unwrap(),
            compression: compression.parse().unwrap(),
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references: references.into_iter().collect(),
            deriver,
            system: system.map(|s| s.parse().unwrap()),
            signatures: sigs,
            ca,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn narinfo_render_parse_is_identity(info in narinfo()) {
        let text = info.to_string();
        let parsed = NarInfo::parse(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&info), "{}", text);
        prop_assert_eq!(parsed.unwrap().to_string(), text);
    }

    #[test]
    fn narinfo_signing_verifies_and_survives_rendering(
        mut info in narinfo(),
        seed in any::<[u8; 32]>(),
        name in key_name(),
    ) {
        info.signatures.retain(|s| s.name() != name);
        info.signatures.sort_by_key(ToString::to_string);
        let sk = SigningKey::from_seed(&name, &seed).unwrap();
        info.sign(&sk);
        let parsed = NarInfo::parse(&info.to_string()).unwrap();
        prop_assert_eq!(parsed.verify(&[sk.to_verifying_key()]), 1);
        prop_assert_eq!(parsed.verify(&[]), 0);
        // Signatures stay in Nix's order: sorted as strings.
        let texts: Vec<String> = parsed.signatures.iter().map(ToString::to_string).collect();
        prop_assert!(texts.windows(2).all(|w| w[0] < w[1]), "{:?}", texts);
    }

    #[test]
    fn keys_round_trip(seed in any::<[u8; 32]>(), name in key_name()) {
        let sk = SigningKey::from_seed(&name, &seed).unwrap();
        let parsed: SigningKey = sk.to_string().parse().unwrap();
        prop_assert_eq!(parsed.to_string(), sk.to_string());
        let pk: VerifyingKey = sk.to_verifying_key().to_string().parse().unwrap();
        prop_assert_eq!(&pk, &sk.to_verifying_key());
        let sig = sk.sign(name.as_bytes());
        let sig2: Signature = sig.to_string().parse().unwrap();
        prop_assert!(pk.verify(name.as_bytes(), &sig2));
    }

    #[test]
    fn cache_info_render_parse_is_identity(
        dir in proptest::option::of("/[a-z/]{0,20}"),
        wmq in proptest::option::of(any::<bool>()),
        prio in proptest::option::of(any::<i32>()),
    ) {
        let mut info = match dir {
            Some(d) => CacheInfo::new(&d).unwrap(),
            None => CacheInfo::default(),
        };
        info.want_mass_query = wmq;
        info.priority = prio;
        let text = info.to_string();
        prop_assert_eq!(CacheInfo::parse(&text), Ok(info));
    }
}

#[test]
fn add_signature_keeps_nix_order() {
    let mut info: NarInfo = "StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqa-fixture-top
URL: x
NarHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx
NarSize: 1
References: \n"
        .parse()
        .unwrap();
    // Nix keeps signatures in a std::set<std::string>: byte order of the whole text,
    // so "b-2:..." sorts before "b:..." ('-' < ':') even though "b" < "b-2".
    for name in ["c", "b", "b-2", "a.example.org-1", "b"] {
        info.sign(&SigningKey::from_seed(name, &[1; 32]).unwrap());
    }
    let names: Vec<&str> = info.signatures.iter().map(Signature::name).collect();
    assert_eq!(names, ["a.example.org-1", "b-2", "b", "c"]);
}
