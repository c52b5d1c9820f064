//! `cairn mount`: the store as a lazy, read-only FUSE filesystem (`cairn_fuse`),
//! served until SIGINT or SIGTERM (then unmounted) or an unmount from outside.

use std::path::PathBuf;

use anyhow::Context;
use cairn_fuse::{Mount, MountOptions, Options, StoreFs, Unmounted};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::store::{StoreArgs, runtime};

/// Arguments of `cairn mount`.
#[derive(Args)]
pub struct MountArgs {
    /// An existing directory to mount the store on.
    mountpoint: PathBuf,

    /// Let `ls MOUNTPOINT` list every registered store path. Off by default: a
    /// path is found by name when looked up, and a big store is not enumerated.
    #[arg(long)]
    list_root: bool,

    /// Let users other than the one mounting use the mount (FUSE's `allow_other`;
    /// a user other than root needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,

    /// FUSE threads taking requests from the kernel.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `cairn mount` until the store is unmounted.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = rt.block_on(async { args.store.open() })?;
    let fs = StoreFs::new(
        store.blobs,
        store.directories,
        store.path_info,
        rt.handle().clone(),
        Options {
            list_root: args.list_root,
            ..Options::default()
        },
    );
    let mountpoint = &args.mountpoint;
    rt.block_on(async {
        // Installed before mounting: a signal between the two would kill the
        // process and leave the mount behind, unserved.
        let mut sigterm =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let options = MountOptions {
            threads: usize::from(args.threads),
            allow_other: args.allow_other,
        };
        let mut mount = Mount::start(fs, mountpoint, &options)
            .with_context(|| format!("cannot mount the store on {}", mountpoint.display()))?;
        // The line a script or a test waits for: from here the mount answers.
        eprintln!("mounted the store on {}", mountpoint.display());
        let why = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
            () = mount.ended() => {
                tracing::info!("{} was unmounted", mountpoint.display());
                ""
            }
        };
        if !why.is_empty() {
            tracing::info!("{why}: unmounting {}", mountpoint.display());
            let unmounted = mount
                .unmount()
                .with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
            if unmounted == Unmounted::Detached {
                // Waiting for the last user could take forever; what they
                // still ask fails once this process is gone.
                tracing::warn!(
                    "{} was in use: detached it; its open files fail from now on",
                    mountpoint.display()
                );
                return Ok(());
            }
        }
        // The session's threads see the unmount and end; joining here (not on
        // the runtime) could block a worker, but nothing else runs any more.
        tokio::task::block_in_place(|| mount.join())
            .with_context(|| format!("serving {}", mountpoint.display()))
    })
}
