//! Arbitrary bytes into the daemon: after a valid greeting (of a tunnelling and
//! a framing version) or instead of one, and valid additions cut at any byte.
//! The daemon never panics, answers in bounded time, and registers nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cairn_nix_daemon::{Config, NixDaemon};
use cairn_store::pathinfo::PathInfoService;
use futures::StreamExt;
use proptest::prelude::*;

mod common;
use common::{file_nar, framed, s, u};

/// A client greeting of `version` (1.x), features and post-greeting fields
/// included.
fn greeting(version: u64) -> Vec<u8> {
    let mut out = u(0x6e69_7863);
    out.extend(u(version));
    if version & 0xff >= 38 {
        out.extend(u(0));
    }
    out.extend(u(0));
    out.extend(u(0));
    out
}

/// A complete AddToStoreNar (framed, 1.34) of a one-file NAR.
fn add_nar_request() -> Vec<u8> {
    let nar = file_nar(b"some contents");
    let hash: String = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &nar,
    ))
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    let mut req = u(39);
    req.extend(s(b"/nix/store/00000000000000000000000000000000-fuzz"));
    req.extend(s(b""));
    req.extend(s(hash.as_bytes()));
    req.extend(u(0));
    req.extend(u(0));
    req.extend(u(nar.len() as u64));
    req.extend(u(0));
    req.extend(u(0));
    req.extend(s(b""));
    req.extend(u(0));
    req.extend(u(1));
    req.extend(framed(&nar, 40));
    req
}

/// Serves `input` as one connection to a fresh store; returns how many paths
/// the store holds afterwards.
fn serve(input: Vec<u8>) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let infos: Arc<dyn PathInfoService> = cairn_store::pathinfo::path_info_service_from_addr(
            "memory://",
            blobs.clone(),
            dirs.clone(),
        )
        .unwrap();
        let daemon = NixDaemon::new(blobs, dirs, infos.clone(), Config::default());
        let served = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            daemon.serve_connection(&input[..], tokio::io::sink(), true, std::future::pending()),
        )
        .await;
        assert!(served.is_ok(), "the daemon did not finish with its input");
        infos.list().count().await
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_after_a_greeting(version in prop::sample::select(vec![0x115u64, 0x116, 0x119, 0x11a, 0x122, 0x126]), ops in prop::collection::vec(0u64..50, 1..4), tail in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut input = greeting(version);
        for op in ops {
            input.extend(u(op));
            input.extend(&tail);
        }
        prop_assert_eq!(serve(input), 0);
    }

    #[test]
    fn random_bytes_instead_of_a_greeting(input in prop::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert_eq!(serve(input), 0);
    }

    #[test]
    fn additions_cut_anywhere(cut in 0usize..1000) {
        let mut input = greeting(0x122);
        let req = add_nar_request();
        let cut = cut.min(req.len() - 1);
        input.extend(&req[..cut]);
        prop_assert_eq!(serve(input), 0);
    }
}

#[test]
fn the_whole_addition_registers() {
    let mut input = greeting(0x122);
    input.extend(add_nar_request());
    assert_eq!(serve(input), 1);
}
