//! Opening redb files so that a kill at any moment leaves one that opens.

use std::io;
use std::path::Path;

/// Opens the redb database at `path` with `builder`'s settings, creating it if
/// missing. A kill while redb initialises a new file would leave one it cannot
/// open ("Not a redb database"), so a new file is built under a temporary name,
/// synced and renamed into place (and its directory synced) before it is opened.
/// The caller creates its tables.
pub fn open_or_create(path: &Path, mut builder: redb::Builder) -> io::Result<redb::Database> {
    if !path.exists() {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = std::path::PathBuf::from(tmp);
        if tmp.exists() {
            std::fs::remove_file(&tmp)?;
        }
        drop(redb::Database::create(&tmp).map_err(io::Error::other)?);
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    let shown = path.display().to_string();
    builder
        .set_repair_callback(move |_| {
            tracing::warn!("{shown} was not closed cleanly; redb is repairing it");
        })
        .create(path)
        .map_err(|e| match e {
            // Its own kind, so that a caller can wait for the other process.
            redb::DatabaseError::DatabaseAlreadyOpen => io::Error::new(
                io::ErrorKind::ResourceBusy,
                "in use by another process (a cairn daemon or command holds its lock)",
            ),
            e => io::Error::other(e),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u32, u32> = TableDefinition::new("t");

    #[test]
    fn a_leftover_half_created_file_is_replaced_and_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        // What a kill during an earlier creation leaves: a torn temporary file.
        std::fs::write(dir.path().join("x.redb.new"), b"redb\0torn").unwrap();
        {
            let db = super::open_or_create(&path, redb::Builder::new()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(T).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        assert!(!dir.path().join("x.redb.new").exists());
        let db = super::open_or_create(&path, redb::Builder::new()).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(T).unwrap().get(1).unwrap().unwrap().value(),
            2
        );
    }
}
