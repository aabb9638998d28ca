//! The monitor trap flag (SDM 26.5.2): with the primary processor-based control "monitor trap
//! flag" (bit 27), an MTF VM exit (reason 37) occurs on the instruction boundary after each
//! instruction L2 executes. L1 checks:
//! - stepping: L2 runs ten instructions of different lengths (1 to 10 bytes, a taken jump
//!   among them), one exit after each, GUEST_RIP at the next instruction and the registers as
//!   the instruction left them; a REP-prefixed string instruction exits after each iteration
//!   (GUEST_RIP stays on it until the last); an instruction that itself causes a VM exit (an
//!   OUT L1 intercepts) gives that exit, not an MTF exit;
//! - an event injected at VM entry together with MTF: the MTF exit comes after the event's
//!   delivery, before the handler's first instruction (GUEST_RIP is the handler, the frame is
//!   on L2's stack), for an external interrupt and a hardware exception with an error code;
//!   the next exit comes after the handler's first instruction;
//! - an instruction that faults (UD2): the MTF exit comes after the delivery of the #UD,
//!   before its handler's first instruction;
//! - a pending MTF VM exit injected at VM entry (interruption type 7, vector 0, SDM 27.6.2)
//!   with the control clear: an MTF exit before any instruction, then none.
//!
//! Where the capability MSRs do not offer the monitor trap flag it says so and exits 77.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::intr::{self, info, RFLAGS_CF, RFLAGS_FIXED, RFLAGS_IF};
use hv::l2idt;
use hv::vmx::GuestRegs;
use hv::{ctl, field, reason, Caps, Config, Exit, Page, Seen, Stack, Vcpu, CODE_SELECTOR};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

/// Exit code when the monitor trap flag is not offered.
const NOT_OFFERED: u32 = 77;
/// The OUT at the end of L2's steps.
const END_PORT: u16 = 0xe9;
const MOVABS_VALUE: u64 = 0x1122_3344_5566_7788;
const ADD_VALUE: u64 = 0x1234_5678;
/// Exception vectors (SDM Vol. 3A Table 6-1).
const UD: u8 = 6;
const GP: u8 = 13;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();
/// REP STOSB's destination.
static BUFFER: Page = Page::new();

// L2's steps: instruction i starts at label mI; the table gives each label's offset from m0.
// L1 enters with RBX = 0, RCX = 1, RDI = BUFFER, CF = 0.
global_asm!(
    r#"
    .section .text.vmx_mtf_l2, "ax"
    .global vmx_mtf_steps
    vmx_mtf_steps:
    m0:  nop
    m1:  inc rbx
    m2:  add rbx, {add}
    m3:  movabs rax, {movabs}
    m4:  xchg ax, ax
    m5:  lea rcx, [rcx + 1]
    m6:  nop dword ptr [rax]
    m7:  jmp m8
         ud2
    m8:  inc ecx
    m9:  cmc
    m10: rep stosb
    m11: out {end}, al
    m12: hlt
         jmp m12

    .global vmx_mtf_ud2
    vmx_mtf_ud2:
         ud2

    .section .rodata.vmx_mtf_offsets, "a"
    .global vmx_mtf_offsets
    vmx_mtf_offsets:
    .byte m0 - m0, m1 - m0, m2 - m0, m3 - m0, m4 - m0, m5 - m0, m6 - m0, m7 - m0
    .byte m8 - m0, m9 - m0, m10 - m0, m11 - m0, m12 - m0
    "#,
    add = const ADD_VALUE,
    movabs = const MOVABS_VALUE,
    end = const END_PORT,
);

extern "C" {
    fn vmx_mtf_steps() -> !;
    fn vmx_mtf_ud2() -> !;
    static vmx_mtf_offsets: [u8; 13];
}

extern "C" fn l2_main() -> ! {
    // SAFETY: jumps to L2's code above, which never returns.
    unsafe { asm!("jmp {}", sym vmx_mtf_steps, options(noreturn)) }
}

/// The address of label mI.
fn label(i: usize) -> u64 {
    // SAFETY: a 13-byte table in this image's read-only data.
    vmx_mtf_steps as *const () as u64 + u64::from(unsafe { vmx_mtf_offsets[i] })
}

/// One MTF exit: what L2 executed, the label GUEST_RIP must be at, and what the registers
/// (and RFLAGS) must show.
struct Step {
    what: &'static str,
    next: usize,
    holds: fn(&GuestRegs, u64) -> bool,
}

const fn step(what: &'static str, next: usize, holds: fn(&GuestRegs, u64) -> bool) -> Step {
    Step { what, next, holds }
}

const STEPS: [Step; 13] = [
    step("nop (1 byte)", 1, |_, _| true),
    step("inc rbx (3 bytes)", 2, |r, _| r.rbx == 1),
    step("add rbx, imm32 (7 bytes)", 3, |r, _| r.rbx == 1 + ADD_VALUE),
    step("movabs rax, imm64 (10 bytes)", 4, |r, _| r.rax == MOVABS_VALUE),
    step("xchg ax, ax (2 bytes)", 5, |_, _| true),
    step("lea rcx, [rcx+1] (4 bytes)", 6, |r, _| r.rcx == 2),
    step("nop dword ptr [rax] (3 bytes)", 7, |_, _| true),
    step("jmp over a ud2 (2 bytes, taken)", 8, |_, _| true),
    step("inc ecx (2 bytes)", 9, |r, _| r.rcx == 3),
    step("cmc (1 byte)", 10, |_, rflags| rflags & RFLAGS_CF != 0),
    step("rep stosb, iteration 1 of 3", 10, |r, _| r.rcx == 2 && r.rdi == BUFFER.addr() + 1),
    step("rep stosb, iteration 2 of 3", 10, |r, _| r.rcx == 1 && r.rdi == BUFFER.addr() + 2),
    step("rep stosb, iteration 3 of 3", 11, |r, _| r.rcx == 0 && r.rdi == BUFFER.addr() + 3),
];

fn main(_: &rt::BootInfo) -> u32 {
    let caps = Caps::read();
    if caps.proc.allowed1 & ctl::PROC_MONITOR_TRAP_FLAG == 0 {
        let msr = if caps.basic & (1 << 55) != 0 { "IA32_VMX_TRUE_PROCBASED_CTLS" } else { "IA32_VMX_PROCBASED_CTLS" };
        rt::println!("-- monitor trap flag not offered: primary processor-based bit 27 is not allowed-1 in ", msr);
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

fn run(caps: &Caps) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(caps, &VMCS)?;
    hv::setup_vmcs(
        caps,
        &Config {
            entry: l2_main,
            stack_top: L2_STACK.top(),
            proc: ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    let (idt_base, idt_limit) = l2idt::init();
    hv::write(field::GUEST_IDTR_BASE, idt_base)?;
    hv::write(field::GUEST_IDTR_LIMIT, idt_limit)?;
    let proc = hv::read(field::CPU_BASED_VM_EXEC_CONTROL)? as u32;
    let mtf = |on: bool| {
        let v = if on { proc | ctl::PROC_MONITOR_TRAP_FLAG } else { proc & !ctl::PROC_MONITOR_TRAP_FLAG };
        hv::write(field::CPU_BASED_VM_EXEC_CONTROL, u64::from(v))
    };

    let mut vcpu = Vcpu::default();
    mtf(true)?;
    failures += stepping(&mut vcpu)?;
    failures += injected(&mut vcpu, "external interrupt 0x30", info(intr::EXTERNAL_INTERRUPT, 0x30, false), None)?;
    failures +=
        injected(&mut vcpu, "hardware exception #GP(0x18)", info(intr::HARDWARE_EXCEPTION, GP, true), Some(0x18))?;
    failures += faulting(&mut vcpu)?;
    mtf(false)?;
    failures += pending_mtf(&mut vcpu)?;

    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-mtf: all checks passed" } else { "vmx-mtf: some checks FAILED" });
    Ok(failures)
}

/// Puts L2 at `rip` with the registers the steps start from and no event to inject.
fn prepare(vcpu: &mut Vcpu, rip: u64) -> Result<(), VmFail> {
    hv::write(field::GUEST_RIP, rip)?;
    hv::write(field::GUEST_RSP, L2_STACK.top())?;
    hv::write(field::GUEST_RFLAGS, RFLAGS_FIXED | RFLAGS_IF)?;
    hv::write(field::GUEST_INTERRUPTIBILITY_INFO, 0)?;
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, 0)?;
    vcpu.regs = GuestRegs { rcx: 1, rdi: BUFFER.addr(), ..GuestRegs::default() };
    l2idt::reset(false);
    Ok(())
}

/// L2 executes its steps one MTF exit at a time.
fn stepping(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("stepping L2 with the monitor trap flag:");
    prepare(vcpu, label(0))?;
    for s in &STEPS {
        let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
        let rflags = hv::read(field::GUEST_RFLAGS)?;
        let want = label(s.next);
        let ok = e.basic() == reason::MONITOR_TRAP_FLAG && e.rip == want && (s.holds)(&vcpu.regs, rflags);
        rt::check!(failures, ok, "  MTF exit after ", s.what, ": ", Seen(&e), " (m", s.next, " at ", Hex(want), ")");
        if !ok {
            rt::println!("    rax ", Hex(vcpu.regs.rax), " rbx ", Hex(vcpu.regs.rbx), " rcx ", Hex(vcpu.regs.rcx));
            rt::println!("    rdi ", Hex(vcpu.regs.rdi), " RFLAGS ", Hex(rflags));
            if e.basic() != reason::MONITOR_TRAP_FLAG {
                return Ok(failures);
            }
        }
    }
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(
        failures,
        e.port() == Some(END_PORT) && e.rip == label(11),
        "  the OUT L1 intercepts exits for itself, not with MTF (",
        Seen(&e),
        ")"
    );
    let stored = BUFFER.read_u32(0) & 0xff_ffff;
    rt::check!(failures, stored == 0x88_8888, "  REP STOSB stored 3 bytes of AL = 0x88: ", Hex(stored.into()));
    Ok(failures)
}

/// The delivery's frame on L2's stack at `rsp`: (RIP, CS, RFLAGS), after the error code if
/// the event pushed one.
fn frame(rsp: u64, error_code: bool) -> (u64, u64, u64, u64) {
    let p = rsp as *const u64;
    let skip = usize::from(error_code);
    // SAFETY: L2's stack is identity-mapped memory of this image; the event pushed these
    // words at GUEST_RSP.
    unsafe {
        let ec = if error_code { core::ptr::read_volatile(p) } else { 0 };
        (
            ec,
            core::ptr::read_volatile(p.add(skip)),
            core::ptr::read_volatile(p.add(skip + 1)),
            core::ptr::read_volatile(p.add(skip + 2)),
        )
    }
}

/// The RSP after an event's delivery from GUEST_RSP `rsp` (aligned to 16, then SS, RSP,
/// RFLAGS, CS, RIP and an error code pushed; SDM Vol. 3A 6.14.2).
fn rsp_after_delivery(rsp: u64, error_code: bool) -> u64 {
    (rsp & !0xf) - 40 - if error_code { 8 } else { 0 }
}

/// Checks an MTF exit right after the delivery of `vector` that interrupted L2 at `rip`.
fn at_handler(
    failures: &mut u32,
    e: &Exit,
    vector: u8,
    rip: u64,
    error_code: Option<u32>,
    what: &str,
) -> Result<bool, VmFail> {
    let mut f = 0u32;
    let handler = l2idt::handler(vector);
    let ok = e.basic() == reason::MONITOR_TRAP_FLAG && e.rip == handler;
    rt::check!(
        f,
        ok,
        "  MTF exit ",
        what,
        ", before the handler's first instruction: ",
        Seen(e),
        " (handler of vector ",
        Hex(vector.into()),
        " at ",
        Hex(handler),
        ")"
    );
    if ok {
        let rsp = hv::read(field::GUEST_RSP)?;
        let want_rsp = rsp_after_delivery(L2_STACK.top(), error_code.is_some());
        let (ec, pushed_rip, cs, rflags) = frame(rsp, error_code.is_some());
        rt::check!(
            f,
            rsp == want_rsp
                && pushed_rip == rip
                && cs == u64::from(CODE_SELECTOR)
                && rflags == RFLAGS_FIXED | RFLAGS_IF
                && error_code.is_none_or(|c| ec == u64::from(c)),
            "  GUEST_RSP ",
            Hex(rsp),
            " holds the frame: RIP ",
            Hex(pushed_rip),
            ", CS ",
            Hex(cs),
            ", RFLAGS ",
            Hex(rflags),
            if error_code.is_some() { ", error code " } else { "" },
            Hex(ec)
        );
        let now = hv::read(field::GUEST_RFLAGS)?;
        rt::check!(f, now & RFLAGS_IF == 0, "  GUEST_RFLAGS ", Hex(now), ": IF cleared by the interrupt gate");
    }
    *failures += f;
    Ok(ok)
}

/// An event injected at VM entry with MTF: the MTF exit before the handler's first
/// instruction, then one after it (SDM 26.5.2).
fn injected(vcpu: &mut Vcpu, what: &str, entry: u32, error_code: Option<u32>) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!(what, " injected with the monitor trap flag set:");
    let vector = (entry & intr::VECTOR) as u8;
    prepare(vcpu, label(1))?;
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, entry.into())?;
    hv::write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, error_code.unwrap_or(0).into())?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    if !at_handler(&mut failures, &e, vector, label(1), error_code, "after the delivery")? {
        return Ok(failures);
    }
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    // The stub's first instruction is a 2-byte PUSH.
    let want = l2idt::handler(vector) + 2;
    rt::check!(
        failures,
        e.basic() == reason::MONITOR_TRAP_FLAG && e.rip == want,
        "  next MTF exit after the handler's first instruction: ",
        Seen(&e),
        " (",
        Hex(want),
        ")"
    );
    Ok(failures)
}

/// An instruction that faults: the MTF exit after the delivery of the fault (SDM 26.5.2).
fn faulting(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("UD2 with the monitor trap flag set:");
    let at = vmx_mtf_ud2 as *const () as u64;
    prepare(vcpu, at)?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    at_handler(&mut failures, &e, UD, at, None, "after the delivery of #UD")?;
    Ok(failures)
}

/// A pending MTF VM exit injected at VM entry with the control clear (SDM 27.6.2): an MTF exit
/// before any instruction, then L2 runs on without one.
fn pending_mtf(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("pending MTF VM exit (type 7, vector 0) injected, monitor trap flag clear:");
    prepare(vcpu, label(1))?;
    let entry = info(intr::OTHER_EVENT, 0, false);
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, entry.into())?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(
        failures,
        e.basic() == reason::MONITOR_TRAP_FLAG && e.rip == label(1) && vcpu.regs.rbx == 0,
        "  MTF exit before L2's first instruction (inc rbx): ",
        Seen(&e),
        ", RBX ",
        vcpu.regs.rbx
    );
    let after = hv::read(field::VM_ENTRY_INTR_INFO_FIELD)? as u32;
    rt::check!(
        failures,
        after == entry & !intr::VALID,
        "  VM-entry interruption information reads ",
        Hex(after.into()),
        ": valid bit cleared"
    );
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let n = l2idt::last().count;
    rt::check!(
        failures,
        e.port() == Some(END_PORT) && n == 0,
        "  then L2 runs to its OUT without another MTF exit (",
        Seen(&e),
        ")"
    );
    Ok(failures)
}
