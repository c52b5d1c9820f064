//! The same `cairn_castore::pg::Db` recovers after its PostgreSQL server restarts,
//! without a new pool. Alone in its test binary: stopping the process's server
//! would break any test running beside it.
#![allow(clippy::unwrap_used)]

use cairn_castore::ErrorKind;
use cairn_castore::pg::Db;

static MIGRATIONS: &[&str] = &["CREATE TABLE t_one (k integer PRIMARY KEY)"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_pool_recovers_after_a_server_restart() {
    let pg = cairn_testkit::postgres::server();
    let url = pg.database();
    let db = Db::open(&format!("{url}?connect_timeout=2")).unwrap();
    db.migrate("restart", MIGRATIONS).await.unwrap();
    db.client()
        .await
        .unwrap()
        .execute("INSERT INTO t_one (k) VALUES (7)", &[])
        .await
        .unwrap();

    pg.stop();
    let Err(err) = db.client().await else {
        panic!("a connection while the server is stopped")
    };
    assert_eq!(err.kind(), ErrorKind::Internal);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "cannot reach PostgreSQL at 127.0.0.1:{}",
            pg.port()
        )),
        "{msg}"
    );
    assert!(msg.contains("is the server running"), "{msg}");

    pg.start();
    let client = db.client().await.unwrap();
    let k: i32 = client
        .query_one("SELECT k FROM t_one", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(k, 7, "the committed row survived the restart");
}
