//! What a researcher meets in the first hour at the command line: closed pipes, the statistics'
//! formats, names in traces, typos, the progress line and exit statuses.

mod common;

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use common::{nestbed, run_guest, tmpdir};

const NESTBED: &str = env!("CARGO_BIN_EXE_nestbed");

/// The write end of a pipe whose reader is already gone.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is the read end pipe(2) just opened; nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: fds[1] is the write end pipe(2) just opened; the Stdio takes it over.
    Stdio::from(unsafe { OwnedFd::from_raw_fd(fds[1]) })
}

fn trace_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_closed_stdout_ends_the_run_quietly_with_its_trace_and_stats_whole() {
    let d = tmpdir("cli-closed-stdout");
    let (trace, stats) = (d.join("t.jsonl"), d.join("stats.json"));
    let out = Command::new(NESTBED)
        .args(["run", "--trace", trace.to_str().unwrap(), "--stats-format", "json", "--stats-file"])
        .arg(&stats)
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "128 + SIGPIPE\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("failed"), "{stderr}");
    let lines = trace_lines(&trace);
    assert!(!lines.is_empty());
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["total_exits"].as_u64(), Some(lines.len() as u64), "the run ended at the first console write");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn closed_stdout_and_stderr_end_without_a_panic() {
    // `nestbed run --stats 2>&1 | head -2` once ended in a panic (101).
    let d = tmpdir("cli-closed-both");
    let trace = d.join("t.jsonl");
    let status = Command::new(NESTBED)
        .args(["run", "--stats", "--trace", trace.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(141));
    assert!(trace_lines(&trace).iter().all(|l| l["seq"].is_u64()));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_closed_stderr_alone_ends_with_the_same_status() {
    let out =
        Command::new(NESTBED).args(["run", "--guest", "hello", "--stats"]).stderr(closed_pipe()).output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello"), "the console is whole");
}

/// (level, reason, handler) -> count.
type Counts = BTreeMap<(String, String, String), u64>;

#[test]
fn stats_json_agrees_with_the_trace() {
    let d = tmpdir("cli-stats-json");
    let (trace, stats) = (d.join("t.jsonl"), d.join("s.json"));
    let r = run_guest(
        "nested-demo",
        &["--trace", trace.to_str().unwrap(), "--stats-format", "json", "--stats-file", stats.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["time"], "handling");
    let mut from_trace = Counts::new();
    let lines = trace_lines(&trace);
    for l in &lines {
        let key = |k: &str| l[k].as_str().unwrap().to_string();
        *from_trace.entry((key("level"), key("reason"), key("handler"))).or_default() += 1;
    }
    let mut from_stats = Counts::new();
    let (mut exits_pct, mut time_pct, mut total_ns) = (0.0, 0.0, 0);
    for row in s["rows"].as_array().unwrap() {
        let key = |k: &str| row[k].as_str().unwrap().to_string();
        let n = |k: &str| row[k].as_u64().unwrap();
        from_stats.insert((key("level"), key("reason"), key("handler")), n("count"));
        assert!(n("min_ns") <= n("p50_ns") && n("p50_ns") <= n("p99_ns") && n("p99_ns") <= n("max_ns"), "{row}");
        assert!(n("min_ns") <= n("mean_ns") && n("mean_ns") <= n("max_ns"), "{row}");
        assert_eq!(n("mean_ns"), n("total_ns") / n("count"), "{row}");
        exits_pct += row["exits_pct"].as_f64().unwrap();
        time_pct += row["time_pct"].as_f64().unwrap();
        total_ns += n("total_ns");
    }
    assert_eq!(from_stats, from_trace);
    assert_eq!(s["total_exits"].as_u64(), Some(lines.len() as u64));
    assert!((exits_pct - 100.0f64).abs() < 0.01 && (time_pct - 100.0f64).abs() < 0.01, "{exits_pct} {time_pct}");
    // Handling time is nestbed's alone: less than the run, which outlasts the last trace line.
    let wall = s["wall_ns"].as_u64().unwrap();
    assert!(total_ns < wall);
    assert!(lines.last().unwrap()["t"].as_u64().unwrap() <= wall);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stats_csv_and_table_say_what_they_measure() {
    let r = run_guest("hello", &["--stats-format", "csv"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = r.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("level,reason,reason_nr,handler,count,exits_pct,time_pct,total_ns,mean_ns,min_ns,max_ns,p50_ns,p99_ns")
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&row[..4], ["L1", "IO_INSTRUCTION", "30", "L0"]);
    assert_eq!(row.len(), 13);

    let d = tmpdir("cli-stats-table");
    let trace = d.join("t.jsonl");
    let r = run_guest("hello", &["--stats", "--trace", trace.to_str().unwrap()]);
    assert!(r.stderr.starts_with("time: nestbed's handling of each exit"), "{}", r.stderr);
    for column in ["count", "exits%", "time%", "total", "mean", "min", "max", "p99"] {
        assert!(r.stderr.lines().nth(1).unwrap().contains(column), "{column}: {}", r.stderr);
    }
    let report = nestbed(&["trace", "report", trace.to_str().unwrap()]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(report.stdout.starts_with("time: from each exit to the next exit in the trace"), "{}", report.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_misspelt_guest_names_the_nearest() {
    let r = nestbed(&["run", "--guest", "helo"]);
    assert_eq!(r.code, 202);
    assert!(r.stderr.contains("no embedded guest named helo; nearest: hello"), "{}", r.stderr);
    let r = nestbed(&["guests", "--symbols", "vmx-basc"]);
    assert_eq!(r.code, 202);
    assert!(r.stderr.contains("no embedded guest named vmx-basc; nearest: vmx-basic"), "{}", r.stderr);
}

fn script(dir: &str, body: &str) -> String {
    let p = tmpdir(dir).join("s.rhai");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn a_misspelt_hook_or_none_at_all_is_warned_about() {
    let s = script("cli-typo-hook", "let n = 0;\nfn on_exitt(e) { n += 1; }\n");
    let r = run_guest("hello", &["--script", &s]);
    assert_eq!(r.code, 0, "a warning, not an error\n{}", r.stderr);
    assert!(
        r.stderr.contains("fn on_exitt is not a hook and nestbed never calls it; did you mean on_exit?"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("defines no hook (on_start, on_exit(e), on_stop)"), "{}", r.stderr);
    let s = script("cli-good-hook", "fn on_exit(e) { }\nfn on_exit_count() { }\nfn helper(x) { x }\n");
    let r = run_guest("hello", &["--script", &s]);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn pipelined_is_refused_for_a_script_that_decides() {
    let s = script("cli-pipelined", "fn on_exit(e) { if e.port == 0x80 { e.skip(); } }\n");
    let r = run_guest("hello", &["--script", &s, "--script-mode", "pipelined"]);
    assert_eq!(r.code, 202, "{}", r.stderr);
    assert!(r.stderr.contains("--script-mode pipelined:") && r.stderr.contains("must run inline"), "{}", r.stderr);
    assert!(!r.stdout.contains("Hello"), "nothing ran");
    assert_eq!(run_guest("hello", &["--script", &s, "--script-mode", "inline"]).code, 0);
}

#[test]
fn flags_that_need_the_gdb_server_and_a_zero_timeout_are_refused() {
    let r = nestbed(&["run", "--guest", "hello", "--gdb-exit-on-detach"]);
    assert_eq!(r.code, 202);
    assert!(r.stderr.contains("--gdb-exit-on-detach needs the gdb server"), "{}", r.stderr);
    let r = nestbed(&["run", "--guest", "hello", "--timeout", "0"]);
    assert_eq!(r.code, 202);
    assert!(r.stderr.contains("--timeout 0: give a number of seconds above 0"), "{}", r.stderr);
}

#[test]
fn trace_dash_writes_the_trace_to_stdout_and_the_console_to_stderr() {
    let r = run_guest("hello", &["--trace", "-"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["seq"], 1);
    assert!(lines.iter().all(|l| l["level"] == "L1"));
    assert!(r.stderr.contains("Hello"), "{}", r.stderr);
}

#[test]
fn exits_are_numbered_from_one_as_scripting_md_says() {
    let s = script(
        "cli-seq",
        "let first = true;\nfn on_exit(e) { if first { first = false; print(`first seq ${e.seq}`); } }\n",
    );
    let r = run_guest("hello", &["--script", &s]);
    assert!(r.stderr.contains("first seq 1\n"), "{}", r.stderr);
    let doc = include_str!("../SCRIPTING.md");
    assert!(doc.contains("| `e.seq` | exit number, counting from 1"), "SCRIPTING.md's e.seq row");
}

#[test]
fn vmread_and_vmwrite_exits_name_their_field_in_the_trace_and_scripts() {
    let d = tmpdir("cli-vmcs-names");
    let trace = d.join("t.jsonl");
    let s = script(
        "cli-vmx-script",
        "fn on_exit(e) {\n  if e.vmx != () && e.vmx.field == \"HOST_RIP\" { print(`HOST_RIP <- ${hex(e.vmx.value)}`); }\n  \
         if e.msr_name == \"IA32_VMX_BASIC\" { print(\"read IA32_VMX_BASIC\"); }\n}\n",
    );
    let r = run_guest("vmx-basic", &["--trace", trace.to_str().unwrap(), "--script", &s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = trace_lines(&trace);
    let detail = |reason: &str, field: &str| {
        lines.iter().find(|l| l["reason"] == reason && l["detail"]["field"] == field).map(|l| l["detail"].clone())
    };
    let host_rip = detail("VMWRITE", "HOST_RIP").expect("a VMWRITE of HOST_RIP");
    assert_eq!(host_rip["encoding"], "0x6c16");
    let written = host_rip["value"].as_u64().unwrap();
    assert!(r.stderr.contains(&format!("HOST_RIP <- {written:#x}")), "{}", r.stderr);
    let reason = detail("VMREAD", "VM_EXIT_REASON").expect("a VMREAD of VM_EXIT_REASON");
    assert_eq!(reason["encoding"], "0x4402");
    assert_eq!(reason["value"], 30, "the first exit L1 reads is L2's I/O");
    let msr = lines.iter().find(|l| l["reason"] == "RDMSR").unwrap();
    assert_eq!(msr["detail"]["name"], "IA32_VMX_BASIC", "{msr}");
    assert!(r.stderr.contains("read IA32_VMX_BASIC"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs nestbed with its stderr on a new pseudo-terminal (stdout to a pipe); returns its status
/// and what reached the terminal.
fn on_a_terminal(args: &[&str]) -> (i32, String) {
    use std::io::Read;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty(3) writes two descriptors; the name, termios and window size may be null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both are the fresh descriptors openpty opened; each is owned once from here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(NESTBED)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut terminal = std::fs::File::from(master);
    let mut text = Vec::new();
    // Reading ends with EIO once the child, the last holder of the slave side, has exited.
    let _ = terminal.read_to_end(&mut text);
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&text).into_owned())
}

#[test]
fn the_progress_line_shows_on_a_terminal_only() {
    let spin = ["run", "--guest", "exit-code", "--cmdline", "spin", "--timeout", "2"];
    let (code, terminal) = on_a_terminal(&spin);
    assert_eq!(code, 204, "{terminal}");
    let line =
        terminal.split('\r').find(|l| l.starts_with("nestbed: ") && l.contains("exits/s")).unwrap_or_else(|| {
            panic!("no progress line on the terminal:\n{terminal:?}");
        });
    assert!(line.contains(" s, ") && line.contains("L1 ") && line.contains("L2 0 exits"), "{line:?}");
    // The line is erased before the final message, which starts on a clean line.
    assert!(terminal.contains("\r\x1b[Knestbed: timeout"), "{terminal:?}");

    let mut quiet = spin.to_vec();
    quiet.push("--quiet");
    let (code, terminal) = on_a_terminal(&quiet);
    assert_eq!(code, 204);
    assert!(!terminal.contains("exits/s"), "{terminal:?}");

    let piped = nestbed(&spin);
    assert_eq!(piped.code, 204);
    assert!(!piped.stderr.contains("exits/s") && !piped.stderr.contains('\r'), "{}", piped.stderr);
}

#[test]
fn the_guests_status_is_told_apart_from_nestbeds() {
    let d = tmpdir("cli-exit-code-file");
    let file = d.join("status");
    let f = file.to_str().unwrap();
    let r = run_guest("exit-code", &["--cmdline", "204", "--exit-code-file", f]);
    assert_eq!(r.code, 204);
    assert!(r.stderr.contains("nestbed: exit status 204, set by the guest"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "204 guest exit\n");

    let r = nestbed(&["run", "--guest", "exit-code", "--cmdline", "spin", "--timeout", "1", "--exit-code-file", f]);
    assert_eq!(r.code, 204);
    assert!(r.stderr.contains("nestbed: timeout") && !r.stderr.contains("set by the guest"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "204 nestbed timeout\n");

    let r = nestbed(&["run", "--guest", "helo", "--exit-code-file", f]);
    assert_eq!(r.code, 202);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "202 nestbed config\n");

    let r = run_guest("exit-code", &["--exit-code-file", f]);
    assert_eq!(r.code, 0);
    assert!(!r.stderr.contains("exit status"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "0 guest exit\n");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn help_has_the_exit_status_table_and_describes_every_argument() {
    let help = nestbed(&["run", "--help"]).stdout;
    for line in ["Exit status:", "141            stdout or stderr closed", "204            --timeout expired"] {
        assert!(help.contains(line), "{line}: {help}");
    }
    for args in
        [&["--help"][..], &["trace", "diff", "--help"], &["trace", "report", "--help"], &["scenario", "run", "--help"]]
    {
        let out = nestbed(args).stdout;
        let bare = out.lines().filter(|l| l.trim_start().starts_with('<') && l.trim_end().ends_with('>'));
        assert_eq!(bare.count(), 0, "an argument without a description: {out}");
    }
    let guests = nestbed(&["guests", "--help"]).stdout;
    assert!(guests.contains("instead of the list"), "{guests}");
    let top = nestbed(&["--help"]).stdout;
    assert!(top.contains("Without a command, nestbed runs `nestbed run`"), "{top}");
}

#[test]
fn the_readme_and_the_justfile_install_the_command_the_same_way() {
    let install = "cargo install --locked --path vmm --target-dir target";
    assert!(include_str!("../README.md").contains(install));
    let justfile = include_str!("../justfile");
    let recipe = &justfile[justfile.find("\ninstall:").expect("a `just install` recipe")..];
    assert!(recipe.lines().nth(2).is_some_and(|l| l.trim() == install), "{recipe}");
    // `just gdb` keeps the terminal's Ctrl-C for gdb and nestbed's output out of its prompt.
    let gdb = &justfile[justfile.find("\ngdb guest=").expect("a `just gdb` recipe")..];
    assert!(gdb.contains("setsid \"$nb\" run") && gdb.contains(">\"$log\" 2>&1"), "{gdb}");
    // What GDB.md hands gdb exists.
    let symbols = nestbed(&["guests", "--symbols", "nested-demo"]);
    assert_eq!(symbols.code, 0, "{}", symbols.stderr);
    assert!(std::path::Path::new(symbols.stdout.trim()).is_file(), "{}", symbols.stdout);
}
