//! Property tests: random trees written as NARs read back as the same tree and
//! write back as the same bytes (sync and async); mutated NARs never panic the
//! reader, and whatever it accepts still round-trips.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;

use cairn_nix::nar::{self, AsyncEvent, AsyncReader, Event, Reader, Writer};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File { executable: bool, data: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

type Entries = BTreeMap<Vec<u8>, Node>;

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![1u8..=255, Just(b'a'), Just(b'.')], 1..6)
        .prop_filter("legal name", |n| {
            !n.contains(&b'/') && n != b"." && n != b".."
        })
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(executable, data)| Node::File { executable, data }),
        prop::collection::vec(1u8..=255, 1..20).prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Node::Dir)
    })
}

fn write_node(w: &mut Writer<Vec<u8>>, n: &Node) {
    match n {
        Node::File { executable, data } => w
            .file(*executable, data.len() as u64, &mut &data[..])
            .unwrap(),
        Node::Symlink(t) => w.symlink(t).unwrap(),
        Node::Dir(entries) => {
            w.directory().unwrap();
            for (name, child) in entries {
                w.entry(name).unwrap();
                write_node(w, child);
            }
            w.end_directory().unwrap();
        }
    }
}

fn to_nar(n: &Node) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    write_node(&mut w, n);
    w.finish().unwrap()
}

/// Reads a NAR back into a tree, without recursion.
fn from_nar(bytes: &[u8]) -> Result<Node, nar::Error> {
    let mut r = Reader::new(bytes);
    // Open directories with the name they will be inserted under.
    let mut stack: Vec<(Option<Vec<u8>>, Entries)> = Vec::new();
    let mut name: Option<Vec<u8>> = None;
    let mut root = None;
    while let Some(ev) = r.next()? {
        let done = match ev {
            Event::Entry { name: n } => {
                name = Some(n.to_vec());
                continue;
            }
            Event::Directory => {
                stack.push((name.take(), BTreeMap::new()));
                continue;
            }
            Event::DirectoryEnd => {
                let (n, entries) = stack.pop().unwrap();
                name = n;
                Node::Dir(entries)
            }
            Event::Symlink { target } => Node::Symlink(target.to_vec()),
            Event::File {
                executable,
                mut contents,
                size,
                ..
            } => {
                let mut data = Vec::new();
                contents
                    .read_to_end(&mut data)
                    .map_err(|e| nar::Error::from_io(e, 0))?;
                assert_eq!(data.len() as u64, size);
                Node::File { executable, data }
            }
        };
        match stack.last_mut() {
            Some((_, entries)) => {
                entries.insert(name.take().unwrap(), done);
            }
            None => root = Some(done),
        }
    }
    Ok(root.unwrap())
}

async fn async_rewrite(bytes: &[u8]) -> Result<Vec<u8>, nar::Error> {
    let mut r = AsyncReader::new(bytes);
    let mut w = nar::AsyncWriter::new(Vec::new());
    while let Some(ev) = r.next().await? {
        match ev {
            AsyncEvent::Directory => w.directory().await?,
            AsyncEvent::Entry { name } => w.entry(name).await?,
            AsyncEvent::DirectoryEnd => w.end_directory().await?,
            AsyncEvent::Symlink { target } => w.symlink(target).await?,
            AsyncEvent::File {
                executable,
                size,
                mut contents,
                ..
            } => w.file(executable, size, &mut contents).await?,
        }
    }
    w.finish().await
}

fn rewrite(bytes: &[u8]) -> Result<Vec<u8>, nar::Error> {
    let mut w = Writer::new(Vec::new());
    nar::copy(&mut Reader::new(bytes), &mut w)?;
    w.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn write_read_write_is_identity(tree in node()) {
        let bytes = to_nar(&tree);
        prop_assert_eq!(from_nar(&bytes).unwrap(), tree);
        prop_assert_eq!(rewrite(&bytes).unwrap(), bytes.clone());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        prop_assert_eq!(rt.block_on(async_rewrite(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn mutated_nars_never_panic(
        tree in node(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = to_nar(&tree);
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        // Sync and async readers agree; whatever is accepted is canonical.
        let sync = rewrite(&bytes);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let asynch = rt.block_on(async_rewrite(&bytes));
        match (&sync, &asynch) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a, &bytes);
                prop_assert_eq!(b, &bytes);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "sync {:?} vs async {:?}", sync, asynch),
        }
    }
}
