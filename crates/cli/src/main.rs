//! The `cairn` command: one binary for every cairn tool.
//!
//! Each subcommand lives in its own module under `cmd/`, owns its clap arguments
//! and returns `anyhow::Result`; this file only parses, sets up logging and maps
//! errors to exit codes.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod stdout;

/// cairn: a content-addressed store for Nix.
///
/// Stores Nix store paths as a BLAKE3 Merkle DAG of files and directories and
/// renders NARs byte-exact with Nix. Logs go to stderr; set RUST_LOG (for example
/// RUST_LOG=debug) for more.
#[derive(Parser)]
#[command(name = "cairn", version, propagate_version = true)]
struct Cli {
    /// Log line format on stderr: `text` for people, `json` (one object a line,
    /// with the event's fields and spans) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Offline NAR tools: dump, restore, hash and list NAR archives.
    #[command(subcommand)]
    Nar(cmd::nar::NarCommand),
    /// Ed25519 signing keys in Nix's format.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Serve the store over gRPC (BlobService, DirectoryService, PathInfoService,
    /// reflection, health) on TCP and on a unix socket in the data directory.
    // Boxed: its many flags would make every other variant as large.
    Daemon(Box<cmd::daemon::DaemonArgs>),
    /// Add files, directories or symlinks to the store as content-addressed store
    /// paths, printing one store path per line: the path `nix-store --add PATH`
    /// prints.
    ///
    /// Files are read once and uploaded in parallel; a progress line shows files
    /// and bytes on a terminal. Importing the same tree again stores nothing new.
    Import(cmd::import::ImportArgs),
    /// Write the NAR of a store path to stdout (what `nix-store --dump` writes for
    /// the tree it was made from).
    Dump(cmd::paths::DumpArgs),
    /// Materialize a store path at a new path DEST (files, executable bits,
    /// symlinks as stored); on error nothing is left at DEST.
    Export(cmd::paths::ExportArgs),
    /// Add a NAR (file or `-` for stdin) as a content-addressed store path named
    /// NAME and print the path.
    AddNar(cmd::paths::AddNarArgs),
    /// Show store paths' path info (with --json, as `nix path-info --json`).
    PathInfo(cmd::paths::PathInfoArgs),
    /// List a directory in a store path, as `nix store ls`.
    Ls(cmd::paths::LsArgs),
    /// Print a file in a store path, as `nix store cat`.
    Cat(cmd::paths::CatArgs),
    /// Check store paths (all if none given): re-render each NAR, reading and
    /// checking every blob, and compare its hash and size with the path info.
    /// Exits non-zero naming each path that fails.
    Verify(cmd::paths::VerifyArgs),
    /// Mount the store as a lazy, read-only filesystem (FUSE): every registered
    /// store path is MOUNTPOINT/<hash>-<name>, its files fetched and verified as
    /// they are read. Serves until SIGINT or SIGTERM (then unmounts) or an unmount
    /// from outside (`fusermount3 -u MOUNTPOINT`).
    Mount(cmd::mount::MountArgs),
    /// Garbage collection: remove what --max-age and --max-size select (least
    /// recently used first, referrers before what they reference, never a
    /// pinned path's closure), then every directory, blob and chunk no path
    /// reaches and older than --grace; the disk is given back. Prints the
    /// paths removed and a report; works on the data directory itself.
    Gc(cmd::gc::GcArgs),
    /// Remove store paths and then the content no path reaches any more.
    /// Refused, naming them, while other paths reference one of them.
    Delete(cmd::gc::DeleteArgs),
    /// Pin store paths: garbage collection never removes them or their
    /// closures.
    Pin(cmd::gc::PinArgs),
    /// Unpin store paths.
    Unpin(cmd::gc::PinArgs),
    /// List the pinned store paths.
    Pins(cmd::gc::PinsArgs),
    /// Serve the store over the Nix daemon protocol to one client on stdin and
    /// stdout: the remote program of `ssh-ng://HOST?remote-program=PROGRAM` (Nix
    /// runs `PROGRAM --stdio` on HOST; PROGRAM a script running `cairn nix-daemon
    /// "$@"` with the flags wanted). A socket is `cairn daemon --nix-socket`.
    NixDaemon(cmd::nix_daemon::NixDaemonArgs),
    /// Copy the closures of store paths from a Nix binary cache into the store
    /// (--from URL: each narinfo's signature checked, each NAR against its hash
    /// and size, paths already stored skipped), or from the store into one
    /// (--to URL, in the layout `nix copy --to` writes). In parallel, with a
    /// progress bar on a terminal; through the daemon when one serves the data
    /// directory.
    Copy(cmd::copy::CopyArgs),
}

fn main() -> ExitCode {
    // Parsed first, for the log format; a usage error or a bad config file ends
    // the run here, before any logging is needed.
    let cli = match parse() {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", causes(&err));
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    match cli.log_format {
        // Colours only for a person: not in a file, a pipe or the journal.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }

    let result = match cli.command {
        Command::Nar(c) => cmd::nar::run(c),
        Command::Key(c) => cmd::key::run(c),
        Command::Daemon(a) => cmd::daemon::run(*a),
        Command::Import(a) => cmd::import::run(a),
        Command::Dump(a) => cmd::paths::dump(a),
        Command::Export(a) => cmd::paths::export(a),
        Command::AddNar(a) => cmd::paths::add_nar(a),
        Command::PathInfo(a) => cmd::paths::path_info(a),
        Command::Ls(a) => cmd::paths::ls(a),
        Command::Cat(a) => cmd::paths::cat(a),
        Command::Verify(a) => cmd::paths::verify(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Gc(a) => cmd::gc::gc(a),
        Command::Delete(a) => cmd::gc::delete(a),
        Command::Pin(a) => cmd::gc::pin(a, true),
        Command::Unpin(a) => cmd::gc::pin(a, false),
        Command::Pins(a) => cmd::gc::pins(a),
        Command::NixDaemon(a) => cmd::nix_daemon::run(a),
        Command::Copy(a) => cmd::copy::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if stdout::is_closed(&err) {
                // `cairn nar dump x | head` is not an error.
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", causes(&err));
            ExitCode::FAILURE
        }
    }
}

/// The command line, with the daemon's `--config` file read into it; `None`
/// when the run was `cairn daemon --print-config`, which is done then.
fn parse() -> anyhow::Result<Option<Cli>> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    // Built, so that the daemon's arguments include the global ones
    // (--log-format), which the config file can set too.
    command.build();
    // Exits on --help, --version and mistakes, as Cli::parse would.
    let first = command.clone().get_matches_from(&argv);
    let matches = match cmd::config::with_config_file(&argv, &command, &first)? {
        Some(argv) => command.clone().get_matches_from(argv),
        None => first,
    };
    if let Some(("daemon", sub)) = matches.subcommand()
        && sub.get_flag("print_config")
        && let Some(daemon) = command.find_subcommand("daemon")
    {
        print!("{}", cmd::config::print(daemon, sub));
        return Ok(None);
    }
    Ok(Some(
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
    ))
}

/// The error and its causes joined with ": ", each cause once: many errors
/// already include their source's message in their own, which anyhow's `{:#}`
/// would print again (a full disk read "… No space left on device: No space
/// left on device").
fn causes(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        // "importing /a" then "/a: …": the path once.
        let text = (1..text.len())
            .rev()
            .filter(|&k| text.is_char_boundary(k) && text[k..].starts_with(": "))
            .find(|&k| out.ends_with(&text[..k]))
            .map_or(text.as_str(), |k| &text[k + 2..]);
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let wrapped = anyhow::Error::new(io)
            .context("write pack /d/packs/0.pack: No space left on device")
            .context("importing /src");
        assert_eq!(
            super::causes(&wrapped),
            "importing /src: write pack /d/packs/0.pack: No space left on device"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(super::causes(&plain), "b: a");
        let path = anyhow::anyhow!("/src/x: the server answered NOT_FOUND: gone")
            .context("importing /src/x");
        assert_eq!(
            super::causes(&path),
            "importing /src/x: the server answered NOT_FOUND: gone"
        );
        let other = anyhow::anyhow!("/src/x/y: bad").context("importing /src/x");
        assert_eq!(super::causes(&other), "importing /src/x: /src/x/y: bad");
    }
}
