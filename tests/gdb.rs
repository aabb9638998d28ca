//! Real gdb, in batch mode, against nestbed's gdb server: breakpoints in L2 code and thread 2,
//! stepping across VM exits and entries, watchpoints, registers, the VMCS through `monitor`,
//! Ctrl-C, and clients that misbehave. gdb is required (CI installs it).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tmpdir;

const NESTBED: &str = env!("CARGO_BIN_EXE_nestbed");

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `nestbed run --guest GUEST --gdb 127.0.0.1:PORT` plus `extra`, and waits until it
/// listens.
fn serve(name: &str, guest: &str, extra: &[&str]) -> Server {
    let dir = tmpdir(name);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(NESTBED)
        .args(["run", "--guest", guest, "--timeout", "90", "--gdb", &addr])
        .args(extra)
        .stdout(std::fs::File::create(dir.join("console")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("starting nestbed");
    let t = Instant::now();
    while !std::fs::read_to_string(dir.join("stderr")).unwrap_or_default().contains("gdb server on") {
        assert!(t.elapsed() < Duration::from_secs(30), "nestbed did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, port, dir }
}

impl Server {
    /// Waits for nestbed to end; returns its exit code, console and stderr.
    fn finish(mut self) -> (i32, String, String) {
        let t = Instant::now();
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            if t.elapsed() > Duration::from_secs(90) {
                let _ = self.child.kill();
                panic!("nestbed did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let out = (code, read("console"), read("stderr"));
        let _ = std::fs::remove_dir_all(&self.dir);
        out
    }
}

fn symbols(guest: &str) -> String {
    let out = Command::new(NESTBED).args(["guests", "--symbols", guest]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs gdb in batch mode with the command file `script` (after connecting) on `guest`'s
/// symbols; returns what it printed.
fn gdb(server: &Server, guest: &str, script: &str) -> String {
    gdb_with(server, guest, script, None)
}

/// `gdb`, sending gdb a SIGINT (Ctrl-C) after `interrupt_after` when given.
fn gdb_with(server: &Server, guest: &str, script: &str, interrupt_after: Option<Duration>) -> String {
    let file = server.dir.join("cmds.gdb");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(&file, format!("target remote 127.0.0.1:{}\n{script}\n", server.port)).unwrap();
    let mut child = Command::new("gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(repo.join("gdb/nestbed.gdb"))
        .arg("-x")
        .arg(&file)
        .arg(symbols(guest))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb is required for these tests (apt-get install gdb)");
    let t = Instant::now();
    let mut interrupt_after = interrupt_after;
    while child.try_wait().unwrap().is_none() {
        if interrupt_after.is_some_and(|d| t.elapsed() > d) {
            interrupt_after = None;
            // SAFETY: kill(2) touches no memory of ours; try_wait just found the child running
            // and did not reap it, so its pid still names it.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("gdb did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The value printed after `label` (e.g. "GUEST_RIP = 0x100118").
fn hex_after(text: &str, label: &str) -> u64 {
    let at = text.find(label).unwrap_or_else(|| panic!("{label:?} not in:\n{text}")) + label.len();
    let word: String = text[at..].trim_start().chars().take_while(|c| c.is_ascii_hexdigit() || *c == 'x').collect();
    u64::from_str_radix(word.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("no number after {label:?}"))
}

#[test]
fn breakpoint_in_l2_code_stops_thread_2_and_the_vmcs_agrees() {
    let s = serve("gdb-l2bp", "nested-demo", &["--gdb-wait"]);
    let out = gdb(
        &s,
        "nested-demo",
        "break nested_demo::l2_main\ncontinue\ninfo threads\nprintf \"pc=%#lx\\n\", $pc\nvmcs GUEST_RIP\ndelete",
    );
    assert!(out.contains("Thread 2 hit Breakpoint 1, nested_demo::l2_main"), "{out}");
    assert!(out.contains("L1 vcpu0 (waiting)") && out.contains("L2 vmcs@0x"), "{out}");
    assert_eq!(hex_after(&out, "pc="), hex_after(&out, "GUEST_RIP = "), "{out}");
    let (code, console, _) = s.finish();
    assert_eq!(code, 0, "after gdb detaches the guest runs to its end");
    assert!(console.contains("L1 agrees"), "{console}");
}

/// Turtles: thread 2 is the guest L1 last entered, so gdb stops in L2's code (a hypervisor, on
/// L1's VMCS01) and later in L3's (on VMCS02), each with the VMCS L1 entered it with.
#[test]
fn turtles_l2_and_l3_code_stop_thread_2() {
    let s = serve("gdb-turtles", "vmx-turtles", &["--gdb-wait"]);
    let out = gdb(
        &s,
        "vmx-turtles",
        "break vmx_turtles::l2_main\nbreak vmx_turtles::l3_main\ncontinue\ninfo threads\nprintf \"l2pc=%#lx\\n\", $pc\n\
         vmcs GUEST_RIP\ncontinue\ninfo threads\nprintf \"l3pc=%#lx\\n\", $pc\ndelete",
    );
    // The breakpoint is past l2_main's prologue, in code inlined into it.
    assert!(out.contains("Thread 2 hit Breakpoint 1, vmx_turtles::"), "{out}");
    assert!(out.contains("Thread 2 hit Breakpoint 2, vmx_turtles::l3_main"), "{out}");
    assert_eq!(hex_after(&out, "l2pc="), hex_after(&out, "GUEST_RIP = "), "{out}");
    let vmcs: std::collections::BTreeSet<&str> =
        out.split("L2 vmcs@").skip(1).filter_map(|t| t.split_whitespace().next()).collect();
    assert_eq!(vmcs.len(), 2, "L2 and L3 run on two VMCSs: {out}");
    let (code, console, _) = s.finish();
    assert_eq!(code, 0, "{console}");
    assert!(console.contains("vmx-turtles: all checks passed"), "{console}");
}

#[test]
fn stepi_leaves_l2_at_host_rip_and_reenters_at_guest_rip() {
    let s = serve("gdb-step", "nested-demo", &["--gdb-wait"]);
    let script = r#"break nested_demo::l2_main
continue
delete
set $n = 0
while $_thread == 2 && $n < 5000
  stepi
  set $n = $n + 1
end
printf "in L1 thread=%d pc=%#lx\n", $_thread, $pc
vmcs HOST_RIP
vmcs VM_EXIT_REASON
set $m = 0
while $_thread == 1 && $m < 50000
  stepi
  set $m = $m + 1
end
printf "in L2 thread=%d pc=%#lx\n", $_thread, $pc
vmcs GUEST_RIP"#;
    let out = gdb(&s, "nested-demo", script);
    assert!(out.contains("in L1 thread=1"), "{out}");
    assert_eq!(hex_after(&out, "in L1 thread=1 pc="), hex_after(&out, "HOST_RIP = "), "{out}");
    assert_eq!(hex_after(&out, "VM_EXIT_REASON = "), 30, "an I/O exit took L2 to L1\n{out}");
    assert!(out.contains("in L2 thread=2"), "{out}");
    assert_eq!(hex_after(&out, "in L2 thread=2 pc="), hex_after(&out, "GUEST_RIP = "), "{out}");
    assert_eq!(s.finish().0, 0);
}

#[test]
fn watchpoint_on_l2_data_and_hardware_breakpoint_in_l1() {
    let s = serve("gdb-watch", "nested-demo", &["--gdb-wait"]);
    let script = "hbreak rt::vmx::vm_run\ncontinue\ninfo registers efer cr0 cr3\ndelete\n\
                  set language c\nwatch *(unsigned int *) &nested_demo::L2_RESULT\nset language auto\ncontinue\ninfo threads\n\
                  delete\nset language c\nawatch *(unsigned int *) &nested_demo::L2_RESULT\ncontinue";
    let out = gdb(&s, "nested-demo", script);
    assert!(out.contains("Breakpoint 1, rt::vmx::vm_run"), "{out}");
    assert!(out.contains("Thread 1 hit") || out.contains("Breakpoint 1, rt::vmx::vm_run"), "{out}");
    assert_eq!(hex_after(&out, "efer") & 0x500, 0x500, "64-bit L1: LME and LMA\n{out}");
    assert!(out.contains("Thread 2 hit Hardware watchpoint 2"), "{out}");
    assert!(out.contains("Old value = 0") && out.contains("New value = 832040"), "{out}");
    // The access watchpoint then sees L2 read the value back.
    assert!(out.contains("Thread 2 hit Hardware access (read/write) watchpoint 3"), "{out}");
    assert!(out.contains("Value = 832040"), "{out}");
    assert_eq!(s.finish().0, 0);
}

#[test]
fn monitor_commands_and_break_on_exit() {
    let d = tmpdir("gdb-monitor-files");
    let trace = d.join("t.jsonl");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/count-exits.rhai");
    let s = serve(
        "gdb-monitor",
        "nested-demo",
        &["--gdb-wait", "--trace", trace.to_str().unwrap(), "--script", script.to_str().unwrap()],
    );
    let cmds = "monitor help\nmonitor phys 0x100000 16\nmonitor script reload\nmonitor trace off\n\
                exit-break HLT L2\ncontinue\ninfo threads\nexits\nvmcs VM_EXIT_REASON\nmonitor events\nmonitor nonsense";
    let out = gdb(&s, "nested-demo", cmds);
    assert!(out.contains("break-on-exit REASON [L1|L2]"), "{out}");
    // The multiboot header at 1 MiB: magic 0x1badb002.
    assert!(out.contains("0x00100000: 02 b0 ad 1b"), "{out}");
    assert!(out.contains("reloaded 1 script(s)"), "{out}");
    assert!(out.contains("trace off"), "{out}");
    assert!(out.contains("break on HLT (12) at L2"), "{out}");
    assert!(out.contains("VM_EXIT_REASON = 0xc"), "stopped after L2's HLT reached L1\n{out}");
    assert!(out.contains("L2    HLT"), "the statistics table\n{out}");
    assert!(out.contains("unknown command 'nonsense'"), "{out}");
    // L1 after the VM exit: no blocking, nothing pending (the demo runs without interrupts).
    assert!(out.contains("L1: interruptibility 0x0, event in delivery or pending none"), "{out}");
    assert!(out.contains("L1's platform: interrupt pending none, NMI pending false"), "{out}");
    let (code, _, stderr) = s.finish();
    assert_eq!(code, 0);
    assert!(stderr.contains("break on exit: L2 HLT"), "{stderr}");
    // Tracing was off from the start: nothing written.
    assert_eq!(std::fs::read_to_string(&trace).unwrap().lines().count(), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_pipelined_script_has_seen_every_exit_when_gdb_stops() {
    // The script only observes, so it runs on its own thread; it is slow, so that thread is
    // thousands of exits behind when L2's HLT stops the guest, unless nestbed waits for it.
    let d = tmpdir("gdb-pipelined-files");
    let script = d.join("slow.rhai");
    std::fs::write(
        &script,
        "let n = 0;\nfn on_exit(e) {\n  let x = 0; for i in 0..200 { x += i; } n += 1;\n  \
         if e.level == \"L2\" && e.reason == \"HLT\" { print(`saw L2 HLT after ${n} exits`) }\n}\n",
    )
    .unwrap();
    let s = serve(
        "gdb-pipelined",
        "nested-demo",
        &["--gdb-wait", "--script", script.to_str().unwrap(), "--script-mode", "pipelined"],
    );
    let stderr = s.dir.join("stderr");
    let cmds = format!("exit-break HLT L2\ncontinue\nshell cat {}", stderr.display());
    let out = gdb(&s, "nested-demo", &cmds);
    assert!(out.contains("break on HLT (12) at L2"), "{out}");
    assert!(out.contains("saw L2 HLT after"), "the script's line is out when gdb stops\n{out}");
    let (code, _, _) = s.finish();
    assert_eq!(code, 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ctrl_c_interrupts_a_spinning_guest() {
    let s = serve("gdb-intr", "exit-code", &["--gdb-wait", "--cmdline", "spin", "--gdb-exit-on-detach"]);
    // Ctrl-C is SIGINT to gdb while `continue` waits: gdb sends the interrupt byte.
    let out = gdb_with(&s, "exit-code", "continue\ninfo threads\ndetach", Some(Duration::from_millis(1500)));
    assert!(out.contains("received signal SIGINT"), "{out}");
    assert!(out.contains("L1 vcpu0"), "{out}");
    let (code, _, stderr) = s.finish();
    assert_eq!(code, 130, "--gdb-exit-on-detach ends the run on detach\n{stderr}");
}

fn packet(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}")
}

/// Reads until `want` appears or a second passes.
fn read_until(c: &mut TcpStream, want: &str) -> String {
    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = String::new();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while !got.contains(want) && t.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    got
}

#[test]
fn malformed_packets_and_a_second_client_are_refused_cleanly() {
    let s = serve("gdb-robust", "hello", &["--gdb-wait"]);
    let mut first = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // A bad checksum is NACKed, garbage outside packets ignored; the stub still answers.
    first.write_all(b"$qSupported#00garbage").unwrap();
    assert!(read_until(&mut first, "-").contains('-'));
    first.write_all(packet("?").as_bytes()).unwrap();
    let reply = read_until(&mut first, "#");
    assert!(reply.contains("$T05") || reply.contains("$S05"), "{reply}");
    // A second client is told and closed while the first stays attached.
    let mut second = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let refused = read_until(&mut second, "#");
    assert!(refused.starts_with("$O"), "{refused}");
    first.write_all(packet("?").as_bytes()).unwrap();
    assert!(read_until(&mut first, "#").contains("05"));
    // Detach: the guest runs to its end.
    first.write_all(packet("D").as_bytes()).unwrap();
    drop(first);
    let (code, console, _) = s.finish();
    assert_eq!(code, 0);
    assert!(console.contains("Hello"), "{console}");
}

#[test]
fn a_non_loopback_address_warns() {
    let port = free_port();
    let out = Command::new(NESTBED)
        .args(["run", "--guest", "hello", "--timeout", "30", "--gdb", &format!("0.0.0.0:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("reachable from other machines"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "without --gdb-wait the guest runs while nobody attaches");
}

#[test]
fn l2_memory_reads_through_l1s_ept_and_registers_write() {
    // vmx-ept maps L2-physical 0x3000_0000 onto an L1 page holding 0x4d41474943210001; L1's own
    // 0x3000_0000 is beyond its RAM.
    let s = serve("gdb-ept", "vmx-ept", &["--gdb-wait"]);
    let script = "break vmx_ept_l2_read\ncontinue\nset language c\nx/gx 0x30000000\n\
                  set {unsigned long}0x30000010 = 0x1122334455667788\nx/gx 0x30000010\n\
                  set $r15 = 0x7777\nprintf \"r15=%#lx\\n\", $r15\nthread 1\nx/gx 0x30000000";
    let out = gdb(&s, "vmx-ept", script);
    assert!(out.contains("Thread 2 hit Breakpoint 1, 0x"), "{out}");
    assert!(out.contains("0x30000000:\t0x4d41474943210001"), "{out}");
    assert!(out.contains("0x30000010:\t0x1122334455667788"), "{out}");
    assert!(out.contains("r15=0x7777"), "{out}");
    assert!(out.contains("Cannot access memory at address 0x30000000"), "L1 has no such memory\n{out}");
    assert_eq!(s.finish().0, 0);
}

#[test]
fn the_guests_own_int3_reaches_its_idt_under_gdb() {
    let s = serve("gdb-int3", "fault", &["--gdb-wait", "--cmdline", "int3"]);
    let out = gdb(&s, "fault", "continue");
    assert!(out.contains("exited with code 0144"), "the guest's #BP handler ended it with 100\n{out}");
    let (code, console, _) = s.finish();
    assert_eq!(code, 100);
    assert!(console.contains("unhandled exception #BP (vector 3)"), "{console}");
}

#[test]
fn stepi_over_an_out_stops_at_the_next_instruction() {
    // KVM completes `out` before exiting: the step is over then, not one instruction later.
    let dump = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(symbols("hello")).output().unwrap();
    let text = String::from_utf8_lossy(&dump.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.contains("out    %al,(%dx)")).expect("an out in hello");
    let addr = |l: &str| u64::from_str_radix(l.trim().split(':').next().unwrap().trim(), 16).unwrap();
    let (out, next, after) = (addr(lines[at]), addr(lines[at + 1]), addr(lines[at + 2]));
    let s = serve("gdb-step-out", "hello", &["--gdb-wait"]);
    let script = format!(
        "break *{out:#x}\ncontinue\ndelete\nstepi\nprintf \"one=%#lx\\n\", $pc\nstepi\nprintf \"two=%#lx\\n\", $pc"
    );
    let got = gdb(&s, "hello", &script);
    assert_eq!(hex_after(&got, "one="), next, "{got}");
    assert_eq!(hex_after(&got, "two="), after, "{got}");
    assert_eq!(s.finish().0, 0);
}

#[test]
fn a_breakpoint_on_a_patched_instruction_stops_there_and_shows_the_original() {
    // With --patch-sensitive on, vmx_bench_vmreads's VMREAD is an int3 nestbed wrote at load;
    // gdb's breakpoint on it stops there, gdb reads the original instruction, and once the
    // breakpoint is gone the patched trap runs the VMREAD.
    let s = serve("gdb-patched", "vmx-bench", &["--cmdline", "vmread 5", "--patch-sensitive", "on", "--gdb-wait"]);
    let out = gdb(&s, "vmx-bench", "break vmx_bench_vmreads\ncontinue\nx/i $pc\ndelete\ncontinue");
    assert!(out.contains("Breakpoint 1, "), "{out}");
    assert!(out.lines().any(|l| l.contains("=>") && l.contains("vmread")), "{out}");
    let (code, console, stderr) = s.finish();
    assert_eq!(code, 0, "{console}\n{stderr}");
}

#[test]
fn after_an_l2_out_exit_l2s_pc_is_guest_rip_and_exits_names_vmcs_fields() {
    // On hardware an I/O exit saves the RIP of the OUT itself in GUEST_RIP (SDM 28.3.3); KVM
    // has already completed the OUT in L2's vCPU, which must not show through.
    // Without the enlightened VMCS, L1's VMREADs and VMWRITEs are exits `exits` can name.
    let s = serve("gdb-l2-out", "nested-demo", &["--gdb-wait", "--no-evmcs"]);
    // L2's first I/O exits (the UART's status port) are nestbed's; stop at the first that
    // reached L1, which leaves thread 1 running.
    let script = "exit-break IO_INSTRUCTION L2\ncontinue\nset $n = 0\nwhile $_thread == 2 && $n < 100\n  continue\n  \
                  set $n = $n + 1\nend\nvmcs VM_EXIT_REASON\nvmcs EXIT_QUALIFICATION\nvmcs GUEST_RIP\n\
                  thread 2\nprintf \"l2pc=%#lx\\n\", $pc\nx/i $pc\nexits";
    let out = gdb(&s, "nested-demo", script);
    assert_eq!(hex_after(&out, "VM_EXIT_REASON = "), 30, "{out}");
    assert_eq!(hex_after(&out, "EXIT_QUALIFICATION = ") & 8, 0, "an OUT (SDM Table 28-5)\n{out}");
    assert_eq!(hex_after(&out, "l2pc="), hex_after(&out, "GUEST_RIP = "), "{out}");
    assert!(out.lines().any(|l| l.contains("=>") && l.contains("out ")), "pc is at the OUT\n{out}");
    // `exits` lists the last exits with the VMCS fields L1's VMREADs and VMWRITEs named.
    let last = &out[out.find("last exits:").unwrap_or_else(|| panic!("{out}"))..];
    assert!(last.contains("L1 VMRESUME") || last.contains("L1 VMLAUNCH"), "{last}");
    assert!(last.contains("L2 IO_INSTRUCTION") && last.contains("-> L1"), "{last}");
    assert!(
        last.lines().any(|l| (l.contains("L1 VMREAD") || l.contains("L1 VMWRITE")) && l.contains("_RIP (0x")),
        "a VMREAD or VMWRITE of a RIP field, by name\n{last}"
    );
    assert_eq!(s.finish().0, 0);
}

#[test]
fn register_writes_the_architecture_forbids_are_refused_and_the_guest_runs_on() {
    // Stopped in IA-32e mode: CR0.PG=0 there, or PE=0 with PG=1, would make KVM_RUN fail.
    let s = serve("gdb-cr0", "hello", &["--gdb-wait"]);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // Each command a separate -ex, so that gdb goes on after the refusals.
    let mut args =
        vec!["-batch".to_string(), "-nx".into(), "-x".into(), repo.join("gdb/nestbed.gdb").display().to_string()];
    for cmd in [
        &format!("target remote 127.0.0.1:{}", s.port)[..],
        "hbreak rt_guest_main",
        "continue",
        "delete",
        "p/x $cr0",
        "set $cr0 = 0",
        "set $cr0 = 0x80000000",
        "set $eflags = 0",
        "p/x $cr0",
        "set $rax = 0x4242",
        "p/x $rax",
        "continue",
    ] {
        args.extend(["-ex".to_string(), cmd.to_string()]);
    }
    args.push(symbols("hello"));
    let out = Command::new("gdb").args(&args).output().expect("gdb is required for these tests");
    let out = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.matches("remote failure reply 'E16'").count(), 3, "{out}");
    let cr0: Vec<&str> = out.lines().filter(|l| l.starts_with("$1 =") || l.starts_with("$2 =")).collect();
    assert!(cr0.len() == 2 && cr0[0][4..] == cr0[1][4..], "CR0 is unchanged: {cr0:?}\n{out}");
    assert!(out.contains("= 0x4242"), "a valid write still works\n{out}");
    let (code, console, stderr) = s.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(console.contains("Hello"), "{console}");
    assert!(stderr.contains("gdb register write refused: CR0 0x0 with EFER"), "{stderr}");
    assert!(stderr.contains("paging (PG=1) needs protected mode (PE=1)"), "{stderr}");
    assert!(stderr.contains("RFLAGS 0x0: bit 1 is reserved"), "{stderr}");
}
