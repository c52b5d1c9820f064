//! The byte layout of a NAR as Nix writes it: the framing around each node and
//! entry, and their lengths, so offsets are known without rendering.
//!
//! Every token is a NAR string: a little-endian `u64` length, the bytes, zero
//! padding to a multiple of 8.

use bytes::{BufMut, BytesMut};
use cairn_castore::Node;

/// Zero bytes after `len` bytes of a string, up to the next multiple of 8.
pub(crate) const fn padding(len: u64) -> u64 {
    (8 - len % 8) % 8
}

/// Length of a NAR string of `len` bytes, framing included.
pub(crate) const fn str_len(len: u64) -> u64 {
    8 + len + padding(len)
}

/// Appends one NAR string.
pub(crate) fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u64_le(s.len() as u64);
    out.put_slice(s);
    out.put_bytes(0, padding(s.len() as u64) as usize);
}

/// The first string of every NAR.
pub(crate) const MAGIC: &[u8] = b"nix-archive-1";

/// `"(" "type" "directory"`.
pub(crate) fn put_directory_start(out: &mut BytesMut) {
    put_str(out, b"(");
    put_str(out, b"type");
    put_str(out, b"directory");
}

/// `"entry" "(" "name" NAME "node"`.
pub(crate) fn put_entry_start(out: &mut BytesMut, name: &[u8]) {
    put_str(out, b"entry");
    put_str(out, b"(");
    put_str(out, b"name");
    put_str(out, name);
    put_str(out, b"node");
}

/// `")"`: the end of a node or of an entry.
pub(crate) fn put_close(out: &mut BytesMut) {
    put_str(out, b")");
}

/// A file's node up to its contents: `"(" "type" "regular" ["executable" ""]
/// "contents"` and the contents' length.
pub(crate) fn put_file_start(out: &mut BytesMut, executable: bool, size: u64) {
    put_str(out, b"(");
    put_str(out, b"type");
    put_str(out, b"regular");
    if executable {
        put_str(out, b"executable");
        put_str(out, b"");
    }
    put_str(out, b"contents");
    out.put_u64_le(size);
}

/// A file's node after its contents: padding and `")"`.
pub(crate) fn put_file_end(out: &mut BytesMut, size: u64) {
    out.put_bytes(0, padding(size) as usize);
    put_close(out);
}

/// A whole symlink node.
pub(crate) fn put_symlink(out: &mut BytesMut, target: &[u8]) {
    put_str(out, b"(");
    put_str(out, b"type");
    put_str(out, b"symlink");
    put_str(out, b"target");
    put_str(out, target);
    put_close(out);
}

/// Length of `"nix-archive-1"`.
pub(crate) const MAGIC_LEN: u64 = str_len(13);
/// Length of `")"`.
pub(crate) const CLOSE_LEN: u64 = str_len(1);
/// Length of `"(" "type" "directory"`.
pub(crate) const DIRECTORY_START_LEN: u64 = str_len(1) + str_len(4) + str_len(9);

/// Length of a file node before its contents.
pub(crate) fn file_start_len(executable: bool) -> u64 {
    let executable = if executable {
        str_len(10) + str_len(0)
    } else {
        0
    };
    // "(" "type" "regular" ["executable" ""] "contents" u64
    str_len(1) + str_len(4) + str_len(7) + executable + str_len(8) + 8
}

/// Length of an entry's framing around its node: `"entry" "(" "name" NAME "node"`
/// before and `")"` after.
pub(crate) fn entry_start_len(name_len: u64) -> u64 {
    // "entry" "(" "name" NAME "node"
    str_len(5) + str_len(1) + str_len(4) + str_len(name_len) + str_len(4)
}

/// Length of a whole file or symlink node; `None` for a directory (its length
/// depends on its listing).
pub(crate) fn leaf_len(node: &Node) -> Option<u64> {
    match node {
        Node::File {
            size, executable, ..
        } => Some(file_start_len(*executable) + size + padding(*size) + CLOSE_LEN),
        Node::Symlink { target } => {
            // "(" "type" "symlink" "target" TARGET ")"
            let target = str_len(target.as_bytes().len() as u64);
            Some(str_len(1) + str_len(4) + str_len(7) + str_len(6) + target + CLOSE_LEN)
        }
        Node::Directory { .. } => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_what_is_written() {
        let mut b = BytesMut::new();
        put_str(&mut b, MAGIC);
        assert_eq!(b.len() as u64, MAGIC_LEN);
        b.clear();
        put_close(&mut b);
        assert_eq!(b.len() as u64, CLOSE_LEN);
        b.clear();
        put_directory_start(&mut b);
        assert_eq!(b.len() as u64, DIRECTORY_START_LEN);
        b.clear();
        put_symlink(&mut b, b"abc");
        let target = cairn_castore::SymlinkTarget::try_from("abc").unwrap();
        assert_eq!(Some(b.len() as u64), leaf_len(&Node::Symlink { target }));
        for exec in [false, true] {
            b.clear();
            put_file_start(&mut b, exec, 3);
            assert_eq!(b.len() as u64, file_start_len(exec));
            put_file_end(&mut b, 3);
            let node = Node::File {
                digest: cairn_castore::B3Digest::of(b"abc"),
                size: 3,
                executable: exec,
            };
            assert_eq!(Some(b.len() as u64 + 3), leaf_len(&node));
        }
        for n in 0..20u64 {
            b.clear();
            put_entry_start(&mut b, &vec![b'a'; n as usize]);
            assert_eq!(b.len() as u64, entry_start_len(n));
            b.clear();
            put_str(&mut b, &vec![b'a'; n as usize]);
            assert_eq!(b.len() as u64, str_len(n));
            assert_eq!(b.len() % 8, 0);
        }
    }
}
