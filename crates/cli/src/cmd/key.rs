//! `cairn key`: being written.
use clap::Subcommand;

/// Key subcommands.
#[derive(Subcommand)]
pub enum KeyCommand {}

pub fn run(c: KeyCommand) -> anyhow::Result<()> {
    match c {}
}
