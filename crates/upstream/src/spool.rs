//! A NAR on its way from an upstream to a client, kept in an unnamed file for
//! its ingestion, which reads it behind the download at its own pace on
//! low-priority threads: the client's stream goes as fast as the download and
//! the NAR hash allow, not as fast as the store can chunk, hash and write.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

/// Bytes read from the file at a time by the ingestion (under glibc's
/// threshold for allocating with mmap, which would fault every page in anew).
const READ_AT_ONCE: usize = 64 << 10;
/// How much lower the background threads run than the rest (`nice` steps): the
/// lowest, so that on a busy machine the store catches up in idle time (19 made
/// the client's stream 7% faster than 10 in `bench/pull.sh`'s setup, the path
/// registered 0.1 s later).
const NICENESS: i32 = 19;

/// How far the writer got, and whether it finished the NAR.
#[derive(Clone, Copy)]
struct Progress {
    written: u64,
    done: bool,
}

/// The download's end of a spool.
pub(crate) struct SpoolWriter {
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    at: u64,
}

/// A spool in `dir`: an unnamed file (nothing is left behind if the process
/// dies), its writer and a stream of what is written to it, as it is written.
/// The stream fails if the writer goes away before [`SpoolWriter::finish`].
pub(crate) fn spool(
    dir: &Path,
) -> io::Result<(
    SpoolWriter,
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
)> {
    let file = Arc::new(tempfile::tempfile_in(dir)?);
    let (progress, rx) = watch::channel(Progress {
        written: 0,
        done: false,
    });
    let reader = futures::stream::unfold(Some((file.clone(), rx, 0u64)), |state| async move {
        let (file, mut rx, at) = state?;
        loop {
            let p = *rx.borrow_and_update();
            if at < p.written {
                let n = (p.written - at).min(READ_AT_ONCE as u64);
                // Only this reader moves the file's offset (the writer writes
                // at offsets): it is `at`. `read_to_end` fills the buffer
                // without zeroing it first. The page cache's copy, just
                // written: not worth a blocking thread (and this runs on the
                // background runtime anyway).
                let mut buf = Vec::with_capacity(n as usize);
                return Some(match (&*file).take(n).read_to_end(&mut buf) {
                    Ok(got) if got as u64 == n => (Ok(Bytes::from(buf)), Some((file, rx, at + n))),
                    Ok(got) => {
                        let short = format!(
                            "the spool file has {} bytes, {} were written",
                            at + got as u64,
                            p.written
                        );
                        (
                            Err(io::Error::new(io::ErrorKind::UnexpectedEof, short)),
                            None,
                        )
                    }
                    Err(e) => (Err(e), None),
                });
            }
            if p.done {
                return None;
            }
            if rx.changed().await.is_err() {
                let gone = io::Error::other("the download stopped before the end of the NAR");
                return Some((Err(gone), None));
            }
        }
    });
    let writer = SpoolWriter {
        file,
        progress,
        at: 0,
    };
    Ok((writer, reader))
}

impl SpoolWriter {
    /// Appends `chunk`; an error if the file cannot take it, or if its reader
    /// is gone (the ingestion stopped: its error says why).
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), Option<io::Error>> {
        if self.progress.is_closed() {
            return Err(None);
        }
        self.file.write_all_at(chunk, self.at).map_err(Some)?;
        self.at += chunk.len() as u64;
        let written = self.at;
        self.progress.send_modify(|p| p.written = written);
        Ok(())
    }

    /// The NAR is complete: the reader ends after its last byte.
    pub(crate) fn finish(self) {
        self.progress.send_modify(|p| p.done = true);
    }
}

/// The runtime of work that may lag behind what clients wait for (a pulled
/// NAR's ingestion); its threads, blocking ones included, run at a lower
/// priority, so that on a busy machine clients' streams get the CPU first.
/// `None` if it cannot be made (the caller's runtime does the work then).
pub(crate) fn background() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("cairn-background")
                .on_thread_start(|| {
                    // On Linux the priority is per thread and `None` is the
                    // calling one; failing leaves it at normal priority.
                    let _ = rustix::process::setpriority_process(None, NICENESS);
                })
                .enable_all()
                .build();
            match built {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::warn!(error = %e, "no background runtime: pulled NARs are ingested at normal priority");
                    None
                }
            }
        })
        .as_ref()
        .map(|rt| rt.handle())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn the_reader_follows_the_writer_and_ends_at_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, r) = spool(dir.path()).expect("spool");
        let mut r = Box::pin(r);
        w.write(b"abc").expect("write");
        assert_eq!(r.next().await.expect("item").expect("read"), &b"abc"[..]);
        let later = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(b) = r.next().await {
                got.extend_from_slice(&b.expect("read"));
            }
            got
        });
        let big = vec![7u8; 3 * READ_AT_ONCE + 5];
        w.write(&big).expect("write");
        w.write(b"end").expect("write");
        w.finish();
        let mut want = big.clone();
        want.extend_from_slice(b"end");
        assert_eq!(later.await.expect("join"), want);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            0,
            "the spool has no name"
        );
    }

    #[tokio::test]
    async fn the_reader_fails_if_the_writer_goes_away_unfinished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, r) = spool(dir.path()).expect("spool");
        let mut r = Box::pin(r);
        w.write(b"abc").expect("write");
        drop(w);
        assert_eq!(r.next().await.expect("item").expect("read"), &b"abc"[..]);
        let e = r.next().await.expect("item").expect_err("unfinished");
        assert!(e.to_string().contains("stopped before the end"), "{e}");
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn the_writer_stops_once_the_reader_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut w, r) = spool(dir.path()).expect("spool");
        drop(r);
        assert!(matches!(w.write(b"abc"), Err(None)));
    }
}
