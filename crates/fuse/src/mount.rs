//! [`Mount`]: a [`StoreFs`] mounted and served until it is unmounted.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tokio::sync::oneshot;

use crate::StoreFs;
use crate::fs::READ_AHEAD;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE threads reading requests from the kernel (at least one). Requests that
    /// wait on a service do so on the tokio runtime, not on these.
    pub threads: usize,
    /// Let every user (not only the one mounting) use the mount: the kernel's
    /// `allow_other`. A user other than root needs `user_allow_other` in
    /// `/etc/fuse.conf` for it.
    pub allow_other: bool,
}

/// What [`Mount::unmount`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted: the session ends now.
    Done,
    /// Busy, so detached: the session ends when the mount's last user leaves.
    Detached,
}

/// A mounted [`StoreFs`]. Dropping it without [`Mount::unmount`] leaves the
/// mount in place until the process exits (the kernel then ends it).
pub struct Mount {
    mountpoint: PathBuf,
    unmounter: SessionUnmounter,
    session: Option<JoinHandle<io::Result<()>>>,
    ended: Option<oneshot::Receiver<()>>,
}

impl Mount {
    /// Mounts `fs` on `mountpoint` (as root with the mount syscall, else through
    /// `fusermount3`) and starts serving it.
    pub fn start(fs: StoreFs, mountpoint: &Path, options: &MountOptions) -> io::Result<Mount> {
        // fusermount3 mounts on a regular file as well, and the store's root
        // directory would then appear there as a file's replacement.
        if !std::fs::metadata(mountpoint)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", mountpoint.display()),
            ));
        }
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("cairn".to_owned()),
            MountOption::Subtype("cairn".to_owned()),
            // The kernel checks the modes (0444, 0555) itself.
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        config.acl = if options.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(options.threads.max(1));
        let mut session = Session::new(fs, mountpoint, &config)?;
        let unmounter = session.unmount_callable();
        let (done, ended) = oneshot::channel();
        let session = std::thread::Builder::new()
            .name("fuse-session".to_owned())
            .spawn(move || {
                let result = session.run();
                let _ = done.send(());
                result
            })?;
        widen_read_ahead(mountpoint);
        Ok(Mount {
            mountpoint: mountpoint.to_owned(),
            unmounter,
            session: Some(session),
            ended: Some(ended),
        })
    }

    /// Completes when the session has ended: the filesystem was unmounted, by
    /// [`Mount::unmount`] or from outside (`fusermount3 -u`, `umount`).
    pub async fn ended(&mut self) {
        if let Some(ended) = self.ended.as_mut() {
            let _ = ended.await;
            self.ended = None;
        }
    }

    /// Unmounts (a no-op if it was unmounted from outside). A mount still in use
    /// (an open file, a working directory inside) is detached instead: gone from
    /// the namespace now, and its session would last until the last user leaves;
    /// [`Unmounted::Detached`] says so, and a caller that does not wait for
    /// that exits (the kernel then fails what the users still ask with
    /// `ENOTCONN`).
    pub fn unmount(&mut self) -> io::Result<Unmounted> {
        match self.unmounter.unmount() {
            Ok(()) => Ok(Unmounted::Done),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
                    .map_err(io::Error::from)?;
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the session to end, returning its error if it failed.
    pub fn join(mut self) -> io::Result<()> {
        match self.session.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the FUSE session thread panicked")),
            None => Ok(()),
        }
    }
}

/// Widens the kernel's read-ahead window for files on the mount to
/// [`READ_AHEAD`], where the process may (as root).
///
/// The kernel offers a FUSE filesystem at most its default window (128 KiB) at
/// init, so it cannot be asked for there; it can be set afterwards on the
/// mount's backing device. With 128 KiB a reader that works on what it reads
/// (Nix hashing and writing a NAR) waits for each request in turn; with more
/// the mount decodes ahead while the reader works. Without it everything
/// still works, only slower.
fn widen_read_ahead(mountpoint: &Path) {
    // A stat of the root waits for the session's init (the kernel holds
    // requests until then), which would otherwise narrow the window again.
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(e) => {
            tracing::debug!("read-ahead left at the kernel's default: {e}");
            return;
        }
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    match std::fs::write(&path, (READ_AHEAD >> 10).to_string()) {
        Ok(()) => tracing::debug!("read-ahead of {} KiB set in {path}", READ_AHEAD >> 10),
        Err(e) => tracing::debug!("read-ahead left at the kernel's default ({path}: {e})"),
    }
}
