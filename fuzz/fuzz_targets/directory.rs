//! Directory decoding: `Directory::decode` and `TryFrom<proto::Directory>` must
//! not panic on any bytes; whatever they accept is exactly its canonical protobuf
//! (nothing dropped or reordered), re-encodes to bytes that decode to the same
//! value and encode the same again, and its digest is BLAKE3 of that encoding.
#![no_main]

use cairn_castore::{Directory, proto};
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = Directory::decode(data);
    // The same bytes through the two steps `decode` is made of.
    let via_proto = proto::Directory::decode(data).ok().map(|p| {
        let dir = Directory::try_from(p.clone());
        (p, dir)
    });
    match (&decoded, &via_proto) {
        (Ok(dir), Some((p, Ok(again)))) => {
            assert_eq!(dir, again, "decode and TryFrom<proto> disagree");
            // Nothing of the message is lost or reordered: a valid Directory is
            // its proto, field for field.
            assert_eq!(&dir.to_proto(), p, "accepted proto differs from to_proto");
        }
        (Err(_), Some((_, Err(_))) | None) => {}
        _ => panic!("decode ({decoded:?}) and TryFrom<proto> disagree on acceptance"),
    }
    let Ok(dir) = decoded else {
        return;
    };
    let encoded = dir.encode();
    let again = Directory::decode(&encoded).expect("the canonical encoding must decode");
    assert_eq!(again, dir, "encode -> decode changed the directory");
    assert_eq!(again.encode(), encoded, "the encoding is not stable");
    assert_eq!(
        dir.digest().as_bytes(),
        blake3::hash(&encoded).as_bytes(),
        "the digest is not BLAKE3 of the canonical encoding"
    );
    // Canonical input is the only input that encodes back to itself.
    if encoded == data {
        assert_eq!(Directory::decode(data).ok().as_ref(), Some(&dir));
    }
    // Lookups and the size agree with the entries: one per entry plus the
    // sizes of the child directories.
    let mut size = 0u128;
    for (name, node) in dir.nodes() {
        assert_eq!(dir.get(name.as_bytes()), Some(node));
        size += 1;
        if let cairn_castore::Node::Directory { size: s, .. } = node {
            size += u128::from(*s);
        }
    }
    assert_eq!(
        u128::from(dir.size()),
        size,
        "size is not entries + child sizes"
    );
});
