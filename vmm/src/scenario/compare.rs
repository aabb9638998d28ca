//! Checking a run against a scenario's expectations. Each failed expectation becomes a short
//! text naming its first difference.

use std::fmt::Write as _;
use std::path::Path;

use super::run::Output;
use super::{Expect, Scenario};
use crate::error::Error;
use crate::trace::{diff, file};

/// Console text with `\r\n` line ends made `\n`.
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// Where the console first departs from the expected text, with two lines of context. The
/// final newline is optional.
pub fn console_diff(expected: &str, got: &str) -> Option<String> {
    let (expected, got) = (normalise(expected), normalise(got));
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let i = (0..e.len().max(g.len())).find(|&i| e.get(i) != g.get(i))?;
    let mut s = format!("console differs at line {}:\n", i + 1);
    for (n, line) in e.iter().enumerate().take(i).skip(i.saturating_sub(2)) {
        let _ = writeln!(s, "    {:>4} | {line}", n + 1);
    }
    let side = |l: Option<&&str>| l.map_or_else(|| "<end of console>".to_string(), |l| (*l).to_string());
    let _ = writeln!(s, "  - {:>4} | {}   [expected]", i + 1, side(e.get(i)));
    let _ = writeln!(s, "  + {:>4} | {}   [got]", i + 1, side(g.get(i)));
    Some(s)
}

/// The last thing nestbed said on stderr, to explain an unexpected exit code.
fn last_message(stderr: &str) -> Option<&str> {
    stderr.lines().rev().find(|l| l.starts_with("nestbed:") || l.starts_with("error:"))
}

/// Exit code and console expectations.
pub fn outcome(expect: &Expect, out: &Output) -> Vec<String> {
    let mut failures = Vec::new();
    let want = expect.exit_code;
    if out.exit_code != Some(want) {
        let got = out.exit_code.map_or_else(|| "none (killed by a signal)".to_string(), |c| c.to_string());
        let mut s = format!("exit code: expected {want}, got {got}");
        if let Some(m) = last_message(&out.stderr) {
            let _ = write!(s, "\n  stderr: {m}");
        }
        failures.push(s);
    }
    let console = normalise(&out.console);
    if let Some(d) = expect.console.as_deref().and_then(|c| console_diff(c, &console)) {
        failures.push(d);
    }
    if let Some(missing) = expect.console_contains.iter().find(|s| !console.contains(normalise(s).as_str())) {
        let last = console.lines().last().unwrap_or("");
        failures.push(format!(
            "console does not contain {missing:?}\n  (the console has {} lines; the last is {last:?})",
            console.lines().count()
        ));
    }
    if let Some(re) = expect.console_regex.as_ref().filter(|re| !re.is_match(&console)) {
        failures.push(format!("console does not match console_regex {:?}", re.as_str()));
    }
    if let Some(missing) = expect.stderr_contains.iter().find(|s| !out.stderr.contains(s.as_str())) {
        failures.push(format!("stderr does not contain {missing:?}"));
    }
    failures
}

/// The golden trace expectation: `None` when the run's trace matches.
pub fn golden(sc: &Scenario, golden: &Path, trace: &Path) -> Option<String> {
    let expected = match file::read(golden) {
        Ok(t) => t,
        Err(Error::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "golden trace {} does not exist; write it with `nestbed scenario bless {}`",
                golden.display(),
                sc.path.display()
            ))
        }
        Err(e) => return Some(format!("golden trace: {e}")),
    };
    let got = match file::read(trace) {
        Ok(t) => t,
        Err(e) => return Some(format!("trace of the run: {e}")),
    };
    let opts = sc.trace_options();
    let d = diff::first_difference(&expected, &got, opts)?;
    let (n_exp, n_got) = (diff::selected(&expected, opts).len(), diff::selected(&got, opts).len());
    let what = if opts.coarse { " (level, reason and handler)" } else { "" };
    Some(format!(
        "trace differs from {}{what}; {}",
        golden.display(),
        d.render("expected", "got", n_exp, n_got).trim_end()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_diff_names_the_line() {
        assert!(console_diff("a\nb\n", "a\r\nb\r\n").is_none());
        assert!(console_diff("a\nb", "a\nb\n").is_none());
        let d = console_diff("a\nb\nc\nd\n", "a\nb\nc\nX\n").unwrap();
        assert!(d.starts_with("console differs at line 4:"), "{d}");
        assert!(d.contains("   2 | b") && d.contains("   3 | c") && !d.contains("   1 | a"), "{d}");
        assert!(d.contains("-    4 | d   [expected]") && d.contains("+    4 | X   [got]"), "{d}");
        let d = console_diff("a\nb\n", "a\n").unwrap();
        assert!(d.contains("<end of console>   [got]"), "{d}");
    }
}
