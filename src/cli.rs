//! The command line: `nanolet agent|ps|logs|images|version`.

use std::process::ExitCode;

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    println!("nanolet {}", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}
