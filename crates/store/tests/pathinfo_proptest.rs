//! `PathInfo::try_from` on generated protobuf `PathInfo`s, valid and malformed
//! mixed: it never panics, and whatever it accepts converts back to exactly the
//! message it came from (so validation loses nothing and `From` adds nothing).
//! Arbitrary bytes decoded as a `PathInfo` must not panic it either.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use cairn_castore::proto as cproto;
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::PathInfo;
use cairn_store::proto;
use proptest::prelude::*;
use prost::Message;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Mostly-valid byte strings of about `len` bytes.
fn bytes_near(len: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![
        30 => proptest::collection::vec(any::<u8>(), len),
        1 => proptest::collection::vec(any::<u8>(), 0..len + 3),
    ]
    .prop_map(Bytes::from)
}

/// A basename: valid (from a digest and a name) or something close to one.
fn basename() -> impl Strategy<Value = String> {
    let valid = (
        proptest::collection::vec(0..32usize, 32),
        "[a-zA-Z0-9+._?=-]{1,20}",
    )
        .prop_map(|(h, n)| {
            let hash: String = h.iter().map(|&i| NIX32[i] as char).collect();
            let n = if n.starts_with('.') {
                format!("x{n}")
            } else {
                n
            };
            format!("{hash}-{n}")
        });
    prop_oneof![
        30 => valid,
        1 => "[a-z0-9./ -]{0,40}",
        1 => "[e-u0-9]{32}-[a-z]{1,5}",
    ]
}

/// A key or derivation name: mostly valid for both, sometimes not.
fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z0-9][a-z0-9.-]{0,11}",
        1 => "[a-z0-9.: -]{0,12}",
    ]
}

fn node(name: String) -> impl Strategy<Value = cproto::Node> {
    let name = Bytes::from(name);
    let (n1, n2, n3) = (name.clone(), name.clone(), name);
    prop_oneof![
        (bytes_near(32), any::<u64>()).prop_map(move |(digest, size)| cproto::Node {
            node: Some(cproto::node::Node::Directory(cproto::DirectoryNode {
                name: n1.clone(),
                digest,
                size,
            })),
        }),
        (bytes_near(32), any::<u64>(), any::<bool>()).prop_map(
            move |(digest, size, executable)| {
                cproto::Node {
                    node: Some(cproto::node::Node::File(cproto::FileNode {
                        name: n2.clone(),
                        digest,
                        size,
                        executable,
                    })),
                }
            }
        ),
        "[a-z/.]{0,10}".prop_map(move |t| cproto::Node {
            node: Some(cproto::node::Node::Symlink(cproto::SymlinkNode {
                name: n3.clone(),
                target: Bytes::from(t),
            })),
        }),
        Just(cproto::Node { node: None }),
    ]
}

fn path_info() -> impl Strategy<Value = proto::PathInfo> {
    let references = proptest::collection::vec(basename(), 0..4);
    let signatures = proptest::collection::vec(
        (key_name(), bytes_near(64))
            .prop_map(|(name, data)| proto::nar_info::Signature { name, data }),
        0..3,
    );
    let deriver = proptest::option::of(
        (bytes_near(20), key_name()).prop_map(|(digest, name)| proto::StorePath { name, digest }),
    );
    // Digest lengths of NAR_SHA256..FLAT_SHA512, by type.
    const LEN: [usize; 9] = [32, 20, 64, 16, 32, 20, 16, 32, 64];
    let ca = proptest::option::of(prop_oneof![
        4 => (0..9i32, any::<u8>()).prop_map(|(ty, fill)| proto::nar_info::Ca {
            r#type: ty,
            digest: Bytes::from(vec![fill; LEN[ty as usize]]),
        }),
        1 => (-1..11i32, 0..5usize, any::<u8>()).prop_map(|(ty, len, fill)| proto::nar_info::Ca {
            r#type: ty,
            digest: Bytes::from(vec![fill; [16, 20, 32, 64, 7][len]]),
        }),
    ]);
    (
        basename().prop_flat_map(node),
        references,
        any::<u8>(),
        any::<u64>(),
        bytes_near(32),
        signatures,
        deriver,
        ca,
        any::<bool>(),
    )
        .prop_map(
            |(node, refs, mangle, nar_size, nar_sha256, signatures, deriver, ca, has_narinfo)| {
                // References are the digests of the names, except when mangled.
                let mut references: Vec<Bytes> = refs
                    .iter()
                    .map(|n| match StorePath::from_basename(n) {
                        Ok(p) => Bytes::copy_from_slice(p.digest()),
                        Err(_) => Bytes::from_static(&[0; 20]),
                    })
                    .collect();
                let mut reference_names = refs;
                match mangle % 16 {
                    0 => {
                        reference_names.pop();
                    }
                    1 if !references.is_empty() => references[0] = Bytes::from_static(&[1; 20]),
                    2 => references.push(Bytes::from_static(&[2; 19])),
                    _ => {}
                }
                proto::PathInfo {
                    node: (mangle % 32 != 3).then_some(node),
                    references,
                    narinfo: has_narinfo.then_some(proto::NarInfo {
                        nar_size,
                        nar_sha256,
                        signatures,
                        reference_names,
                        deriver,
                        ca,
                    }),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn accepted_messages_round_trip(p in path_info()) {
        if let Ok(info) = PathInfo::try_from(p.clone()) {
            prop_assert_eq!(proto::PathInfo::from(&info), p);
        }
    }

    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = proto::PathInfo::decode(bytes.as_slice()) {
            let _ = PathInfo::try_from(p);
        }
    }
}

/// The generator reaches both outcomes often enough to mean something.
#[test]
fn generator_covers_accepted_and_rejected() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = path_info();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let p = strategy.new_tree(&mut runner).unwrap().current();
        match PathInfo::try_from(p) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    println!("accepted {ok}, rejected {err}");
    assert!(ok > 100 && err > 100, "accepted {ok}, rejected {err}");
}
