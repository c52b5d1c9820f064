//! The real Nix, run in a scratch environment of its own: a private cache
//! directory (`XDG_CACHE_HOME`), no sandbox, no substituters, no daemon, and a
//! chroot store (`--store DIR/store`) for anything that writes a store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Nix settings for tests. The narinfo cache TTLs are 0 so that a binary cache
/// that changed between two commands is asked again.
pub const NIX_CONFIG: &str = "experimental-features = nix-command
sandbox = false
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0";

/// A scratch directory for Nix: `xdg/` (its cache) and `store/` (a chroot store);
/// tests may put their own files next to them.
pub struct Nix {
    dir: tempfile::TempDir,
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

impl Nix {
    /// A fresh scratch directory.
    pub fn new() -> Nix {
        Nix {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The chroot store's directory (a `--store` argument).
    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `program` with this environment's settings.
    pub fn command(&self, program: &str) -> Command {
        command(program, &self.path("xdg"))
    }

    /// Runs `program ARGS` and returns its stdout; panics with its stderr if it
    /// fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        ok(self.command(program).args(args))
    }

    /// Runs `program --store STORE ARGS` on the chroot store; stdout, trimmed.
    pub fn in_store(&self, program: &str, args: &[&str]) -> String {
        ok(self
            .command(program)
            .arg("--store")
            .arg(self.store())
            .args(args))
        .trim()
        .to_owned()
    }

    /// Builds, in the chroot store, a closure of two input-addressed paths (as
    /// `../shared/oracle/cache_roundtrip.sh` does): `[top, dep]`, where `top` is a
    /// directory whose file `ref` names `dep`. `tag` goes into their names, so
    /// that tests building several closures get distinct paths.
    pub fn build_closure(&self, tag: &str) -> [String; 2] {
        let nixfile = self.path(&format!("{tag}.nix"));
        std::fs::write(
            &nixfile,
            format!(
                r#"let
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; }};
  dep = mk "{tag}-dep" "echo dep > $out";
in mk "{tag}-top" "mkdir $out; echo ${{dep}} > $out/ref"
"#
            ),
        )
        .unwrap();
        let top = self.build(&nixfile);
        let refs = self.in_store("nix-store", &["-q", "--references", &top]);
        let dep = refs.lines().next().unwrap().to_owned();
        [top, dep]
    }
}

impl Nix {
    /// Builds the derivation of the Nix file `nixfile` in the chroot store (its
    /// builders may run /bin/sh); returns the output path.
    pub fn build(&self, nixfile: &Path) -> String {
        // A chroot store builds in a mount namespace: the builder's /bin/sh and
        // its libraries must be mounted in.
        self.in_store(
            "nix-build",
            &[
                "--option",
                "extra-sandbox-paths",
                "/bin /lib /lib64 /usr",
                "--no-out-link",
                nixfile.to_str().unwrap(),
            ],
        )
    }
}

/// `program` with the test settings and `xdg` as its cache directory.
pub fn command(program: &str, xdg: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("XDG_CACHE_HOME", xdg)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NIX_REMOTE");
    c
}

/// Runs `cmd`; panics saying that Nix is needed if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}; this test needs the real Nix (apt-get install nix-bin)")
    })
}

/// Runs `cmd` and returns its stdout; panics with its stderr if it fails.
pub fn ok(cmd: &mut Command) -> String {
    String::from_utf8(ok_bytes(cmd)).unwrap()
}

/// Runs `cmd` and returns its stdout's bytes; panics with its stderr if it fails.
pub fn ok_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
