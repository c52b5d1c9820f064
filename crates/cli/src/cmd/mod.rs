//! One module per subcommand.

pub mod daemon;
pub mod daemon_http;
pub mod import;
pub mod key;
pub mod nar;
pub mod paths;
pub mod store;
pub mod tls;
