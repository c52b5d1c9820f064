//! Round-trip fuzzing of the binary cache text formats: whatever parses must render
//! to text that parses back to the same value, and rendering must then be stable.
//! Also feeds the same bytes to the nix-cache-info and key/signature parsers.
#![no_main]

use cairn_nix::cache_info::CacheInfo;
use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::{Signature, SigningKey, VerifyingKey};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(info) = NarInfo::parse(text) {
        let rendered = info.to_string();
        let again = NarInfo::parse(&rendered).expect("rendered narinfo must parse");
        assert_eq!(again, info, "render -> parse changed the narinfo");
        assert_eq!(again.to_string(), rendered, "rendering is not stable");
        // Signature checks on arbitrary data must not panic either.
        let _ = info.fingerprint();
        let _ = info.verify(&[]);
    }

    if let Ok(info) = CacheInfo::parse(text) {
        let rendered = info.to_string();
        assert_eq!(CacheInfo::parse(&rendered), Ok(info), "nix-cache-info round trip");
    }

    if let Ok(sig) = text.parse::<Signature>() {
        assert_eq!(sig.to_string(), text, "signatures are canonical");
    }
    if let Ok(pk) = text.parse::<VerifyingKey>() {
        assert_eq!(pk.to_string().parse::<VerifyingKey>(), Ok(pk));
    }
    if let Ok(sk) = text.parse::<SigningKey>() {
        let again: SigningKey = sk.to_string().parse().expect("rendered key must parse");
        assert_eq!(again.to_string(), sk.to_string());
    }
});
