//! Round trips of nixbase32, hashes and store paths: whatever parses must print back
//! to exactly the input (all three have one canonical text form for what they
//! accept, except upper-case hex and unpadded SRI, which are normalised first), and
//! nothing may panic.
#![no_main]

use cairn_nix::hash::{HashAlgo, NixHash};
use cairn_nix::nixbase32;
use cairn_nix::store_path::{StoreDir, StorePath};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // nixbase32: decode → encode is the identity; encode → decode too.
    if let Ok(bytes) = nixbase32::decode(data) {
        assert_eq!(nixbase32::encode(&bytes).as_bytes(), data);
    }
    let encoded = nixbase32::encode(data);
    assert_eq!(nixbase32::decode(&encoded).as_deref(), Ok(data));
    if let Ok(d) = nixbase32::decode_fixed::<20>(data) {
        assert_eq!(nixbase32::encode(&d).as_bytes(), data);
    }

    // Store paths: basename, absolute, and absolute with a subpath.
    if let Ok(p) = StorePath::from_basename(data) {
        assert_eq!(p.to_string().as_bytes(), data);
        let again = StorePath::parse_absolute(p.to_absolute()).expect("printed path parses");
        assert_eq!(again, p);
        assert_eq!(again.cmp(&p), std::cmp::Ordering::Equal);
    }
    if let Ok(p) = StorePath::parse_absolute(data) {
        assert_eq!(p.to_absolute().as_bytes(), data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok((p, rest)) = StorePath::parse_absolute_with_subpath(s) {
            assert_eq!(format!("{}{rest}", p.to_absolute()), s);
            assert!(rest.is_empty() || rest.starts_with('/'));
        }
        if let Ok(dir) = StoreDir::new(s) {
            assert_eq!(dir.as_str(), s);
        }

        // Hashes: any accepted form parses back from every printed form.
        if let Ok(h) = NixHash::parse_any_prefixed(s) {
            check_hash(&h);
        }
        for algo in HashAlgo::ALL {
            if let Ok(h) = NixHash::parse_any(s, Some(algo)) {
                assert_eq!(h.algo(), algo);
                check_hash(&h);
            }
        }
    }
});

fn check_hash(h: &NixHash) {
    assert_eq!(h.digest().len(), h.algo().digest_len());
    for printed in [h.to_hex_prefixed(), h.to_nix32_prefixed(), h.to_sri()] {
        assert_eq!(NixHash::parse_any_prefixed(&printed).as_ref(), Ok(h));
    }
}
