//! The example scripts in scripts/ and the script options, run against the guests: each test
//! asserts the effect a script has on the guest or what it reports, not only that it ran.

mod common;

use std::path::PathBuf;

use common::{nestbed, run_guest, tmpdir, Run};

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name).display().to_string()
}

fn with_scripts(guest: &str, scripts: &[&str], extra: &[&str]) -> Run {
    let paths: Vec<String> = scripts.iter().map(|s| script(s)).collect();
    let mut args = Vec::new();
    for p in &paths {
        args.push("--script");
        args.push(p.as_str());
    }
    args.extend_from_slice(extra);
    run_guest(guest, &args)
}

fn write_script(dir: &str, body: &str) -> String {
    let p = tmpdir(dir).join("s.rhai");
    std::fs::write(&p, body).expect("writing a script");
    p.display().to_string()
}

/// The total an `--stats` table ends with.
fn stats_total(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("total: ")).expect("stats total line");
    line["total: ".len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn count_exits_sees_every_exit_of_both_levels() {
    let r = with_scripts("vmx-basic", &["count-exits.rhai"], &["--stats"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let counted: u64 = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("count-exits.rhai: ").or_else(|| l.split("count-exits.rhai: ").nth(1)))
        .and_then(|l| l.strip_suffix(" exits"))
        .expect("the total line of count-exits")
        .parse()
        .unwrap();
    assert_eq!(counted, stats_total(&r.stderr), "the script must see exactly the exits nestbed counted\n{}", r.stderr);
    for key in ["L1 VMLAUNCH: 1", "L1 VMXON: 1", "L2 IO_INSTRUCTION: ", "L2 HLT: "] {
        assert!(r.stderr.contains(key), "missing {key:?}\n{}", r.stderr);
    }
}

/// The `count-exits` table (its lines after the total), from stderr.
fn count_table(stderr: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = stderr.lines().filter(|l| l.contains("count-exits.rhai:   ")).collect();
    lines.sort();
    lines
}

#[test]
fn count_exits_sees_the_same_exits_pipelined_and_inline() {
    let pipelined = with_scripts("vmx-basic", &["count-exits.rhai"], &["--stats", "--script-mode", "pipelined"]);
    let inline = with_scripts("vmx-basic", &["count-exits.rhai"], &["--stats", "--script-mode", "inline"]);
    assert_eq!((pipelined.code, inline.code), (0, 0), "{}\n{}", pipelined.stderr, inline.stderr);
    assert!(count_table(&pipelined.stderr).len() > 5, "{}", pipelined.stderr);
    assert_eq!(count_table(&pipelined.stderr), count_table(&inline.stderr));
    assert_eq!(stats_total(&pipelined.stderr), stats_total(&inline.stderr));
}

#[test]
fn a_pipelined_error_stops_nestbed_and_names_the_exit() {
    let p = write_script("pipelined", "let n = 0;\nfn on_exit(e) {\n  n += 1; if e.seq == 3 { throw `bad ${n}` }\n}\n");
    let trace = tmpdir("pipelined").join("t.jsonl");
    let args = ["--script", &p, "--stats", "--trace", trace.to_str().unwrap(), "--script-mode", "pipelined"];
    let r = run_guest("hello", &args);
    assert_eq!(r.code, 206, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{p}:3:")) && r.stderr.contains("bad 3"), "{}", r.stderr);
    assert!(r.stderr.contains("on exit #3"), "{}", r.stderr);
    assert!(r.stderr.contains("total: "), "statistics are printed\n{}", r.stderr);
    assert!(std::fs::read_to_string(&trace).unwrap().lines().count() >= 3);
}

#[test]
fn log_io_prints_each_console_byte() {
    let r = with_scripts("hello", &["log-io.rhai"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let outs: Vec<&str> = r.stderr.lines().filter(|l| l.contains("L1 out port 0x3f8 size 1")).collect();
    assert_eq!(outs.len(), r.stdout.len(), "one logged out per console byte\n{}", r.stderr);
    let first = format!("data {:#x} ", r.stdout.as_bytes()[0]);
    assert!(outs[0].contains(&first), "{} should log {first}", outs[0]);
    assert!(r.stderr.contains("L1 out port 0xf4 size 4 data 0x0"), "{}", r.stderr);
}

#[test]
fn spoof_msr_changes_what_l1_reads() {
    let plain = run_guest("sdm-l1", &[]);
    assert!(plain.stdout.contains("ok   IA32_FEATURE_CONTROL 0x5"), "{}", plain.stdout);
    let r = with_scripts("sdm-l1", &["spoof-msr.rhai"], &[]);
    assert!(r.stderr.contains("spoofed RDMSR 0x3a = 0x1 for L1"), "{}", r.stderr);
    assert!(r.stdout.contains("FAIL IA32_FEATURE_CONTROL 0x1"), "{}", r.stdout);
    assert_ne!(r.code, 0);
}

#[test]
fn fuzzing_the_qualification_is_reproducible_and_seen_by_l1() {
    let a = with_scripts("nested-demo", &["fuzz-qualification.rhai"], &[]);
    let b = with_scripts("nested-demo", &["fuzz-qualification.rhai"], &[]);
    let flips = |r: &Run| -> Vec<String> {
        r.stderr.lines().filter(|l| l.contains("flipped")).map(str::to_string).collect::<Vec<_>>()
    };
    assert!(!flips(&a).is_empty(), "{}", a.stderr);
    assert_eq!(flips(&a), flips(&b), "same seed, same flips");
    assert_eq!(a.stdout, b.stdout);
    // L1 decodes the port from the qualification it VMREADs: the flips reach it.
    assert!(a.stdout.contains("L1: unexpected I/O exit, port"), "{}", a.stdout);
    let plain = run_guest("nested-demo", &[]);
    assert!(!plain.stdout.contains("unexpected"), "{}", plain.stdout);
}

#[test]
fn event_state_shows_l2s_nmi_blocking() {
    let r = with_scripts("vmx-intr", &["event-state.rhai"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // vmx-intr enters L2 with blocking by NMI and waits for its IRET.
    assert!(r.stderr.contains("event-state.rhai: #") && r.stderr.contains("blocking [\"NMI\"]"), "{}", r.stderr);
}

#[test]
fn stop_on_port_stops_at_the_first_l2_write() {
    let r = with_scripts("nested-demo", &["stop-on-port.rhai"], &["--stats"]);
    assert_eq!(r.code, 207, "{}", r.stderr);
    assert!(r.stderr.contains("stopped by script: L2 wrote 0x42 to port 0x80"), "{}", r.stderr);
    assert!(r.stdout.contains("POST code 0x42"), "{}", r.stdout);
    assert!(!r.stdout.contains("Handing fib"), "L2 must not run past the stop\n{}", r.stdout);
    assert!(r.stderr.contains("total: "), "statistics are printed on a script stop");
}

#[test]
fn l2_cpuid_changes_only_l2s_answers() {
    let plain = run_guest("nested-demo", &[]);
    assert!(plain.stdout.contains("CPUID 0x40000000: 'KVMKVMKVM'"), "{}", plain.stdout);
    let r = with_scripts("nested-demo", &["l2-cpuid.rhai"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("CPUID 0x40000000: 'NestbedL2VMM'"), "{}", r.stdout);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let p = write_script("syntax", "fn on_exit(e) {\n  let x = ;\n}\n");
    let r = run_guest("hello", &["--script", &p]);
    assert_eq!(r.code, 205, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{p}:2:")), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "the guest must not start");
}

#[test]
fn a_runtime_error_stops_with_the_line_and_keeps_stats_and_trace() {
    let p = write_script("runtime", "fn on_exit(e) {\n  if e.seq == 3 { e.vmcs_read(\"NO_SUCH_FIELD\"); }\n}\n");
    let trace = tmpdir("runtime").join("t.jsonl");
    let r = run_guest("hello", &["--script", &p, "--stats", "--trace", trace.to_str().unwrap()]);
    assert_eq!(r.code, 206, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{p}:2:")), "{}", r.stderr);
    // Statistics count the exits nestbed finished handling; the trace also has the exit the
    // script failed on.
    assert!(r.stderr.contains("total: 2 exits"), "{}", r.stderr);
    let text = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(text.lines().count(), 3, "every exit seen, the failing one included, is in the trace");
}

#[test]
fn on_script_error_continue_runs_the_guest_to_the_end() {
    let p = write_script("continue", "fn on_exit(e) { e.vmcs_read(\"NO_SUCH_FIELD\"); }\n");
    let r = run_guest("hello", &["--script", &p, "--on-script-error", "continue"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Hello"), "{}", r.stdout);
}

#[test]
fn the_operation_limit_stops_a_runaway_hook() {
    let p = write_script("oplimit", "fn on_exit(e) {\n  loop { }\n}\n");
    let r = run_guest("hello", &["--script", &p, "--script-ops", "5000"]);
    assert_eq!(r.code, 206, "{}", r.stderr);
    assert!(r.stderr.contains(&p) && r.stderr.contains("5000 operations"), "{}", r.stderr);
}

#[test]
fn scripts_change_registers_and_skip_instructions() {
    // The exit-code guest writes its code to port 0xf4; the script turns the write into a
    // skipped instruction the first time, then changes the data register the guest re-reads.
    let p = write_script(
        "regs",
        "let seen = 0;\nfn on_exit(e) {\n  if e.port == 0xf4 && seen == 0 { seen = 1; e.skip(); print(`skipped ${e.data}`); }\n}\nfn on_stop() { print(`seen ${seen}`); }\n",
    );
    let r = run_guest("exit-code", &["--cmdline", "7", "--script", &p]);
    assert!(r.stderr.contains("skipped 7"), "{}", r.stderr);
    assert!(r.stderr.contains("seen 1"), "on_stop sees the global\n{}", r.stderr);
    assert_ne!(r.code, 7, "the exit was skipped, so the guest went on\n{}", r.stderr);
}

#[test]
fn the_trace_records_script_changes() {
    let p = write_script("trace", "fn on_exit(e) { if e.seq == 1 { e.rbx = 5; } }\n");
    let trace = tmpdir("trace").join("t.jsonl");
    let r = run_guest("hello", &["--script", &p, "--trace", trace.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&trace).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.contains("\"script\":[\"rbx=0x5\"]"), "{first}");
}

#[test]
fn a_missing_script_file_is_a_clear_error() {
    let r = nestbed(&["run", "--guest", "hello", "--script", "/nonexistent/x.rhai"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/nonexistent/x.rhai"), "{}", r.stderr);
}

#[test]
fn l2_memory_reads_go_through_l1s_ept() {
    // vmx-ept maps L2-physical 0x3000_0000 onto an L1 page holding 0x4d41474943210001.
    let p = write_script(
        "ept",
        "let shown = false;\nfn on_exit(e) {\n  if !shown && e.level == \"L2\" && e.port == 0x80 && e.data == 1 {\n    shown = true;\n    print(`phys ${hex(e.read_u64(0x30000000))} virt ${hex(e.read_virt(0x30000000, 8)[7])}`);\n  }\n}\n",
    );
    let r = run_guest("vmx-ept", &["--script", &p]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("phys 0x4d41474943210001 virt 0x4d"), "{}", r.stderr);
}

/// (level, reason, handler) -> count, from a trace file.
fn trace_handlers(path: &std::path::Path) -> std::collections::BTreeMap<(String, String, String), u64> {
    let mut m = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).expect("reading the trace").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON trace line");
        let key = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        *m.entry((key("level"), key("reason"), key("handler"))).or_default() += 1;
    }
    m
}

/// (level, reason, handler) -> count, from an `--stats` table.
fn stats_handlers(stderr: &str) -> std::collections::BTreeMap<(String, String, String), u64> {
    let mut m = std::collections::BTreeMap::new();
    for l in stderr.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 4 && (w[0] == "L1" || w[0] == "L2") {
            if let Ok(n) = w[3].parse::<u64>() {
                let handler = if w[2] == "script" { "script" } else { w[2] };
                m.insert((w[0].to_string(), w[1].to_string(), handler.to_string()), n);
            }
        }
    }
    m
}

#[test]
fn trace_and_statistics_name_the_same_handler_for_every_exit() {
    // An inline script answers L1's RDMSR of IA32_FEATURE_CONTROL itself (with the value
    // nestbed gives), skips the guest's exit port so that it halts, and stops at the HLT: the
    // trace and the statistics must both say the script handled those three.
    let s = write_script(
        "handlers",
        "let skipped = false;\nfn on_exit(e) {\n  if e.level == \"L1\" && e.reason == \"RDMSR\" && e.msr == 0x3a { e.set_result(5); }\n  \
         if e.level == \"L1\" && e.reason == \"IO_INSTRUCTION\" && e.port == 0xf4 && !skipped { skipped = true; e.skip(); }\n  \
         if e.level == \"L1\" && e.reason == \"HLT\" { e.stop(\"halted\"); }\n}\n",
    );
    let dir = tmpdir("handlers-trace");
    let trace = dir.join("t.jsonl");
    let r = run_guest(
        "vmx-basic",
        &["--script", &s, "--script-mode", "inline", "--stats", "--trace", trace.to_str().unwrap()],
    );
    assert_eq!(r.code, 207, "stopped by the script at L1's HLT\n{}", r.stderr);
    let from_trace = trace_handlers(&trace);
    let from_stats = stats_handlers(&r.stderr);
    assert!(
        from_trace.keys().any(|(l, reason, h)| l == "L1" && reason == "RDMSR" && h == "script"),
        "the script's RDMSR answers are the script's: {from_trace:?}"
    );
    let hlt = ("L1".to_string(), "HLT".to_string(), "script".to_string());
    assert_eq!(from_trace.get(&hlt), Some(&1), "{from_trace:?}");
    assert_eq!(from_trace, from_stats, "trace and statistics disagree\n{}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn patch_range_makes_code_the_load_time_scan_left_alone_trap() {
    // Without load-time patching the host never hands L2's VMCALL to nestbed (see
    // tests/nested.rs); a script that patches L2's code when L1 launches it makes it reach L1.
    let s = write_script(
        "patch-range",
        r#"// L2 starts at l2_main: `push rax; jmp rel32` to its VMX code; patch 48 bytes there.
fn on_exit(e) {
  if e.level == "L1" && e.reason == "VMLAUNCH" {
    let rip = e.vmcs_read("GUEST_RIP");
    let b = e.read_virt(rip + 2, 4);
    let rel = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24;
    if rel >= 0x80000000 { rel -= 0x100000000; }
    e.patch_range(rip + 6 + rel, 48);
  }
}
"#,
    );
    let r = run_guest("vmx-l2-vmx", &["--cmdline", "vmcall", "--script", &s, "--stats"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ok   vmcall: exit reason 18, expected 18"), "{}", r.stdout);
    assert!(r.stderr.contains("patched: 12 sensitive instructions"), "{}", r.stderr);
}

#[test]
fn a_vmx_instruction_written_at_run_time_is_reported_as_not_patched() {
    // The script puts a patched VMREAD's original bytes back, as code the guest writes at run
    // time: this host traps it by itself, and nestbed says that a host that does not would
    // raise #UD there; the periodic check then patches the site again.
    let s = write_script(
        "unpatched",
        r#"let done = false;
fn on_exit(e) {
  if !done && e.level == "L1" && e.reason == "VMREAD" { done = true; e.write_virt(e.rip, e.insn); }
}
"#,
    );
    let r = run_guest("vmx-basic", &["--patch-sensitive", "on", "--script", &s, "--stats"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("L1 VMREAD at 0x") && r.stderr.contains("was not patched"), "{}", r.stderr);
    assert!(r.stderr.contains("raises #UD there"), "{}", r.stderr);
    assert!(r.stderr.contains("1 written over by the guest, 1 unpatched sites trapped by the host"), "{}", r.stderr);
}

/// scripts/turtles-levels.rhai names the level of each exit on vmx-turtles by the VMCS L1
/// entered (`e.vmcs`): L2, the hypervisor, and L3, its guest, as L1 sees their exits; the
/// trace carries the same VMCS address on every L2 exit.
#[test]
fn turtles_levels_name_l2_and_l3() {
    let dir = tmpdir("turtles");
    let trace = dir.join("t.jsonl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/turtles-levels.rhai");
    let r = run_guest("vmx-turtles", &["--script", script, "--trace", trace.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for line in
        ["L2 VMLAUNCH L1: 1", "L2 VMREAD L1: 12", "L2 VMWRITE L0: 98", "L3 IO_INSTRUCTION L1: 3", "L3 HLT L1: 1"]
    {
        assert!(r.stderr.contains(line), "{line}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("L3 VM"), "L3 executes no VMX instruction: {}", r.stderr);
    let text = std::fs::read_to_string(&trace).unwrap();
    let vmcs_of = |reason: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.contains("\"level\":\"L2\"") && l.contains(&format!("\"reason\":\"{reason}\"")))
            .filter_map(|l| l.split("\"vmcs\":\"").nth(1).and_then(|v| v.split('"').next()).map(str::to_string))
            .collect()
    };
    let (l2, l3) = (vmcs_of("VMXON"), vmcs_of("IO_INSTRUCTION"));
    assert_eq!((l2.len(), l3.len()), (1, 1), "{l2:?} {l3:?}");
    assert_ne!(l2, l3);
    // nestbed's own naming: exactly L3's exits (its three OUTs and its HLT) carry guest_level.
    let named: Vec<&str> = text.lines().filter(|l| l.contains("\"guest_level\":\"L3\"")).collect();
    assert_eq!(named.len(), 4, "{text}");
    let l3_vmcs = l3.iter().next().unwrap();
    assert!(named.iter().all(|l| l.contains(&format!("\"vmcs\":\"{l3_vmcs}\""))), "{named:?}");
    assert!(!text.lines().any(|l| l.contains("\"reason\":\"VMXON\"") && l.contains("guest_level")));
    assert!(!text.lines().any(|l| l.contains("\"level\":\"L1\"") && l.contains("\"vmcs\"")));
    let _ = std::fs::remove_dir_all(&dir);
}
