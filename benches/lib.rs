//! Benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p xueliang-benches`. Each prints criterion's estimates; compare the SQLite and
//! PostgreSQL lines of one run with each other rather than with numbers from another machine.
//!
//! The load runs (`load`, `alarms`) drive the release `xueliang` binary as a process; the
//! helpers here find it and the cargo target directory they write their results to.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_owned()
}

/// The cargo target directory: `CARGO_TARGET_DIR` if absolute, else the one the running bench
/// was built into (`target/<profile>/deps/NAME-HASH`), which follows a relative one too.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && d.is_absolute()
    {
        return d;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_owned))
        .filter(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The release `xueliang` binary: `bin` when given, else `target/release/xueliang`, built
/// first when `build` is set.
pub fn xueliang_bin(bin: Option<&Path>, build: bool) -> Result<PathBuf, String> {
    if let Some(b) = bin {
        return Ok(b.to_owned());
    }
    let target = target_dir();
    if build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "xueliang", "--bin", "xueliang"])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build --release -p xueliang failed ({st})"));
        }
    }
    let b = target.join("release").join("xueliang");
    if !b.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p xueliang --bin xueliang`",
            b.display()
        ));
    }
    Ok(b)
}
