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

/// SplitMix64: the fuzzers' seeded generator (the same seed gives the same inputs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// How many times the fuzzers' CI budget to run: `NESTBED_FUZZ_SCALE` (`just fuzz` sets it).
pub fn fuzz_scale() -> u64 {
    std::env::var("NESTBED_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}
