//! `cairn nar`: being written.
use clap::Subcommand;

/// NAR subcommands.
#[derive(Subcommand)]
pub enum NarCommand {}

pub fn run(c: NarCommand) -> anyhow::Result<()> {
    match c {}
}
