//! Scenario files, golden traces, `trace diff` and `trace report` (issue: reproducible
//! scenarios).

mod common;
use common::{nestbed, run_guest, tmpdir};
use nestbed::error::code;
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
}

fn all_scenarios() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Copies `NAME.toml` into `dir` (without its golden trace), returning the copy's path.
fn copy_scenario(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(format!("{name}.toml"));
    std::fs::copy(scenarios_dir().join(format!("{name}.toml")), &to).unwrap();
    to
}

fn copy_golden(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(format!("{name}.trace.jsonl"));
    std::fs::copy(scenarios_dir().join(format!("{name}.trace.jsonl")), &to).unwrap();
    to
}

/// Removes the scratch folders that failed scenario runs keep (named in their verdict).
fn remove_kept(stdout: &str) {
    for line in stdout.lines() {
        if let Some(dir) = line.trim().strip_prefix("(console, trace and stderr of this run kept in ") {
            let _ = std::fs::remove_dir_all(dir.trim_end_matches(')'));
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_scenario_passes() {
    let files = all_scenarios();
    assert!(files.len() >= 10, "{files:?}");
    let mut args = vec!["scenario", "run"];
    args.extend(files.iter().map(String::as_str));
    let r = nestbed(&args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.starts_with("PASS ")).count(), files.len(), "{}", r.stdout);
}

/// Every scenario passes without the enlightened VMCS too (golden traces are not compared:
/// L1's VMREADs and VMWRITEs trap again).
#[test]
fn every_scenario_passes_without_evmcs() {
    let files = all_scenarios();
    let mut args = vec!["scenario", "run", "--no-evmcs"];
    args.extend(files.iter().map(String::as_str));
    let r = nestbed(&args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.starts_with("PASS ")).count(), files.len(), "{}", r.stdout);
    assert!(r.stdout.contains("golden trace not compared: --no-evmcs"), "{}", r.stdout);
}

#[test]
fn changed_console_or_exit_code_fails_with_the_first_difference() {
    let d = tmpdir("scen-console");
    let hello = copy_scenario("hello", &d);
    let text = std::fs::read_to_string(&hello).unwrap().replace("args \"a b c\"", "args \"a b\"");
    std::fs::write(&hello, text).unwrap();
    let r = nestbed(&["scenario", "run", s(&hello)]);
    assert_eq!(r.code, code::SCENARIO_FAILED, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with(&format!("FAIL {}", hello.display())), "{}", r.stdout);
    assert!(r.stdout.contains("console differs at line 2:"), "{}", r.stdout);
    assert!(r.stdout.contains("   1 | Hello from a nestbed guest!"), "context line: {}", r.stdout);
    assert!(r.stdout.contains("args \"a b\"   [expected]"), "{}", r.stdout);
    assert!(r.stdout.contains("args \"a b c\"   [got]"), "{}", r.stdout);
    remove_kept(&r.stdout);

    let exit = copy_scenario("exit-code", &d);
    let text = std::fs::read_to_string(&exit).unwrap().replace("exit_code = 42", "exit_code = 41");
    std::fs::write(&exit, text).unwrap();
    let r = nestbed(&["scenario", "run", s(&exit), s(&scenarios_dir().join("io-bench.toml"))]);
    assert_eq!(r.code, code::SCENARIO_FAILED, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("exit code: expected 41, got 42"), "{}", r.stdout);
    assert!(r.stdout.contains("PASS ") && r.stdout.contains("2 scenarios: 1 passed, 1 failed"), "{}", r.stdout);
    remove_kept(&r.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn changed_golden_trace_fails_naming_exit_and_field() {
    let d = tmpdir("scen-golden");
    let sc = copy_scenario("vmx-io-bitmap", &d);
    let golden = copy_golden("vmx-io-bitmap", &d);
    let text = std::fs::read_to_string(&golden).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut ev: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
    let seq = ev["seq"].as_u64().unwrap();
    ev["rip"] = "0xdead".into();
    lines[4] = ev.to_string();
    std::fs::write(&golden, lines.join("\n") + "\n").unwrap();
    let r = nestbed(&["scenario", "run", s(&sc)]);
    assert_eq!(r.code, code::SCENARIO_FAILED, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("trace differs from"), "{}", r.stdout);
    assert!(r.stdout.contains("first difference at exit 5 "), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("- seq {seq} ")), "{}", r.stdout);
    assert!(r.stdout.contains("rip  expected: \"0xdead\"  got: \"0x"), "{}", r.stdout);
    remove_kept(&r.stdout);
    // With `timers = true` only level, reason and handler count: the changed RIP no longer does.
    let text = std::fs::read_to_string(&sc).unwrap().replace("guest = ", "timers = true\nguest = ");
    std::fs::write(&sc, text).unwrap();
    let r = nestbed(&["scenario", "run", s(&sc)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bless_writes_an_untimed_golden_trace_that_then_passes() {
    let d = tmpdir("scen-bless");
    let sc = copy_scenario("vmx-basic", &d);
    let r = nestbed(&["scenario", "run", s(&sc)]);
    assert_eq!(r.code, code::SCENARIO_FAILED);
    assert!(r.stdout.contains("does not exist; write it with `nestbed scenario bless"), "{}", r.stdout);
    remove_kept(&r.stdout);
    let r = nestbed(&["scenario", "bless", s(&sc)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("BLESSED "), "{}", r.stdout);
    let blessed = std::fs::read_to_string(d.join("vmx-basic.trace.jsonl")).unwrap();
    assert!(!blessed.contains("\"t\":"));
    let committed = std::fs::read_to_string(scenarios_dir().join("vmx-basic.trace.jsonl")).unwrap();
    assert_eq!(blessed, committed, "a fresh run must reproduce the committed golden trace");
    assert_eq!(nestbed(&["scenario", "run", s(&sc)]).code, 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn trace_diff_same_different_and_malformed() {
    let d = tmpdir("scen-diff");
    let (a, b) = (d.join("a.jsonl"), d.join("b.jsonl"));
    for t in [&a, &b] {
        let r = run_guest("vmx-basic", &["--serial", s(&d.join("console.txt")), "--trace", s(t)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = nestbed(&["trace", "diff", s(&a), s(&b)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("traces match"), "{}", r.stdout);
    let golden = scenarios_dir().join("vmx-basic.trace.jsonl");
    assert_eq!(nestbed(&["trace", "diff", "--skip-console", s(&a), s(&golden)]).code, 0);

    let text = std::fs::read_to_string(&b).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut ev: serde_json::Value = serde_json::from_str(&lines[9]).unwrap();
    ev["qualification"] = "0x1234".into();
    lines[9] = ev.to_string();
    std::fs::write(&b, lines.join("\n")).unwrap();
    let r = nestbed(&["trace", "diff", s(&a), s(&b)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("+ seq {} ", ev["seq"])), "{}", r.stdout);
    assert!(r.stdout.contains("qualification  A: \"0x"), "{}", r.stdout);
    assert!(r.stdout.contains("B: \"0x1234\""), "{}", r.stdout);

    lines[2] = "{\"seq\":3,".into();
    std::fs::write(&b, lines.join("\n")).unwrap();
    let r = nestbed(&["trace", "diff", s(&a), s(&b)]);
    assert_eq!(r.code, code::CONFIG, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&format!("{}:3: malformed JSON", b.display())), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn trace_report_prints_the_table_and_draws_svg() {
    let d = tmpdir("scen-report");
    let trace = d.join("nested.jsonl");
    let r = run_guest("nested-demo", &["--serial", s(&d.join("console.txt")), "--trace", s(&trace)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = nestbed(&["trace", "report", s(&trace)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for want in ["exit reason", "count", "L2    IO_INSTRUCTION", "L1    VMRESUME", "total:"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let svg = std::fs::read_to_string(d.join("nested.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for want in ["IO_INSTRUCTION", "VMRESUME", "VMLAUNCH", "HLT", "Timeline", ">L2<"] {
        assert!(svg.contains(want), "{want}");
    }
    let out = d.join("custom.svg");
    assert_eq!(nestbed(&["trace", "report", s(&trace), "--svg", s(&out)]).code, 0);
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_scenario_files_give_one_line_and_202() {
    let d = tmpdir("scen-bad");
    let cases = [
        ("no-guest.toml", "cmdline = \"x\"\n", "missing field `guest`"),
        ("syntax.toml", "guest = \"hello\"\ntimeout = = 3\n", "line 2"),
        ("unknown.toml", "guest = \"no-such-guest\"\n", "neither an embedded guest nor a file"),
        ("typo.toml", "guest = \"hello\"\n[expect]\nconsol = \"x\"\n", "unknown field `consol`"),
    ];
    for (name, text, want) in cases {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        let good = scenarios_dir().join("hello.toml");
        let r = nestbed(&["scenario", "run", s(&good), s(&p)]);
        assert_eq!(r.code, code::CONFIG, "{name}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "nothing runs when a file is bad: {}", r.stdout);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(s(&p)) && r.stderr.contains(want), "{name}: {}", r.stderr);
    }
    let r = nestbed(&["scenario", "run", s(&d.join("absent.toml"))]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("absent.toml"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_script_that_changes_the_guest_fails_its_scenario_with_a_readable_diff() {
    // The first L2 port write L1 asked for is kept in L0 by a script: L1 never sees it.
    let d = tmpdir("scen-script");
    let sc = copy_scenario("vmx-io-bitmap", &d);
    copy_golden("vmx-io-bitmap", &d);
    std::fs::write(
        d.join("hide.rhai"),
        "let done = false;\nfn on_exit(e) {\n  if !done && e.level == \"L2\" && e.route == \"L1\" { done = true; e.keep_in_l0(); }\n}\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&sc).unwrap().replace("guest = ", "scripts = [\"hide.rhai\"]\nguest = ");
    std::fs::write(&sc, text).unwrap();
    let r = nestbed(&["scenario", "run", s(&sc)]);
    assert_eq!(r.code, code::SCENARIO_FAILED, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FAIL "), "{}", r.stdout);
    // The diff names the first exit that changed and how: handled by the script, not L1.
    assert!(r.stdout.contains("handler  expected: \"L1\"  got: \"script\""), "{}", r.stdout);
    remove_kept(&r.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

/// Every scenario passes in both patching modes; where a scenario's outcome differs by design
/// (L2's CPUID exits to L1 once CPUID is patched), its file says how in `[expect.patched]`.
#[test]
fn every_scenario_passes_with_patched_sensitive_instructions() {
    let files = all_scenarios();
    assert!(files.len() >= 10, "{files:?}");
    for mode in ["auto", "on"] {
        let mut args = vec!["scenario", "run", "--patch-sensitive", mode];
        args.extend(files.iter().map(String::as_str));
        let r = nestbed(&args);
        assert_eq!(r.code, 0, "--patch-sensitive {mode}:\n{}{}", r.stdout, r.stderr);
        assert_eq!(r.stdout.lines().filter(|l| l.starts_with("PASS ")).count(), files.len(), "{}", r.stdout);
    }
}
