//! The MSR areas, the debug controls and VM entry after MOV SS, as the SDM says:
//! - the VM-entry MSR-load area is loaded into L2 after its guest state (SDM 27.4), the VM-exit
//!   MSR-store area gets L2's MSRs (28.4: IA32_TSC without TSC offsetting) and the VM-exit
//!   MSR-load area is loaded into L1 after the host state (28.6);
//! - an entry that fails the rules of 27.4 (IA32_FS_BASE, reserved bits, an x2APIC MSR, an MSR
//!   the processor does not have, more entries than IA32_VMX_MISC allows) is a VM-entry failure
//!   with exit reason 34 and the entry's number as qualification (27.8), after which the
//!   VM-exit MSR-load area is loaded too;
//! - "load debug controls" loads GUEST_DR7 (without it L2 goes on with L1's DR7), "save debug
//!   controls" saves L2's DR7, and L1's DR7 is 400H after every VM exit (27.3.2.1, 28.3.1,
//!   28.5.1); IA32_DEBUGCTL likewise, as far as the host keeps its bits;
//! - VMLAUNCH and VMRESUME right after MOV SS fail with VM-instruction error 26 (SDM 31).
//!
//! `abort-store` and `abort-load` put an entry the SDM forbids into a VM-exit area: the exit
//! is a VMX abort (28.7), which shuts the logical processor down and ends the run.
#![no_std]
#![no_main]

use core::arch::asm;

use hv::{ctl, error, field, msr, reason, Caps, Config, MsrArea, Page, Stack, Vcpu};
use rt::vmx::{self, VmFail};
use rt::{io, Hex};

rt::entry!(main);

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static MSR_BITMAP: Page = Page::new();
static L2_STACK: Stack = Stack::new();
static ENTRY_LOAD: MsrArea<3> = MsrArea::new();
static EXIT_STORE: MsrArea<4> = MsrArea::new();
static EXIT_LOAD: MsrArea<2> = MsrArea::new();
static BAD: MsrArea<3> = MsrArea::new();
/// One entry more than the 512 IA32_VMX_MISC recommends.
static LONG: MsrArea<513> = MsrArea::new();

const ENTRY_GS: u64 = 0x0000_7fff_1234_5000;
const ENTRY_ESP: u64 = 0xffff_8000_0001_0000;
const ENTRY_STAR: u64 = 0x0023_0010_0000_0000;
/// What L2 writes to IA32_KERNEL_GS_BASE and IA32_SYSENTER_ESP.
const L2_GS: u64 = 0xffff_8000_2222_3000;
const L2_ESP: u64 = 0xffff_8000_0002_0000;
/// What the VM-exit MSR-load areas give L1's IA32_KERNEL_GS_BASE.
const EXIT_GS: u64 = 0x0000_0000_5555_6000;
const FAILED_ENTRY_GS: u64 = 0x0000_0000_7777_8000;

const DR7_INIT: u64 = 0x400;
const IA32_FS_BASE: u32 = 0xc000_0100;
/// An MSR no processor has.
const NO_SUCH_MSR: u32 = 0x1234_5678;

/// L2: reads DR7 into R11 and writes R13 into it (unless 0); with R14 set, reads
/// IA32_KERNEL_GS_BASE, IA32_SYSENTER_ESP and IA32_STAR into R8-R10 and writes L2_GS and
/// L2_ESP; reads IA32_DEBUGCTL into R12; then HLT, and again.
extern "C" fn l2_main() -> ! {
    // SAFETY: MSR and debug-register accesses L1 does not intercept, then HLT, which exits.
    unsafe {
        asm!(
            "2:",
            "mov r11, dr7",
            "test r13, r13",
            "jz 3f",
            "mov dr7, r13",
            "3:",
            "test r14, r14",
            "jz 4f",
            "mov ecx, {gs}",
            "rdmsr",
            "shl rdx, 32",
            "mov eax, eax",
            "or rax, rdx",
            "mov r8, rax",
            "mov ecx, {esp}",
            "rdmsr",
            "shl rdx, 32",
            "mov eax, eax",
            "or rax, rdx",
            "mov r9, rax",
            "mov ecx, {star}",
            "rdmsr",
            "shl rdx, 32",
            "mov eax, eax",
            "or rax, rdx",
            "mov r10, rax",
            "mov ecx, {gs}",
            "mov rax, {l2_gs}",
            "mov rdx, rax",
            "shr rdx, 32",
            "wrmsr",
            "mov ecx, {esp}",
            "mov rax, {l2_esp}",
            "mov rdx, rax",
            "shr rdx, 32",
            "wrmsr",
            "4:",
            "mov ecx, {debugctl}",
            "rdmsr",
            "shl rdx, 32",
            "mov eax, eax",
            "or rax, rdx",
            "mov r12, rax",
            "hlt",
            "jmp 2b",
            gs = const msr::IA32_KERNEL_GS_BASE,
            esp = const msr::IA32_SYSENTER_ESP,
            star = const msr::IA32_STAR,
            debugctl = const msr::IA32_DEBUGCTL,
            l2_gs = const L2_GS,
            l2_esp = const L2_ESP,
            options(noreturn)
        )
    }
}

fn main(info: &rt::BootInfo) -> u32 {
    match run(rt::next_word(info.args).0) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn dr7() -> u64 {
    let v: u64;
    // SAFETY: reads DR7 at CPL 0.
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn set_dr7(v: u64) {
    // SAFETY: writes DR7 at CPL 0; the values used enable breakpoints on DR1 = 0, an address
    // no code here runs at.
    unsafe { asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// Sets or clears "load debug controls" and "save debug controls".
fn debug_controls(on: bool) -> Result<(), VmFail> {
    let e = hv::read(field::VM_ENTRY_CONTROLS)? as u32 & !ctl::ENTRY_LOAD_DEBUG_CONTROLS;
    let x = hv::read(field::VM_EXIT_CONTROLS)? as u32 & !ctl::EXIT_SAVE_DEBUG_CONTROLS;
    let (de, dx) = if on { (ctl::ENTRY_LOAD_DEBUG_CONTROLS, ctl::EXIT_SAVE_DEBUG_CONTROLS) } else { (0, 0) };
    hv::write(field::VM_ENTRY_CONTROLS, u64::from(e | de))?;
    hv::write(field::VM_EXIT_CONTROLS, u64::from(x | dx))
}

fn areas(entry: (u64, u64), store: (u64, u64), load: (u64, u64)) -> Result<(), VmFail> {
    hv::write(field::VM_ENTRY_MSR_LOAD_ADDR, entry.0)?;
    hv::write(field::VM_ENTRY_MSR_LOAD_COUNT, entry.1)?;
    hv::write(field::VM_EXIT_MSR_STORE_ADDR, store.0)?;
    hv::write(field::VM_EXIT_MSR_STORE_COUNT, store.1)?;
    hv::write(field::VM_EXIT_MSR_LOAD_ADDR, load.0)?;
    hv::write(field::VM_EXIT_MSR_LOAD_COUNT, load.1)
}

/// Runs L2 to its next HLT and moves past it.
fn to_hlt(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let exit = vcpu.run()?;
    exit.skip()?;
    if exit.reason != reason::HLT {
        rt::println!("FAIL exit reason ", Hex(exit.reason.into()), ", expected HLT (12)");
        return Ok(1);
    }
    Ok(0)
}

fn run(mode: &str) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let caps = Caps::read();
    let max = 512 * (((caps.misc >> 25) & 7) + 1);
    rt::check!(failures, max == 512, "IA32_VMX_MISC bits 27:25: at most ", max, " entries per MSR area");
    let offered = caps.entry.allowed1 & ctl::ENTRY_LOAD_DEBUG_CONTROLS != 0
        && caps.exit.allowed1 & ctl::EXIT_SAVE_DEBUG_CONTROLS != 0;
    rt::check!(failures, offered, "\"load debug controls\" and \"save debug controls\" are offered");
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: Some(&MSR_BITMAP),
        },
    )?;
    let mut vcpu = Vcpu::default();
    if mode == "abort-store" || mode == "abort-load" {
        return abort(mode, &mut vcpu);
    }
    failures += saved_dr7(&mut vcpu)?;
    failures += msr_areas(&mut vcpu)?;
    failures += inherited_dr7(&mut vcpu)?;
    failures += failed_entries(&mut vcpu)?;
    failures += mov_ss(&mut vcpu)?;
    vmx::vmxoff()?;
    rt::println!(if failures == 0 { "vmx-msr-lists: all checks passed" } else { "vmx-msr-lists: some checks FAILED" });
    Ok(failures)
}

/// Load and save debug controls with GUEST_DR7 = 400H: L2 writes DR7 itself, the VM exit saves
/// it and L1's DR7 is 400H.
fn saved_dr7(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    debug_controls(true)?;
    hv::write(field::GUEST_DR7, DR7_INIT)?;
    (vcpu.regs.r13, vcpu.regs.r14) = (0x408, 0);
    let mut failures = to_hlt(vcpu)?;
    rt::check!(failures, vcpu.regs.r11 == DR7_INIT, "load debug controls: L2 starts with DR7 ", Hex(vcpu.regs.r11));
    let saved = vmx::vmread(field::GUEST_DR7)?;
    rt::check!(
        failures,
        saved == 0x408,
        "save debug controls: GUEST_DR7 is L2's DR7 ",
        Hex(saved),
        " (L2 wrote 0x408)"
    );
    let d = dr7();
    rt::check!(failures, d == DR7_INIT, "L1's DR7 after the VM exit: ", Hex(d), " (SDM 28.5.1: 0x400)");
    Ok(failures)
}

/// The three MSR areas, with the debug controls loading DR7 = 404H and IA32_DEBUGCTL.
fn msr_areas(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let (l1_gs, l1_star) = (io::rdmsr(msr::IA32_KERNEL_GS_BASE), io::rdmsr(msr::IA32_STAR));
    ENTRY_LOAD.set(0, msr::IA32_KERNEL_GS_BASE, 0, ENTRY_GS);
    ENTRY_LOAD.set(1, msr::IA32_SYSENTER_ESP, 0, ENTRY_ESP);
    ENTRY_LOAD.set(2, msr::IA32_STAR, 0, ENTRY_STAR);
    for (i, m) in
        [msr::IA32_KERNEL_GS_BASE, msr::IA32_SYSENTER_ESP, msr::IA32_TSC, msr::IA32_EFER].into_iter().enumerate()
    {
        EXIT_STORE.set(i, m, 0, 0);
    }
    EXIT_LOAD.set(0, msr::IA32_KERNEL_GS_BASE, 0, EXIT_GS);
    EXIT_LOAD.set(1, msr::IA32_STAR, 0, l1_star);
    areas((ENTRY_LOAD.addr(), 3), (EXIT_STORE.addr(), 4), (EXIT_LOAD.addr(), 2))?;
    hv::write(field::GUEST_DR7, 0x404)?;
    hv::write(field::GUEST_IA32_DEBUGCTL, 2)?;
    io::wrmsr(msr::IA32_DEBUGCTL, 1);
    (vcpu.regs.r13, vcpu.regs.r14) = (0x40c, 1);
    let before = io::rdtsc();
    let mut failures = to_hlt(vcpu)?;
    let after = io::rdtsc();
    let r = vcpu.regs;
    rt::check!(
        failures,
        (r.r8, r.r9, r.r10) == (ENTRY_GS, ENTRY_ESP, ENTRY_STAR),
        "VM-entry MSR-load area: L2 reads IA32_KERNEL_GS_BASE ",
        Hex(r.r8),
        ", IA32_SYSENTER_ESP ",
        Hex(r.r9),
        ", IA32_STAR ",
        Hex(r.r10)
    );
    let (gs, esp, tsc, efer) = (EXIT_STORE.data(0), EXIT_STORE.data(1), EXIT_STORE.data(2), EXIT_STORE.data(3));
    rt::check!(
        failures,
        gs == L2_GS && esp == L2_ESP,
        "VM-exit MSR-store area: L2's IA32_KERNEL_GS_BASE ",
        Hex(gs),
        ", IA32_SYSENTER_ESP ",
        Hex(esp)
    );
    rt::check!(
        failures,
        before <= tsc && tsc <= after,
        "VM-exit MSR-store area: IA32_TSC ",
        Hex(tsc),
        " between L1's RDTSC before the entry ",
        Hex(before),
        " and after the exit ",
        Hex(after)
    );
    let guest_efer = vmx::vmread(field::GUEST_IA32_EFER)?;
    rt::check!(failures, efer == guest_efer, "VM-exit MSR-store area: IA32_EFER ", Hex(efer), " = GUEST_IA32_EFER");
    let guest_esp = vmx::vmread(field::GUEST_SYSENTER_ESP)?;
    rt::check!(failures, guest_esp == L2_ESP, "GUEST_SYSENTER_ESP saved at the exit agrees: ", Hex(guest_esp));
    let (gs, star) = (io::rdmsr(msr::IA32_KERNEL_GS_BASE), io::rdmsr(msr::IA32_STAR));
    rt::check!(
        failures,
        gs == EXIT_GS && star == l1_star,
        "VM-exit MSR-load area: L1's IA32_KERNEL_GS_BASE ",
        Hex(gs),
        ", IA32_STAR ",
        Hex(star)
    );
    rt::check!(failures, r.r11 == 0x404, "load debug controls: L2 reads the GUEST_DR7 loaded, ", Hex(r.r11));
    let saved = vmx::vmread(field::GUEST_DR7)?;
    rt::check!(failures, saved == 0x40c, "save debug controls: GUEST_DR7 ", Hex(saved), " (L2 wrote 0x40c)");
    let d = dr7();
    rt::check!(failures, d == DR7_INIT, "L1's DR7 after the VM exit: ", Hex(d));
    let debugctl = vmx::vmread(field::GUEST_IA32_DEBUGCTL)?;
    rt::check!(
        failures,
        debugctl == r.r12,
        "IA32_DEBUGCTL: L2 read ",
        Hex(r.r12),
        " (GUEST_IA32_DEBUGCTL was 2; the host keeps the bits it supports), saved ",
        Hex(debugctl)
    );
    let l1_debugctl = io::rdmsr(msr::IA32_DEBUGCTL);
    rt::check!(failures, l1_debugctl == 0, "L1's IA32_DEBUGCTL after the VM exit: ", Hex(l1_debugctl));
    io::wrmsr(msr::IA32_KERNEL_GS_BASE, l1_gs);
    areas((0, 0), (0, 0), (0, 0))?;
    Ok(failures)
}

/// Neither debug control: L2 goes on with L1's DR7, which is 400H again after the exit, and
/// GUEST_DR7 keeps its value.
fn inherited_dr7(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    debug_controls(false)?;
    set_dr7(0x402);
    (vcpu.regs.r13, vcpu.regs.r14) = (0x408, 0);
    let mut failures = to_hlt(vcpu)?;
    rt::check!(failures, vcpu.regs.r11 == 0x402, "without load debug controls L2 has L1's DR7 ", Hex(vcpu.regs.r11));
    let d = dr7();
    rt::check!(failures, d == DR7_INIT, "L1's DR7 after the VM exit: ", Hex(d));
    let kept = vmx::vmread(field::GUEST_DR7)?;
    rt::check!(failures, kept == 0x40c, "without save debug controls GUEST_DR7 stays ", Hex(kept));
    vcpu.regs.r13 = 0;
    Ok(failures)
}

/// A VM entry whose MSR-load area holds `count` entries at `addr` fails with exit reason 34 and
/// `entry` as qualification (SDM 27.4, 27.8).
fn entry_fails(vcpu: &mut Vcpu, what: &str, addr: u64, count: u64, entry: u64) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let rip = vmx::vmread(field::GUEST_RIP)?;
    hv::write(field::VM_ENTRY_MSR_LOAD_ADDR, addr)?;
    hv::write(field::VM_ENTRY_MSR_LOAD_COUNT, count)?;
    let exit = vcpu.run()?;
    let want = reason::ENTRY_FAIL_MSR_LOADING | reason::ENTRY_FAILURE;
    rt::check!(
        failures,
        exit.reason == want && exit.qualification == entry,
        what,
        ": exit reason ",
        Hex(exit.reason.into()),
        ", qualification ",
        exit.qualification,
        " (expected ",
        Hex(want.into()),
        ", ",
        entry,
        ")"
    );
    rt::check!(failures, exit.rip == rip, "  L2 did not run: GUEST_RIP ", Hex(exit.rip));
    Ok(failures)
}

fn failed_entries(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let l1_gs = io::rdmsr(msr::IA32_KERNEL_GS_BASE);
    BAD.set(0, msr::IA32_KERNEL_GS_BASE, 0, ENTRY_GS);
    BAD.set(1, IA32_FS_BASE, 0, 0);
    EXIT_LOAD.set(0, msr::IA32_KERNEL_GS_BASE, 0, FAILED_ENTRY_GS);
    hv::write(field::VM_EXIT_MSR_LOAD_ADDR, EXIT_LOAD.addr())?;
    hv::write(field::VM_EXIT_MSR_LOAD_COUNT, 1)?;
    failures += entry_fails(vcpu, "VM-entry MSR-load area with IA32_FS_BASE second", BAD.addr(), 2, 2)?;
    let gs = io::rdmsr(msr::IA32_KERNEL_GS_BASE);
    rt::check!(failures, gs == FAILED_ENTRY_GS, "  the VM-exit MSR-load area was loaded (SDM 27.8): ", Hex(gs));
    hv::write(field::VM_EXIT_MSR_LOAD_COUNT, 0)?;
    io::wrmsr(msr::IA32_KERNEL_GS_BASE, l1_gs);

    BAD.set(0, msr::IA32_KERNEL_GS_BASE, 1, ENTRY_GS);
    failures += entry_fails(vcpu, "an entry with reserved bits 63:32 set", BAD.addr(), 1, 1)?;
    BAD.set(0, msr::IA32_KERNEL_GS_BASE, 0, ENTRY_GS);
    BAD.set(1, msr::IA32_STAR, 0, ENTRY_STAR);
    BAD.set(2, 0x808, 0, 0);
    failures += entry_fails(vcpu, "an x2APIC MSR (0x808) third", BAD.addr(), 3, 3)?;
    BAD.set(0, NO_SUCH_MSR, 0, 0);
    failures += entry_fails(vcpu, "an MSR the processor does not have", BAD.addr(), 1, 1)?;
    for i in 0..513 {
        LONG.set(i, msr::IA32_KERNEL_GS_BASE, 0, ENTRY_GS);
    }
    failures += entry_fails(vcpu, "513 entries, one beyond IA32_VMX_MISC's 512", LONG.addr(), 513, 513)?;
    hv::write(field::VM_ENTRY_MSR_LOAD_COUNT, 0)?;
    let exit = vcpu.run()?;
    rt::check!(failures, exit.reason == reason::HLT, "the next VM entry runs L2 again: exit reason ", exit.reason);
    exit.skip()?;
    Ok(failures)
}

/// RFLAGS after VMLAUNCH (or VMRESUME) executed right after `mov ss, ax`, which blocks events
/// for one instruction. A VM entry that happened after all would come back at HOST_RIP, the
/// label after the instruction, with RFLAGS 2.
fn entry_after_mov_ss(resume: bool) -> u64 {
    let rflags: u64;
    // SAFETY: reloads SS with its own selector; the VM entry fails (or would come back at the
    // label, HOST_RIP, with this RSP).
    unsafe {
        if resume {
            asm!(
                "mov rax, 0x6c14",
                "vmwrite rax, rsp",
                "lea rdx, [rip + 2f]",
                "mov rax, 0x6c16",
                "vmwrite rax, rdx",
                "mov ax, ss",
                "mov ss, ax",
                "vmresume",
                "2:",
                "pushfq",
                "pop {r}",
                r = out(reg) rflags,
                out("rax") _,
                out("rdx") _,
            )
        } else {
            asm!(
                "mov rax, 0x6c14",
                "vmwrite rax, rsp",
                "lea rdx, [rip + 2f]",
                "mov rax, 0x6c16",
                "vmwrite rax, rdx",
                "mov ax, ss",
                "mov ss, ax",
                "vmlaunch",
                "2:",
                "pushfq",
                "pop {r}",
                r = out(reg) rflags,
                out("rax") _,
                out("rdx") _,
            )
        }
    }
    rflags
}

/// VM entry with events blocked by MOV SS: VMfailValid(26) before the launch-state checks,
/// VMfailInvalid without a current VMCS (SDM 31, VMLAUNCH/VMRESUME).
fn mov_ss(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    const CF: u64 = 1;
    const ZF: u64 = 1 << 6;
    for (resume, name) in [(true, "VMRESUME"), (false, "VMLAUNCH")] {
        let f = entry_after_mov_ss(resume);
        let err = vmx::vmread(field::VM_INSTRUCTION_ERROR)? as u32;
        rt::check!(
            failures,
            f & (CF | ZF) == ZF && err == error::ENTRY_EVENTS_BLOCKED_BY_MOV_SS,
            name,
            " right after MOV SS: VMfailValid(",
            err,
            "), expected 26 (RFLAGS ",
            Hex(f),
            ")"
        );
    }
    let r = vmx::vmlaunch_bare();
    rt::check!(
        failures,
        r == Err(VmFail::Valid(error::VMLAUNCH_NONCLEAR_VMCS)),
        "VMLAUNCH without MOV SS: ",
        hv::Outcome(r)
    );
    vmx::vmclear(VMCS.addr())?;
    let f = entry_after_mov_ss(false);
    rt::check!(
        failures,
        f & (CF | ZF) == CF,
        "VMLAUNCH right after MOV SS without a current VMCS: VMfailInvalid (RFLAGS ",
        Hex(f),
        ")"
    );
    vmx::vmptrld(VMCS.addr())?;
    vcpu.launched = false;
    Ok(failures)
}

/// An entry the SDM forbids in a VM-exit area: the first VM exit is a VMX abort, which ends
/// the run; coming back here is a failure.
fn abort(mode: &str, vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    if mode == "abort-store" {
        EXIT_STORE.set(0, 0x808, 0, 0);
        areas((0, 0), (EXIT_STORE.addr(), 1), (0, 0))?;
        rt::println!("entering L2 with an x2APIC MSR (0x808) in the VM-exit MSR-store area");
    } else {
        EXIT_LOAD.set(0, IA32_FS_BASE, 0, 0);
        areas((0, 0), (0, 0), (EXIT_LOAD.addr(), 1))?;
        rt::println!("entering L2 with IA32_FS_BASE in the VM-exit MSR-load area");
    }
    let exit = vcpu.run()?;
    rt::println!("FAIL the VM exit came back to L1 (exit reason ", exit.reason, ") instead of a VMX abort");
    Ok(1)
}
