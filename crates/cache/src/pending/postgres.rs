//! Pending uploads in PostgreSQL (component `cache_uploads`, see
//! [`cairn_castore::pg`]), shared by every daemon on the database, so that a NAR
//! uploaded through one daemon can be claimed by a narinfo sent to another.
//!
//! Table `cache_uploads(file_sha256 bytea PRIMARY KEY, nar bytea NOT NULL, uploaded
//! bigint NOT NULL, unclaimed integer NOT NULL)`: `nar` is the record of the redb
//! table (see the [parent module](super)) with its time and count zeroed, since
//! those are the columns `uploaded` (seconds since the Unix epoch) and `unclaimed`.
//! An upload is one statement, atomic on its own: it adds one to the count of an
//! identical record (and restarts it at one for a different NAR under the same
//! file hash). A claim is one transaction: it takes one and deletes the record at
//! the last, holding the row's lock in between. Every write is committed (durable)
//! before it returns. A row whose `nar` does not decode is an error when read and
//! goes with the others of its age.

use std::time::Duration;

use cairn_castore::pg::{Db, db_error, deadpool_postgres, tokio_postgres};

use super::{PendingNar, Record, bad_record};
use crate::error::CacheError;

static MIGRATIONS: &[&str] = &["CREATE TABLE cache_uploads (
        file_sha256 bytea PRIMARY KEY CHECK (length(file_sha256) = 32),
        nar bytea NOT NULL,
        uploaded bigint NOT NULL,
        unclaimed integer NOT NULL
    );
    CREATE INDEX cache_uploads_uploaded ON cache_uploads (uploaded);"];

/// The PostgreSQL backend of [`super::PendingUploads`].
#[derive(Clone)]
pub(super) struct PgPending {
    db: Db,
}

fn failed(what: &str, e: tokio_postgres::Error) -> CacheError {
    CacheError::from_store(db_error(what, e))
}

/// The `nar` column of `nar`.
fn encode(nar: &PendingNar) -> Vec<u8> {
    Record {
        nar: nar.clone(),
        uploaded: Some(0),
        unclaimed: 0,
    }
    .encode()
}

/// Seconds as PostgreSQL's bigint (times before 2262 fit).
fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

impl PgPending {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    /// A connection, the table created first if this process has not yet.
    async fn client(&self) -> Result<deadpool_postgres::Object, CacheError> {
        self.db
            .migrate("cache_uploads", MIGRATIONS)
            .await
            .map_err(CacheError::from_store)?;
        self.db.client().await.map_err(CacheError::from_store)
    }

    pub(super) async fn put_at(
        &self,
        file_sha256: [u8; 32],
        nar: &PendingNar,
        now: u64,
    ) -> Result<(), CacheError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO cache_uploads (file_sha256, nar, uploaded, unclaimed)
                 VALUES ($1, $2, $3, 1)
                 ON CONFLICT (file_sha256) DO UPDATE SET
                   unclaimed = CASE WHEN cache_uploads.nar = EXCLUDED.nar
                                    THEN LEAST(cache_uploads.unclaimed, 2147483646) + 1
                                    ELSE 1 END,
                   nar = EXCLUDED.nar,
                   uploaded = EXCLUDED.uploaded",
            )
            .await
            .map_err(|e| failed("preparing the pending upload record", e))?;
        let key: &[u8] = &file_sha256;
        client
            .execute(&stmt, &[&key, &encode(nar), &secs(now)])
            .await
            .map_err(|e| failed("recording a pending upload", e))?;
        Ok(())
    }

    pub(super) async fn get(
        &self,
        file_sha256: [u8; 32],
    ) -> Result<Option<PendingNar>, CacheError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT nar FROM cache_uploads WHERE file_sha256 = $1")
            .await
            .map_err(|e| failed("preparing the pending upload lookup", e))?;
        let key: &[u8] = &file_sha256;
        let Some(row) = client
            .query_opt(&stmt, &[&key])
            .await
            .map_err(|e| failed("reading a pending upload", e))?
        else {
            return Ok(None);
        };
        let bytes: &[u8] = row
            .try_get(0)
            .map_err(|e| failed("reading a pending upload", e))?;
        Record::decode(bytes)
            .map(|r| Some(r.nar))
            .map_err(|e| bad_record(&file_sha256, e))
    }

    pub(super) async fn claim(&self, file_sha256: [u8; 32]) -> Result<(), CacheError> {
        let mut client = self.client().await?;
        // One transaction holding the row's lock from the decrement to the
        // delete, so that an upload counted meanwhile waits and then recreates
        // the row. A single statement (decrement where more than one waits,
        // else delete) is not enough: its delete, having waited for an
        // upload's lock, re-checks only its own condition and deletes the row
        // the upload has just counted.
        let txn = client
            .transaction()
            .await
            .map_err(|e| failed("starting a pending upload claim", e))?;
        let key: &[u8] = &file_sha256;
        let left = txn
            .query_opt(
                "UPDATE cache_uploads SET unclaimed = unclaimed - 1
                 WHERE file_sha256 = $1 RETURNING unclaimed",
                &[&key],
            )
            .await
            .map_err(|e| failed("claiming a pending upload", e))?;
        if let Some(row) = left {
            let left: i32 = row
                .try_get(0)
                .map_err(|e| failed("claiming a pending upload", e))?;
            if left <= 0 {
                txn.execute("DELETE FROM cache_uploads WHERE file_sha256 = $1", &[&key])
                    .await
                    .map_err(|e| failed("removing a claimed pending upload", e))?;
            }
        }
        txn.commit()
            .await
            .map_err(|e| failed("committing a pending upload claim", e))
    }

    pub(super) async fn expire_at(&self, max_age: Duration, now: u64) -> Result<usize, CacheError> {
        let client = self.client().await?;
        let oldest = secs(now.saturating_sub(max_age.as_secs()));
        let n = client
            .execute("DELETE FROM cache_uploads WHERE uploaded < $1", &[&oldest])
            .await
            .map_err(|e| failed("expiring pending uploads", e))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(super) async fn len(&self) -> Result<u64, CacheError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM cache_uploads", &[])
            .await
            .map_err(|e| failed("counting pending uploads", e))?
            .try_get(0)
            .map_err(|e| failed("counting pending uploads", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
