//! `cairn key`: Ed25519 signing keys in Nix's format, interchangeable with
//! `nix key generate-secret` and `nix key convert-secret-to-public`.

use std::io::{Read, Write};

use anyhow::Context;
use cairn_nix::signature::SigningKey;
use clap::Subcommand;

/// Secret keys are 64 bytes in base64 plus a name; anything far larger is not a key,
/// and must not be read whole into memory.
const MAX_KEY_INPUT: u64 = 64 * 1024;

/// Key subcommands.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print a new secret key, as `nix key generate-secret --key-name NAME` does.
    ///
    /// The key is `NAME:BASE64` (64 bytes: the Ed25519 seed and public key), printed
    /// without a trailing newline, exactly like Nix, so `cairn key generate NAME >
    /// secret-key` makes a file that `nix store sign --key-file` and
    /// `nix copy --to 'file://...?secret-key=...'` accept. Keep it secret; get the
    /// public key with `cairn key public < secret-key`.
    Generate {
        /// Key name, conventionally the cache's host name and a number, such as
        /// `cache.example.org-1`. Clients look keys up by this name. It may not
        /// contain `:`, whitespace or control characters.
        name: String,
    },
    /// Read a secret key on stdin and print its public key, as `nix key
    /// convert-secret-to-public` does.
    ///
    /// The output (`NAME:BASE64`, no trailing newline, like Nix) goes into
    /// `trusted-public-keys` of the clients of the cache. A trailing newline in the
    /// input is ignored.
    Public,
}

/// Runs a `cairn key` subcommand.
pub fn run(c: KeyCommand) -> anyhow::Result<()> {
    let out = match c {
        KeyCommand::Generate { name } => SigningKey::generate(&name)
            .context("cannot generate a key")?
            .to_string(),
        KeyCommand::Public => {
            let mut input = String::new();
            std::io::stdin()
                .lock()
                .take(MAX_KEY_INPUT + 1)
                .read_to_string(&mut input)
                .context("cannot read a secret key from stdin")?;
            if input.len() as u64 > MAX_KEY_INPUT {
                anyhow::bail!("stdin is not a secret key: more than {MAX_KEY_INPUT} bytes");
            }
            let key: SigningKey = input
                .parse()
                .context("cannot read the secret key on stdin")?;
            key.to_verifying_key().to_string()
        }
    };
    let mut stdout = crate::stdout::locked();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
