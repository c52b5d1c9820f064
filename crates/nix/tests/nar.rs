//! NAR reader and writer against NARs made by the real Nix (`fixtures/nar/`, see
//! its `generate.sh`), and against hand-made malformed NARs.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::PathBuf;

use cairn_nix::nar::{
    self, AsyncEvent, AsyncReader, AsyncWriter, ErrorKind, Event, Limits, Reader, Writer,
};

const FIXTURES: [&str; 6] = ["file", "exec", "empty-file", "symlink", "empty-dir", "tree"];

fn fixture(name: &str) -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/nar/{name}.nar"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rewrite(bytes: &[u8]) -> Result<Vec<u8>, nar::Error> {
    let mut w = Writer::new(Vec::new());
    nar::copy(&mut Reader::new(bytes), &mut w)?;
    w.finish()
}

/// Reads the NAR one byte per `read` call: every buffer boundary is exercised.
struct OneByte<'a>(&'a [u8]);
impl Read for OneByte<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), out.first_mut()) {
            (Some((b, rest)), Some(o)) => {
                *o = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn fixtures_round_trip_byte_identical() {
    for name in FIXTURES {
        let bytes = fixture(name);
        assert_eq!(rewrite(&bytes).unwrap(), bytes, "{name}");
        let mut w = Writer::new(Vec::new());
        nar::copy(&mut Reader::new(OneByte(&bytes)), &mut w).unwrap();
        assert_eq!(w.finish().unwrap(), bytes, "{name} read one byte at a time");
    }
}

/// A listing in the format of `nix nar ls -R -l` (the file `tree.ls` holds what Nix
/// printed), built from reader events.
fn listing(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut path: Vec<String> = vec![".".into()];
    let mut r = Reader::new(bytes);
    let mut pending_name: Option<String> = None;
    while let Some(ev) = r.next().unwrap() {
        let cur = match &pending_name {
            Some(n) => format!("{}/{n}", path.join("/")),
            None => String::new(),
        };
        match ev {
            Event::Entry { name } => {
                pending_name = Some(String::from_utf8(name.to_vec()).unwrap());
                continue;
            }
            Event::Directory => {
                if pending_name.is_some() {
                    out.push_str(&format!("dr-xr-xr-x {:>20} {cur}\n", 0));
                    path.push(pending_name.clone().unwrap());
                }
            }
            Event::DirectoryEnd => {
                path.pop();
            }
            Event::File {
                executable, size, ..
            } => {
                let mode = if executable {
                    "-r-xr-xr-x"
                } else {
                    "-r--r--r--"
                };
                out.push_str(&format!("{mode} {size:>20} {cur}\n"));
            }
            Event::Symlink { target } => {
                let target = String::from_utf8(target.to_vec()).unwrap();
                out.push_str(&format!("lrwxrwxrwx {:>20} {cur} -> {target}\n", 0));
            }
        }
        pending_name = None;
    }
    out
}

#[test]
fn tree_events_match_nix_listing() {
    let expected = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nar/tree.ls"),
    )
    .unwrap();
    assert_eq!(listing(&fixture("tree")), expected);
}

#[test]
fn file_offsets_and_contents() {
    // narOffset values from `nix nar ls -R --json tree.nar /` (tree.json).
    let bytes = fixture("tree");
    let mut r = Reader::new(&bytes[..]);
    let mut seen = Vec::new();
    let mut name = Vec::new();
    while let Some(ev) = r.next().unwrap() {
        match ev {
            Event::Entry { name: n } => name = n.to_vec(),
            Event::File {
                offset,
                size,
                mut contents,
                ..
            } => {
                let mut data = Vec::new();
                contents.read_to_end(&mut data).unwrap();
                assert_eq!(data.len() as u64, size);
                assert_eq!(&bytes[offset as usize..][..size as usize], &data[..]);
                seen.push((String::from_utf8(name.clone()).unwrap(), offset));
            }
            _ => {}
        }
    }
    assert!(seen.contains(&("-".to_string(), 232)), "{seen:?}");
    assert!(seen.contains(&("file".to_string(), 1600)), "{seen:?}");
}

#[tokio::test]
async fn async_round_trip_matches_fixtures() {
    for name in FIXTURES {
        let bytes = fixture(name);
        let mut r = AsyncReader::new(&bytes[..]);
        let mut w = AsyncWriter::new(Vec::new());
        while let Some(ev) = r.next().await.unwrap() {
            match ev {
                AsyncEvent::Directory => w.directory().await.unwrap(),
                AsyncEvent::Entry { name } => w.entry(name).await.unwrap(),
                AsyncEvent::DirectoryEnd => w.end_directory().await.unwrap(),
                AsyncEvent::Symlink { target } => w.symlink(target).await.unwrap(),
                AsyncEvent::File {
                    executable,
                    size,
                    mut contents,
                    ..
                } => w.file(executable, size, &mut contents).await.unwrap(),
            }
        }
        assert_eq!(w.finish().await.unwrap(), bytes, "{name}");
    }
}

// ---- malformed NARs -------------------------------------------------------------

fn s(out: &mut Vec<u8>, x: &[u8]) {
    out.extend_from_slice(&(x.len() as u64).to_le_bytes());
    out.extend_from_slice(x);
    out.extend_from_slice(&[0u8; 8][..(8 - x.len() % 8) % 8]);
}

/// A directory NAR with the given entries (each an empty file), unchecked.
fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut n = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        s(&mut n, t);
    }
    for name in names {
        for t in [
            &b"entry"[..],
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
        ] {
            s(&mut n, t);
        }
        n.extend_from_slice(&0u64.to_le_bytes());
        s(&mut n, b")");
        s(&mut n, b")");
    }
    s(&mut n, b")");
    n
}

fn read_all(bytes: &[u8]) -> Result<(), nar::Error> {
    read_all_limits(bytes, Limits::default())
}

fn read_all_limits(bytes: &[u8], limits: Limits) -> Result<(), nar::Error> {
    let mut r = Reader::with_limits(bytes, limits);
    while let Some(ev) = r.next()? {
        if let Event::File { mut contents, .. } = ev {
            std::io::copy(&mut contents, &mut std::io::sink())
                .map_err(|e| nar::Error::from_io(e, 0))?;
        }
    }
    Ok(())
}

fn kind(bytes: &[u8]) -> (ErrorKind, u64) {
    let e = read_all(bytes).unwrap_err();
    (
        e.kind()
            .unwrap_or_else(|| panic!("not an Invalid error: {e}"))
            .clone(),
        e.offset(),
    )
}

#[test]
fn dir_nar_helper_makes_valid_nars() {
    read_all(&dir_nar(&[b"a", b"b"])).unwrap();
}

#[test]
fn rejects_unsorted_and_duplicate_entries() {
    let (k, at) = kind(&dir_nar(&[b"b", b"a"]));
    assert!(matches!(k, ErrorKind::NotSorted { .. }), "{k:?}");
    // The second entry's name: after magic "(" "type" "directory" (24+16+16+24), the
    // first entry (9 strings of 16, the size, 2 closing parens) and "entry" "(" "name".
    assert_eq!(at, 80 + (9 * 16 + 8 + 2 * 16) + 3 * 16);
    let (k, _) = kind(&dir_nar(&[b"a", b"a"]));
    assert_eq!(k, ErrorKind::Duplicate { name: "a".into() });
    // Bytewise order, not locale order: "B" < "a".
    read_all(&dir_nar(&[b"B", b"a"])).unwrap();
    let (k, _) = kind(&dir_nar(&[b"a", b"B"]));
    assert!(matches!(k, ErrorKind::NotSorted { .. }), "{k:?}");
}

#[test]
fn rejects_invalid_names() {
    for name in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
        let (k, _) = kind(&dir_nar(&[name]));
        assert!(
            matches!(k, ErrorKind::InvalidName { .. }),
            "{name:?}: {k:?}"
        );
    }
    let long = vec![b'x'; 1025];
    let (k, _) = kind(&dir_nar(&[&long]));
    assert!(
        matches!(
            k,
            ErrorKind::TooLong {
                what: "entry name",
                len: 1025,
                ..
            }
        ),
        "{k:?}"
    );
}

fn symlink_nar(target: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"symlink",
        b"target",
        target,
        b")",
    ] {
        s(&mut n, t);
    }
    n
}

#[test]
fn rejects_bad_symlink_targets() {
    read_all(&symlink_nar(b"x")).unwrap();
    assert!(matches!(
        kind(&symlink_nar(b"")).0,
        ErrorKind::InvalidTarget { .. }
    ));
    assert!(matches!(
        kind(&symlink_nar(b"a\0")).0,
        ErrorKind::InvalidTarget { .. }
    ));
    let long = vec![b'x'; 5000];
    assert!(matches!(
        kind(&symlink_nar(&long)).0,
        ErrorKind::TooLong { .. }
    ));
}

#[test]
fn rejects_bad_padding_at_its_offset() {
    let mut n = fixture("file"); // "hello\n": 6 bytes of contents then 2 padding
    let pos = n.len() - 16 - 1; // last padding byte before ")"
    n[pos] = 1;
    let (k, at) = kind(&n);
    assert_eq!((k, at), (ErrorKind::BadPadding, pos as u64));
    let mut n = fixture("file");
    n[13 + 8] = b'!'; // padding of "nix-archive-1"
    assert_eq!(kind(&n).0, ErrorKind::BadMagic);
    let mut n = fixture("file");
    n[8 + 16 + 8 + 1] = 7; // padding of "("
    assert_eq!(kind(&n), (ErrorKind::BadPadding, 8 + 16 + 8 + 1));
}

#[test]
fn rejects_truncation_everywhere_and_trailing_data() {
    let bytes = fixture("tree");
    for len in 0..bytes.len() {
        let e = read_all(&bytes[..len]).unwrap_err();
        assert!(
            matches!(e.kind(), Some(ErrorKind::Truncated { .. })),
            "at {len}: {e}"
        );
    }
    let mut more = bytes.clone();
    more.push(0);
    assert_eq!(kind(&more), (ErrorKind::TrailingData, bytes.len() as u64));
}

#[test]
fn rejects_bad_tokens() {
    let mut n = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"fifo", b")"] {
        s(&mut n, t);
    }
    let (k, at) = kind(&n);
    assert!(matches!(k, ErrorKind::UnexpectedToken { .. }), "{k:?}");
    assert_eq!(at, 24 + 16 + 16);
    let mut n = Vec::new();
    s(&mut n, b"nix-archive-2");
    assert_eq!(kind(&n), (ErrorKind::BadMagic, 0));
    // A huge declared length must be rejected without allocating.
    let mut n = Vec::new();
    s(&mut n, b"nix-archive-1");
    n.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(kind(&n).0, ErrorKind::UnexpectedToken { .. }));
    // "executable" must be followed by an empty string.
    let mut n = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"executable",
        b"x",
    ] {
        s(&mut n, t);
    }
    assert!(matches!(kind(&n).0, ErrorKind::UnexpectedToken { .. }));
}

fn nested(depth: usize) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for _ in 0..depth {
        w.directory().unwrap();
        w.entry(b"d").unwrap();
    }
    w.directory().unwrap();
    for _ in 0..=depth {
        w.end_directory().unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn bounds_depth_without_recursion() {
    let limits = Limits {
        max_depth: 10,
        ..Limits::default()
    };
    read_all_limits(&nested(9), limits).unwrap();
    let e = read_all_limits(&nested(10), limits).unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::TooDeep { max: 10 }));
    // Far deeper than any stack could recurse: rejected at the default limit.
    let e = read_all(&nested(100_000)).unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::TooDeep { max: 1024 }));
}

#[test]
fn poisoned_after_error() {
    let mut r = Reader::new(&b"garbage!"[..]);
    assert!(r.next().is_err());
    assert!(matches!(r.next(), Err(nar::Error::Poisoned { .. })));
}

#[test]
fn truncated_contents_is_an_unexpected_eof() {
    let bytes = fixture("file");
    let cut = &bytes[..bytes.len() - 20];
    let mut r = Reader::new(cut);
    let Some(Event::File { mut contents, .. }) = r.next().unwrap() else {
        panic!("not a file")
    };
    let e = std::io::copy(&mut contents, &mut std::io::sink()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("truncated"), "{e}");
}

// ---- writer checks --------------------------------------------------------------

#[test]
fn writer_rejects_misuse() {
    let mut w = Writer::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"b").unwrap();
    w.file(false, 0, &mut &b""[..]).unwrap();
    assert!(matches!(
        w.entry(b"a").unwrap_err().kind(),
        Some(ErrorKind::NotSorted { .. })
    ));
    assert!(matches!(
        w.entry(b"b").unwrap_err().kind(),
        Some(ErrorKind::Duplicate { .. })
    ));
    assert!(matches!(
        w.entry(b"..").unwrap_err().kind(),
        Some(ErrorKind::InvalidName { .. })
    ));
    assert!(matches!(w.end_directory(), Ok(())));
    assert!(matches!(w.directory(), Err(nar::Error::Usage { .. })));

    let w = Writer::new(Vec::new());
    assert!(matches!(w.finish(), Err(nar::Error::Usage { .. })));

    let mut w = Writer::new(Vec::new());
    let e = w.file(false, 5, &mut &b"abc"[..]).unwrap_err();
    assert!(
        matches!(
            e,
            nar::Error::ContentsSize {
                expected: 5,
                actual: 3,
                ..
            }
        ),
        "{e}"
    );
    let mut w = Writer::new(Vec::new());
    let e = w.file(false, 2, &mut &b"abc"[..]).unwrap_err();
    assert!(
        matches!(
            e,
            nar::Error::ContentsSize {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(w.finish(), Err(nar::Error::Poisoned { .. })));
}

/// Hands out at most 1000 bytes per read, sync and async.
struct Chunky<'a>(&'a [u8]);
impl Read for Chunky<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(1000).min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}
impl tokio::io::AsyncRead for Chunky<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = buf.remaining().min(1000).min(this.0.len());
        buf.put_slice(&this.0[..n]);
        this.0 = &this.0[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn large_files_round_trip_through_every_read_path() {
    // Larger than the reader's buffer and the writer's copy buffer, odd size.
    let data: Vec<u8> = (0..3_000_005u32).map(|i| (i % 251) as u8).collect();
    let mut w = Writer::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"big").unwrap();
    w.file(true, data.len() as u64, &mut &data[..]).unwrap();
    w.entry(b"z").unwrap();
    w.file(false, 3, &mut &b"end"[..]).unwrap();
    w.end_directory().unwrap();
    let bytes = w.finish().unwrap();

    assert_eq!(rewrite(&bytes).unwrap(), bytes);
    let mut w = Writer::new(Vec::new());
    nar::copy(&mut Reader::new(Chunky(&bytes)), &mut w).unwrap();
    assert_eq!(w.finish().unwrap(), bytes);

    for chunky in [false, true] {
        let mut w = AsyncWriter::new(Vec::new());
        let mut r = if chunky {
            AsyncReader::new(Box::new(Chunky(&bytes)) as Box<dyn tokio::io::AsyncRead + Unpin>)
        } else {
            AsyncReader::new(Box::new(&bytes[..]) as Box<dyn tokio::io::AsyncRead + Unpin>)
        };
        while let Some(ev) = r.next().await.unwrap() {
            match ev {
                AsyncEvent::Directory => w.directory().await.unwrap(),
                AsyncEvent::Entry { name } => w.entry(name).await.unwrap(),
                AsyncEvent::DirectoryEnd => w.end_directory().await.unwrap(),
                AsyncEvent::Symlink { target } => w.symlink(target).await.unwrap(),
                AsyncEvent::File {
                    executable,
                    size,
                    mut contents,
                    ..
                } => w.file(executable, size, &mut contents).await.unwrap(),
            }
        }
        assert_eq!(w.finish().await.unwrap(), bytes, "chunky: {chunky}");
    }
}

#[tokio::test]
async fn async_reader_rejects_like_the_sync_reader() {
    let mut cases = vec![
        dir_nar(&[b"b", b"a"]),
        dir_nar(&[b"a", b"a"]),
        dir_nar(&[b".."]),
        nested(1100),
    ];
    let tree = fixture("tree");
    cases.push(tree[..tree.len() - 1].to_vec());
    let mut trailing = tree.clone();
    trailing.push(0);
    cases.push(trailing);
    for case in cases {
        let sync = read_all(&case).unwrap_err().to_string();
        let mut r = AsyncReader::new(&case[..]);
        let err = loop {
            match r.next().await {
                Ok(Some(AsyncEvent::File { mut contents, .. })) => {
                    if let Err(e) = tokio::io::copy(&mut contents, &mut tokio::io::sink()).await {
                        break nar::Error::from_io(e, 0);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("accepted"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.to_string(), sync);
    }
}
