//! One module per subcommand.

pub mod daemon;
pub mod import;
pub mod key;
pub mod nar;
pub mod paths;
pub mod store;
