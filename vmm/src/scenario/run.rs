//! Running one scenario: `nestbed run` as a child process with the console and trace going to
//! files in a scratch folder, which is kept when the scenario fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{compare, Mode, Scenario};
use crate::error::Error;
use crate::trace::{diff, file};

/// What one run left behind.
#[derive(Debug)]
pub struct Output {
    /// `None` when the child was killed by a signal.
    pub exit_code: Option<i32>,
    pub console: String,
    pub stderr: String,
    pub trace: PathBuf,
    pub dir: PathBuf,
    pub elapsed: Duration,
}

/// The verdict on one scenario, as printed.
#[derive(Debug)]
pub struct Verdict {
    pub passed: bool,
    pub text: String,
}

fn scratch_dir(sc: &Scenario) -> Result<PathBuf, Error> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let stem = sc.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("nestbed-scenario-{}-{n}-{stem}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::File { path: dir.clone(), source })?;
    Ok(dir)
}

/// Runs the scenario's guest with `exe run ...`, with `--patch-sensitive=PATCH` when given and
/// `--no-evmcs` when `no_evmcs`.
pub fn execute(exe: &Path, sc: &Scenario, patch: Option<&str>, no_evmcs: bool) -> Result<Output, Error> {
    let dir = scratch_dir(sc)?;
    let console = dir.join("console.txt");
    let trace = dir.join("trace.jsonl");
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--guest", &sc.guest])
        .arg(format!("--cmdline={}", sc.cmdline))
        .arg(format!("--timeout={}", sc.timeout))
        .arg("--serial")
        .arg(&console)
        .arg("--trace")
        .arg(&trace)
        .stdin(Stdio::null());
    if let Some(mem) = sc.mem {
        cmd.arg(format!("--mem={mem}"));
    }
    for s in &sc.scripts {
        cmd.arg("--script").arg(s);
    }
    cmd.args(&sc.args);
    if let Some(p) = patch {
        cmd.arg(format!("--patch-sensitive={p}"));
    }
    if no_evmcs {
        cmd.arg("--no-evmcs");
    }
    let start = Instant::now();
    let out = cmd.output().map_err(|e| Error::HostIo(format!("running {}: {e}", exe.display())))?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::write(dir.join("stderr.txt"), &stderr);
    let console = std::fs::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Output { exit_code: out.status.code(), console, stderr, trace, dir, elapsed })
}

/// Writes the run's trace as the golden trace: timing stripped, console exits left out unless
/// the scenario keeps them. Returns the number of exits written.
fn bless(sc: &Scenario, golden: &Path, trace: &Path) -> Result<usize, String> {
    let events = file::read(trace).map_err(|e| format!("reading the run's trace: {e}"))?;
    let kept: Vec<file::Event> = diff::selected(&events, sc.trace_options()).into_iter().cloned().collect();
    file::write_untimed(golden, &kept).map_err(|e| format!("writing the golden trace: {e}"))?;
    Ok(kept.len())
}

/// Runs one scenario and judges it (or, blessing, rewrites its golden trace). With `patch`
/// other than `off`, exit code and console are judged but not the golden trace: patched
/// sensitive instructions add exits the golden (made unpatched) does not have; likewise with
/// `no_evmcs`: L1's VMREADs and VMWRITEs then trap, which the golden (made with the enlightened
/// VMCS offered) does not have.
pub fn run_one(exe: &Path, sc: &Scenario, mode: Mode, patch: Option<&str>, no_evmcs: bool) -> Result<Verdict, Error> {
    let out = execute(exe, sc, patch, no_evmcs)?;
    let mut failures = compare::outcome(sc.expect_for(patch), &out);
    let mut note = String::new();
    let patched = patch.is_some_and(|p| p != "off");
    if let (Some(_), true) = (&sc.expect.golden, patched) {
        note = format!(", golden trace not compared: --patch-sensitive={}", patch.unwrap_or_default());
    } else if let (Some(_), true) = (&sc.expect.golden, no_evmcs) {
        note = ", golden trace not compared: --no-evmcs".into();
    } else if let Some(golden) = &sc.expect.golden {
        match mode {
            Mode::Run => failures.extend(compare::golden(sc, golden, &out.trace)),
            Mode::Bless if failures.is_empty() => match bless(sc, golden, &out.trace) {
                Ok(n) => note = format!(", wrote {} ({n} exits)", golden.display()),
                Err(e) => failures.push(e),
            },
            Mode::Bless => {}
        }
    } else if mode == Mode::Bless {
        note = ", no golden trace to write".into();
    }
    let secs = out.elapsed.as_secs_f64();
    let path = sc.path.display();
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&out.dir);
        let word = if mode == Mode::Bless && sc.expect.golden.is_some() { "BLESSED" } else { "PASS" };
        return Ok(Verdict { passed: true, text: format!("{word} {path} ({secs:.2}s{note})\n") });
    }
    let mut text = format!("FAIL {path} ({secs:.2}s)\n");
    for f in &failures {
        for line in f.lines() {
            let _ = writeln!(text, "  {line}");
        }
    }
    let _ = writeln!(text, "  (console, trace and stderr of this run kept in {})", out.dir.display());
    Ok(Verdict { passed: false, text })
}
