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
/// `dest` only when complete: on error nothing is left at `dest`. Every entry is
/// created new inside that temporary directory (never following an existing
/// symlink), and entry names are validated path components, so nothing is written
/// outside `dest`.
pub async fn export(
    blobs: Arc<dyn BlobService>,
    directories: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), Error> {
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
        Ok(()) => std::fs::rename(&tmp, dest).map_err(|source| Error::Io {
            what: "rename into place",
            path: dest.to_path_buf(),
            source,
        }),
        Err(e) => Err(e),
    };
    if result.is_err() {
        remove_all(&tmp);
    }
    result
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
