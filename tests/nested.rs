//! The L1 hypervisor guests: each asserts its own expectations and exits 0 only when all hold.

mod common;
use common::run_guest;

/// Runs `guest` with the enlightened VMCS offered (which guests/hv uses) and with `--no-evmcs`;
/// both must pass. The first run is returned.
fn passes(guest: &str) -> common::Run {
    let without = run_guest(guest, &["--stats", "--no-evmcs"]);
    assert_eq!(without.code, 0, "{guest} failed with --no-evmcs:\n{}\n{}", without.stdout, without.stderr);
    assert!(!without.stdout.contains("FAIL"), "--no-evmcs: {}", without.stdout);
    let r = run_guest(guest, &["--stats"]);
    assert_eq!(r.code, 0, "{guest} failed:\n{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    r
}

#[test]
fn vmx_basic() {
    let r = passes("vmx-basic");
    assert!(r.stderr.contains("L2    IO_INSTRUCTION             L1"), "{}", r.stderr);
}

#[test]
fn vmx_l2_vmx() {
    let r = passes("vmx-l2-vmx");
    for reason in ["VMCLEAR", "VMLAUNCH", "VMPTRLD", "VMPTRST", "VMRESUME", "VMXOFF", "VMXON", "INVEPT", "INVVPID"] {
        assert_eq!(stat_count(&r.stderr, "L2", reason, "L1"), Some(1), "{reason}: {}", r.stderr);
    }
    assert_eq!(stat_count(&r.stderr, "L2", "VMREAD", "L1"), Some(2), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "VMWRITE", "L1"), Some(2), "{}", r.stderr);
}

/// VMCS shadowing (SDM 25.10): L2's VMREADs and VMWRITEs whose bitmap bit is 0 are served from
/// the shadow VMCS by nestbed (handled in L0, no VM exit), the others reach L1; bad link
/// pointers fail VM entry with qualification 4; a bitmap past the end of RAM makes VMREAD exit.
#[test]
fn vmx_shadow() {
    let r = passes("vmx-shadow");
    assert!(
        r.stdout.contains("L2 executed 13 VMREAD/VMWRITE: 4 reached L1, 9 were served from the shadow VMCS"),
        "{}",
        r.stdout
    );
    assert_eq!(stat_count(&r.stderr, "L2", "VMREAD", "L0"), Some(7), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "VMREAD", "L1"), Some(4), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "VMWRITE", "L0"), Some(3), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "VMWRITE", "L1"), Some(1), "{}", r.stderr);
}

/// Without bit 14 in IA32_VMX_PROCBASED_CTLS2's allowed 1-settings, L1 cannot turn shadowing
/// on: the guest says so and exits 77.
#[test]
fn vmx_shadow_not_offered() {
    let r = run_guest("vmx-shadow", &["--vmx-msr", "0x48b=0x102a00000000"]);
    assert_eq!(r.code, 77, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("VMCS shadowing is not offered"), "{}", r.stdout);
}

/// The enlightened VMCS (EVMCS.md): registration and its #GP cases, the fields-changed mask,
/// VMfail and VM-entry failures in the page, L2 writing the page. L1 sets up its VMCS and
/// handles L2's exits without a VMWRITE that traps; the four VMREADs are the guest's own
/// checks. Without the protocol offered, the guest exits 77.
#[test]
fn vmx_evmcs() {
    let r = run_guest("vmx-evmcs", &["--stats"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    assert_eq!(stat_count(&r.stderr, "L1", "VMWRITE", "L0"), None, "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L1", "VMREAD", "L0"), Some(4), "{}", r.stderr);
    let r = run_guest("vmx-evmcs", &["--no-evmcs"]);
    assert_eq!(r.code, 77, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("the enlightened VMCS is not offered"), "{}", r.stdout);
}

/// guests/hv uses the enlightened VMCS when offered: the nested demo's L1 then executes no
/// VMREAD or VMWRITE that traps, and the same exits reach it; with --no-evmcs they trap.
#[test]
fn hv_uses_the_enlightened_vmcs_when_offered() {
    let with = passes("nested-demo");
    let without = run_guest("nested-demo", &["--stats", "--no-evmcs"]);
    for reason in ["VMREAD", "VMWRITE", "VMPTRLD"] {
        assert_eq!(stat_count(&with.stderr, "L1", reason, "L0"), None, "{reason}: {}", with.stderr);
        assert!(stat_count(&without.stderr, "L1", reason, "L0").is_some_and(|n| n > 0), "{reason}: {}", without.stderr);
    }
    let l2_exits = |r: &common::Run| stat_count(&r.stderr, "L2", "IO_INSTRUCTION", "L1");
    assert_eq!(l2_exits(&with), l2_exits(&without), "{}\n{}", with.stderr, without.stderr);
    assert_eq!(stat_count(&with.stderr, "L1", "WRMSR", "L0"), Some(1), "{}", with.stderr);
}

/// Turtles: L1 runs L2, a hypervisor that launches L3; L1 emulates VMX for L2 with a shadow
/// VMCS. Of L2's VMREADs and VMWRITEs, only the VMREADs of the exit information (4 fields, 3
/// per reflected exit) reach L1; nestbed serves the rest from the shadow VMCS. nestbed's "L2" is
/// the VM L1 runs: L2 on VMCS01 or L3 on VMCS02, whose OUT and HLT exits reach L1.
#[test]
fn vmx_turtles() {
    let r = passes("vmx-turtles");
    assert!(
        r.stdout.contains("L2 executed 114 VMREADs and VMWRITEs: 12 reached L1, 102 were served from the shadow VMCS"),
        "{}",
        r.stdout
    );
    assert_eq!(stat_count(&r.stderr, "L2", "VMREAD", "L1"), Some(12), "{}", r.stderr);
    let served = ["VMREAD", "VMWRITE"].map(|x| stat_count(&r.stderr, "L2", x, "L0").unwrap_or(0));
    assert_eq!(served.iter().sum::<u64>(), 102, "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "VMWRITE", "L1"), None, "{}", r.stderr);
    for reason in ["VMXON", "VMCLEAR", "VMPTRLD", "VMLAUNCH", "VMXOFF"] {
        assert_eq!(stat_count(&r.stderr, "L2", reason, "L1"), Some(1), "{reason}: {}", r.stderr);
    }
    assert_eq!(stat_count(&r.stderr, "L2", "VMRESUME", "L1"), Some(3), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "IO_INSTRUCTION", "L1"), Some(3), "{}", r.stderr);
}

/// What the host's KVM does with a VMCALL in the L2 VM: it emulates it as a hypercall
/// instruction over and over without an exit to userspace, so L2 hangs before its first exit.
#[test]
fn vmx_l2_vmcall_never_reaches_nestbed() {
    let r = common::nestbed(&["run", "--guest", "vmx-l2-vmx", "--cmdline", "vmcall", "--timeout", "3", "--stats"]);
    assert_eq!(r.code, 204, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("L2 starts with its VMCALL"), "{}", r.stdout);
    assert!(!r.stdout.contains("vmcall: exit reason"), "{}", r.stdout);
    assert!(!r.stderr.lines().any(|l| l.starts_with("L2 ")), "{}", r.stderr);
}

#[test]
fn vmx_errors() {
    passes("vmx-errors");
}

#[test]
fn vmx_io_bitmap() {
    passes("vmx-io-bitmap");
}

#[test]
fn vmx_msr_bitmap() {
    let r = passes("vmx-msr-bitmap");
    assert!(r.stderr.contains("L2    RDMSR"), "{}", r.stderr);
}

/// What vmx-msr-lists prints for the checks that matter most.
const MSR_LISTS_KEY_LINES: &[&str] = &[
    "ok   VM-entry MSR-load area: L2 reads IA32_KERNEL_GS_BASE 0x7fff12345000",
    "ok   VM-exit MSR-store area: L2's IA32_KERNEL_GS_BASE 0xffff800022223000",
    "ok   VM-exit MSR-store area: IA32_TSC ",
    "ok   VM-exit MSR-load area: L1's IA32_KERNEL_GS_BASE 0x55556000",
    "ok   VM-entry MSR-load area with IA32_FS_BASE second: exit reason 0x80000022, qualification 2",
    "ok     the VM-exit MSR-load area was loaded (SDM 27.8): 0x77778000",
    "ok   an x2APIC MSR (0x808) third: exit reason 0x80000022, qualification 3",
    "ok   513 entries, one beyond IA32_VMX_MISC's 512: exit reason 0x80000022, qualification 513",
    "ok   save debug controls: GUEST_DR7 is L2's DR7 0x408",
    "ok   load debug controls: L2 reads the GUEST_DR7 loaded, 0x404",
    "ok   save debug controls: GUEST_DR7 0x40c",
    "ok   without load debug controls L2 has L1's DR7 0x402",
    "ok   L1's DR7 after the VM exit: 0x400",
    "ok   VMRESUME right after MOV SS: VMfailValid(26)",
    "ok   VMLAUNCH right after MOV SS: VMfailValid(26)",
    "vmx-msr-lists: all checks passed",
];

/// The MSR areas (SDM 27.4, 28.4, 28.6), the debug controls (27.3.2.1, 28.3.1, 28.5.1) and VM
/// entry after MOV SS (31, error 26) take effect, with L1's VMX instructions trapped by the
/// host and patched into int3 traps.
#[test]
fn vmx_msr_lists() {
    for extra in [&[][..], &["--patch-sensitive", "on"][..], &["--no-evmcs"][..]] {
        let mut args = vec!["--stats"];
        args.extend_from_slice(extra);
        let r = run_guest("vmx-msr-lists", &args);
        assert_eq!(r.code, 0, "{extra:?}:\n{}\n{}", r.stdout, r.stderr);
        assert!(!r.stdout.contains("FAIL"), "{extra:?}: {}", r.stdout);
        for line in MSR_LISTS_KEY_LINES {
            assert!(r.stdout.contains(line), "{extra:?}: no {line:?} in\n{}", r.stdout);
        }
        // L2's IA32_SYSENTER_ESP write reaches nestbed; L1's IA32_DEBUGCTL write too.
        assert_eq!(stat_count(&r.stderr, "L2", "WRMSR", "L0"), Some(1), "{}", r.stderr);
        // With the enlightened VMCS, L1 also registers its VMCS page by WRMSR.
        let evmcs = u64::from(!extra.contains(&"--no-evmcs"));
        assert_eq!(stat_count(&r.stderr, "L1", "WRMSR", "L0"), Some(1 + evmcs), "{}", r.stderr);
    }
}

/// An entry the SDM forbids in a VM-exit MSR area is a VMX abort (SDM 28.7): the indicator, the
/// entry and why, and the run ends as a shutdown.
#[test]
fn vmx_abort_ends_the_run() {
    for (mode, indicator, entry) in [
        ("abort-store", 1, "VM-exit MSR-store entry 1 (MSR 0x808)"),
        ("abort-load", 4, "VM-exit MSR-load entry 1 (MSR 0xc0000100)"),
    ] {
        let r = run_guest("vmx-msr-lists", &["--cmdline", mode]);
        assert_eq!(r.code, 203, "{mode}:\n{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(&format!("L1 VMX abort (SDM 28.7), indicator {indicator}")), "{}", r.stderr);
        assert!(r.stderr.contains(entry), "{}", r.stderr);
        assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    }
}

#[test]
fn vmx_ept() {
    let r = passes("vmx-ept");
    assert!(r.stdout.contains("vmx-ept: all checks passed"), "{}", r.stdout);
    assert!(r.stderr.contains("L2    EPT_VIOLATION              L1"), "{}", r.stderr);
    assert!(r.stderr.contains("L2    EPT_MISCONFIG              L1"), "{}", r.stderr);
    // The page L1 mapped without INVEPT: found in its tables and done by nestbed.
    assert!(r.stderr.contains("L2    EPT_VIOLATION              L0"), "{}", r.stderr);
}

/// vmx-legacy32's exit code when the host's KVM refuses CR0.PG outside IA-32e mode after the
/// checks before paging passed.
const LEGACY_PAGING_REFUSED: i32 = 77;

/// What vmx-legacy32 checks before it turns paging on, with the default capabilities.
const LEGACY32_BEFORE_PAGING: &[&str] = &[
    "ok   protected mode without paging: CR0.PE = 1, CR0.PG = 0, IA32_EFER.LME = LMA = 0",
    "ok   IA32_FEATURE_CONTROL: locked, VMXON outside SMX enabled",
    "ok   IA32_VMX_CR0_FIXED0 requires CR0.PE, CR0.NE and CR0.PG",
    "ok   VMREAD outside VMX operation: exception 6",
    "ok   VMXON [m64] with CR0.PG = 0: exception 13, error code 0x00000000",
];

/// Checks vmx-legacy32 makes in VMX operation, paged or not.
const LEGACY32_IN_VMX_OPERATION: &[&str] = &[
    "ok   CR0 satisfies IA32_VMX_CR0_FIXED0 and IA32_VMX_CR0_FIXED1",
    "ok   VMPTRLD [m64]: VMsucceed",
    "ok   VMREAD [m32] stored GUEST_RIP: 0x89abcdef",
    "ok   VMREAD ebx, ecx: GUEST_RSP: 0x13579bdf",
    "ok   VMREAD TSC_OFFSET high: the 32-bit VMWRITE cleared bits 63:32: 0x00000000",
    "ok   VMXOFF: VMsucceed",
    "ok   VMREAD after VMXOFF: exception 6",
    "vmx-legacy32: all checks passed",
];

fn assert_lines(stdout: &str, lines: &[&str]) {
    for line in lines {
        assert!(stdout.lines().any(|l| l == *line), "missing {line:?} in:\n{stdout}");
    }
}

/// With the default capabilities: all checks with 32-bit paging where the host allows CR0.PG
/// outside IA-32e mode, else the checks before paging and exit code 77; the same patched or not
/// (nestbed's own MOV to CR0 refuses paging outside IA-32e mode where the host does).
#[test]
fn vmx_legacy32() {
    for mode in ["off", "auto", "on"] {
        vmx_legacy32_in(mode);
    }
}

fn vmx_legacy32_in(mode: &str) {
    let r = run_guest("vmx-legacy32", &["--stats", "--patch-sensitive", mode]);
    assert!(!r.stdout.contains("FAIL"), "{}\n{}", r.stdout, r.stderr);
    assert_lines(&r.stdout, LEGACY32_BEFORE_PAGING);
    if r.code == LEGACY_PAGING_REFUSED {
        assert_lines(
            &r.stdout,
            &["-- the host refused CR0.PG outside IA-32e mode: the checks in VMX operation did not run"],
        );
        assert_eq!(
            r.stdout.lines().filter(|l| l.starts_with("ok ")).count(),
            LEGACY32_BEFORE_PAGING.len(),
            "{}",
            r.stdout
        );
        assert!(!r.stdout.contains("all checks passed"), "{}", r.stdout);
        return;
    }
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_lines(&r.stdout, LEGACY32_IN_VMX_OPERATION);
    assert_lines(
        &r.stdout,
        &[
            "ok   legacy protected mode with paging: CR0.PE = CR0.PG = 1, IA32_EFER.LME = LMA = 0",
            "ok   VMXON [m64]: VMsucceed",
            "ok   VMWRITE ecx, [m32] ending at an unmapped page: GUEST_RSP := 0x13579bdf: VMsucceed",
        ],
    );
}

/// With an IA32_VMX_CR0_FIXED0 that does not require CR0.PG, vmx-legacy32 enters VMX operation
/// with paging off and runs every check there.
#[test]
fn vmx_legacy32_without_paging() {
    let fixed0 = nestbed::vmx::caps::VmxCaps::default().cr0_fixed0 & !nestbed::vmx::caps::cr::CR0_PG;
    let setting = format!("0x486={fixed0:#x}");
    for mode in ["off", "auto", "on"] {
        let r = run_guest("vmx-legacy32", &["--vmx-msr", &setting, "--mem", "64", "--patch-sensitive", mode]);
        assert_eq!(r.code, 0, "{mode}: {}\n{}", r.stdout, r.stderr);
        assert_legacy32_without_paging(&r.stdout);
    }
}

fn assert_legacy32_without_paging(stdout: &str) {
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_lines(
        stdout,
        &[
            "ok   protected mode without paging: CR0.PE = 1, CR0.PG = 0, IA32_EFER.LME = LMA = 0",
            "ok   IA32_VMX_CR0_FIXED0 requires CR0.PE and CR0.NE, not CR0.PG",
            "-- IA32_VMX_CR0_FIXED0 allows CR0.PG = 0: the checks in VMX operation run without paging",
            "ok   VMXON [m64] with CR0.PG = 0: VMsucceed",
            "ok   the multiboot information gives the end of guest RAM (below 4 GiB): 0x04000000",
            "ok   VMWRITE ecx, [m32] ending at the end of guest RAM: GUEST_RSP := 0x13579bdf: VMsucceed",
        ],
    );
    assert_lines(stdout, LEGACY32_IN_VMX_OPERATION);
    assert!(!stdout.contains("legacy protected mode with paging"), "{stdout}");
}

#[test]
fn sdm_l1() {
    passes("sdm-l1");
}

#[test]
fn nested_demo_is_the_default() {
    let r = common::nestbed(&["run", "--timeout", "60"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("L2 | Hello from L2!"), "{}", r.stdout);
    assert!(r.stdout.contains("fib(30) = 832040"), "{}", r.stdout);
}

/// The count column of the statistics row for `level reason handler`.
fn stat_count(stderr: &str, level: &str, reason: &str, handler: &str) -> Option<u64> {
    stderr.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
        [lv, r, h, count, ..] if (lv, r, h) == (level, reason, handler) => count.parse().ok(),
        _ => None,
    })
}

#[test]
fn vmx_bench_modes() {
    let r = run_guest("vmx-bench", &["--stats", "--cmdline", "vmread 50"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(stat_count(&r.stderr, "L1", "VMREAD", "L0"), Some(50), "{}", r.stderr);
    let r = run_guest("vmx-bench", &["--stats", "--cmdline", "l2exit 40"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(stat_count(&r.stderr, "L2", "IO_INSTRUCTION", "L1"), Some(40), "{}", r.stderr);
    assert_eq!(stat_count(&r.stderr, "L1", "VMRESUME", "L0"), Some(39), "{}", r.stderr);
    assert_eq!(run_guest("vmx-bench", &["--cmdline", "nothing"]).code, 2);
}

/// `patched: N sensitive instructions, M traps taken at them, ...` from `--stats`.
fn patched(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("patched: "))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    Some((w.first()?.parse().ok()?, w.get(3)?.parse().ok()?))
}

/// With `--patch-sensitive on` (every sensitive instruction the load-time scan finds) and
/// `auto` (what this host needs: VMCALL, MOV CR4 with a virtual CR4.VMXE, CPUID, then what L1's
/// controls ask for), the patched sites trap as int3 (the path a stock Intel or AMD host
/// takes) and every VMX guest still passes.
#[test]
fn every_vmx_guest_passes_with_patched_sensitive_instructions() {
    for mode in ["on", "auto"] {
        for guest in [
            "vmx-basic",
            "vmx-errors",
            "vmx-ept",
            "vmx-io-bitmap",
            "vmx-msr-bitmap",
            "vmx-msr-lists",
            "sdm-l1",
            "nested-demo",
            "vmx-l2-vmx",
            "vmx-shadow",
        ] {
            let r = run_guest(guest, &["--stats", "--patch-sensitive", mode]);
            assert_eq!(r.code, 0, "{guest} failed with --patch-sensitive {mode}:\n{}\n{}", r.stdout, r.stderr);
            assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
            let (sites, traps) = patched(&r.stderr).unwrap_or_else(|| panic!("{guest}: no patch line\n{}", r.stderr));
            assert!(sites > 0 && traps > 0, "{guest} {mode}: {sites} sites, {traps} traps\n{}", r.stderr);
            // CR4.VMXE is set by a patched MOV to CR4: VMXON needs it.
            assert!(stat_count(&r.stderr, "L1", "CR_ACCESS", "L0").is_some(), "{guest} {mode}: {}", r.stderr);
        }
    }
}

/// The host's KVM never hands an L2 VMCALL to nestbed (see the test above); patched into a
/// trap at load, it reaches L1 as exit reason 18 (SDM 26.1.2) with its length.
#[test]
fn vmx_l2_vmcall_reaches_l1_when_patched() {
    let r = run_guest("vmx-l2-vmx", &["--cmdline", "vmcall", "--patch-sensitive", "on", "--stats"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ok   vmcall: exit reason 18, expected 18"), "{}", r.stdout);
    assert!(r.stdout.contains("ok   vmcall: VM_EXIT_INSTRUCTION_LEN 3"), "{}", r.stdout);
    assert_eq!(stat_count(&r.stderr, "L2", "VMCALL", "L1"), Some(1), "{}", r.stderr);
}

/// A hypervisor written for hardware sets CR4.VMXE with a plain `mov cr4` (no #GP fixup): with
/// MOV to CR4 patched, the bit is L1's (virtual, kept by nestbed), reads back set, and VMXON
/// works.
#[test]
fn plain_mov_cr4_sets_vmxe_when_patched() {
    for mode in ["auto", "on"] {
        let r = run_guest("vmx-basic", &["--cmdline", "plain-cr4", "--patch-sensitive", mode]);
        assert_eq!(r.code, 0, "{mode}:\n{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("ok   plain MOV to CR4 set VMXE"), "{}", r.stdout);
        assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
    }
}

/// What the host does with the same `mov cr4` unpatched: CR4.VMXE cannot be set on a host
/// without VMX for its guests, so the guest takes a #GP it has no handler for.
#[test]
fn plain_mov_cr4_takes_gp_unpatched_host_limit() {
    let r = run_guest("vmx-basic", &["--cmdline", "plain-cr4"]);
    assert_eq!(r.code, 100, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("#GP (vector 13)"), "{}", r.stdout);
}

/// L2's CPUID, RDTSC, MOV CR0/CR3/CR4/CR8, CLTS, INVLPG and INVD reach nestbed only from
/// patched sites; nestbed reflects each to L1 exactly when L1's controls, masks and CR3-target
/// values ask (SDM 26.1.3) and executes the others with L1's read shadows and TSC offset.
#[test]
fn vmx_sensitive_exits_reach_l1_when_patched() {
    for mode in ["on", "auto"] {
        let r = run_guest("vmx-sensitive", &["--stats", "--patch-sensitive", mode]);
        assert_eq!(r.code, 0, "vmx-sensitive failed with --patch-sensitive {mode}:\n{}\n{}", r.stdout, r.stderr);
        assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
        for reason in ["RDTSC", "CR_ACCESS", "CPUID", "INVLPG", "INVD", "RDPMC", "WBINVD"] {
            assert!(stat_count(&r.stderr, "L2", reason, "L1").is_some(), "{mode} {reason}: {}", r.stderr);
        }
    }
}

/// Without patching, nestbed does not offer RDTSC exiting (nor the other controls whose exits
/// it would never see): the guest says so and exits 77.
#[test]
fn vmx_sensitive_controls_not_offered_without_patching() {
    let r = run_guest("vmx-sensitive", &[]);
    assert_eq!(r.code, 77, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("not offered"), "{}", r.stdout);
}

/// Interrupt-window exiting while L2 runs with RFLAGS.IF = 0 into a HLT that L1 intercepts: the
/// window cannot open, so the HLT exit comes (SDM 26.2); nestbed once single-stepped L2 to
/// watch for the window and the halted vCPU never left KVM_RUN (found by vmx-chaos).
#[test]
fn interrupt_window_exiting_with_interrupts_disabled_still_gives_the_hlt_exit() {
    let dir = common::tmpdir("iw-hlt");
    let script = dir.join("iw.rhai");
    std::fs::write(
        &script,
        "fn on_exit(e) {\n  if e.reason == \"VMLAUNCH\" || e.reason == \"VMRESUME\" {\n    \
         let p = e.vmcs_read(\"CPU_BASED_VM_EXEC_CONTROL\");\n    \
         e.vmcs_write(\"CPU_BASED_VM_EXEC_CONTROL\", p | 4);\n  }\n}\n",
    )
    .unwrap();
    let r = run_guest("vmx-basic", &["--script", script.to_str().unwrap(), "--script-mode", "inline"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("GUEST_RIP at the HLT exit points at HLT"), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
