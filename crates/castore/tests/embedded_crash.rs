//! Crash safety of the embedded store: a child process writes blobs and directories
//! and prints each one once its write is acknowledged; the parent kills it with
//! SIGKILL at random moments (during open, mid-blob, mid-commit), reopens the data
//! directory and checks that every acknowledged blob and directory is there and
//! reads back verified and byte-identical. The child is this same test binary,
//! re-run with `CAIRN_CRASH_CHILD` set.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_castore::embedded::EmbeddedStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_ENV: &str = "CAIRN_CRASH_CHILD";

/// Deterministic, partly compressible bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.push(b'a' + (x % 8) as u8);
        }
    }
    out.truncate(len);
    out
}

fn size_for(seed: u64) -> usize {
    match seed % 5 {
        0 => (seed as usize * 7919) % (3 << 20),
        1 => (seed as usize * 7919) % (600 << 10),
        _ => (seed as usize * 7919) % (20 << 10),
    }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    d
}

/// The child: writes blobs from 4 concurrent tasks until killed.
async fn child(dir: &str, base: u64) {
    let store = EmbeddedStore::open(dir).unwrap();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                // Every 7th blob repeats an earlier seed: dedup under crashes too.
                let seed = if i % 7 == 6 {
                    base + t
                } else {
                    base + t + 4 * i
                };
                let bytes = data(seed, size_for(seed));
                let mut w = store.blob_writer();
                for piece in bytes.chunks(65_537) {
                    w.write_all(piece).await.unwrap();
                }
                let d = w.close().await.unwrap();
                println!("blob {seed} {}", hex(&d));
                if i % 5 == 0 {
                    let enc = data(seed ^ 0xD1, 200);
                    let dd = *blake3::hash(&enc).as_bytes();
                    store.put_directories(vec![(dd, enc)]).await.unwrap();
                    println!("dir {} {}", seed ^ 0xD1, hex(&dd));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let base: u64 = std::env::var("CAIRN_CRASH_BASE").unwrap().parse().unwrap();
        child(&dir, base).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(String, u64, [u8; 32])> = Vec::new();
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for round in 0..16u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // 0..600 ms: some kills land during open and recovery, most mid-write.
        let delay = Duration::from_millis(rng % 600);
        let mut ch = Command::new(&exe)
            .args([
                "acknowledged_writes_survive_kill_9",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("CAIRN_CRASH_BASE", (round * 1_000_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = ch.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    lines.lock().unwrap().push(l);
                }
            })
        };
        tokio::time::sleep(delay).await;
        ch.kill().unwrap(); // SIGKILL
        ch.wait().unwrap();
        reader.join().unwrap();
        let n_before = acked.len();
        for l in lines.lock().unwrap().iter() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() == 3 && (f[0] == "blob" || f[0] == "dir") {
                acked.push((f[0].to_string(), f[1].parse().unwrap(), unhex(f[2])));
            }
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} new acks",
            acked.len() - n_before
        );

        let store = EmbeddedStore::open(dir.path()).expect("store opens after kill -9");
        for (kind, seed, d) in &acked {
            if kind == "dir" {
                let got = store.get_directory(d).unwrap();
                assert_eq!(
                    got,
                    Some(data(*seed, 200)),
                    "round {round}: directory {seed} lost"
                );
                continue;
            }
            let want = data(*seed, size_for(*seed));
            assert_eq!(d, blake3::hash(&want).as_bytes());
            let mut r = store
                .open_blob(d)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged blob {seed} missing"));
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert!(got == want, "round {round}: blob {seed} differs");
        }
    }
    assert!(
        acked.iter().filter(|a| a.0 == "blob").count() > 50,
        "the children acknowledged too few writes ({}) for the test to mean anything",
        acked.len()
    );
}
