//! Scenario files (`tests/scenarios/NAME.toml`): a guest, how to run it and what must come
//! out of it (exit code, console, golden trace). The format is described in
//! `tests/scenarios/README.md`.

pub mod compare;
pub mod run;

use std::io::Write;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::error::{code, Error};
use crate::trace::diff::DiffOptions;

const DEFAULT_TIMEOUT: u32 = 60;

/// `nestbed run` flags the scenario runner sets itself (or that have their own key, or would
/// stop the run for a debugger).
const RUNNER_FLAGS: &[&str] =
    &["--guest", "-g", "--cmdline", "--mem", "--script", "--timeout", "--serial", "--trace", "--gdb", "--gdb-wait"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    guest: String,
    #[serde(default)]
    cmdline: String,
    mem: Option<u64>,
    #[serde(default)]
    scripts: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<u32>,
    #[serde(default)]
    timers: bool,
    #[serde(default)]
    console_exits: bool,
    #[serde(default)]
    expect: ExpectFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFormat {
    exit_code: Option<i64>,
    console: Option<String>,
    #[serde(default)]
    console_contains: Vec<String>,
    console_regex: Option<String>,
    #[serde(default)]
    stderr_contains: Vec<String>,
    golden: Option<String>,
    /// `[expect.patched]`: what differs under `--patch-sensitive auto|on`.
    patched: Option<Box<ExpectFormat>>,
}

/// What a run must produce.
#[derive(Debug)]
pub struct Expect {
    pub exit_code: i32,
    pub console: Option<String>,
    pub console_contains: Vec<String>,
    pub console_regex: Option<Regex>,
    /// Lines nestbed's stderr must contain (what scripts print, nestbed's own messages).
    pub stderr_contains: Vec<String>,
    pub golden: Option<PathBuf>,
}

impl ExpectFormat {
    /// `self` (an `[expect.patched]` table) over `base`: each key given replaces base's.
    fn over(self, base: &ExpectFormat) -> ExpectFormat {
        let list = |v: Vec<String>, b: &Vec<String>| if v.is_empty() { b.clone() } else { v };
        ExpectFormat {
            exit_code: self.exit_code.or(base.exit_code),
            console: self.console.or_else(|| base.console.clone()),
            console_contains: list(self.console_contains, &base.console_contains),
            console_regex: self.console_regex.or_else(|| base.console_regex.clone()),
            stderr_contains: list(self.stderr_contains, &base.stderr_contains),
            golden: None,
            patched: None,
        }
    }

    /// Checks the values and resolves `golden` against `dir`; `at` names the table.
    fn into_expect(self, dir: &Path, at: &str) -> Result<Expect, String> {
        let exit_code = match self.exit_code {
            None => 0,
            Some(c) => i32::try_from(c)
                .ok()
                .filter(|c| (0..=255).contains(c))
                .ok_or_else(|| format!("{at}.exit_code {c} is not an exit code (0-255)"))?,
        };
        let console_regex = match self.console_regex {
            None => None,
            Some(r) => Some(Regex::new(&r).map_err(|err| format!("{at}.console_regex: {}", regex_problem(&err)))?),
        };
        if self.golden.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err(format!("{at}.golden is empty"));
        }
        Ok(Expect {
            exit_code,
            console: self.console,
            console_contains: self.console_contains,
            console_regex,
            stderr_contains: self.stderr_contains,
            golden: self.golden.map(|g| dir.join(g)),
        })
    }
}

/// A checked scenario with its paths resolved against the scenario file's folder.
#[derive(Debug)]
pub struct Scenario {
    pub path: PathBuf,
    /// An embedded guest's name, or the path of an image.
    pub guest: String,
    pub cmdline: String,
    pub mem: Option<u64>,
    pub scripts: Vec<PathBuf>,
    /// More `nestbed run` arguments, e.g. `--vmx-msr`.
    pub args: Vec<String>,
    pub timeout: u32,
    /// The guest takes timer interrupts: golden traces compare only level, reason and handler.
    pub timers: bool,
    /// Keep the console's I/O exits in the golden trace.
    pub console_exits: bool,
    pub expect: Expect,
    /// What a run with patched sensitive instructions must produce, where the file says it
    /// differs.
    pub expect_patched: Option<Expect>,
}

impl Scenario {
    /// The expectation for a run with `--patch-sensitive=patch`.
    pub fn expect_for(&self, patch: Option<&str>) -> &Expect {
        match (&self.expect_patched, patch.is_some_and(|p| p != "off")) {
            (Some(p), true) => p,
            _ => &self.expect,
        }
    }
}

/// Turns a TOML error into one line: position (when it points somewhere) and message.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) if !(span.start == 0 && (span.end == 0 || span.end >= text.trim_end().len())) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
            format!("line {line}, column {col}: {msg}")
        }
        _ => msg,
    }
}

/// The last line of a regex error ("error: unclosed group"), which says what is wrong.
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid")
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

impl Scenario {
    /// Reads and checks a scenario file; any problem is a one-line error naming the file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = crate::error::read_text_limited(path, crate::error::limit::TEXT)?;
        Self::parse(path, &text).map_err(|problem| Error::Config(format!("{}: {problem}", path.display())))
    }

    /// Parses scenario text; relative paths are taken relative to `path`'s folder.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let f: FileFormat = toml::from_str(text).map_err(|e| toml_problem(text, &e))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let guest = match f.guest.trim() {
            "" => return Err("`guest` is empty".into()),
            name if crate::guests::find(name).is_some() => name.to_string(),
            file => {
                let p = dir.join(file);
                if !p.is_file() {
                    let near = crate::guests::GUESTS.iter().map(|(n, _, _)| *n);
                    let hint = crate::suggest::nearest(file, near).map_or(String::new(), |n| format!("; nearest: {n}"));
                    return Err(format!(
                        "guest `{file}` is neither an embedded guest nor a file ({}){hint}",
                        p.display()
                    ));
                }
                p.display().to_string()
            }
        };
        let mut scripts = Vec::new();
        for s in &f.scripts {
            let p = dir.join(s);
            if !p.is_file() {
                return Err(format!("script `{s}` not found ({})", p.display()));
            }
            scripts.push(p);
        }
        for a in &f.args {
            let flag = a.split_once('=').map_or(a.as_str(), |(flag, _)| flag);
            if RUNNER_FLAGS.contains(&flag) || (flag.starts_with("-g") && !flag.starts_with("--")) {
                return Err(format!("`args` may not contain `{flag}`: the scenario sets it (see its own key)"));
            }
        }
        if f.mem == Some(0) {
            return Err("`mem` must be at least 1 (MiB)".into());
        }
        let timeout = f.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout == 0 {
            return Err("`timeout` must be at least 1 (second)".into());
        }
        let mut e = f.expect;
        let expect_patched = match e.patched.take() {
            None => None,
            Some(p) if p.golden.is_some() || p.patched.is_some() => {
                return Err("expect.patched may not have `golden` or `patched`: golden traces are compared on \
                            unpatched runs only"
                    .into())
            }
            Some(p) => Some(p.over(&e).into_expect(dir, "expect.patched")?),
        };
        let expect = e.into_expect(dir, "expect")?;
        Ok(Scenario {
            path: path.to_owned(),
            guest,
            cmdline: f.cmdline,
            mem: f.mem,
            scripts,
            args: f.args,
            timeout,
            timers: f.timers,
            console_exits: f.console_exits,
            expect,
            expect_patched,
        })
    }

    /// How the golden trace is compared.
    pub fn trace_options(&self) -> DiffOptions {
        DiffOptions { coarse: self.timers, skip_console: !self.console_exits }
    }
}

/// Whether to check scenarios or rewrite their golden traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Bless,
}

/// Runs scenario files with `exe` (the nestbed binary), printing a verdict per file on `out`.
/// Every file is checked before any runs. Returns the exit code: 0 when all pass, else
/// [`code::SCENARIO_FAILED`].
pub fn run_files(
    exe: &Path,
    files: &[PathBuf],
    mode: Mode,
    patch: Option<&str>,
    no_evmcs: bool,
    out: &mut dyn Write,
) -> Result<i32, Error> {
    let scenarios = files.iter().map(|f| Scenario::load(f)).collect::<Result<Vec<_>, _>>()?;
    let mut failed = 0;
    for sc in &scenarios {
        let verdict = run::run_one(exe, sc, mode, patch, no_evmcs)?;
        let _ = out.write_all(verdict.text.as_bytes());
        let _ = out.flush();
        failed += usize::from(!verdict.passed);
    }
    if scenarios.len() > 1 {
        let _ = writeln!(out, "{} scenarios: {} passed, {failed} failed", scenarios.len(), scenarios.len() - failed);
    }
    Ok(if failed == 0 { 0 } else { code::SCENARIO_FAILED })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(Path::new("dir/x.toml"), text)
    }

    #[test]
    fn defaults_and_paths() {
        let sc = parse("guest = \"hello\"\n[expect]\ngolden = \"x.trace.jsonl\"\n").unwrap();
        assert_eq!(sc.timeout, DEFAULT_TIMEOUT);
        assert_eq!(sc.expect.exit_code, 0);
        assert_eq!(sc.expect.golden, Some(PathBuf::from("dir/x.trace.jsonl")));
        assert!(sc.trace_options().skip_console && !sc.trace_options().coarse);
    }

    #[test]
    fn problems_are_one_line() {
        for (text, want) in [
            ("cmdline = \"x\"\n", "missing field `guest`"),
            ("guest = \"hello\"\nbogus = 1", "line 2, column 1: unknown field `bogus`"),
            ("guest = \"hello", "line 1"),
            ("guest = \"no/such.elf\"", "neither an embedded guest nor a file"),
            ("guest = \"vmx-basc\"", "vmx-basc); nearest: vmx-basic"),
            ("guest = \"hello\"\n[expect]\nexit_code = 300", "not an exit code"),
            ("guest = \"hello\"\n[expect]\nconsole_regex = \"a(b\"", "console_regex: unclosed group"),
            ("guest = \"hello\"\nscripts = [\"none.rhai\"]", "script `none.rhai` not found"),
            ("guest = \"hello\"\n[expect.patched]\nexit_code = -1", "expect.patched.exit_code -1"),
            ("guest = \"hello\"\n[expect.patched]\ngolden = \"g\"", "expect.patched may not have `golden`"),
            ("guest = \"hello\"\n[expect.patched]\nbogus = 1", "unknown field `bogus`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
        assert_eq!(parse("cmdline = \"x\"\n").unwrap_err(), "missing field `guest`");
    }

    #[test]
    fn patched_expectations_replace_the_keys_they_give() {
        let sc = parse(
            "guest = \"hello\"\n[expect]\nexit_code = 3\nconsole = \"a\"\nstderr_contains = [\"s\"]\n\
             [expect.patched]\nconsole = \"b\"\n",
        )
        .unwrap();
        let p = sc.expect_for(Some("on"));
        assert_eq!(
            (p.exit_code, p.console.as_deref(), p.stderr_contains.as_slice()),
            (3, Some("b"), &["s".into()][..])
        );
        for unpatched in [None, Some("off")] {
            assert_eq!(sc.expect_for(unpatched).console.as_deref(), Some("a"));
        }
        let plain = parse("guest = \"hello\"\n[expect]\nconsole = \"a\"\n").unwrap();
        assert_eq!(plain.expect_for(Some("auto")).console.as_deref(), Some("a"));
    }

    #[test]
    fn extra_run_arguments() {
        let sc = parse("guest = \"hello\"\nargs = [\"--vmx-msr\", \"0x486=0x21\", \"--stats\"]\n").unwrap();
        assert_eq!(sc.args, ["--vmx-msr", "0x486=0x21", "--stats"]);
        assert!(parse("guest = \"hello\"\n").unwrap().args.is_empty());
        for flag in ["--serial=x", "--trace", "-g", "-ghello", "--guest=hello", "--mem", "--gdb"] {
            let text = format!("guest = \"hello\"\nargs = [\"{flag}\"]\n");
            let e = parse(&text).unwrap_err();
            assert!(e.contains("`args` may not contain"), "{flag}: {e}");
            assert!(!e.contains('\n'), "{flag}: {e}");
        }
    }
}
