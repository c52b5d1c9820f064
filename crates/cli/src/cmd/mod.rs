//! One module per subcommand.

pub mod daemon;
pub mod key;
pub mod nar;
