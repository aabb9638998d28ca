//! `just bench`: exit costs measured side by side in one run, written as BENCHMARKS.md.
//!
//! - raw: a minimal guest doing `out` in a loop, driven by a bare kvm-ioctls loop (the floor);
//! - nestbed: the `io-bench` guest doing the same exits through nestbed's whole exit path;
//! - a trapped VMREAD: the `vmx-bench` guest's L1 executing VMREADs (`vmread N`);
//! - a nested exit: the `vmx-bench` guest's L2 doing `out`, each exit reflected to L1, which
//!   only executes VMRESUME (`l2exit N`).
//!
//! Each cost is a difference of two runs (N2 - N1 operations) so boot time cancels out.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use nestbed::runner::{self, RunConfig};

fn raw_loop(exits: u64) -> f64 {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("create vm");
    let size = 0x10000usize;
    // SAFETY: anonymous private mapping of `size` bytes, checked below.
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
    // Real mode: `out 0x80, al; nop; jmp $-3`: three instructions per exit, as in the guests.
    let code = [0xe6u8, 0x80, 0x90, 0xeb, 0xfb];
    // SAFETY: the mapping is `size` bytes and writable.
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

/// Wall time of one nestbed run of `guest` with command line `args n`.
fn nestbed_run(guest: &str, args: &str, n: u64) -> f64 {
    let image = nestbed::guests::find(guest).unwrap_or_else(|| panic!("{guest} guest")).to_vec();
    let mut cfg = RunConfig::new(guest, image);
    cfg.cmdline = format!("{args} {n}").trim().to_string();
    cfg.console = Some(Box::new(std::io::sink()));
    let t = Instant::now();
    let report = runner::run(cfg).expect("nestbed run");
    assert_eq!(report.outcome, runner::Outcome::GuestExit(0), "{guest} {args} {n}");
    t.elapsed().as_secs_f64()
}

fn per_exit(f: impl Fn(u64) -> f64, n1: u64, n2: u64, reps: usize) -> f64 {
    let mut v: Vec<f64> = (0..reps).map(|_| (f(n2) - f(n1)) / (n2 - n1) as f64 * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "BENCHMARKS.md".into());
    let (n1, n2, reps) = (20_000, 120_000, 5);
    // Nested exits cost several round trips each: fewer of them give the same run time.
    let (m1, m2) = (5_000, 30_000);
    let raw = per_exit(raw_loop, n1, n2, reps);
    let nb = per_exit(|n| nestbed_run("io-bench", "", n), n1, n2, reps);
    let vmread = per_exit(|n| nestbed_run("vmx-bench", "vmread", n), n1, n2, reps);
    let l2exit = per_exit(|n| nestbed_run("vmx-bench", "l2exit", n), m1, m2, reps);
    let text = format!(
        "# nestbed benchmarks\n\nMeasured by `just bench` (vmm/examples/bench.rs), medians of {reps} runs, each a difference of \
         two runs ({n2} and {n1} operations; {m2} and {m1} for nested exits) so boot time cancels. Machines are noisy: \
         compare the ratios, not the absolute numbers. Every loop, raw or guest, takes three instructions per operation \
         (four for a nested exit): some hosts' KVM (kvm_pvm) emulates each guest instruction, at about a microsecond each.\n\n\
         | what | µs per operation | ratio to raw KVM |\n|---|---|---|\n\
         | raw KVM round trip, port-I/O exit (bare kvm-ioctls loop) | {raw:.2} | 1.00 |\n\
         | nestbed, port-I/O exit of an L1 guest (whole exit path: normalize, stats, devices) | {nb:.2} | {:.3} |\n\
         | nestbed, one VMREAD by L1 (trapped as an emulation failure, decoded, executed on the model) | {vmread:.2} | {:.3} |\n\
         | nestbed, one L2 exit handled by L1 (L2 `out` reflected to L1, L1 `vmresume`: two KVM round trips) | {l2exit:.2} | {:.3} |\n",
        nb / raw,
        vmread / raw,
        l2exit / raw,
    );
    print!("{text}");
    std::fs::write(&out, text).expect("writing the report");
}
