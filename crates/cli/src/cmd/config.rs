//! `cairn daemon --config FILE`: a TOML file with a key for every command-line
//! option of the daemon, under the option's long name (`http-listen = "…"`,
//! `sign-key = ["a", "b"]`, `no-socket = true`). The file is turned into
//! command-line arguments placed before the real ones, so one parser (clap's)
//! checks both; an option given on the command line or through its environment
//! variable replaces the file's value instead of adding to it. Unknown keys and
//! values of the wrong type are errors naming the key and its line.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Options of the daemon that the file cannot set: they say how to read it.
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help", "version"];

/// A config file larger than this is not a config file.
const MAX_CONFIG: u64 = 1 << 20;

/// `argv` with the arguments from the daemon's `--config` file inserted after
/// the subcommand, if `matches` (from parsing `argv`) ran the daemon with one;
/// `None` when there is no file to read.
pub fn with_config_file(
    argv: &[OsString],
    cli: &Command,
    matches: &ArgMatches,
) -> anyhow::Result<Option<Vec<OsString>>> {
    let Some(("daemon", sub)) = matches.subcommand() else {
        return Ok(None);
    };
    let Some(file) = sub.get_one::<std::path::PathBuf>("config") else {
        return Ok(None);
    };
    let daemon = cli
        .find_subcommand("daemon")
        .context("the daemon command is missing from the parser")?;
    let text = read_config(file)?;
    let from_file =
        file_args(&text, daemon, sub).with_context(|| format!("config file {}", file.display()))?;
    // Before the subcommand there are only --help, --version (which end the
    // run) and --log-format, whose values are not "daemon": the first
    // "daemon" is the subcommand.
    let at = argv
        .iter()
        .position(|a| a == "daemon")
        .context("no daemon subcommand in the arguments")?;
    let mut out = argv.to_vec();
    out.splice(at + 1..at + 1, from_file);
    Ok(Some(out))
}

fn read_config(file: &Path) -> anyhow::Result<String> {
    let f = std::fs::File::open(file)
        .with_context(|| format!("cannot read config file {}", file.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_CONFIG + 1), &mut text)
        .with_context(|| format!("cannot read config file {} (UTF-8 TOML)", file.display()))?;
    if text.len() as u64 > MAX_CONFIG {
        bail!("config file {} is over {MAX_CONFIG} bytes", file.display());
    }
    Ok(text)
}

/// The command-line arguments the TOML `text` stands for: one `--key=value` per
/// value, skipping options that `given` (the real command line's matches) has
/// from the command line or the environment.
fn file_args(text: &str, cmd: &Command, given: &ArgMatches) -> anyhow::Result<Vec<OsString>> {
    let doc = toml_edit::Document::parse(text.to_owned()).map_err(|e| {
        // toml_edit's message names the line and column and quotes it.
        anyhow::anyhow!("{}", e.to_string().trim_end())
    })?;
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let line = doc
            .as_table()
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .map_or(0, |span| line_of(text, span.start));
        let at = || format!("line {line}: {key}");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key) && !NOT_IN_FILE.contains(&key))
            .with_context(|| {
                format!(
                    "{}: unknown key (the keys are the long options of `cairn daemon --help`, without the dashes)",
                    at()
                )
            })?;
        let values = values_of(item, arg).with_context(at)?;
        if arg.get_action().takes_values() {
            for v in &values {
                // The option's own parser, so a bad value is named with its line
                // here and not later as if it came from the command line.
                Command::new("config")
                    .arg(arg.clone().required(false))
                    .try_get_matches_from([
                        OsStr::new("config"),
                        OsStr::new(&format!("--{key}={v}")),
                    ])
                    .map_err(|e| anyhow::anyhow!("{}", first_line(&e.to_string())))
                    .with_context(at)?;
            }
        }
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        for v in values {
            out.push(match arg.get_action() {
                ArgAction::SetTrue if v == "true" => format!("--{key}").into(),
                ArgAction::SetTrue => continue,
                _ => format!("--{key}={v}").into(),
            });
        }
    }
    Ok(out)
}

/// The string values of `item` for option `arg`, type-checked: a boolean for a
/// switch, an array (or one value) for a repeatable option, else a string or a
/// number.
fn values_of(item: &toml_edit::Item, arg: &Arg) -> anyhow::Result<Vec<String>> {
    let Some(value) = item.as_value() else {
        bail!("expected a value, not a table");
    };
    let scalar = |v: &toml_edit::Value| -> anyhow::Result<String> {
        match v {
            toml_edit::Value::String(s) => Ok(s.value().clone()),
            toml_edit::Value::Integer(i) => Ok(i.value().to_string()),
            toml_edit::Value::Boolean(b) => Ok(b.value().to_string()),
            _ => bail!("expected a string, a number or a boolean"),
        }
    };
    match arg.get_action() {
        ArgAction::SetTrue => match value.as_bool() {
            Some(b) => Ok(vec![b.to_string()]),
            None => bail!("expected true or false"),
        },
        ArgAction::Append => match value.as_array() {
            Some(a) => a.iter().map(scalar).collect(),
            None => Ok(vec![scalar(value)?]),
        },
        _ => {
            if value.is_array() {
                bail!("expected one value, not an array");
            }
            Ok(vec![scalar(value)?])
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    1 + text
        .as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ")
}

/// The daemon's effective configuration as a config file: every option with
/// its value (from the defaults, the file, the environment or the command
/// line), unset ones commented out. Secrets appear as the paths of their files,
/// which is all the daemon is ever given of them.
pub fn print(cmd: &Command, matches: &ArgMatches) -> String {
    let mut out = String::from(
        "# cairn daemon: effective configuration (defaults, then --config, then the environment and the command line)\n",
    );
    for arg in cmd.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&key) {
            continue;
        }
        let id = arg.get_id().as_str();
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{key} = {}", matches.get_flag(id)),
            ArgAction::Append => format!(
                "{key} = [{}]",
                raw.iter()
                    .map(|v| toml_value(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => match raw.first() {
                Some(v) => format!("{key} = {}", toml_value(v)),
                None => format!("# {key} = (unset)"),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A value as TOML: booleans and integers bare, anything else a quoted string.
fn toml_value(v: &str) -> String {
    if v == "true" || v == "false" || v.parse::<i64>().is_ok() {
        v.to_owned()
    } else {
        toml_edit::Value::from(v).to_string().trim().to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn daemon() -> Command {
        Command::new("daemon")
            .arg(Arg::new("listen").long("listen").default_value("x"))
            .arg(
                Arg::new("no_socket")
                    .long("no-socket")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("sign_keys")
                    .long("sign-key")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("max")
                    .long("max")
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(Arg::new("config").long("config"))
    }

    fn args(text: &str, cli: &[&str]) -> anyhow::Result<Vec<String>> {
        let cmd = daemon();
        let given = cmd.clone().try_get_matches_from(cli).unwrap();
        Ok(file_args(text, &cmd, &given)?
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect())
    }

    #[test]
    fn keys_become_arguments() {
        let text = "listen = \"0.0.0.0:1\"\nno-socket = true\nsign-key = [\"a\", \"b\"]\nmax = 7\n";
        assert_eq!(
            args(text, &["daemon"]).unwrap(),
            [
                "--listen=0.0.0.0:1",
                "--no-socket",
                "--sign-key=a",
                "--sign-key=b",
                "--max=7"
            ]
        );
        // The command line replaces the file's value, also for repeatable ones.
        assert_eq!(
            args(text, &["daemon", "--listen", "y", "--sign-key", "c"]).unwrap(),
            ["--no-socket", "--max=7"]
        );
        assert_eq!(
            args("no-socket = false", &["daemon"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        for (text, want) in [
            ("\n\nlisen = \"x\"", "line 3: lisen: unknown key"),
            (
                "no-socket = \"yes\"",
                "line 1: no-socket: expected true or false",
            ),
            ("\nmax = \"many\"", "line 2: max: invalid value 'many'"),
            ("max = -1", "line 1: max: invalid value '-1'"),
            ("listen = [\"a\"]", "line 1: listen: expected one value"),
            ("[listen]\na = 1", "listen: expected a value, not a table"),
            ("config = \"f\"", "line 1: config: unknown key"),
            ("listen = ", "line 1"),
        ] {
            let err = format!("{:#}", args(text, &["daemon"]).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn printed_configuration_reads_back() {
        let cmd = daemon();
        let m = cmd
            .clone()
            .try_get_matches_from(["daemon", "--sign-key", "k 1", "--max", "3"])
            .unwrap();
        let printed = print(&cmd, &m);
        assert!(printed.contains("listen = \"x\"\n"), "{printed}");
        assert!(printed.contains("no-socket = false\n"), "{printed}");
        assert!(printed.contains("sign-key = [\"k 1\"]\n"), "{printed}");
        assert!(printed.contains("max = 3\n"), "{printed}");
        assert!(
            !printed.lines().any(|l| l.contains("config =")),
            "{printed}"
        );
        let again = args(&printed, &["daemon"]).unwrap();
        assert_eq!(again, ["--listen=x", "--sign-key=k 1", "--max=3"]);
    }
}
