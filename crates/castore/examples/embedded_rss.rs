//! Writes one blob of the given size (MiB) into a fresh embedded store and reads it
//! back in full, verified (optionally several times: second argument); run under `/usr/bin/time -v` to see that peak memory
//! does not grow with the blob's size (bench/embedded_rss.sh).
//!
//! `embedded_rss MIB READS write DIR` only writes (into the store at DIR, which
//! must not hold the blob yet), `embedded_rss MIB READS read DIR` only reads what
//! such a run wrote: the peak of a process that opens a store and reads a blob,
//! without what writing it left in the process. Also prints the CPU
//! time (user + system, all threads) of each phase: on a machine where other jobs
//! run, CPU seconds per GiB compare runs better than wall-clock speed.
#![allow(missing_docs)]

use std::time::Instant;

use cairn_castore::embedded::EmbeddedStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

include!("common/gen.rs");

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat
/// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // rest starts at field 3, so fields 14 and 15 are at 11 and 12.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Peak resident set size (KiB) since start or the last [`reset_peak`], from
/// /proc/self/status.
fn peak_kib() -> u64 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts a new peak RSS measurement (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    // Reading more than once (second argument) makes the read phase dominate a profile.
    let reads: u32 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let len = mib << 20;
    let mode = std::env::args().nth(3).unwrap_or_default();
    let tmp = tempfile::tempdir()?;
    let path = match std::env::args().nth(4) {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().to_owned(),
    };
    let store = EmbeddedStore::open(&path)?;
    if mode == "read" {
        let hex = std::fs::read_to_string(path.join("digest"))?;
        let d = (0..32)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()?;
        let d: [u8; 32] = d
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad digest file"))?;
        let (rt, rc) = read(&store, &d, len, reads).await?;
        println!(
            "{mib} MiB: read in a new process {:.0} MB/s ({:.2} CPU s/GiB), peak RSS {} KiB",
            len as f64 / rt / 1e6,
            rc / (len as f64 / f64::from(1u32 << 30)),
            peak_kib()
        );
        return Ok(());
    }
    let g = Gen::new();
    let (t, c) = (Instant::now(), cpu_secs());
    let mut w = store.blob_writer();
    let mut buf = vec![0u8; BLOCK];
    for i in 0..len / BLOCK as u64 {
        g.block(3, i, &mut buf);
        w.write_all(&buf).await?;
    }
    // The durable commit: what is left to write back when the writer closes.
    let tc = Instant::now();
    let d = w.close().await?;
    let close = tc.elapsed().as_secs_f64();
    let (wt, wc) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    let write_peak = peak_kib();
    if mode == "write" {
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(path.join("digest"), hex)?;
        println!(
            "{mib} MiB: write {:.0} MB/s ({:.2} CPU s/GiB), peak RSS {write_peak} KiB",
            len as f64 / wt / 1e6,
            wc / (len as f64 / f64::from(1u32 << 30)),
        );
        return Ok(());
    }
    reset_peak();
    let (rt, rc) = read(&store, &d, len, reads).await?;
    let read_peak = peak_kib();
    let gib = len as f64 / f64::from(1u32 << 30);
    println!(
        "{mib} MiB: write {:.0} MB/s ({:.2} CPU s/GiB, close {close:.2} s), read {:.0} MB/s ({:.2} CPU s/GiB), data dir {} bytes, peak RSS write {write_peak} KiB read {read_peak} KiB",
        len as f64 / wt / 1e6,
        wc / gib,
        len as f64 / rt / 1e6,
        rc / gib,
        tree_bytes(&path)
    );
    Ok(())
}

/// Reads blob `d` of `len` bytes `reads` times; wall and CPU seconds per read.
async fn read(
    store: &EmbeddedStore,
    d: &[u8; 32],
    len: u64,
    reads: u32,
) -> anyhow::Result<(f64, f64)> {
    let (t, c) = (Instant::now(), cpu_secs());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..reads {
        let mut r = store
            .open_blob(d)?
            .ok_or_else(|| anyhow::anyhow!("blob missing"))?;
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        anyhow::ensure!(n == len, "read {n} of {len} bytes");
    }
    Ok((
        t.elapsed().as_secs_f64() / f64::from(reads),
        (cpu_secs() - c) / f64::from(reads),
    ))
}
