//! An L1 hypervisor whose L2 executes the sensitive instructions that exit or not as L1's
//! controls say (SDM 26.1.2, 26.1.3): CPUID and INVD always exit; RDTSC with "RDTSC exiting";
//! MOV to CR3 with "CR3-load exiting" unless the value is a CR3-target value; MOV from CR3 with
//! "CR3-store exiting"; MOV to CR0 and CLTS when they would change a bit L1 owns (CR0
//! guest/host mask) to differ from the read shadow; MOV from CR0/CR4 never, reading the owned
//! bits from the read shadows (SDM 26.3); INVLPG with "INVLPG exiting"; MOV to/from CR8 with
//! "CR8-load/store exiting"; WBINVD only with "WBINVD exiting". L1 checks each exit's reason,
//! exit qualification (SDM 28.2.1, Table 28-3 for control-register accesses), instruction
//! length and GUEST_RIP, and that the instructions without an exit ran with the result the
//! SDM gives them. A second L2 runs RDTSC with "use TSC offsetting" and no RDTSC exiting: it
//! reads L1's TSC plus TSC_OFFSET (SDM 26.3, 27.3). A third L2's WBINVD and RDPMC exit with
//! "WBINVD exiting" and "RDPMC exiting".
//!
//! Without these controls in the capability MSRs (nestbed offers them only with
//! `--patch-sensitive on|auto`, when L2's sensitive instructions reach it), L1 says so and
//! exits with [`NOT_OFFERED`].
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, reason, Caps, Config, Page, Stack, Vcpu};
use rt::io::{cpuid, rdtsc};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

/// Exit code when the capability MSRs do not offer RDTSC exiting.
const NOT_OFFERED: u32 = 77;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static VMCS_TSC: Page = Page::new();
static VMCS_CACHE: Page = Page::new();
static L2_STACK: Stack = Stack::new();
/// Where L2 stores what it read; INVLPG's operand points into it.
static RESULTS: Page = Page::new();

const CR0_TS: u64 = 1 << 3;
const CR4_PCE: u64 = 1 << 8;
/// A CR3 value that is not a CR3-target value: its MOV must exit (and never be executed).
const NON_TARGET_CR3: u64 = 0x7000;
/// RESULTS offsets L2 stores to.
const R_CR3: usize = 0;
const R_CR0: usize = 8;
const R_CR4: usize = 16;
const R_DONE: usize = 24;
const R_TSC: usize = 32;
/// L1's TSC_OFFSET for the second L2.
const L2_TSC_OFFSET: u64 = 1 << 56;

// L2's code: each step is an instruction between labels lsN and leN; the table gives the
// offsets of both from l2_sens_code. R12: CR3 (the CR3-target value), RSI: NON_TARGET_CR3,
// R13: CR0 with TS clear, R8: CR0 with TS set, R14: RESULTS (INVLPG's base), R15: RESULTS.
global_asm!(
    r#"
    .section .text.l2_sens_code, "ax"
    .global l2_sens_code
    l2_sens_code:
    ls0:  cpuid
    le0:
    ls1:  rdtsc
    le1:
    ls2:  mov cr3, rsi
    le2:
    ls3:  mov cr3, r12
    le3:
    ls4:  mov rdi, cr3
    le4:
          mov [r15 + 0], rdi
    ls5:  mov cr0, r13
    le5:
    ls6:  mov cr0, r8
    le6:
    ls7:  clts
    le7:
    ls8:  clts
    le8:
    ls9:  mov rax, cr0
    le9:
          mov [r15 + 8], rax
    ls10: mov rax, cr4
    le10:
          mov [r15 + 16], rax
    ls11: invlpg [r14 + 0x40]
    le11:
    ls12: invd
    le12:
    ls13: wbinvd
    le13:
    ls14: mov r9, cr8
    le14:
    ls15: mov cr8, r10
    le15:
          mov qword ptr [r15 + 24], 1
    ls16: hlt
    le16:
          jmp ls16

    .section .rodata.l2_sens_offsets, "a"
    .global l2_sens_offsets
    l2_sens_offsets:
    .byte ls0 - l2_sens_code, le0 - l2_sens_code, ls1 - l2_sens_code, le1 - l2_sens_code
    .byte ls2 - l2_sens_code, le2 - l2_sens_code, ls3 - l2_sens_code, le3 - l2_sens_code
    .byte ls4 - l2_sens_code, le4 - l2_sens_code, ls5 - l2_sens_code, le5 - l2_sens_code
    .byte ls6 - l2_sens_code, le6 - l2_sens_code, ls7 - l2_sens_code, le7 - l2_sens_code
    .byte ls8 - l2_sens_code, le8 - l2_sens_code, ls9 - l2_sens_code, le9 - l2_sens_code
    .byte ls10 - l2_sens_code, le10 - l2_sens_code, ls11 - l2_sens_code, le11 - l2_sens_code
    .byte ls12 - l2_sens_code, le12 - l2_sens_code, ls13 - l2_sens_code, le13 - l2_sens_code
    .byte ls14 - l2_sens_code, le14 - l2_sens_code, ls15 - l2_sens_code, le15 - l2_sens_code
    .byte ls16 - l2_sens_code, le16 - l2_sens_code

    .section .text.l2_cache_code, "ax"
    .global l2_cache_code
    l2_cache_code:
          wbinvd
          xor ecx, ecx
          rdpmc
    2:    hlt
          jmp 2b

    .section .text.l2_tsc_code, "ax"
    .global l2_tsc_code
    l2_tsc_code:
          rdtsc
          shl rdx, 32
          or rax, rdx
          mov [r15 + 32], rax
    2:    hlt
          jmp 2b
    "#
);

extern "C" {
    fn l2_sens_code() -> !;
    fn l2_tsc_code() -> !;
    fn l2_cache_code() -> !;
    static l2_sens_offsets: [u8; 2 * STEPS];
}

extern "C" fn l2_sens_main() -> ! {
    // SAFETY: L2's code takes no arguments and never returns.
    unsafe { asm!("jmp {}", sym l2_sens_code, options(noreturn)) }
}

extern "C" fn l2_cache_main() -> ! {
    // SAFETY: as for l2_sens_main.
    unsafe { asm!("jmp {}", sym l2_cache_code, options(noreturn)) }
}

extern "C" fn l2_tsc_main() -> ! {
    // SAFETY: as for l2_sens_main.
    unsafe { asm!("jmp {}", sym l2_tsc_code, options(noreturn)) }
}

const STEPS: usize = 17;
const HLT_STEP: usize = 16;
const INVLPG_STEP: usize = 11;

/// Exit-qualification access types of a control-register access (SDM Table 28-3).
const MOV_TO_CR: u64 = 0;
const MOV_FROM_CR: u64 = 1 << 4;
const CLTS: u64 = 2 << 4;
const fn cr_access(cr: u64, access: u64, gpr: u64) -> u64 {
    cr | access | gpr << 8
}
// General-purpose register numbers (SDM Table 28-3).
const RSI: u64 = 6;
const RDI: u64 = 7;
const R9: u64 = 9;
const R10: u64 = 10;
const R13: u64 = 13;

/// One instruction of L2 and the exit it causes: `None` for no exit; the qualification is
/// `None` when not checked (HLT's, or INVLPG's, which L1 computes).
struct Step {
    what: &'static str,
    exit: Option<(u32, Option<u64>)>,
}

const fn exits(what: &'static str, reason: u32, qualification: u64) -> Step {
    Step { what, exit: Some((reason, Some(qualification))) }
}

const fn stays(what: &'static str) -> Step {
    Step { what, exit: None }
}

const EXPECT: [Step; STEPS] = [
    exits("cpuid", reason::CPUID, 0),
    exits("rdtsc (RDTSC exiting)", reason::RDTSC, 0),
    exits("mov cr3, rsi (not a CR3-target value)", reason::CR_ACCESS, cr_access(3, MOV_TO_CR, RSI)),
    stays("mov cr3, r12 (CR3_TARGET_VALUE0)"),
    exits("mov rdi, cr3 (CR3-store exiting)", reason::CR_ACCESS, cr_access(3, MOV_FROM_CR, RDI)),
    exits("mov cr0, r13 (TS differs from the read shadow)", reason::CR_ACCESS, cr_access(0, MOV_TO_CR, R13)),
    stays("mov cr0, r8 (TS as in the read shadow)"),
    exits("clts (TS owned, set in the read shadow)", reason::CR_ACCESS, CLTS),
    stays("clts (TS owned, clear in the read shadow)"),
    stays("mov rax, cr0"),
    stays("mov rax, cr4"),
    Step { what: "invlpg [r14+0x40] (INVLPG exiting)", exit: Some((reason::INVLPG, None)) },
    exits("invd", reason::INVD, 0),
    stays("wbinvd (no WBINVD exiting)"),
    exits("mov r9, cr8 (CR8-store exiting)", reason::CR_ACCESS, cr_access(8, MOV_FROM_CR, R9)),
    exits("mov cr8, r10 (CR8-load exiting)", reason::CR_ACCESS, cr_access(8, MOV_TO_CR, R10)),
    Step { what: "hlt (HLT exiting)", exit: Some((reason::HLT, None)) },
];

fn main(_info: &rt::BootInfo) -> u32 {
    let caps = Caps::read();
    let true_msrs = caps.basic & (1 << 55) != 0;
    let msr = if true_msrs { "IA32_VMX_TRUE_PROCBASED_CTLS" } else { "IA32_VMX_PROCBASED_CTLS" };
    if caps.proc.allowed1 & ctl::PROC_RDTSC_EXITING == 0 {
        rt::println!(
            "vmx-sensitive: RDTSC exiting (bit 12) is not allowed-1 in ",
            msr,
            ": the controls for L2's sensitive instructions are not offered (nestbed offers them with \
             --patch-sensitive on or auto)"
        );
        return NOT_OFFERED;
    }
    match run(&caps) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

/// Checks that the controls in `want` are set in the current VMCS's `field`.
fn controls_set(failures: &mut u32, what: &str, field: u64, want: u32) -> Result<(), VmFail> {
    let have = hv::read(field)? as u32;
    let mut f = *failures;
    rt::check!(f, have & want == want, what, " controls ", Hex(have.into()), " hold ", Hex(want.into()));
    *failures = f;
    Ok(())
}

fn run(caps: &Caps) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    vmx::enable(VMXON_REGION.addr())?;
    failures += sensitive_exits(caps)?;
    failures += tsc_offsetting(caps)?;
    failures += cache_and_counters(caps)?;
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-sensitive: all checks passed" } else { "vmx-sensitive: some checks FAILED" });
    Ok(failures)
}

/// Phase 1: every step of L2's code, with its exit or without one.
fn sensitive_exits(caps: &Caps) -> Result<u32, VmFail> {
    use field::*;
    let mut failures = 0u32;
    rt::println!("-- L2's sensitive instructions under L1's exit controls, masks and CR3 targets");
    hv::load_vmcs(caps, &VMCS)?;
    let proc = ctl::PROC_HLT_EXITING
        | ctl::PROC_RDTSC_EXITING
        | ctl::PROC_CR3_LOAD_EXITING
        | ctl::PROC_CR3_STORE_EXITING
        | ctl::PROC_CR8_LOAD_EXITING
        | ctl::PROC_CR8_STORE_EXITING
        | ctl::PROC_INVLPG_EXITING;
    let cfg =
        Config { entry: l2_sens_main, stack_top: L2_STACK.top(), proc, proc2: 0, io_bitmaps: None, msr_bitmap: None };
    hv::setup_vmcs(caps, &cfg)?;
    controls_set(&mut failures, "primary processor-based", CPU_BASED_VM_EXEC_CONTROL, proc)?;
    // L2 starts with CR0.TS clear, reading it as set.
    let cr0 = hv::read(GUEST_CR0)? & !CR0_TS;
    hv::write(GUEST_CR0, cr0)?;
    let cr3 = hv::read(GUEST_CR3)?;
    let cr4 = hv::read(GUEST_CR4)?;
    let cr0_shadow = cr0 | CR0_TS;
    let cr4_shadow = cr4 ^ CR4_PCE;
    hv::write(CR3_TARGET_COUNT, 1)?;
    hv::write(CR3_TARGET_VALUE0, cr3)?;
    hv::write(CR0_GUEST_HOST_MASK, CR0_TS)?;
    hv::write(CR0_READ_SHADOW, cr0_shadow)?;
    hv::write(CR4_GUEST_HOST_MASK, CR4_PCE)?;
    hv::write(CR4_READ_SHADOW, cr4_shadow)?;
    RESULTS.clear();

    let code = l2_sens_code as *const () as u64;
    // SAFETY: a table of 2 * STEPS bytes defined by the global_asm above.
    let offsets = unsafe { &l2_sens_offsets };
    let start = |i: usize| code + u64::from(offsets[2 * i]);
    let len = |i: usize| u64::from(offsets[2 * i + 1] - offsets[2 * i]);
    let mut vcpu = Vcpu::default();
    vcpu.regs.r12 = cr3;
    vcpu.regs.rsi = NON_TARGET_CR3;
    vcpu.regs.r13 = cr0 & !CR0_TS;
    vcpu.regs.r8 = cr0 | CR0_TS;
    vcpu.regs.r14 = RESULTS.addr();
    vcpu.regs.r15 = RESULTS.addr();
    let invlpg_address = RESULTS.addr() + 0x40;

    let mut next = 0;
    let mut halted = false;
    for _ in 0..STEPS + 2 {
        let exit = vcpu.run()?;
        if exit.reason & reason::ENTRY_FAILURE != 0 {
            rt::check!(failures, false, "VM entry failed: exit reason ", Hex(exit.reason.into()));
            break;
        }
        let Some(i) = (next..STEPS).find(|&i| start(i) == exit.rip) else {
            rt::check!(
                failures,
                false,
                "exit ",
                exit.basic(),
                " (qualification ",
                Hex(exit.qualification),
                ") at GUEST_RIP ",
                Hex(exit.rip),
                ", not at one of L2's steps"
            );
            break;
        };
        for skipped in &EXPECT[next..i] {
            rt::check!(failures, skipped.exit.is_none(), skipped.what, ": no VM exit");
        }
        let e = &EXPECT[i];
        let Some((want_reason, want_q)) = e.exit else {
            rt::check!(failures, false, e.what, ": VM exit ", exit.basic(), ", expected none");
            hv::write(GUEST_RIP, start(i) + len(i))?;
            next = i + 1;
            continue;
        };
        rt::check!(
            failures,
            exit.basic() == want_reason,
            e.what,
            ": exit reason ",
            exit.basic(),
            ", expected ",
            want_reason
        );
        if i == HLT_STEP {
            halted = true;
            break;
        }
        rt::check!(
            failures,
            exit.instruction_len == len(i),
            e.what,
            ": VM_EXIT_INSTRUCTION_LEN ",
            exit.instruction_len,
            ", expected ",
            len(i)
        );
        let want_q = if i == INVLPG_STEP { Some(invlpg_address) } else { want_q };
        if let Some(q) = want_q {
            rt::check!(
                failures,
                exit.qualification == q,
                e.what,
                ": EXIT_QUALIFICATION ",
                Hex(exit.qualification),
                ", expected ",
                Hex(q)
            );
        }
        // What an L1 does for the exits that produce a value: CPUID and RDTSC as the CPU
        // would, MOV from CR3 with L2's CR3. CLTS as a lazy FPU switch does it: L2 reads TS
        // clear, its real TS is set until L1 loads its FPU state.
        match exit.basic() {
            reason::CPUID => {
                let [a, b, c, d] = cpuid(vcpu.regs.rax as u32, vcpu.regs.rcx as u32);
                (vcpu.regs.rax, vcpu.regs.rbx, vcpu.regs.rcx, vcpu.regs.rdx) = (a.into(), b.into(), c.into(), d.into());
            }
            reason::RDTSC => {
                let t = rdtsc();
                (vcpu.regs.rax, vcpu.regs.rdx) = (t & 0xffff_ffff, t >> 32);
            }
            reason::CR_ACCESS if (exit.qualification & 0x3f) == (3 | MOV_FROM_CR) => {
                vcpu.regs.rdi = hv::read(GUEST_CR3)?
            }
            reason::CR_ACCESS if exit.qualification & 0x30 == CLTS => {
                let now = hv::read(GUEST_CR0)?;
                rt::check!(
                    failures,
                    now == cr0,
                    "GUEST_CR0 at the CLTS exit ",
                    Hex(now),
                    ", expected ",
                    Hex(cr0),
                    " (mov cr0, r8 kept the TS L1 owns)"
                );
                hv::write(CR0_READ_SHADOW, cr0)?;
                hv::write(GUEST_CR0, cr0 | CR0_TS)?;
            }
            _ => {}
        }
        exit.skip()?;
        next = i + 1;
    }
    rt::check!(failures, halted, "L2 reached its HLT");
    rt::check!(failures, RESULTS.read_u64(R_DONE) == 1, "L2 ran to its end");
    let got = RESULTS.read_u64(R_CR3);
    rt::check!(failures, got == cr3, "mov rdi, cr3: L2 read ", Hex(got), " (L1's emulation), expected ", Hex(cr3));
    let now = hv::read(GUEST_CR3)?;
    rt::check!(failures, now == cr3, "GUEST_CR3 ", Hex(now), ": the CR3-target value, the non-target one never loaded");
    // After the CLTS exit: real TS set, shadow TS clear.
    let want = cr0;
    let got = RESULTS.read_u64(R_CR0);
    rt::check!(
        failures,
        got == want,
        "mov rax, cr0: ",
        Hex(got),
        ", expected ",
        Hex(want),
        " (TS clear from the read shadow, set in CR0)"
    );
    let now = hv::read(GUEST_CR0)?;
    rt::check!(
        failures,
        now == cr0 | CR0_TS,
        "GUEST_CR0 ",
        Hex(now),
        ", expected ",
        Hex(cr0 | CR0_TS),
        " (the CLTS without an exit kept the TS L1 owns)"
    );
    let want = cr4 & !CR4_PCE | cr4_shadow & CR4_PCE;
    let got = RESULTS.read_u64(R_CR4);
    rt::check!(
        failures,
        got == want,
        "mov rax, cr4: ",
        Hex(got),
        ", expected ",
        Hex(want),
        " (PCE from the read shadow)"
    );
    Ok(failures)
}

/// Phase 2: a second L2 reads the TSC with "use TSC offsetting" and no RDTSC exiting.
fn tsc_offsetting(caps: &Caps) -> Result<u32, VmFail> {
    use field::*;
    let mut failures = 0u32;
    rt::println!("-- L2's RDTSC with TSC offsetting, no RDTSC exiting");
    hv::load_vmcs(caps, &VMCS_TSC)?;
    let proc = ctl::PROC_HLT_EXITING | ctl::PROC_USE_TSC_OFFSETTING;
    let cfg =
        Config { entry: l2_tsc_main, stack_top: L2_STACK.top(), proc, proc2: 0, io_bitmaps: None, msr_bitmap: None };
    hv::setup_vmcs(caps, &cfg)?;
    controls_set(&mut failures, "primary processor-based", CPU_BASED_VM_EXEC_CONTROL, proc)?;
    let have = hv::read(CPU_BASED_VM_EXEC_CONTROL)? as u32;
    rt::check!(failures, have & ctl::PROC_RDTSC_EXITING == 0, "RDTSC exiting is clear");
    hv::write(field::TSC_OFFSET, L2_TSC_OFFSET)?;
    let mut vcpu = Vcpu::default();
    vcpu.regs.r15 = RESULTS.addr();
    let before = rdtsc();
    let exit = vcpu.run()?;
    let after = rdtsc();
    rt::check!(failures, exit.basic() == reason::HLT, "exit reason ", exit.basic(), " (HLT is 12): RDTSC did not exit");
    let l2 = RESULTS.read_u64(R_TSC);
    rt::check!(
        failures,
        l2 >= before + L2_TSC_OFFSET && l2 <= after + L2_TSC_OFFSET,
        "L2's TSC ",
        Hex(l2),
        " is L1's (",
        Hex(before),
        "..",
        Hex(after),
        ") plus TSC_OFFSET ",
        Hex(L2_TSC_OFFSET)
    );
    Ok(failures)
}

/// Phase 3: a third L2 executes WBINVD with "WBINVD exiting" and RDPMC with "RDPMC exiting":
/// both exit (SDM 26.1.3), with reasons 54 and 15 and their lengths.
fn cache_and_counters(caps: &Caps) -> Result<u32, VmFail> {
    use field::*;
    let mut failures = 0u32;
    rt::println!("-- L2's WBINVD and RDPMC with WBINVD exiting and RDPMC exiting");
    hv::load_vmcs(caps, &VMCS_CACHE)?;
    let proc = ctl::PROC_HLT_EXITING | ctl::PROC_RDPMC_EXITING;
    let proc2 = ctl::PROC2_WBINVD_EXITING;
    let cfg =
        Config { entry: l2_cache_main, stack_top: L2_STACK.top(), proc, proc2, io_bitmaps: None, msr_bitmap: None };
    hv::setup_vmcs(caps, &cfg)?;
    controls_set(&mut failures, "primary processor-based", CPU_BASED_VM_EXEC_CONTROL, proc)?;
    controls_set(&mut failures, "secondary processor-based", SECONDARY_VM_EXEC_CONTROL, proc2)?;
    let mut vcpu = Vcpu::default();
    for (what, want, len) in [("wbinvd", reason::WBINVD, 2), ("rdpmc", reason::RDPMC, 2), ("hlt", reason::HLT, 1)] {
        let exit = vcpu.run()?;
        rt::check!(
            failures,
            exit.basic() == want && exit.instruction_len == len,
            what,
            ": exit reason ",
            exit.basic(),
            " length ",
            exit.instruction_len,
            ", expected ",
            want,
            " length ",
            len
        );
        if exit.basic() != want {
            break;
        }
        if want != reason::HLT {
            exit.skip()?;
        }
    }
    Ok(failures)
}
