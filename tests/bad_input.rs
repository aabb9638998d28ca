//! Bad input never crashes nestbed: each gets a one-line error naming the file and problem
//! and a documented exit code (README, "Exit codes").

mod common;
use common::{nestbed, tmpdir};
use nestbed::error::code;

fn write(name: &str, bytes: &[u8]) -> String {
    let p = tmpdir("bad").join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn missing_file() {
    let r = nestbed(&["run", "--guest", "/nonexistent/kernel.elf"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("/nonexistent/kernel.elf"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn not_elf() {
    let p = write("notelf.bin", b"just some text, not a kernel");
    let r = nestbed(&["run", "--guest", &p]);
    assert_eq!(r.code, code::BAD_IMAGE);
    assert!(r.stderr.contains(&p) && r.stderr.contains("no multiboot v1 header"), "{}", r.stderr);
}

#[test]
fn elf_without_multiboot_header() {
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    let p = write("nomb.elf", &elf);
    let r = nestbed(&["run", "--guest", &p]);
    assert_eq!(r.code, code::BAD_IMAGE);
    assert!(r.stderr.contains("no multiboot v1 header"), "{}", r.stderr);
}

#[test]
fn segments_outside_ram() {
    // The hello image loads at 1 MiB and needs more than 2 MiB of RAM above it? No: use a
    // kludge header asking for a load at 64 MiB with 4 MiB of RAM.
    let mut img = Vec::new();
    let flags: u32 = 1 << 16;
    for v in [0x1BAD_B002u32, flags, 0u32.wrapping_sub(0x1BAD_B002u32.wrapping_add(flags))] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0x400_0000u32, 0x400_0000, 0, 0x400_1000, 0x400_0020] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    let p = write("far.bin", &img);
    let r = nestbed(&["run", "--guest", &p, "--mem", "4"]);
    assert_eq!(r.code, code::BAD_IMAGE);
    assert!(r.stderr.contains("outside guest RAM"), "{}", r.stderr);
}

#[test]
fn ram_too_small_or_absurd() {
    for mem in ["1", "999999"] {
        let r = nestbed(&["run", "--guest", "hello", "--mem", mem]);
        assert_eq!(r.code, code::CONFIG, "{}", r.stderr);
        assert!(r.stderr.contains(&format!("--mem {mem}")), "{}", r.stderr);
    }
}

#[test]
fn unwritable_serial_path() {
    let r = nestbed(&["run", "--guest", "hello", "--serial", "/nonexistent/dir/console.txt"]);
    assert_eq!(r.code, code::CONFIG);
    assert!(r.stderr.contains("/nonexistent/dir/console.txt"), "{}", r.stderr);
}

#[test]
fn bad_flag() {
    let r = nestbed(&["run", "--no-such-flag"]);
    assert_eq!(r.code, code::CONFIG);
}

#[test]
fn timeout_stops_the_guest() {
    let r = nestbed(&["run", "--guest", "exit-code", "--cmdline", "spin", "--timeout", "1", "--stats"]);
    assert_eq!(r.code, code::TIMEOUT, "{}", r.stderr);
    assert!(r.stdout.contains("spinning forever"));
    assert!(r.stderr.contains("timeout"), "{}", r.stderr);
    assert!(r.stderr.contains("total:"), "statistics are printed on a timeout too: {}", r.stderr);
}

#[test]
fn sigint_stops_cleanly_with_statistics() {
    let (code, stderr) = signal_a_spinning_guest(libc::SIGINT, &["--stats"]);
    assert_eq!(code, Some(code::INTERRUPTED), "{stderr}");
    assert!(stderr.contains("total:"), "{stderr}");
}

#[test]
fn bad_vmx_msr() {
    for (arg, want) in [
        ("0x492=1", "0x492 is not a VMX capability MSR"),
        ("0xc0000080=0", "is not a VMX capability MSR"),
        ("0x486", "expected INDEX=VALUE"),
        ("0x486=0xzz", "VALUE `0xzz` is not"),
        ("0x486=18446744073709551616", "is not a 64-bit number"),
    ] {
        let r = nestbed(&["run", "--guest", "hello", "--vmx-msr", "0x486=0x21", "--vmx-msr", arg]);
        assert_eq!(r.code, code::CONFIG, "{arg}: {}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{arg}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("--vmx-msr {arg}")) && r.stderr.contains(want), "{arg}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "the guest must not run: {}", r.stdout);
    }
}

#[test]
fn patch_report_of_a_bad_image() {
    let p = write("patch-notelf.bin", b"just some text, not a kernel");
    let r = nestbed(&["patch-report", &p]);
    assert_eq!(r.code, code::BAD_IMAGE);
    assert!(r.stderr.contains(&p) && r.stderr.contains("not an ELF file"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = nestbed(&["patch-report", "/nonexistent/kernel.elf"]);
    assert_eq!(r.code, code::CONFIG);
    let r = nestbed(&["patch-report", "vmx-basic"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("VMLAUNCH") && r.stdout.contains(" sites"), "{}", r.stdout);
}

/// Runs the spinning guest with `args`, waits for its readiness line, sends `sig`, and returns
/// the exit code and stderr.
fn signal_a_spinning_guest(sig: libc::c_int, args: &[&str]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nestbed"))
        .args(["run", "--guest", "exit-code", "--cmdline", "spin", "--timeout", "60"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.contains("spinning forever") {
        line.clear();
    }
    assert!(line.contains("spinning forever"), "no readiness line");
    // SAFETY: kill(2) touches no memory of ours; the child is not waited for yet, so its pid
    // still names it.
    unsafe { libc::kill(child.id() as i32, sig) };
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn sighup_stops_cleanly_keeping_the_trace_and_statistics() {
    let trace = std::env::temp_dir().join(format!("nestbed-hup-{}.jsonl", std::process::id()));
    let (code, stderr) = signal_a_spinning_guest(libc::SIGHUP, &["--stats", "--trace", trace.to_str().unwrap()]);
    assert_eq!(code, Some(code::INTERRUPTED), "{stderr}");
    assert!(stderr.contains("total:"), "{stderr}");
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert!(lines.lines().count() > 0 && lines.ends_with('\n'), "the trace is kept whole");
    let _ = std::fs::remove_file(&trace);
}

#[test]
fn an_outside_sigalrm_is_an_interruption_not_the_timeout() {
    let (code, stderr) = signal_a_spinning_guest(libc::SIGALRM, &[]);
    assert_eq!(code, Some(code::INTERRUPTED), "{stderr}");
    assert!(!stderr.contains("timeout"), "{stderr}");
}

#[test]
fn an_endless_file_is_refused_not_read_until_memory_runs_out() {
    for args in [
        &["run", "--guest", "/dev/zero"][..],
        &["run", "--guest", "hello", "--script", "/dev/zero"],
        &["scenario", "run", "/dev/zero"],
        &["trace", "report", "/dev/zero"],
    ] {
        let r = nestbed(args);
        assert_eq!(r.code, code::CONFIG, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("/dev/zero: larger than"), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim_end().lines().count(), 1, "{args:?}: {}", r.stderr);
    }
}

#[test]
fn a_trace_on_a_full_disk_ends_the_run_with_one_error() {
    let r = nestbed(&["run", "--guest", "io-bench", "--cmdline", "2000", "--trace", "/dev/full"]);
    assert_eq!(r.code, code::CONFIG, "{}", r.stderr);
    assert!(r.stderr.contains("/dev/full: No space left on device"), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one error, not a warning per exit: {}", r.stderr);
}

#[test]
fn statistics_and_script_prints_on_a_full_stderr_do_not_crash_nestbed() {
    let script = std::env::temp_dir().join(format!("nestbed-print-{}.rhai", std::process::id()));
    std::fs::write(&script, "fn on_exit(e) { print(\"exit\"); }\n").unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nestbed"))
        .args(["run", "--guest", "hello", "--stats", "--script", script.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the guest's own exit code, not a panic (101)");
    let _ = std::fs::remove_file(&script);
}

#[test]
fn code_outside_ram_is_reported_with_its_address() {
    // A multiboot a.out-kludge header (flag 16) whose entry point lies past the end of a 64 MiB
    // guest's RAM.
    let (magic, flags) = (0x1BAD_B002u32, 0x0001_0000u32);
    let fields = [magic, flags, magic.wrapping_add(flags).wrapping_neg(), 0x10_0000, 0x10_0000, 0, 0, 0x700_0000];
    let mut image: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    image.extend([0x90; 64]);
    let d = tmpdir("bad-entry");
    let path = d.join("entry.bin");
    std::fs::write(&path, image).unwrap();
    let r = nestbed(&["run", "--guest", path.to_str().unwrap(), "--mem", "64"]);
    assert_eq!(r.code, code::GUEST_UNSUPPORTED, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("L1 cannot run the code at RIP 0x7000000 (guest-physical 0x7000000, outside guest RAM (64 MiB))"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_scripts_rip_write_on_an_io_exit_takes_effect() {
    // KVM completes the OUT at the next KVM_RUN and would move RIP on from the script's value.
    let d = tmpdir("rip-on-io");
    let script = d.join("rip.rhai");
    std::fs::write(
        &script,
        "let done = false;\nfn on_exit(e) { if !done && e.reason == \"IO_INSTRUCTION\" { done = true; e.rip = 0x40000000; } }\n",
    )
    .unwrap();
    let r = nestbed(&["run", "--guest", "hello", "--script", script.to_str().unwrap()]);
    assert_eq!(r.code, code::GUEST_UNSUPPORTED, "{}", r.stderr);
    assert!(r.stderr.contains("L1 cannot run the code at RIP 0x40000000"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_elf_whose_segments_add_up_to_more_than_ram_is_refused_at_once() {
    // Overlapping PT_LOAD segments of 100 MiB each: loading 20,000 of them would write guest
    // RAM twenty thousand times over.
    for (n, want) in [
        (200u16, "the 200 loadable segments add up to".to_string()),
        (20_000, "20000 program headers (nestbed loads at most 256)".to_string()),
    ] {
        let path = many_segments(n);
        let r = nestbed(&["run", "--guest", &path, "--mem", "256"]);
        assert_eq!(r.code, code::BAD_IMAGE, "{}", r.stderr);
        assert!(r.stderr.contains(&want), "{}", r.stderr);
    }
}

/// A 32-bit multiboot ELF with `n` PT_LOAD headers of 100 MiB each, all at 1 MiB.
fn many_segments(n: u16) -> String {
    let phoff = 8192usize;
    let mut image = vec![0u8; phoff + usize::from(n) * 32];
    image[..16].copy_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    let mut header = vec![];
    for (v, size) in [(2u32, 2), (3, 2), (1, 4), (0x10_0000, 4), (phoff as u32, 4), (0, 4), (0, 4)] {
        header.extend_from_slice(&v.to_le_bytes()[..size]);
    }
    for v in [52u16, 32, n, 40, 0, 0] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    image[16..16 + header.len()].copy_from_slice(&header);
    let (magic, flags) = (0x1BAD_B002u32, 0u32);
    for (i, v) in [magic, flags, magic.wrapping_add(flags).wrapping_neg()].iter().enumerate() {
        image[64 + 4 * i..68 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    for i in 0..usize::from(n) {
        let ph = [1u32, 0, 0x10_0000, 0x10_0000, 0, 100 << 20, 5, 0x1000];
        for (k, v) in ph.iter().enumerate() {
            let at = phoff + 32 * i + 4 * k;
            image[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    write(&format!("many-{n}.elf"), &image)
}

#[test]
fn the_trace_stops_at_trace_limit_in_whole_lines_and_the_run_goes_on() {
    let trace = tmpdir("trace-limit").join("t.jsonl");
    let t = trace.to_str().unwrap();
    let r =
        nestbed(&["run", "--guest", "io-bench", "--cmdline", "2000", "--trace", t, "--trace-limit", "10K", "--stats"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("the trace reached --trace-limit (10240 bytes) after"), "{}", r.stderr);
    assert!(r.stderr.contains("trace: stopped at --trace-limit 10240 bytes"), "{}", r.stderr);
    assert!(r.stderr.contains("total: 20"), "every exit still counts: {}", r.stderr);
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.len() <= 10240 && text.len() > 5000 && text.ends_with('\n'), "{}", text.len());
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    let r = nestbed(&["run", "--guest", "hello", "--trace", t, "--trace-limit", "1T"]);
    assert_eq!(r.code, code::CONFIG, "{}", r.stderr);
    assert!(r.stderr.contains("--trace-limit") && r.stderr.contains("`1T` is not a size"), "{}", r.stderr);
}

/// Starts nestbed with `args`, reads its stderr until a line contains `ready`, sends `sig` (none
/// for 0), and returns the exit code with all of stderr. A run still going a minute later is
/// killed and reported as `None`: the stop did not work.
fn signal_when_ready(args: &[&str], ready: &str, sig: libc::c_int) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nestbed"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains(ready) {
            break;
        }
        line.clear();
    }
    assert!(seen.contains(ready), "no readiness line `{ready}`: {seen}");
    if sig != 0 {
        // SAFETY: kill(2) touches no memory of ours; the child is not waited for yet.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            // SAFETY: as above; the child is reaped only after this thread is joined.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    stderr.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    (status.code(), seen)
}

fn script(name: &str, text: &str) -> String {
    write(name, text.as_bytes())
}

#[test]
fn a_chain_of_60000_closures_is_refused_not_a_stack_overflow() {
    let p = script("chain.rhai", "let f = || 0;\nfor i in 0..60000 { let g = f; f = || g.call() + 1; }\n");
    let r = nestbed(&["run", "--guest", "hello", "--script", &p]);
    assert_eq!(r.code, code::SCRIPT_RUNTIME, "{}", r.stderr);
    assert!(r.stderr.contains("deeper than 10000 levels"), "{}", r.stderr);
}

#[test]
fn deep_values_a_hook_builds_and_drops_do_not_overflow_the_stack() {
    // Each builds and drops, inside one call, values nested as deep as the call's budget goes
    // (Rhai re-sizes the whole nested array on each assignment, so arrays reach the time
    // limit first).
    for (name, body) in [
        ("closures.rhai", "let f = || 0; for i in 0..1000000 { let g = f; f = || g.call() + 1; }"),
        ("arrays.rhai", "let a = []; for i in 0..1000000 { a = [a]; }"),
    ] {
        let p = script(name, &format!("fn on_start() {{ {body} }}\n"));
        let r = nestbed(&["run", "--guest", "hello", "--script", &p, "--script-time", "3000"]);
        assert_eq!(r.code, code::SCRIPT_RUNTIME, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("on_start ran over the limit of"), "{name}: {}", r.stderr);
    }
}

#[test]
fn a_hook_over_script_time_is_a_script_error() {
    let p = script("slow.rhai", "fn on_exit(e) { loop {} }\n");
    let r = nestbed(&["run", "--guest", "hello", "--script", &p, "--script-ops", "0", "--script-time", "300"]);
    assert_eq!(r.code, code::SCRIPT_RUNTIME, "{}", r.stderr);
    assert!(r.stderr.contains("on_exit ran over the limit of 300 ms per call (--script-time)"), "{}", r.stderr);
}

#[test]
fn signals_and_the_timeout_stop_an_endless_hook() {
    let p = script(
        "endless.rhai",
        "fn on_exit(e) { print(\"looping\"); loop {} }\nfn on_stop() { print(\"on_stop ran\"); }\n",
    );
    let trace = tmpdir("endless").join("t.jsonl");
    let trace = trace.to_str().unwrap();
    for mode in ["inline", "pipelined"] {
        let args = [
            "run",
            "--guest",
            "hello",
            "--script",
            &p,
            "--script-ops",
            "0",
            "--script-time",
            "0",
            "--stats",
            "--script-mode",
            mode,
            "--trace",
            trace,
        ];
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let (code, stderr) = signal_when_ready(&args, "looping", sig);
            assert_eq!(code, Some(code::INTERRUPTED), "{mode} {sig}: {stderr}");
            assert!(stderr.contains("total:") && stderr.contains("on_stop ran"), "{mode} {sig}: {stderr}");
            let lines = std::fs::read_to_string(trace).unwrap();
            assert!(lines.ends_with('\n'), "{mode} {sig}: the trace is kept whole");
        }
        let mut timed = args.to_vec();
        timed.extend(["--timeout", "1"]);
        let (code, stderr) = signal_when_ready(&timed, "looping", 0);
        assert_eq!(code, Some(code::TIMEOUT), "{mode}: {stderr}");
        assert!(stderr.contains("total:"), "{mode}: {stderr}");
    }
}

#[test]
fn the_timeout_stops_top_level_code_of_20000_nested_arrays() {
    // Rhai sizes the whole nested array on every assignment: quadratic, minutes of work.
    let p = script("nest.rhai", "let a = []; for i in 0..20000 { a = [a]; }\n");
    let r = nestbed(&["run", "--guest", "hello", "--script", &p, "--script-time", "0", "--timeout", "1"]);
    assert_eq!(r.code, code::TIMEOUT, "{}", r.stderr);
    assert!(r.stderr.contains("top-level code stopped by --timeout"), "{}", r.stderr);
}

#[test]
fn script_register_writes_the_architecture_forbids_are_script_errors() {
    for (name, body, want) in [
        ("rflags.rhai", "e.rflags = 0;", "e.rflags = 0x0: RFLAGS 0x0: bit 1 is reserved"),
        ("rflags2.rhai", "e.rflags = 0x8202;", "reserved bits 0x8000 must be 0"),
        ("rip.rhai", "e.rip = 0x800000000000;", "e.rip = 0x800000000000: RIP 0x800000000000 is not canonical"),
    ] {
        let p = script(name, &format!("fn on_exit(e) {{ {body} }}\n"));
        let r = nestbed(&["run", "--guest", "hello", "--script", &p, "--script-mode", "inline"]);
        assert_eq!(r.code, code::SCRIPT_RUNTIME, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{name}: {}", r.stderr);
    }
}
