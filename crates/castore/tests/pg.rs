//! `cairn_castore::pg::Db` against a real PostgreSQL (cairn_testkit::postgres):
//! migrations, the refusal of a newer schema, error messages. Recovery after a
//! restart is in `pg_restart.rs`: it stops the server, so it has a process (and so
//! a server) of its own.
#![allow(clippy::unwrap_used)]

use cairn_castore::ErrorKind;
use cairn_castore::pg::Db;

static MIGRATIONS: &[&str] = &[
    "CREATE TABLE t_one (k integer PRIMARY KEY)",
    "ALTER TABLE t_one ADD COLUMN v text; CREATE TABLE t_two (k integer)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_once_and_refuses_a_newer_schema() {
    let url = cairn_testkit::postgres::server().database();
    let db = Db::open(&url).unwrap();
    db.migrate("test", MIGRATIONS).await.unwrap();
    // A second pool (another daemon) sees the schema current and does nothing.
    let other = Db::open(&url).unwrap();
    other.migrate("test", MIGRATIONS).await.unwrap();
    let client = db.client().await.unwrap();
    client
        .execute("INSERT INTO t_one (k, v) VALUES (1, 'x')", &[])
        .await
        .unwrap();
    client.execute("SELECT k FROM t_two", &[]).await.unwrap();
    let version: i32 = client
        .query_one(
            "SELECT version FROM cairn_schema WHERE component = 'test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);

    // A cairn knowing only the first migration refuses the database.
    let old = Db::open(&url).unwrap();
    let err = old.migrate("test", &MIGRATIONS[..1]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("database schema of test at 127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is at version 2, newer than this cairn (1): upgrade cairn"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_do_not_race() {
    let url = cairn_testkit::postgres::server().database();
    let dbs: Vec<Db> = (0..4).map(|_| Db::open(&url).unwrap()).collect();
    let results =
        futures::future::join_all(dbs.iter().map(|db| db.migrate("race", MIGRATIONS))).await;
    for r in results {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_error_says_what_failed() {
    let url = cairn_testkit::postgres::server().database();
    let db = Db::open(&url).unwrap();
    let client = db.client().await.unwrap();
    let e = client
        .execute("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    let err = cairn_castore::pg::db_error("reading the thing", e);
    assert_eq!(err.kind(), ErrorKind::Internal);
    let msg = err.to_string();
    assert!(msg.contains("reading the thing"), "{msg}");
    assert!(msg.contains("no_such_table"), "{msg}");
    assert!(msg.contains("42P01"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_cancels_long_statements() {
    let url = cairn_testkit::postgres::server().database();
    let db = Db::open(&format!("{url}?statement_timeout=1&pool_size=2")).unwrap();
    let client = db.client().await.unwrap();
    let e = client.execute("SELECT pg_sleep(3)", &[]).await.unwrap_err();
    let msg = cairn_castore::pg::db_error("sleeping", e).to_string();
    assert!(msg.contains("statement timeout"), "{msg}");
    assert!(msg.contains("57014"), "{msg}");
    // The connection is still good.
    client.execute("SELECT 1", &[]).await.unwrap();
}
