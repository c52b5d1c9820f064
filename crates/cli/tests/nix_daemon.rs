//! The Nix daemon protocol against the real Nix (2.8, protocol 1.34): `cairn
//! daemon --nix-socket` as `--store unix://SOCKET` and `cairn nix-daemon --stdio`
//! as `ssh-ng://localhost?remote-program=…` (for the host `localhost` Nix runs
//! the remote program itself, without ssh). Expected values come from Nix's own
//! chroot store and from the binary cache of the same daemon.
//!
//! Nix's `unix://` store is a local store whose metadata comes from the daemon
//! but whose file contents it reads from the file system (its `root` setting):
//! the commands that read contents (`nix store ls/cat/verify`, `nix copy
//! --from`) run here with `?root=ROOT` and the store mounted by `cairn mount` at
//! `ROOT/nix/store`. Over `ssh-ng://` they use `NarFromPath`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use cairn_testkit::nix::{Nix, output};
use common::mount::Mounted;
use common::*;

/// Runs a Nix command; returns (success, stdout, stderr).
fn try_nix(nix: &Nix, program: &str, args: &[&str]) -> (bool, String, String) {
    let out = output(nix.command(program).args(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nix path-info --json` output as a list of objects, without the fields that
/// describe a binary cache's NAR file (`url`, `compression`, `downloadHash`,
/// `downloadSize`), sorted by path.
fn path_infos(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut list: Vec<serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let mut o = o.as_object().unwrap().clone();
            for k in ["url", "compression", "downloadHash", "downloadSize"] {
                o.remove(k);
            }
            serde_json::Value::Object(o)
        })
        .collect();
    list.sort_by_key(|o| o["path"].as_str().unwrap().to_owned());
    list
}

/// [`path_infos`] of Nix's own store without what cairn does not record: the
/// registration time and whether the store built the path (`ultimate`).
fn as_served(json: &str) -> Vec<serde_json::Value> {
    path_infos(json)
        .into_iter()
        .map(|mut o| {
            let m = o.as_object_mut().unwrap();
            m.remove("registrationTime");
            m.remove("ultimate");
            o
        })
        .collect()
}

/// Builds the test closure tagged `tag` in Nix's chroot store and signs it
/// with a new key; returns Nix's environment, `[top, dep]` and the public key.
fn signed_closure(tag: &str) -> (Nix, [String; 2], String) {
    let nix = Nix::new();
    let paths = nix.build_closure(tag);
    let (sk, pk) = nix_key(&nix, "test-1");
    let store = nix.store();
    nix.run(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            s(&store),
            "--key-file",
            s(&sk),
            "-r",
            &paths[0],
        ],
    );
    (nix, paths, pk)
}

/// `nix path-info --json -r TOP` on `store`.
fn path_info(nix: &Nix, store: &str, top: &str) -> String {
    nix.run("nix", &["path-info", "--store", store, "--json", "-r", top])
}

/// `nix copy --no-check-sigs --from FROM --to TO PATH`'s arguments.
fn copy_unchecked<'a>(from: &'a str, to: &'a str, path: &'a str) -> [&'a str; 7] {
    ["copy", "--no-check-sigs", "--from", from, "--to", to, path]
}

/// A signing key pair made by Nix: (secret key file, public key).
fn nix_key(nix: &Nix, name: &str) -> (PathBuf, String) {
    let (sk, pk) = (
        nix.path(&format!("{name}.sk")),
        nix.path(&format!("{name}.pk")),
    );
    nix.run(
        "nix-store",
        &["--generate-binary-cache-key", name, s(&sk), s(&pk)],
    );
    let pk_text = std::fs::read_to_string(&pk).unwrap().trim().to_owned();
    (sk, pk_text)
}

/// Reads the closure `[top, dep]` back through `store`: `nix store ls -lR` and
/// `nix store cat` as from Nix's own store `chroot`, `nix store verify` (contents,
/// and signatures by `pk`), and `nix copy --from` into a fresh store, which
/// verifies too; returns that store.
fn read_back(nix: &Nix, store: &str, chroot: &str, [top, dep]: [&str; 2], pk: &str) -> PathBuf {
    let ls = |s: &str| nix.run("nix", &["store", "ls", "--store", s, "-lR", top]);
    assert_eq!(ls(store), ls(chroot));
    let cat = nix.run(
        "nix",
        &["store", "cat", "--store", store, &format!("{top}/ref")],
    );
    assert_eq!(cat.trim(), dep);
    let keys = ["--option", "trusted-public-keys", pk];
    let verify = |s: &str| {
        let mut args = vec!["store", "verify", "--store", s, "-r", top];
        args.extend(keys);
        nix.run("nix", &args);
    };
    verify(store);
    let fresh = nix.path(&format!("fresh-{}", store.len()));
    let mut args = vec!["copy", "--from", store, "--to", s(&fresh), top];
    args.extend(keys);
    nix.run("nix", &args);
    verify(s(&fresh));
    fresh
}

#[test]
fn nix_uses_the_socket_as_a_store() {
    let (nix, [top, dep], pk) = signed_closure("nixd");
    let (chroot, data) = (nix.store(), nix.path("data"));
    let chroot = s(&chroot);
    let sock = nix.path("nix.sock");
    // Untrusted clients: every added path needs a signature by PK (or a CA).
    let (daemon, _, line) = start_daemon_with(
        &data,
        &[
            "--nix-socket",
            s(&sock),
            "--nix-trusted-user",
            "none",
            "--trusted-key",
            &pk,
        ],
    );
    assert!(line.contains("Nix daemon protocol on unix://"), "{line}");
    let store = format!("unix://{}", sock.display());

    // Nix's daemon greeting reports cairn.
    let ping = try_nix(&nix, "nix", &["store", "ping", "--store", &store]);
    assert!(ping.0 && ping.2.contains("Version: cairn"), "{ping:?}");

    // nix copy --to: the signed closure is accepted (AddMultipleToStore).
    nix.run("nix", &["copy", "--from", chroot, "--to", &store, &top]);

    // path-info: what Nix's own store says, and what the same daemon's binary
    // cache says.
    let ours = path_info(&nix, &store, &top);
    let nixs = path_info(&nix, chroot, &top);
    let http = format!("http://{}", http_addr(&line));
    let cache = path_info(&nix, &http, &top);
    assert_eq!(path_infos(&ours), path_infos(&cache));
    assert_eq!(path_infos(&ours), as_served(&nixs));
    assert_eq!(path_infos(&ours).len(), 2);

    // nix-store -q.
    let q = |what: &str, p: &str, s: &str| nix.run("nix-store", &["--store", s, "-q", what, p]);
    assert_eq!(
        q("--references", &top, &store),
        q("--references", &top, chroot)
    );
    assert_eq!(q("--references", &top, &store).trim(), dep);
    assert_eq!(q("--referrers", &dep, &store).trim(), top);

    // nix-store --add: the path Nix's own store gives, accepted from an
    // untrusted client (content-addressed).
    let tree = nix.path("tree");
    make_tree(&tree);
    let added = nix.run("nix-store", &["--store", &store, "--add", s(&tree)]);
    let expected = nix.run("nix-store", &["--store", chroot, "--add", s(&tree)]);
    assert_eq!(added, expected);
    assert!(added.starts_with("/nix/store/"));

    // An unsigned input-addressed closure is refused, even when the client asks
    // to skip the check, and nothing of it is registered.
    let [top2, _] = nix.build_closure("unsigned");
    let (ok2, _, err) = try_nix(&nix, "nix", &copy_unchecked(chroot, &store, &top2));
    assert!(!ok2);
    assert!(err.contains("lacks a signature by a trusted key"), "{err}");
    let valid = try_nix(&nix, "nix", &["path-info", "--store", &store, &top2]);
    assert!(!valid.0, "{valid:?}");

    // VerifyStore: the daemon checks every path's contents itself.
    nix.run(
        "nix-store",
        &["--store", &store, "--verify", "--check-contents"],
    );
    // AddSignatures: an untrusted client may not add a signature by a key the
    // daemon does not trust.
    let (sk2, _) = nix_key(&nix, "other-1");
    let signed = try_nix(
        &nix,
        "nix",
        &[
            "store",
            "sign",
            "--store",
            &store,
            "--key-file",
            s(&sk2),
            &top,
        ],
    );
    assert!(
        !signed.0 && signed.2.contains("not privileged"),
        "{signed:?}"
    );

    // Contents: the store mounted at ROOT/nix/store, `?root=ROOT`.
    let root = nix.path("root");
    let mount = Mounted::start(&root.join("nix/store"), &["--data-dir", s(&data)]);
    let with_root = format!("{store}?root={}", root.display());
    read_back(&nix, &with_root, chroot, [&top, &dep], &pk);

    // nix build: Nix evaluates and writes the .drv (AddTextToStore), then the
    // build is refused with cairn's message.
    let nixfile = nix.path("build.nix");
    std::fs::write(
        &nixfile,
        r#"derivation { name = "never"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }"#,
    )
    .unwrap();
    let (built, _, err) = try_nix(
        &nix,
        "nix",
        &["build", "--store", &store, "--no-link", "-f", s(&nixfile)],
    );
    assert!(!built);
    assert!(err.contains(cairn_nix_daemon::NO_BUILDS), "{err}");

    drop(mount);
    stop_daemon(daemon);
    assert!(!sock.exists(), "the socket is removed at shutdown");
}

/// `--nix-mount`: the daemon itself mounts the store where a `unix://` client
/// with `?root=ROOT` reads contents (ROOT/nix/store), so `nix store ls/cat`,
/// `nix store verify` and `nix copy --from` work with no `cairn mount` process;
/// the mount is gone once the daemon stopped.
#[test]
fn the_daemon_mounts_the_store_for_unix_clients() {
    let (nix, [top, dep], pk) = signed_closure("nixmount");
    let (chroot, data) = (nix.store(), nix.path("data"));
    let chroot = s(&chroot);
    let sock = nix.path("nix.sock");
    let root = nix.path("root");
    let store_dir = root.join("nix/store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let (daemon, _, line) = start_daemon_with(
        &data,
        &["--nix-socket", s(&sock), "--nix-mount", s(&store_dir)],
    );
    assert!(
        line.contains(&format!("the store mounted on {}", store_dir.display())),
        "{line}"
    );
    let store = format!("unix://{}", sock.display());
    nix.run("nix", &copy_unchecked(chroot, &store, &top));
    let with_root = format!("{store}?root={}", root.display());
    read_back(&nix, &with_root, chroot, [&top, &dep], &pk);
    stop_daemon(daemon);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(s(&store_dir)),
        "unmounted at shutdown: {mounts}"
    );
    assert_eq!(std::fs::read_dir(&store_dir).unwrap().count(), 0);
}

/// A `--nix-mount` directory that cannot be mounted on (absent, or a file)
/// stops the daemon at startup with an error naming the flag and the
/// directory, and leaves nothing mounted; so does `cairn mount`.
#[test]
fn nix_mount_on_an_unmountable_directory_is_a_clear_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for dir in [tmp.path().join("absent"), file.clone()] {
        let sock = tmp.path().join("nix.sock");
        let mut child = daemon_command(
            &tmp.path().join("data"),
            &["--nix-socket", s(&sock), "--nix-mount", s(&dir)],
        )
        .spawn()
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not stop with --nix-mount {}", dir.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "--nix-mount: cannot mount the store on {}",
                dir.display()
            )),
            "{err}"
        );
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(s(&dir)), "{mounts}");
    }
    // `cairn mount` checks the same way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["mount", "--data-dir", s(&tmp.path().join("data")), s(&file)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} is not a directory", file.display())),
        "{err}"
    );
}

/// `ssh-ng://` with `cairn nix-daemon --stdio` as the remote program: a copy
/// there (trusted, `--no-check-sigs`) and back out with `NarFromPath`, listings
/// and contents, and `nix store verify` on the remote.
#[test]
fn ssh_ng_through_stdio() {
    let (nix, [top, dep], pk) = signed_closure("sshng");
    let (chroot, data) = (nix.store(), nix.path("data"));
    let chroot = s(&chroot);
    let wrapper = nix.path("remote");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} nix-daemon --trusted --data-dir {} \"$@\"\n",
            env!("CARGO_BIN_EXE_cairn"),
            data.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let remote = format!("ssh-ng://localhost?remote-program={}", wrapper.display());

    nix.run("nix", &copy_unchecked(chroot, &remote, &top));
    let ours = path_info(&nix, &remote, &top);
    let nixs = path_info(&nix, chroot, &top);
    assert_eq!(path_infos(&ours), as_served(&nixs));
    let fresh = read_back(&nix, &remote, chroot, [&top, &dep], &pk);

    // QueryDerivationOutputMap: the .drv read by the daemon (Nix's unix://
    // client would read it from its own file system).
    let drv = nix.in_store("nix-store", &["-q", "--deriver", &top]);
    nix.run(
        "nix",
        &[
            "copy",
            "--derivation",
            "--from",
            chroot,
            "--to",
            &remote,
            &drv,
        ],
    );
    let outputs = |s: &str| nix.run("nix-store", &["--store", s, "-q", "--outputs", &drv]);
    assert_eq!(outputs(&remote), outputs(chroot));
    assert_eq!(outputs(&remote).trim(), top);
    // Its output is there, so "building" it succeeds: BuildPathsWithResults
    // answers AlreadyValid with the output's path.
    let built = nix.run(
        "nix",
        &["build", "--store", &remote, "--no-link", "--json", &drv],
    );
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    assert_eq!(
        built[0]["outputs"]["out"],
        serde_json::json!(top),
        "{built}"
    );
    let back = path_info(&nix, s(&fresh), &top);
    let narhashes = |j: &str| -> Vec<(serde_json::Value, serde_json::Value)> {
        path_infos(j)
            .iter()
            .map(|o| (o["path"].clone(), o["narHash"].clone()))
            .collect()
    };
    assert_eq!(narhashes(&back), narhashes(&nixs));
}
