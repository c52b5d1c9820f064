//! The Nix daemon protocol server (`cairn_nix_daemon`) on arbitrary client
//! bytes, as one connection to a fresh in-memory store: no panic, the
//! connection ends (the input is finite), and whatever got registered is a
//! valid path info whose content the store holds.
#![no_main]

use futures::StreamExt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    rt.block_on(async {
        let blobs = cairn_castore::blob_service_from_addr("memory://").expect("memory blobs");
        let dirs = cairn_castore::directory_service_from_addr("memory://").expect("memory dirs");
        let infos = cairn_store::pathinfo::path_info_service_from_addr(
            "memory://",
            blobs.clone(),
            dirs.clone(),
        )
        .expect("memory path info");
        let daemon = cairn_nix_daemon::NixDaemon::new(
            blobs.clone(),
            dirs.clone(),
            infos.clone(),
            cairn_nix_daemon::Config::default(),
        );
        // Trusted, so that signature checks do not hide the code behind them.
        let _ = daemon
            .serve_connection(data, tokio::io::sink(), true, std::future::pending())
            .await;
        let mut all = infos.list();
        while let Some(info) = all.next().await {
            let info = info.expect("listing a memory store");
            cairn_store::pathinfo::check_content(&info, &*blobs, &*dirs)
                .await
                .expect("a registered path is valid and stored");
        }
    });
});
