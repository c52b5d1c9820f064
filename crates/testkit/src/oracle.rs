//! The oracle gRPC client (`tests/oracle/grpc_client.py`): a real client we did
//! not write, which learns the schema through server reflection.

use std::path::PathBuf;
use std::process::Command;

/// The test venv's python (`$CAIRN_TEST_VENV`, default `/opt/cairn-test-venv`),
/// made by `scripts/install-test-deps.sh`.
fn python() -> PathBuf {
    let venv = std::env::var("CAIRN_TEST_VENV").unwrap_or_else(|_| "/opt/cairn-test-venv".into());
    let python = PathBuf::from(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (or set CAIRN_TEST_VENV)",
        python.display()
    );
    python
}

/// The client script, in the repository.
fn script() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracle/grpc_client.py");
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// `python grpc_client.py`, ready for its arguments.
pub fn client() -> Command {
    let mut c = Command::new(python());
    c.arg(script());
    c
}
