//! One module per subcommand.

pub mod config;
pub mod copy;
pub mod daemon;
pub mod daemon_http;
pub mod daemon_metrics;
pub mod gc;
pub mod import;
pub mod key;
pub mod mount;
pub mod nar;
pub mod nix_daemon;
pub mod paths;
pub mod store;
pub mod tls;
pub mod upstream;
