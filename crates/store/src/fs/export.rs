//! [`export`]: a root node onto disk, at a new path.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::Error;

/// Files written at once: overlaps blob reads (remote or decompressing) with
/// writes.
const PARALLEL_FILES: usize = 16;
/// Buffer between a blob reader and its file.
const COPY_BUF: usize = 256 * 1024;

/// Materializes `node` at `dest`, which must not exist: directories (mode 0755),
/// files (0644, or 0755 if executable) and symlinks as stored.
///
/// Everything is created under a temporary name next to `dest` and renamed to
/// `dest` only when complete, by a rename that never replaces: on error nothing
/// is left at `dest`, and a path someone else creates at `dest` meanwhile is left
/// as it is ([`Error::Exists`]). Every entry is
/// created new inside that temporary directory (never following an existing
/// symlink), and entry names are validated path components, so nothing is written
/// outside `dest`.
pub async fn export(
    blobs: Arc<dyn BlobService>,
    directories: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), Error> {
    export_with(blobs, directories, node, dest, || {}).await
}

/// [`export`], calling `before_rename` once the tree is complete and before it is
/// renamed to `dest`: tests create `dest` there.
async fn export_with(
    blobs: Arc<dyn BlobService>,
    directories: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
    before_rename: impl FnOnce(),
) -> Result<(), Error> {
    // Fails early, before anything is read; the rename below is what guarantees
    // that nothing at `dest` is ever replaced.
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(Error::Exists {
            path: dest.to_path_buf(),
        });
    }
    let Some(name) = dest.file_name() else {
        return Err(Error::Io {
            what: "create",
            path: dest.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path does not end in a file name",
            ),
        });
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".cairn-export-{}", std::process::id()));
    let tmp = parent.join(tmp_name);

    let result = match materialize(blobs, directories, node, &tmp).await {
        Ok(()) => {
            before_rename();
            rename_new(&tmp, dest)
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        remove_all(&tmp);
    }
    result
}

/// Renames `from` to `to` unless something exists at `to`, in one step
/// (`renameat2` with `RENAME_NOREPLACE`): a plain rename would replace a file, a
/// symlink or an empty directory created at `to` since the caller checked
/// (`export`, `cairn nar restore`).
pub fn rename_new(from: &Path, to: &Path) -> Result<(), Error> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(|errno| match errno {
        Errno::EXIST => Error::Exists {
            path: to.to_path_buf(),
        },
        Errno::INVAL => Error::Io {
            what: "rename into place",
            path: to.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the file system cannot rename without replacing (RENAME_NOREPLACE), \
                 which is needed so as never to replace a path; use another file system",
            ),
        },
        errno => Error::Io {
            what: "rename into place",
            path: to.to_path_buf(),
            source: errno.into(),
        },
    })
}

/// Removes what a failed export created; best effort, the export's error matters.
fn remove_all(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

async fn materialize(
    blobs: Arc<dyn BlobService>,
    directories: &dyn DirectoryService,
    node: &Node,
    root: &Path,
) -> Result<(), Error> {
    let store_err = |source| Error::store(root, source);
    let root_digest = match node {
        Node::File {
            digest,
            size,
            executable,
        } => return write_file(blobs, *digest, *size, *executable, root.to_path_buf()).await,
        Node::Symlink { target } => {
            return symlink(OsStr::from_bytes(target.as_bytes()), root);
        }
        Node::Directory { digest, .. } => *digest,
    };
    // The whole closure in one request (one round trip over gRPC), each directory
    // once however often it occurs.
    let mut closure: HashMap<B3Digest, Directory> = HashMap::new();
    let mut stream = directories.get_recursive(&root_digest);
    while let Some(dir) = stream.next().await {
        let dir = dir.map_err(store_err)?;
        closure.insert(dir.digest(), dir);
    }
    drop(stream);

    let mut files = JoinSet::new();
    let mut stack: Vec<(PathBuf, B3Digest)> = vec![(root.to_path_buf(), root_digest)];
    while let Some((path, digest)) = stack.pop() {
        mkdir(&path)?;
        let dir = closure.get(&digest).ok_or_else(|| {
            store_err(cairn_castore::Error::Corrupt(format!(
                "directory {digest} is missing from the closure of {root_digest}"
            )))
        })?;
        for (name, child) in dir.nodes() {
            let child_path = path.join(OsStr::from_bytes(name.as_bytes()));
            match child {
                Node::Directory { digest, .. } => stack.push((child_path, *digest)),
                Node::Symlink { target } => {
                    symlink(OsStr::from_bytes(target.as_bytes()), &child_path)?
                }
                Node::File {
                    digest,
                    size,
                    executable,
                } => {
                    while files.len() >= PARALLEL_FILES {
                        join_one(&mut files).await?;
                    }
                    files.spawn(write_file(
                        blobs.clone(),
                        *digest,
                        *size,
                        *executable,
                        child_path,
                    ));
                }
            }
        }
    }
    while !files.is_empty() {
        join_one(&mut files).await?;
    }
    Ok(())
}

async fn join_one(files: &mut JoinSet<Result<(), Error>>) -> Result<(), Error> {
    match files.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Error::Task(e.to_string())),
        None => Ok(()),
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        what: "create directory",
        path: path.to_path_buf(),
        source,
    };
    // `create` fails if anything exists at `path`: an existing symlink is never
    // followed.
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io)
}

fn symlink(target: &OsStr, path: &Path) -> Result<(), Error> {
    std::os::unix::fs::symlink(target, path).map_err(|source| Error::Io {
        what: "create symlink",
        path: path.to_path_buf(),
        source,
    })
}

async fn write_file(
    blobs: Arc<dyn BlobService>,
    digest: B3Digest,
    size: u64,
    executable: bool,
    path: PathBuf,
) -> Result<(), Error> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let mut reader = blobs
        .open_read(&digest)
        .await
        .map_err(|source| Error::store(&path, source))?
        .ok_or_else(|| {
            Error::store(
                &path,
                cairn_castore::Error::NotFound {
                    what: "blob",
                    digest,
                },
            )
        })?;
    let mode = if executable { 0o755 } else { 0o644 };
    // create_new: O_EXCL, which also refuses to follow a symlink at `path`.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io("create", &path))?;
    let mut file = tokio::fs::File::from_std(file);
    // Large reads, so that the file gets large writes (each one a blocking task).
    let mut reader = tokio::io::BufReader::with_capacity(COPY_BUF, &mut reader);
    let copied = tokio::io::copy_buf(&mut reader, &mut file)
        .await
        .map_err(|source| Error::Io {
            what: "write",
            path: path.clone(),
            source,
        })?;
    if copied != size {
        return Err(Error::SizeMismatch {
            path,
            digest,
            expected: size,
            actual: copied,
        });
    }
    file.flush().await.map_err(io("write", &path))?;
    // The umask may have cleared bits of `mode`; Nix's files are 0644/0755.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .await
        .map_err(io("set the mode of", &path))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cairn_castore::blobservice::MemoryBlobService;
    use cairn_castore::directoryservice::MemoryDirectoryService;

    use super::*;
    use crate::fs::{Progress, import_path};

    /// Exports what `make` creates at `tmp/src` to `tmp/dest`, while `intruder`
    /// creates `tmp/dest` between the export's check and its rename. Checks that
    /// the export fails naming `dest` and leaves nothing of its own; returns `dest`
    /// for the caller to check that it is untouched.
    async fn export_racing(
        tmp: &Path,
        make: impl FnOnce(&Path),
        intruder: impl FnOnce(&Path),
    ) -> PathBuf {
        let src = tmp.join("src");
        make(&src);
        let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let dirs = MemoryDirectoryService::new();
        let imported = import_path(blobs.clone(), &dirs, &src, Arc::new(Progress::new()))
            .await
            .unwrap();
        let dest = tmp.join("dest");
        let err = export_with(blobs, &dirs, &imported.root, &dest, || intruder(&dest))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&dest.display().to_string()), "{message}");
        let mut left: Vec<_> = std::fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["dest", "src"], "temporary left behind");
        dest
    }

    #[tokio::test]
    async fn a_file_created_at_dest_during_the_export_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = export_racing(
            tmp.path(),
            |src| std::fs::write(src, b"exported").unwrap(),
            |dest| std::fs::write(dest, b"someone else's").unwrap(),
        )
        .await;
        assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's");
    }

    #[tokio::test]
    async fn an_empty_directory_created_at_dest_during_the_export_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = export_racing(
            tmp.path(),
            |src| {
                std::fs::create_dir_all(src.join("sub")).unwrap();
                std::fs::write(src.join("sub/f"), b"exported").unwrap();
            },
            |dest| std::fs::create_dir(dest).unwrap(),
        )
        .await;
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_symlink_created_at_dest_during_the_export_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = export_racing(
            tmp.path(),
            |src| std::fs::write(src, b"exported").unwrap(),
            |dest| std::os::unix::fs::symlink("/nowhere", dest).unwrap(),
        )
        .await;
        assert_eq!(std::fs::read_link(&dest).unwrap(), Path::new("/nowhere"));
    }
}
