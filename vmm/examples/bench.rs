//! `just bench`: exit costs measured side by side in one run, written as BENCHMARKS.md.
//!
//! - raw, same guest: the `io-bench` guest, loaded and put in its multiboot entry state as
//!   nestbed does, then driven by a bare kvm-ioctls loop (no sync regs, no handling): the floor
//!   nestbed is compared with, since the cost of a round trip depends on the guest's mode;
//! - raw, real mode: a four-byte real-mode `out` loop, for reference;
//! - nestbed: the `io-bench` guest doing the same exits through nestbed's whole exit path,
//!   without and with scripts;
//! - a trapped VMREAD: the `vmx-bench` guest's L1 executing VMREADs (`vmread N`);
//! - a nested exit: the `vmx-bench` guest's L2 doing `out`, each exit reflected to L1, which
//!   only executes VMRESUME (`l2exit N`);
//! - a nested exit handled as a hypervisor does (`l2handle N`: four fields read, GUEST_RIP
//!   written), with VMREAD/VMWRITE (`--no-evmcs`) and with the enlightened VMCS (EVMCS.md);
//! - a nested hypervisor's VMREAD with VMCS shadowing (`l2vmread N exit|shadow`): exiting to
//!   L1, or served from the shadow VMCS.
//!
//! Every loop, raw or guest, takes three instructions per operation (four for a nested exit):
//! some hosts' KVM emulates each guest instruction, at about a microsecond each.
//!
//! Each cost is a difference of two runs (N2 - N1 exits) so boot time cancels out.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use nestbed::runner::{self, RunConfig};
use nestbed::script::ScriptMode;
use nestbed::trace::{Phase, Phases};

fn raw_loop(exits: u64) -> f64 {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("create vm");
    let size = 0x10000usize;
    // SAFETY: a new anonymous mapping with a null hint and no MAP_FIXED cannot replace memory
    // in use; MAP_FAILED is checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // Real mode: `out 0x80, al; nop; jmp $-3`: three instructions per exit, as in io-bench.
    let code = [0xe6u8, 0x80, 0x90, 0xeb, 0xfb];
    // SAFETY: the mapping is `size` (64 KiB) writable bytes, so 0x1000 + code.len() is in bounds,
    // and it does not overlap `code` on the stack.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM (never unmapped in this process).
    unsafe { vm.set_user_memory_region(region).expect("memslot") };
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    let t = Instant::now();
    for _ in 0..exits {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    t.elapsed().as_secs_f64()
}

/// The io-bench guest in its multiboot entry state on a bare KVM vCPU, with its VM (which
/// must outlive the vCPU).
fn raw_io_bench(exits: u64) -> (nestbed::machine::Vm, kvm_ioctls::VcpuFd) {
    use nestbed::machine::{loader, GuestRam, Vm};
    let image = nestbed::guests::find("io-bench").expect("io-bench guest");
    let ram = GuestRam::new(128).expect("guest RAM");
    let boot = loader::load(&ram, image, &format!("io-bench {exits}")).expect("loading io-bench");
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = Vm::new(&kvm, ram).expect("VM");
    let mut vcpu = vm.create_vcpu(&kvm, 0, true, &[]).expect("vCPU");
    vcpu.prime().expect("registers");
    nestbed::runner::boot::set_entry_state(&mut vcpu, &boot);
    let (regs, sregs) = (*vcpu.regs(), *vcpu.sregs());
    let fd = vcpu.into_fd();
    fd.set_regs(&regs).expect("KVM_SET_REGS");
    fd.set_sregs(&sregs).expect("KVM_SET_SREGS");
    (vm, fd)
}

fn raw_same_guest(exits: u64) -> f64 {
    let (_vm, mut fd) = raw_io_bench(exits);
    let t = Instant::now();
    loop {
        match fd.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0xf4, _) => break,
            VcpuExit::IoOut(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    t.elapsed().as_secs_f64()
}

/// The floor of a nested round trip on this host: two VMs' vCPUs run in turn, one port-I/O
/// exit each per operation, as L2 and L1 alternate (nothing else is done between them).
fn raw_two_vms(n: u64) -> f64 {
    let (_a_vm, mut a) = raw_io_bench(n);
    let (_b_vm, mut b) = raw_io_bench(n);
    let t = Instant::now();
    'done: loop {
        for fd in [&mut a, &mut b] {
            match fd.run().expect("KVM_RUN") {
                VcpuExit::IoOut(0xf4, _) => break 'done,
                VcpuExit::IoOut(..) => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }
    t.elapsed().as_secs_f64()
}

fn nestbed_loop(exits: u64) -> f64 {
    nestbed_scripted(exits, None)
}

/// Wall time of one nestbed run of `guest` with command line `args n`.
fn nestbed_run(guest: &str, args: &str, n: u64) -> f64 {
    nestbed_run_phases(guest, args, n).0
}

/// Wall time and time per phase of one nestbed run of `guest` with command line `args n`.
fn nestbed_run_phases(guest: &str, args: &str, n: u64) -> (f64, Phases) {
    let image = nestbed::guests::find(guest).unwrap_or_else(|| panic!("{guest} guest")).to_vec();
    let mut cfg = RunConfig::new(guest, image);
    cfg.cmdline = format!("{args} {n}").trim().to_string();
    cfg.console = Some(Box::new(std::io::sink()));
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "{guest} {args} {n}");
    (t.elapsed().as_secs_f64(), report.stats.phases)
}

fn vmread(n: u64) -> f64 {
    nestbed_run("vmx-bench", "vmread", n)
}

/// Wall time and exits of one vmx-bench run with command line `args n`, with or without the
/// enlightened VMCS.
fn vmx_bench_exits(args: &str, n: u64, evmcs: bool) -> (f64, u64) {
    let image = nestbed::guests::find("vmx-bench").expect("vmx-bench guest").to_vec();
    let mut cfg = RunConfig::new("vmx-bench", image);
    let (what, rest) = args.split_once(' ').unwrap_or((args, ""));
    cfg.cmdline = format!("{what} {n} {rest}").trim().to_string();
    cfg.console = Some(Box::new(std::io::sink()));
    cfg.evmcs = evmcs;
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "vmx-bench {args} {n}");
    (t.elapsed().as_secs_f64(), report.stats.total_exits())
}

fn l2handle_vmx(n: u64) -> f64 {
    vmx_bench_exits("l2handle", n, false).0
}

fn l2handle_evmcs(n: u64) -> f64 {
    vmx_bench_exits("l2handle", n, true).0
}

fn l2vmread_exit(n: u64) -> f64 {
    vmx_bench_exits("l2vmread exit", n, true).0
}

fn l2vmread_shadow(n: u64) -> f64 {
    vmx_bench_exits("l2vmread shadow", n, true).0
}

/// KVM exits per operation (difference of two runs), for the rows that avoid traps.
fn traps_table(m: (u64, u64)) -> String {
    let per = |args: &str, evmcs: bool| {
        let (a, b) = (vmx_bench_exits(args, m.0, evmcs).1, vmx_bench_exits(args, m.1, evmcs).1);
        (b - a) as f64 / (m.1 - m.0) as f64
    };
    let rows = [
        ("L2 exit handled by L1 with VMREAD/VMWRITE (`--no-evmcs`)", per("l2handle", false)),
        ("L2 exit handled by L1 with the enlightened VMCS", per("l2handle", true)),
        ("nested hypervisor's VMREAD exiting to L1 (shadowing, bitmap bit set)", per("l2vmread exit", true)),
        ("nested hypervisor's VMREAD served from the shadow VMCS (bitmap bit clear)", per("l2vmread shadow", true)),
    ];
    let mut text = String::from(
        "
## Traps per operation

The exits nestbed takes (every one a KVM round trip) per operation of the rows above, from its statistics: what the enlightened VMCS and VMCS shadowing avoid.

| operation | exits |
|---|---|
",
    );
    for (what, n) in rows {
        text.push_str(&format!(
            "| {what} | {n:.2} |
"
        ));
    }
    text.push_str(&format!(
        "
The enlightened VMCS avoids {:.2} traps per L2 exit L1 handles; VMCS shadowing avoids {:.2} per nested hypervisor's VMREAD (and the round trip through L1).
",
        rows[0].1 - rows[1].1,
        rows[2].1 - rows[3].1
    ));
    text
}

/// The same VMREADs patched at load into int3 traps (`--patch-sensitive on`): the path a host
/// that does not report VMX instructions to userspace takes.
fn vmread_patched(n: u64) -> f64 {
    let image = nestbed::guests::find("vmx-bench").expect("vmx-bench guest").to_vec();
    let mut cfg = RunConfig::new("vmx-bench", image);
    cfg.cmdline = format!("vmread {n}");
    cfg.console = Some(Box::new(std::io::sink()));
    cfg.patch = runner::PatchMode::On;
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "vmx-bench vmread {n} patched");
    assert!(report.stats.patched.is_some_and(|p| p.traps >= n), "the VMREADs were patched");
    t.elapsed().as_secs_f64()
}

fn l2exit(n: u64) -> f64 {
    nestbed_run("vmx-bench", "l2exit", n)
}

/// The same with L2's VMX-preemption timer and L1's APIC timer armed and idle.
fn l2exit_timers(n: u64) -> f64 {
    let image = nestbed::guests::find("vmx-bench").expect("vmx-bench guest").to_vec();
    let mut cfg = RunConfig::new("vmx-bench", image);
    cfg.cmdline = format!("l2exit {n} timers");
    cfg.console = Some(Box::new(std::io::sink()));
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "l2exit {n} timers");
    t.elapsed().as_secs_f64()
}

/// nestbed without scripts while another thread of the process keeps the other CPU busy
/// (`nap` zero) or wakes it every `nap` for 10 µs of work: what the second CPU's activity alone
/// costs the vCPU thread on this machine (pipelined scripts use that CPU).
fn nestbed_beside(exits: u64, nap: std::time::Duration) -> f64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let neighbor = std::thread::spawn(move || {
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(10) || nap.is_zero() && !flag.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            std::thread::sleep(nap);
        }
    });
    let t = nestbed_loop(exits);
    stop.store(true, Ordering::Relaxed);
    neighbor.join().expect("neighbor thread");
    t
}

/// nestbed's io-bench with the local APIC timer armed but far from firing.
fn nestbed_timer_armed(exits: u64) -> f64 {
    let image = nestbed::guests::find("io-bench").expect("io-bench guest").to_vec();
    let mut cfg = RunConfig::new("io-bench", image);
    cfg.cmdline = format!("{exits} timer");
    cfg.console = Some(Box::new(std::io::sink()));
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0));
    t.elapsed().as_secs_f64()
}

/// How late the APIC timer's interrupts reach L1 (the `platform` guest measures it against
/// the TSC): microseconds for one-shot, the third periodic tick and TSC-deadline.
fn timer_lateness() -> [f64; 3] {
    struct Console(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Console {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("console").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let image = nestbed::guests::find("platform").expect("platform guest").to_vec();
    let mut cfg = RunConfig::new("platform", image);
    cfg.console = Some(Box::new(Console(buf.clone())));
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "platform guest");
    let text = String::from_utf8_lossy(&buf.lock().expect("console")).into_owned();
    let us = |prefix: &str, before: &str| -> f64 {
        let line =
            text.lines().find(|l| l.contains(prefix) && l.contains(before)).unwrap_or_else(|| panic!("{prefix}"));
        let at = line.find(before).expect("marker");
        let num: String = line[..at].trim_end().chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        num.chars().rev().collect::<String>().parse().unwrap_or(f64::NAN)
    };
    let after = |prefix: &str, marker: &str| -> f64 {
        let line =
            text.lines().find(|l| l.contains(prefix) && l.contains(marker)).unwrap_or_else(|| panic!("{prefix}"));
        let rest = &line[line.find(marker).expect("marker") + marker.len()..];
        rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(f64::NAN)
    };
    [after("one-shot", "late by"), after("periodic", "late by"), us("TSC-deadline: interrupt", " us late")]
}

fn nestbed_busy_neighbor(exits: u64) -> f64 {
    nestbed_beside(exits, std::time::Duration::ZERO)
}

fn nestbed_waking_neighbor(exits: u64) -> f64 {
    nestbed_beside(exits, std::time::Duration::from_micros(90))
}

fn empty_script() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("nestbed-bench-{}-empty.rhai", std::process::id()));
    std::fs::write(&path, "fn on_exit(e) { }\n").expect("writing the empty script");
    path
}

fn counting_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/count-exits.rhai")
}

fn nestbed_empty_on_exit(exits: u64) -> f64 {
    nestbed_scripted(exits, Some(empty_script()))
}

fn nestbed_empty_on_exit_inline(exits: u64) -> f64 {
    nestbed_with(exits, Some(empty_script()), ScriptMode::Inline)
}

fn nestbed_counting(exits: u64) -> f64 {
    nestbed_scripted(exits, Some(counting_script()))
}

fn nestbed_counting_inline(exits: u64) -> f64 {
    nestbed_with(exits, Some(counting_script()), ScriptMode::Inline)
}

fn nestbed_scripted(exits: u64, script: Option<std::path::PathBuf>) -> f64 {
    nestbed_with(exits, script, ScriptMode::Auto)
}

fn nestbed_with(exits: u64, script: Option<std::path::PathBuf>, mode: ScriptMode) -> f64 {
    let image = nestbed::guests::find("io-bench").expect("io-bench guest").to_vec();
    let mut cfg = RunConfig::new("io-bench", image);
    cfg.scripts.extend(script);
    cfg.script_options.mode = mode;
    cfg.cmdline = exits.to_string();
    cfg.console = Some(Box::new(std::io::sink()));
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0));
    t.elapsed().as_secs_f64()
}

/// User and system time of the whole process so far, every thread included (ended ones too).
fn cpu_seconds() -> f64 {
    // SAFETY: rusage holds only integers (timevals and longs), for which all zeros is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Where one nested round trip's time goes (the vmx-bench run `args`, difference of two runs,
/// median of `reps` repetitions per phase), under `title`.
fn phase_table(m: (u64, u64), reps: usize, args: &str, title: &str) -> String {
    let mut per_phase = vec![Vec::new(); Phase::ALL.len()];
    let mut own = Vec::new();
    for _ in 0..reps {
        let (_, a) = nestbed_run_phases("vmx-bench", args, m.0);
        let (_, b) = nestbed_run_phases("vmx-bench", args, m.1);
        let d = b.minus(&a);
        let us = |p: Phase| d.get(p).as_secs_f64() * 1e6 / (m.1 - m.0) as f64;
        for (i, p) in Phase::ALL.iter().enumerate() {
            per_phase[i].push(us(*p));
        }
        own.push(Phase::ALL.iter().filter(|p| !matches!(p, Phase::KvmRunL1 | Phase::KvmRunL2)).map(|p| us(*p)).sum());
    }
    let mut text = format!(
        "\n## {title}\n\nTimed inside nestbed with the TSC per phase; medians per round trip. nestbed's own time is \
         everything outside KVM_RUN; the guests' own instructions, which this host emulates at about a \
         microsecond each, are inside KVM_RUN.\n\n| phase | µs per round trip |\n|---|---|\n",
    );
    for (i, p) in Phase::ALL.iter().enumerate() {
        text.push_str(&format!("| {} | {:.2} |\n", p.name(), median(per_phase[i].clone())));
    }
    text.push_str(&format!("| **nestbed's own time (all but KVM_RUN)** | **{:.2}** |\n", median(own)));
    text
}

/// One row of the table: a way to make `n` exits, returning the seconds it took.
struct Variant {
    label: &'static str,
    run: fn(u64) -> f64,
    /// The two operation counts whose difference is measured.
    counts: (u64, u64),
    /// Also compare with this row (scripts: with nestbed without scripts).
    base: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "BENCHMARKS.md".into());
    let (n1, n2, reps) = (20_000u64, 120_000u64, 5);
    let n = (n1, n2);
    // Nested exits cost several round trips each: fewer of them give the same run time.
    let m = (5_000, 30_000);
    // The row of the two-VM floor, which the nested row is also compared with.
    const FLOOR: usize = 12;
    let variants = [
        Variant {
            label: "raw KVM round trip, port-I/O exit of the io-bench guest (bare kvm-ioctls loop)",
            run: raw_same_guest,
            counts: n,
            base: None,
        },
        Variant {
            label: "raw KVM round trip, port-I/O exit of a real-mode loop (for reference)",
            run: raw_loop,
            counts: n,
            base: None,
        },
        Variant {
            label: "nestbed, port-I/O exit of an L1 guest (whole exit path: normalize, stats, devices)",
            run: nestbed_loop,
            counts: n,
            base: None,
        },
        Variant {
            label: "nestbed, the same with L1's APIC timer armed and idle (masked, a minute away)",
            run: nestbed_timer_armed,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same while another thread spins on the second CPU (no scripts)",
            run: nestbed_busy_neighbor,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same while another thread wakes the second CPU every 100 µs for 10 µs (no scripts)",
            run: nestbed_waking_neighbor,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same with an empty `on_exit` script (only observes: pipelined)",
            run: nestbed_empty_on_exit,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same with an empty `on_exit` script, `--script-mode inline`",
            run: nestbed_empty_on_exit_inline,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same with scripts/count-exits.rhai (only observes: pipelined)",
            run: nestbed_counting,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, the same with scripts/count-exits.rhai, `--script-mode inline`",
            run: nestbed_counting_inline,
            counts: n,
            base: Some(2),
        },
        Variant {
            label: "nestbed, one VMREAD by L1 (trapped as an emulation failure, decoded, executed on the model)",
            run: vmread,
            counts: n,
            base: None,
        },
        Variant {
            label: "nestbed, the same VMREAD patched at load into an int3 trap (`--patch-sensitive on`)",
            run: vmread_patched,
            counts: n,
            base: Some(FLOOR - 2),
        },
        Variant {
            label: "raw KVM, two VMs' vCPUs in turn, one port-I/O exit each (io-bench guests, bare loop): the floor of a nested round trip",
            run: raw_two_vms,
            counts: m,
            base: None,
        },
        Variant {
            label: "nestbed, one L2 exit handled by L1 (L2 `out` reflected to L1, L1 `vmresume`: two KVM round trips)",
            run: l2exit,
            counts: m,
            base: Some(FLOOR),
        },
        Variant {
            label: "nestbed, the same with L2's VMX-preemption timer active and L1's APIC timer armed, both idle",
            run: l2exit_timers,
            counts: m,
            base: Some(FLOOR + 1),
        },
        Variant {
            label: "nestbed, one L2 exit handled by L1 as a hypervisor does (VMREAD of the exit reason, qualification, GUEST_RIP and instruction length, VMWRITE of GUEST_RIP, VMRESUME), `--no-evmcs`",
            run: l2handle_vmx,
            counts: m,
            base: Some(FLOOR),
        },
        Variant {
            label: "nestbed, the same with the enlightened VMCS (EVMCS.md): the five fields are loads and stores",
            run: l2handle_evmcs,
            counts: m,
            base: Some(FLOOR + 3),
        },
        Variant {
            label: "nestbed, a nested hypervisor's (L2's) VMREAD that exits to L1, which skips it (VMCS shadowing, VMREAD-bitmap bit set; L1 on the enlightened VMCS)",
            run: l2vmread_exit,
            counts: m,
            base: None,
        },
        Variant {
            label: "nestbed, the same VMREAD served from the shadow VMCS (bitmap bit clear): no VM exit to L1",
            run: l2vmread_shadow,
            counts: m,
            base: Some(FLOOR + 5),
        },
    ];
    // Interleaved: every repetition measures each variant once, so a burst of background load
    // hits them alike; ratios are taken within a repetition, then the median over repetitions.
    let mut per_exit = vec![Vec::new(); variants.len()];
    let mut cpu = vec![Vec::new(); variants.len()];
    let mut ratios = vec![Vec::new(); variants.len()];
    let mut base_ratios = vec![Vec::new(); variants.len()];
    for _ in 0..reps {
        let (us, cpu_us): (Vec<f64>, Vec<f64>) = variants
            .iter()
            .map(|v| {
                let (a, b) = v.counts;
                let c0 = cpu_seconds();
                let wa = (v.run)(a);
                let c1 = cpu_seconds();
                let wb = (v.run)(b);
                let c2 = cpu_seconds();
                let per = |x: f64| x / (b - a) as f64 * 1e6;
                (per(wb - wa), per((c2 - c1) - (c1 - c0)))
            })
            .unzip();
        for (i, u) in us.iter().enumerate() {
            per_exit[i].push(*u);
            cpu[i].push(cpu_us[i]);
            ratios[i].push(u / us[0]);
            if let Some(b) = variants[i].base {
                base_ratios[i].push(u / us[b]);
            }
        }
    }
    let mut text = format!(
        "# nestbed benchmarks\n\nMeasured by `just bench` (vmm/examples/bench.rs): {reps} interleaved repetitions, each \
         cost a difference of two runs ({n2} and {n1} operations; {} and {} for nested exits) so boot time cancels; \
         the ratio is taken within each repetition against the first row, and the table shows medians. Every loop, \
         raw or guest, takes three instructions per operation (four for a nested exit): this host's KVM emulates \
         guest instructions at about a microsecond each. Machines are noisy: compare the ratios, not the absolute \
         numbers. The CPU column is the time all of nestbed's threads ran (user and system, from getrusage), per \
         operation: a pipelined script's thread runs beside the vCPU's, so its rows use more CPU than wall time. The \
         last column compares a row with its baseline: nestbed without scripts for the rows with a second thread or \
         a script, the trapped VMREAD for the patched one, the two-VM floor for the nested exit and the exit handled with \
         VMREAD/VMWRITE, the nested exit for the same with idle timers, the VMREAD/VMWRITE handler for the enlightened \
         one, and the exiting nested VMREAD for the shadowed one.\n\n\
         | what | µs per operation | CPU µs per operation | ratio to raw KVM | ratio to its baseline |\n\
         |---|---|---|---|---|\n",
        m.1,
        m.0
    );
    for (i, v) in variants.iter().enumerate() {
        let vs_base =
            if base_ratios[i].is_empty() { String::new() } else { format!("{:.3}", median(base_ratios[i].clone())) };
        text.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.3} | {vs_base} |\n",
            v.label,
            median(per_exit[i].clone()),
            median(cpu[i].clone()),
            median(ratios[i].clone())
        ));
    }
    text.push_str(&traps_table(m));
    text.push_str(&phase_table(
        m,
        reps,
        "l2exit",
        "One nested round trip, phase by phase (the `l2exit` row: L2 `out` reflected to L1, L1 `vmresume`)",
    ));
    text.push_str(&phase_table(
        m,
        reps,
        "l2handle",
        "An L2 exit handled by L1 with the enlightened VMCS, phase by phase (four fields read and GUEST_RIP \
         written as memory, then `vmresume`)",
    ));
    let late: Vec<[f64; 3]> = (0..reps).map(|_| timer_lateness()).collect();
    let col = |i: usize| median(late.iter().map(|l| l[i]).collect());
    text.push_str(&format!(
        "\n## L1's APIC timer: how late its interrupts arrive\n\nThe `platform` guest arms the local APIC's \
         timer and measures, against the TSC, how long after its deadline the interrupt reaches it (the \
         host's timer slack, the kick out of KVM_RUN, the injection); medians of {reps} runs.\n\n\
         | mode | µs late |\n|---|---|\n| one-shot (10 ms) | {:.0} |\n| periodic, third tick (1 ms period) | {:.0} |\n\
         | TSC-deadline (10 ms) | {:.0} |\n",
        col(0),
        col(1),
        col(2)
    ));
    print!("{text}");
    std::fs::write(&out, text).expect("writing the report");
}
