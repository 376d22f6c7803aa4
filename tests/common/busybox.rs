//! The reproducible busybox test image (`images/build-busybox-image`), built into an OCI
//! layout: one place for the tests (through `common`) and the benches (through `#[path]`).

use std::path::Path;
use std::process::Command;

/// The OCI architecture of this host, as `build-busybox-image` names it.
pub fn host_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    }
}

/// Builds the busybox image for this host into the OCI layout `dir`; returns what the script
/// prints (the manifest digest), or its error output.
pub fn build_layout(dir: &Path) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-busybox-image");
    let out = Command::new(&script)
        .arg(dir)
        .arg(host_arch())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "build-busybox-image: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
