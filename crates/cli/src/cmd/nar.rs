//! `cairn nar`: offline NAR tools (dump, restore, hash, ls), byte-compatible with
//! `nix-store --dump`, `nix-store --restore`, `nix-hash` and `nix nar ls`.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use cairn_nix::hash::HashAlgo;
use cairn_nix::nar::{self, Event, Reader, Writer};
use clap::{Args, Subcommand};

use crate::stdout;

/// Buffer between the NAR writer and stdout. Smaller than the writer's 256 KiB
/// contents buffer, so file contents go to stdout without an extra copy.
const STDOUT_BUF: usize = 128 * 1024;
/// Buffer for copying file contents when restoring.
const COPY_BUF: usize = 256 * 1024;

/// NAR subcommands.
#[derive(Subcommand)]
pub enum NarCommand {
    /// Write the NAR of a file, directory or symlink to stdout.
    ///
    /// The output is byte-identical to `nix-store --dump PATH`: directory entries
    /// sorted by name bytes, a file is executable if its owner may execute it,
    /// symlinks are stored, not followed. FIFOs, sockets and device files cannot be
    /// put in a NAR and are refused.
    Dump(DumpArgs),
    /// Unpack a NAR read from stdin to a new path DIR.
    ///
    /// Like `nix-store --restore DIR`, but the NAR is checked strictly: unsorted or
    /// duplicate entries, invalid names, bad padding, truncation and trailing data
    /// are errors. The NAR is unpacked next to DIR under a temporary name and only
    /// renamed to DIR when all of it was read and valid: on any error nothing is
    /// left at DIR. Files get mode 0644 (0755 if executable), directories 0755.
    Restore(RestoreArgs),
    /// Print the sha256 of the NAR of each PATH in nixbase32.
    ///
    /// The same as `nix-hash --type sha256 --base32 PATH`: one line per PATH.
    Hash(HashArgs),
    /// List the entries of a NAR file.
    ///
    /// One line per entry, as `nix nar ls --recursive --long FILE /` prints them:
    /// type and permissions, size, path (and symlink target). With --json, the
    /// listing `nix nar ls --recursive --json` prints, with each file's narOffset.
    Ls(LsArgs),
}

/// Arguments of `cairn nar dump`.
#[derive(Args)]
pub struct DumpArgs {
    /// File, directory or symlink to serialise (a symlink is stored as a symlink).
    path: PathBuf,
}

/// Arguments of `cairn nar restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// Path to create; it must not exist yet. Its parent directory must exist.
    dir: PathBuf,
}

/// Arguments of `cairn nar hash`.
#[derive(Args)]
pub struct HashArgs {
    /// Files, directories or symlinks to hash.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Arguments of `cairn nar ls`.
#[derive(Args)]
pub struct LsArgs {
    /// NAR file to list; `-` reads stdin.
    file: PathBuf,
    /// Print the listing as JSON (a tree with sizes and narOffset), as
    /// `nix nar ls --recursive --json FILE /` does.
    #[arg(long)]
    json: bool,
}

/// Runs a `cairn nar` subcommand.
pub fn run(c: NarCommand) -> anyhow::Result<()> {
    match c {
        NarCommand::Dump(a) => {
            let mut w = Writer::new(BufWriter::with_capacity(STDOUT_BUF, stdout::raw()?));
            dump(&a.path, &mut w)?;
            w.finish().context("writing the NAR to stdout")?;
            Ok(())
        }
        NarCommand::Hash(a) => {
            let mut out = stdout::locked();
            for path in &a.paths {
                let mut w = Writer::new(HashAlgo::Sha256.hasher());
                dump(path, &mut w)?;
                let hash = w.finish()?.finalize();
                writeln!(out, "{}", hash.to_nix32())?;
            }
            out.flush()?;
            Ok(())
        }
        NarCommand::Restore(a) => restore(&a.dir, io::stdin().lock()),
        NarCommand::Ls(a) => {
            let mut out = BufWriter::new(stdout::locked());
            if a.file.as_os_str() == "-" {
                ls(io::stdin().lock(), &mut out, a.json, "stdin")?;
            } else {
                let f = File::open(&a.file)
                    .with_context(|| format!("cannot open {}", a.file.display()))?;
                ls(f, &mut out, a.json, &a.file.display().to_string())?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

// ---- dump -----------------------------------------------------------------------

/// An open directory being dumped: its sorted entry names, not yet written.
struct Frame {
    dir: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

/// Writes the NAR of `root` to `w`. Walks the tree with an explicit stack, so
/// nesting depth is limited by memory, not by the call stack.
fn dump<W: Write>(root: &Path, w: &mut Writer<W>) -> anyhow::Result<()> {
    let mut stack = Vec::new();
    dump_node(root, w, &mut stack)?;
    while let Some(top) = stack.last_mut() {
        match top.names.next() {
            Some(name) => {
                let path = top.dir.join(&name);
                w.entry(name.as_bytes())
                    .with_context(|| format!("dumping {}", path.display()))?;
                dump_node(&path, w, &mut stack)?;
            }
            None => {
                w.end_directory()?;
                stack.pop();
            }
        }
    }
    Ok(())
}

fn dump_node<W: Write>(
    path: &Path,
    w: &mut Writer<W>,
    stack: &mut Vec<Frame>,
) -> anyhow::Result<()> {
    let ctx = || format!("dumping {}", path.display());
    let meta = fs::symlink_metadata(path).with_context(ctx)?;
    let ft = meta.file_type();
    if ft.is_file() {
        let mut f = File::open(path).with_context(ctx)?;
        // Nix stores the owner's execute bit only.
        let executable = meta.mode() & 0o100 != 0;
        w.file(executable, meta.len(), &mut f)
            .map_err(|e| match e {
                nar::Error::ContentsSize { expected, .. } => anyhow!(
                    "{}: the file changed size while being read (expected {expected} bytes); \
                 dump it again when it is not being written to",
                    path.display()
                ),
                e => anyhow::Error::new(e).context(ctx()),
            })?;
    } else if ft.is_symlink() {
        let target = fs::read_link(path).with_context(ctx)?;
        w.symlink(target.as_os_str().as_bytes()).with_context(ctx)?;
    } else if ft.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).with_context(ctx)? {
            names.push(entry.with_context(ctx)?.file_name());
        }
        // Nix sorts entries by their bytes, not by locale.
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        w.directory().with_context(ctx)?;
        stack.push(Frame {
            dir: path.to_path_buf(),
            names: names.into_iter(),
        });
    } else {
        let kind = if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_char_device() {
            "a character device"
        } else {
            "of an unknown file type"
        };
        bail!(
            "{} is {kind}: a NAR can only hold regular files, directories and symlinks; \
             remove it or dump a path that does not contain it",
            path.display()
        );
    }
    Ok(())
}

// ---- restore --------------------------------------------------------------------

fn restore(dest: &Path, input: impl Read) -> anyhow::Result<()> {
    if fs::symlink_metadata(dest).is_ok() {
        bail!(
            "{} already exists: cairn nar restore only creates new paths; remove it or choose another path",
            dest.display()
        );
    }
    let Some(name) = dest.file_name() else {
        bail!("{} does not name a new file or directory", dest.display());
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".cairn-restore-{}", std::process::id()));
    let tmp = parent.join(tmp_name);

    // A path created at DEST since the check above is never replaced.
    let result = restore_into(&tmp, input).and_then(|()| {
        cairn_store::fs::rename_new(&tmp, dest)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
    });
    if result.is_err() {
        remove_all(&tmp);
    }
    result.with_context(|| {
        format!(
            "restoring a NAR to {} (nothing was created there)",
            dest.display()
        )
    })
}

/// Removes what a failed restore created; best effort, the error is what matters.
fn remove_all(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

fn restore_into(root: &Path, input: impl Read) -> anyhow::Result<()> {
    let mut reader = Reader::new(input);
    // Page-aligned: the kernel copies into aligned memory several times faster on
    // some CPUs (see `cairn_nix::nar`'s buffers).
    let mut mem = vec![0u8; COPY_BUF + 4096];
    let start = (4096 - mem.as_ptr() as usize % 4096) % 4096;
    let buf = &mut mem[start..start + COPY_BUF];
    // `path` is where the next node goes; `dirs` holds the open directories.
    let mut path = root.to_path_buf();
    let mut dirs: Vec<PathBuf> = Vec::new();
    while let Some(event) = reader.next()? {
        match event {
            Event::Entry { name } => {
                let dir = dirs
                    .last()
                    .ok_or_else(|| anyhow!("entry outside a directory"))?;
                path = dir.join(std::ffi::OsStr::from_bytes(name));
            }
            Event::Directory => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .with_context(|| format!("cannot create directory {}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("cannot set the mode of {}", path.display()))?;
                dirs.push(path.clone());
            }
            Event::DirectoryEnd => {
                dirs.pop();
            }
            Event::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                    .with_context(|| format!("cannot create symlink {}", path.display()))?;
            }
            Event::File {
                executable,
                mut contents,
                offset,
                ..
            } => {
                let ctx = || format!("cannot write {}", path.display());
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&path)
                    .with_context(ctx)?;
                loop {
                    let n = match contents.read(buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(nar::Error::from_io(e, offset).into()),
                    };
                    f.write_all(&buf[..n]).with_context(ctx)?;
                }
                // As Nix (which runs with umask 022): 0644, or 0755 if executable.
                let mode = if executable { 0o755 } else { 0o644 };
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .with_context(ctx)?;
            }
        }
    }
    Ok(())
}

// ---- ls -------------------------------------------------------------------------

fn ls(input: impl Read, out: &mut impl Write, json: bool, what: &str) -> anyhow::Result<()> {
    let mut reader = Reader::new(input);
    let result = if json {
        ls_json(&mut reader, out)
    } else {
        ls_long(&mut reader, out)
    };
    result.with_context(|| format!("listing {what}"))
}

/// `nix nar ls -R -l` format: `{mode} {size:>20} {path}[ -> {target}]`, paths
/// `./a/b` below a root directory (which itself is not listed), empty for a root
/// file or symlink.
fn ls_long<R: Read>(reader: &mut Reader<R>, out: &mut impl Write) -> anyhow::Result<()> {
    // `path` is the current directory's path; `lens` its length at each level.
    let mut path: Vec<u8> = b".".to_vec();
    let mut lens: Vec<usize> = Vec::new();
    let mut entry_len: Option<usize> = None;
    let mut line = Vec::new();
    while let Some(event) = reader.next()? {
        line.clear();
        let mut this: &[u8] = b"";
        if let Some(n) = entry_len {
            this = &path[..n];
        }
        match event {
            Event::Entry { name } => {
                let dir_len = lens.last().copied().unwrap_or(path.len());
                path.truncate(dir_len);
                path.push(b'/');
                path.extend_from_slice(name);
                entry_len = Some(path.len());
                continue;
            }
            Event::Directory => {
                if entry_len.is_some() {
                    line.extend_from_slice(format!("dr-xr-xr-x {:>20} ", 0).as_bytes());
                    line.extend_from_slice(this);
                }
                lens.push(entry_len.unwrap_or(path.len()));
            }
            Event::DirectoryEnd => {
                lens.pop();
            }
            Event::File {
                executable, size, ..
            } => {
                let mode = if executable {
                    "-r-xr-xr-x"
                } else {
                    "-r--r--r--"
                };
                line.extend_from_slice(format!("{mode} {size:>20} ").as_bytes());
                line.extend_from_slice(this);
            }
            Event::Symlink { target } => {
                line.extend_from_slice(format!("lrwxrwxrwx {:>20} ", 0).as_bytes());
                line.extend_from_slice(this);
                line.extend_from_slice(b" -> ");
                line.extend_from_slice(target);
            }
        }
        entry_len = None;
        if !line.is_empty() {
            line.push(b'\n');
            out.write_all(&line)?;
        }
    }
    Ok(())
}

/// `nix nar ls -R --json` format, streamed: entries arrive sorted, as Nix prints
/// them. No trailing newline, as Nix.
fn ls_json<R: Read>(reader: &mut Reader<R>, out: &mut impl Write) -> anyhow::Result<()> {
    // Per open directory: whether an entry has been printed (for commas).
    let mut first: Vec<bool> = Vec::new();
    let mut buf = Vec::new();
    while let Some(event) = reader.next()? {
        buf.clear();
        match event {
            Event::Entry { name } => {
                if let Some(f) = first.last_mut() {
                    if !*f {
                        buf.push(b',');
                    }
                    *f = false;
                }
                cairn_nix::json::push_string(&mut buf, name);
                buf.push(b':');
            }
            Event::Directory => {
                buf.extend_from_slice(br#"{"type":"directory","entries":{"#);
                first.push(true);
            }
            Event::DirectoryEnd => {
                buf.extend_from_slice(b"}}");
                first.pop();
            }
            Event::File {
                executable,
                size,
                offset,
                ..
            } => {
                buf.extend_from_slice(format!(r#"{{"type":"regular","size":{size}"#).as_bytes());
                if executable {
                    buf.extend_from_slice(br#","executable":true"#);
                }
                buf.extend_from_slice(format!(r#","narOffset":{offset}}}"#).as_bytes());
            }
            Event::Symlink { target } => {
                buf.extend_from_slice(br#"{"type":"symlink","target":"#);
                cairn_nix::json::push_string(&mut buf, target);
                buf.push(b'}');
            }
        }
        out.write_all(&buf)?;
    }
    Ok(())
}
