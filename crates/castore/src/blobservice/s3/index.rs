//! The chunk index of the S3 blob service in PostgreSQL (component `blobs` of
//! [`crate::pg::Db::migrate`]).
//!
//! Tables:
//! - `blob_store(id = 1, location)`: the bucket and prefix this database indexes,
//!   recorded by the first service to use it; a service on another bucket or
//!   prefix refuses the database (its index would describe objects it cannot see).
//! - `blob_packs(id, name, size, created)`: one row per pack object
//!   `<prefix>/packs/<name>`, entered in the transaction that indexes its chunks.
//! - `blob_chunks(digest, pack, offset, stored_len, raw_len, compressed)`: every
//!   visible chunk (a blob of one chunk, or a chunk of a multi-chunk blob): its
//!   stored bytes are `stored_len` bytes at `offset` in the pack, zstd-compressed
//!   when `compressed`, `raw_len` bytes once decoded.
//!   Indexed by place too (`blob_chunks_by_place`: pack, offset), for reading a
//!   small file's neighbours with it.
//! - `blob_lists(digest, size, chunks)`: blobs of several chunks: `chunks` is
//!   (digest, u64-LE size) per chunk, 40 bytes each, in order.
//!
//! Rows are added (concurrent writers of the same content keep the first row)
//! only after the bytes they point at are durable in the bucket, and removed
//! only by garbage collection (`gc.rs`, which explains `touched`, `sealed` and
//! `cairn_gc_epoch`). Nothing read from here is trusted: lengths are bounded
//! before use, and every chunk's bytes are checked against its digest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::blobservice::ChunkMeta;
use crate::embedded::format::MAX_CHUNK;
use crate::pg::{SWEEP_LOCK, TOUCH_BEFORE, db_error};
use crate::{B3Digest, Error};

/// The schema, one migration per version.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE blob_store (
    id integer PRIMARY KEY CHECK (id = 1),
    location text NOT NULL
);
CREATE TABLE blob_packs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    size bigint NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE blob_chunks (
    digest bytea PRIMARY KEY,
    pack bigint NOT NULL REFERENCES blob_packs (id),
    "offset" bigint NOT NULL,
    stored_len integer NOT NULL,
    raw_len integer NOT NULL,
    compressed boolean NOT NULL
);
CREATE TABLE blob_lists (
    digest bytea PRIMARY KEY,
    size bigint NOT NULL,
    chunks bytea NOT NULL
);
"#,
    r#"
CREATE INDEX blob_chunks_by_place ON blob_chunks (pack, "offset");
"#,
    // Garbage collection: when a writer last built on a row, packs entered
    // before their upload (`sealed` once indexed), and the latest collection's
    // start.
    r#"
ALTER TABLE blob_chunks ADD COLUMN touched timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE blob_lists ADD COLUMN touched timestamptz NOT NULL DEFAULT clock_timestamp();
ALTER TABLE blob_packs ADD COLUMN sealed boolean NOT NULL DEFAULT true;
CREATE TABLE IF NOT EXISTS cairn_gc_epoch (
    id integer PRIMARY KEY CHECK (id = 1),
    started timestamptz NOT NULL
);
"#,
];

/// Bytes per chunk in `blob_lists.chunks`.
const LIST_ENTRY: usize = 40;

/// Where a chunk's stored bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Loc {
    /// The pack's name (its key is `<prefix>/packs/<name>`).
    pub pack: Arc<str>,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compressed: bool,
}

/// What the index says about one digest.
pub(super) enum Entry {
    /// A blob of several chunks.
    List(Vec<ChunkMeta>),
    /// A chunk (a blob of one chunk, or a chunk of a stored blob).
    Chunk(Loc),
}

/// A chunk row to insert: digest, offset in the pack, stored length, raw length,
/// compressed.
pub(super) type Row = ([u8; 32], u64, u32, u32, bool);

fn corrupt(msg: String) -> Error {
    Error::Corrupt(format!("chunk index: {msg}"))
}

fn digest_of(b: &[u8]) -> Result<[u8; 32], Error> {
    b.try_into()
        .map_err(|_| corrupt(format!("digest of {} bytes", b.len())))
}

/// Checks a location read from the database.
fn loc(pack: String, offset: i64, stored: i32, raw: i32, compressed: bool) -> Result<Loc, Error> {
    let (Ok(offset), Ok(stored_len), Ok(raw_len)) = (
        u64::try_from(offset),
        u32::try_from(stored),
        u32::try_from(raw),
    ) else {
        return Err(corrupt(format!(
            "negative location {offset}/{stored}/{raw} in pack {pack}"
        )));
    };
    let max_stored = MAX_CHUNK + MAX_CHUNK / 64 + 1024;
    if raw_len as usize > MAX_CHUNK
        || stored_len as usize > max_stored
        || (!compressed && stored_len != raw_len)
    {
        return Err(corrupt(format!(
            "impossible lengths stored {stored_len} raw {raw_len} in pack {pack}"
        )));
    }
    Ok(Loc {
        pack: pack.into(),
        offset,
        stored_len,
        raw_len,
        compressed,
    })
}

/// Decodes `blob_lists.chunks` of a blob of `size` bytes.
fn decode_list(b: &[u8], size: i64) -> Result<Vec<ChunkMeta>, Error> {
    if !b.len().is_multiple_of(LIST_ENTRY) || b.len() < 2 * LIST_ENTRY {
        return Err(corrupt(format!(
            "chunk list of {} bytes is not two or more {LIST_ENTRY}-byte entries",
            b.len()
        )));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(b.len() / LIST_ENTRY);
    for e in b.chunks_exact(LIST_ENTRY) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&e[32..]);
        let size = u64::from_le_bytes(s);
        if size == 0 || size as usize > MAX_CHUNK {
            return Err(corrupt(format!("chunk list entry of {size} bytes")));
        }
        total += size;
        out.push(ChunkMeta {
            digest: B3Digest::from(digest_of(&e[..32])?),
            size,
        });
    }
    if i64::try_from(total).ok() != Some(size) {
        return Err(corrupt(format!(
            "chunk list holds {total} bytes, its blob {size}"
        )));
    }
    Ok(out)
}

/// Encodes a chunk list for `blob_lists.chunks`.
pub(super) fn encode_list(list: &[ChunkMeta]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * LIST_ENTRY);
    for c in list {
        out.extend_from_slice(c.digest.as_ref());
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out
}

fn i64_of(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} exceeds a bigint")))
}

/// Records (or checks) the bucket and prefix this database indexes.
pub(super) async fn claim(client: &deadpool_postgres::Client, location: &str) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO blob_store (id, location) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
            &[&location],
        )
        .await
        .map_err(|e| db_error("record the blob store's location", e))?;
    let row = client
        .query_one("SELECT location FROM blob_store WHERE id = 1", &[])
        .await
        .map_err(|e| db_error("read the blob store's location", e))?;
    let recorded: String = row.get(0);
    if recorded != location {
        return Err(Error::InvalidArgument(format!(
            "this database indexes the blobs of {recorded}, not {location}: \
             give each bucket/prefix a database of its own"
        )));
    }
    Ok(())
}

/// What the index says about `digest`.
pub(super) async fn entry(
    client: &deadpool_postgres::Client,
    digest: &B3Digest,
) -> Result<Option<Entry>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT l.size, l.chunks, p.name, c.\"offset\", c.stored_len, c.raw_len, c.compressed \
             FROM (SELECT $1::bytea AS d) q \
             LEFT JOIN blob_lists l ON l.digest = q.d \
             LEFT JOIN blob_chunks c ON c.digest = q.d \
             LEFT JOIN blob_packs p ON p.id = c.pack",
        )
        .await
        .map_err(|e| db_error("prepare a blob lookup", e))?;
    let key: &[u8] = digest.as_ref();
    let row = client
        .query_one(&stmt, &[&key])
        .await
        .map_err(|e| db_error("look up a blob", e))?;
    let list: Option<Vec<u8>> = row.get(1);
    if let Some(list) = list {
        return Ok(Some(Entry::List(decode_list(&list, row.get(0))?)));
    }
    let pack: Option<String> = row.get(2);
    match pack {
        None => Ok(None),
        Some(pack) => Ok(Some(Entry::Chunk(loc(
            pack,
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
        )?))),
    }
}

/// The locations of those of `digests` that are indexed chunks.
pub(super) async fn locations(
    client: &deadpool_postgres::Client,
    digests: &[[u8; 32]],
) -> Result<HashMap<[u8; 32], Loc>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT c.digest, p.name, c.\"offset\", c.stored_len, c.raw_len, c.compressed \
             FROM blob_chunks c JOIN blob_packs p ON p.id = c.pack WHERE c.digest = ANY($1)",
        )
        .await
        .map_err(|e| db_error("prepare a chunk lookup", e))?;
    let keys: Vec<&[u8]> = digests.iter().map(|d| &d[..]).collect();
    let rows = client
        .query(&stmt, &[&keys])
        .await
        .map_err(|e| db_error("look up chunks", e))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let d = digest_of(r.get(0))?;
        out.insert(d, loc(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?);
    }
    Ok(out)
}

/// The chunks stored in `pack` starting at `start..end`, in the order they lie
/// (for a read-ahead: the neighbours of a small file were most likely written
/// with it, by the same group commit, and are read next).
pub(super) async fn neighbours(
    client: &deadpool_postgres::Client,
    pack: &str,
    start: u64,
    end: u64,
) -> Result<Vec<([u8; 32], Loc)>, Error> {
    let stmt = client
        .prepare_cached(
            "SELECT c.digest, p.name, c.\"offset\", c.stored_len, c.raw_len, c.compressed \
             FROM blob_packs p JOIN blob_chunks c ON c.pack = p.id \
             WHERE p.name = $1 AND c.\"offset\" >= $2 AND c.\"offset\" < $3 \
             ORDER BY c.\"offset\" LIMIT 4096",
        )
        .await
        .map_err(|e| db_error("prepare a pack lookup", e))?;
    let (Ok(start), Ok(end)) = (i64::try_from(start), i64::try_from(end)) else {
        return Ok(Vec::new());
    };
    let rows = client
        .query(&stmt, &[&pack, &start, &end])
        .await
        .map_err(|e| db_error("look up a pack's chunks", e))?;
    rows.iter()
        .map(|r| {
            let d = digest_of(r.get(0))?;
            Ok((d, loc(r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?))
        })
        .collect()
}

/// Those of `digests` that are indexed chunks, touched for garbage collection
/// (a writer builds on them: see `gc.rs`).
pub(super) async fn existing(
    client: &mut deadpool_postgres::Client,
    digests: &[[u8; 32]],
) -> Result<HashSet<[u8; 32]>, Error> {
    touch(client, digests, false).await
}

/// Those of `digests` that are stored blobs or chunks, touched for garbage
/// collection (a writer that asks builds on what it finds).
pub(super) async fn stored(
    client: &mut deadpool_postgres::Client,
    digests: &[[u8; 32]],
) -> Result<HashSet<[u8; 32]>, Error> {
    touch(client, digests, true).await
}

/// The rows of `digests` in `blob_chunks` (and `blob_lists` when `lists`),
/// touched where older than [`crate::pg::TOUCH_BEFORE`], in one transaction
/// holding [`crate::pg::SWEEP_LOCK`] shared: a sweep runs wholly before it
/// (and what it found is what the sweep left) or wholly after it (and sees
/// the touch). A deadlock with another writer touching the same rows is
/// retried.
async fn touch(
    client: &mut deadpool_postgres::Client,
    digests: &[[u8; 32]],
    lists: bool,
) -> Result<HashSet<[u8; 32]>, Error> {
    let keys: Vec<&[u8]> = digests.iter().map(|d| &d[..]).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match touch_once(client, &keys, lists).await {
            Err(e)
                if attempt < 3
                    && e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                continue;
            }
            Err(e) => return Err(db_error("look up blobs", e)),
            Ok(rows) => return rows.iter().map(|r| digest_of(r.get(0))).collect(),
        }
    }
}

async fn touch_once(
    client: &mut deadpool_postgres::Client,
    keys: &[&[u8]],
    lists: bool,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SWEEP_LOCK])
        .await?;
    let touch = format!(
        "UPDATE blob_chunks SET touched = clock_timestamp() \
         WHERE digest = ANY($1) AND touched < {TOUCH_BEFORE}"
    );
    txn.execute(&txn.prepare_cached(&touch).await?, &[&keys])
        .await?;
    let find = if lists {
        let touch = format!(
            "UPDATE blob_lists SET touched = clock_timestamp() \
             WHERE digest = ANY($1) AND touched < {TOUCH_BEFORE}"
        );
        txn.execute(&txn.prepare_cached(&touch).await?, &[&keys])
            .await?;
        "SELECT digest FROM blob_chunks WHERE digest = ANY($1) \
         UNION ALL SELECT digest FROM blob_lists WHERE digest = ANY($1)"
    } else {
        "SELECT digest FROM blob_chunks WHERE digest = ANY($1)"
    };
    let rows = txn
        .query(&txn.prepare_cached(find).await?, &[&keys])
        .await?;
    txn.commit().await?;
    Ok(rows)
}

/// Enters pack `name` before its upload (unsealed): a collection never
/// deletes an object whose row exists, and deletes an unsealed row (and its
/// object) only once it is older than the grace period.
pub(super) async fn reserve_pack(
    client: &deadpool_postgres::Client,
    name: &str,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO blob_packs (name, size, sealed) VALUES ($1, 0, false)",
            &[&name],
        )
        .await
        .map_err(|e| db_error("enter a pack", e))?;
    Ok(())
}

/// Makes blobs visible in one transaction: the pack `(name, size)` their new
/// chunks are in (if any), the chunks' rows, and the chunk lists of multi-chunk
/// blobs `(digest, list)`.
///
/// `relied` are chunks the blobs use that an earlier lookup found stored (so
/// they were not uploaded again): checked again here, under the sweep lock, so
/// that a collection that removed them since fails this commit instead of
/// leaving a blob with a missing chunk. The pack was entered by
/// [`reserve_pack`]; if a collection removed it meanwhile (the upload took
/// longer than the grace period), the commit fails.
pub(super) async fn commit(
    client: &mut deadpool_postgres::Client,
    pack: Option<(&str, u64)>,
    rows: &[Row],
    lists: &[(B3Digest, Vec<ChunkMeta>)],
    relied: &[[u8; 32]],
) -> Result<(), Error> {
    let txn = client
        .transaction()
        .await
        .map_err(|e| db_error("begin indexing blobs", e))?;
    txn.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&SWEEP_LOCK])
        .await
        .map_err(|e| db_error("wait for a garbage collection's sweep", e))?;
    if !relied.is_empty() {
        let keys: Vec<&[u8]> = relied.iter().map(|d| &d[..]).collect();
        let n: i64 = txn
            .query_one(
                "SELECT count(*) FROM blob_chunks WHERE digest = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(|e| db_error("check stored chunks", e))?
            .get(0);
        if n != keys.len() as i64 {
            return Err(Error::Storage(
                "chunks this upload found stored were removed by a garbage collection meanwhile: upload again".into(),
            ));
        }
    }
    if let Some((name, size)) = pack {
        let id: i64 = txn
            .query_opt(
                "UPDATE blob_packs SET size = $2, sealed = true WHERE name = $1 AND NOT sealed RETURNING id",
                &[&name, &i64_of(size)?],
            )
            .await
            .map_err(|e| db_error("index a pack", e))?
            .ok_or_else(|| {
                Error::Storage(
                    format!("pack {name} was removed by a garbage collection while it uploaded (for longer than the grace period): upload again")
                        .into(),
                )
            })?
            .get(0);
        let digests: Vec<&[u8]> = rows.iter().map(|r| &r.0[..]).collect();
        let offsets = rows
            .iter()
            .map(|r| i64_of(r.1))
            .collect::<Result<Vec<_>, _>>()?;
        let stored: Vec<i32> = rows.iter().map(|r| r.2 as i32).collect();
        let raw: Vec<i32> = rows.iter().map(|r| r.3 as i32).collect();
        let compressed: Vec<bool> = rows.iter().map(|r| r.4).collect();
        txn.execute(
            &format!(
                "INSERT INTO blob_chunks (digest, pack, \"offset\", stored_len, raw_len, compressed) \
                 SELECT d, $1, o, s, r, c FROM unnest($2::bytea[], $3::int8[], $4::int4[], $5::int4[], $6::bool[]) \
                 AS t (d, o, s, r, c) ON CONFLICT (digest) DO UPDATE SET touched = clock_timestamp() \
                 WHERE blob_chunks.touched < {TOUCH_BEFORE}"
            ),
            &[&id, &digests, &offsets, &stored, &raw, &compressed],
        )
        .await
        .map_err(|e| db_error("index chunks", e))?;
    }
    if !lists.is_empty() {
        let digests: Vec<&[u8]> = lists.iter().map(|(d, _)| d.as_ref()).collect();
        let sizes = lists
            .iter()
            .map(|(_, l)| i64_of(l.iter().map(|c| c.size).sum()))
            .collect::<Result<Vec<_>, _>>()?;
        let encoded: Vec<Vec<u8>> = lists.iter().map(|(_, l)| encode_list(l)).collect();
        txn.execute(
            &format!(
                "INSERT INTO blob_lists (digest, size, chunks) \
                 SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (digest) DO UPDATE SET touched = clock_timestamp() \
                 WHERE blob_lists.touched < {TOUCH_BEFORE}"
            ),
            &[&digests, &sizes, &encoded],
        )
        .await
        .map_err(|e| db_error("index chunk lists", e))?;
    }
    txn.commit()
        .await
        .map_err(|e| db_error("commit the index of blobs", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_roundtrip_and_reject() {
        let list = vec![
            ChunkMeta {
                digest: B3Digest::of(b"a"),
                size: 5,
            },
            ChunkMeta {
                digest: B3Digest::of(b"b"),
                size: 7,
            },
        ];
        let enc = encode_list(&list);
        assert_eq!(decode_list(&enc, 12).unwrap(), list);
        assert!(decode_list(&enc, 13).is_err(), "sizes disagree");
        assert!(decode_list(&enc[..40], 5).is_err(), "one chunk");
        assert!(decode_list(&enc[..50], 12).is_err(), "truncated");
        let mut zero = enc.clone();
        zero[32..40].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_list(&zero, 7).is_err(), "empty chunk");
    }

    #[test]
    fn locations_are_bounded() {
        assert!(loc("p".into(), 0, 10, 10, false).is_ok());
        assert!(loc("p".into(), -1, 10, 10, false).is_err());
        assert!(
            loc("p".into(), 0, 9, 10, false).is_err(),
            "raw but lengths differ"
        );
        assert!(loc("p".into(), 0, 10, (MAX_CHUNK + 1) as i32, true).is_err());
        assert!(loc("p".into(), 0, i32::MAX, 10, true).is_err());
    }
}
