//! Helpers shared by the integration tests: run the nestbed binary and capture what it did.

#![allow(dead_code)]

use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn nestbed(args: &[&str]) -> Run {
    nestbed_with_env(args, &[])
}

/// `nestbed` with these environment variables set.
pub fn nestbed_with_env(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_nestbed"))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        .output()
        .expect("running nestbed");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run_guest(guest: &str, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--guest", guest, "--timeout", "60"];
    args.extend_from_slice(extra);
    nestbed(&args)
}

pub fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nestbed-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
