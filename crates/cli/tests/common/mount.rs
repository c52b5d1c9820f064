//! A `cairn mount` run by tests (mount.rs, nix_daemon.rs).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `cairn mount`; dropping it unmounts (lazily, so a test failing with
/// a file open still leaves no mount behind) and kills the process.
pub struct Mounted {
    pub child: Option<Child>,
    pub mountpoint: PathBuf,
}

impl Mounted {
    /// `cairn mount MOUNTPOINT ARGS` (a new directory `mountpoint`), once it
    /// says it is mounted; panics with its error if it fails.
    pub fn start(mountpoint: &Path, args: &[&str]) -> Mounted {
        fs::create_dir_all(mountpoint).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("mount")
            .arg(mountpoint)
            .args(args)
            .env_remove("CAIRN_STORE")
            .env_remove("BLOB_SERVICE_ADDR")
            .env_remove("DIRECTORY_SERVICE_ADDR")
            .env_remove("PATH_INFO_SERVICE_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Warnings may come first (a data directory not closed cleanly).
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mounted = Mounted {
            child: Some(child),
            mountpoint: mountpoint.to_owned(),
        };
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("cairn mount did not mount: {said}");
            }
            said.push_str(&line);
            if line.starts_with("mounted the store on") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        assert!(
            is_mounted(mountpoint),
            "{said}, but /proc/mounts has no entry"
        );
        mounted
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// Sends `signal` and waits for the exit, which must be a success.
    pub fn stop(mut self, signal: &str) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        let exit = wait_for(&mut child, Duration::from_secs(20));
        assert!(
            exit.success(),
            "cairn mount exited with {exit} after {signal}"
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "cairn mount did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `/proc/mounts` lists `path` as a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    // /proc/mounts escapes space, tab, newline and backslash as octal.
    let want = path.to_str().unwrap().replace(' ', "\\040");
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}
