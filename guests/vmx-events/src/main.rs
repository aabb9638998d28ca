//! VM-entry event injection (SDM 27.6). L1 injects one event of each interruption type into
//! its L2 at VMLAUNCH or VMRESUME through the VM-entry interruption-information field, the
//! VM-entry exception error-code field and the VM-entry instruction-length field (SDM 25.8.3):
//! an external interrupt, an NMI, hardware exceptions without and with an error code, software
//! interrupts, a privileged software exception (INT1) and a software exception (INT3). L2's
//! IDT (`hv::l2idt`) records how each handler was entered, and L1 checks (SDM 27.6.1.1):
//! the vector; the error code; the pushed RIP, which is the current guest RIP for external
//! interrupts, NMIs and hardware exceptions and the current guest RIP plus the VM-entry
//! instruction length for the software types; the pushed RFLAGS, which is GUEST_RFLAGS
//! unchanged; the handler's RFLAGS (an interrupt gate clears IF). Then L1 lets the handler
//! return with IRETQ and checks where it lands (L2 returns into a sled of one-byte PUSHes
//! ending in an OUT, so the pushes done tell the return address). Every VM exit clears the
//! valid bit of the VM-entry interruption-information field (SDM 25.8.3, 28.2.3). NMI delivery
//! blocks NMIs until the IRET (SDM Vol. 3A 6.7.1): the VM exit in the handler saves blocking
//! by NMI in the interruptibility state, the exit after the IRET does not.
//!
//! Then injected events whose delivery causes a VM exit (SDM 27.6.1.2): the IDT-vectoring
//! information field (and error code, and for software interrupts the VM-exit instruction
//! length) describes the injected event (SDM 28.2.3, 28.2.4), and the guest state is as
//! before the delivery. First a not-present gate: delivery raises #NP, which the exception
//! bitmap turns into a VM exit; then, with EPT, an IDT in a page L1's EPT does not map:
//! delivery is an EPT violation. Each time L1 fixes the cause and re-injects the event from
//! the IDT-vectoring information, as a VMM does, and L2's handler then gets it.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::intr::{self, info, BLOCKING_BY_NMI, DEFINED, ERROR_CODE, VALID};
use hv::intr::{RFLAGS_CF, RFLAGS_FIXED, RFLAGS_IF, RFLAGS_ZF};
use hv::l2idt::{self, REPORT_PORT};
use hv::{ctl, field, reason, Caps, Config, Exit, Page, Seen, Stack, Vcpu, CODE_SELECTOR, DATA_SELECTOR};
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

/// The port of the OUT after the landing sled.
const LAND_PORT: u16 = 0xe1;
/// One-byte PUSHes in the landing sled.
const SLED: u64 = 16;
/// Exception vectors (SDM Vol. 3A Table 6-1).
const DB: u8 = 1;
const NMI_VECTOR: u8 = 2;
const BP: u8 = 3;
const UD: u8 = 6;
const NP: u8 = 11;
const GP: u8 = 13;
/// Error-code bits (SDM Vol. 3A 6.13): EXT (an event external to the program), IDT.
const EC_EXT: u64 = 1 << 0;
const EC_IDT: u64 = 1 << 1;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();
static EPT_PML4: Page = Page::new();
static EPT_PDPT: Page = Page::new();
static EPT_PD: Page = Page::new();
static EPT_PT: Page = Page::new();
/// A second IDT for L2, in a page L1's EPT maps only when L1 wants.
static EPT_IDT: Page = Page::new();

// Where every injection starts (GUEST_RIP) and every handler returns: a sled of one-byte
// `push rax`, then `out dx, al` (DX = LAND_PORT). At the OUT's exit, GUEST_RSP says how many
// PUSHes ran, hence where the IRETQ landed.
global_asm!(
    r#"
    .section .text.vmx_events_land, "ax"
    .global vmx_events_land
    vmx_events_land:
    .rept {sled}
        push rax
    .endr
    .global vmx_events_landed
    vmx_events_landed:
        out dx, al
    2:  hlt
        jmp 2b

    // L2's own INT3, before any injection: L2's IDT works. (INT3, not INT n: this host's KVM
    // raises #UD for INT n, in L1 and L2 alike.)
    .global vmx_events_int3
    vmx_events_int3:
        int3
        jmp vmx_events_land
    "#,
    sled = const SLED,
);

extern "C" {
    fn vmx_events_land() -> !;
    fn vmx_events_landed() -> !;
    fn vmx_events_int3() -> !;
}

extern "C" fn l2_main() -> ! {
    // SAFETY: jumps to L2's code above, which never returns.
    unsafe { asm!("jmp {}", sym vmx_events_land, options(noreturn)) }
}

fn land() -> u64 {
    vmx_events_land as *const () as u64
}

/// Where L2 entered the landing sled, from the exit at its OUT: each PUSH it ran took 8 from
/// RSP (which the IRETQ restored to GUEST_RSP). `None` when the exit is not that OUT.
fn landed_at(e: &Exit) -> Result<Option<u64>, VmFail> {
    if e.port() != Some(LAND_PORT) || e.rip != vmx_events_landed as *const () as u64 {
        return Ok(None);
    }
    let pushes = rsp0().wrapping_sub(hv::read(field::GUEST_RSP)?) / 8;
    Ok((pushes <= SLED).then(|| land() + SLED - pushes))
}

/// GUEST_RSP of every injection (8 below a 16-byte boundary: delivery aligns the stack, the
/// pushed RSP is this value, SDM Vol. 3A 6.14.2).
fn rsp0() -> u64 {
    L2_STACK.top()
}

/// One injected event.
struct Case {
    name: &'static str,
    ty: u32,
    vector: u8,
    error_code: Option<u32>,
    /// VM-entry instruction length: used for the software types, ignored for the others.
    len: u32,
    rflags: u64,
}

const CASES: [Case; 8] = [
    Case {
        name: "external interrupt 0x30",
        ty: intr::EXTERNAL_INTERRUPT,
        vector: 0x30,
        error_code: None,
        len: 3,
        rflags: RFLAGS_FIXED | RFLAGS_IF | RFLAGS_CF,
    },
    Case { name: "NMI", ty: intr::NMI, vector: NMI_VECTOR, error_code: None, len: 0, rflags: RFLAGS_FIXED | RFLAGS_ZF },
    Case {
        name: "hardware exception #UD",
        ty: intr::HARDWARE_EXCEPTION,
        vector: UD,
        error_code: None,
        len: 0,
        rflags: RFLAGS_FIXED | RFLAGS_IF,
    },
    Case {
        name: "hardware exception #GP with error code 0xa5c",
        ty: intr::HARDWARE_EXCEPTION,
        vector: GP,
        error_code: Some(0xa5c),
        len: 0,
        rflags: RFLAGS_FIXED | RFLAGS_IF | RFLAGS_ZF,
    },
    Case {
        name: "software interrupt INT 0x80",
        ty: intr::SOFTWARE_INTERRUPT,
        vector: 0x80,
        error_code: None,
        len: 2,
        rflags: RFLAGS_FIXED | RFLAGS_IF,
    },
    Case {
        name: "software interrupt 0x81 with instruction length 7",
        ty: intr::SOFTWARE_INTERRUPT,
        vector: 0x81,
        error_code: None,
        len: 7,
        rflags: RFLAGS_FIXED | RFLAGS_CF,
    },
    Case {
        name: "privileged software exception INT1 (#DB)",
        ty: intr::PRIVILEGED_SOFTWARE_EXCEPTION,
        vector: DB,
        error_code: None,
        len: 1,
        rflags: RFLAGS_FIXED | RFLAGS_IF,
    },
    Case {
        name: "software exception INT3 (#BP)",
        ty: intr::SOFTWARE_EXCEPTION,
        vector: BP,
        error_code: None,
        len: 1,
        rflags: RFLAGS_FIXED | RFLAGS_IF | RFLAGS_ZF | RFLAGS_CF,
    },
];

fn main(_: &rt::BootInfo) -> u32 {
    match run() {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run() -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let caps = Caps::read();
    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
        &Config {
            entry: l2_main,
            stack_top: rsp0(),
            proc: ctl::PROC_HLT_EXITING | ctl::PROC_UNCOND_IO_EXITING,
            proc2: 0,
            io_bitmaps: None,
            msr_bitmap: None,
        },
    )?;
    let (idt_base, idt_limit) = l2idt::init();
    hv::write(field::GUEST_IDTR_BASE, idt_base)?;
    hv::write(field::GUEST_IDTR_LIMIT, idt_limit)?;

    let mut vcpu = Vcpu::default();
    failures += own_int3(&mut vcpu)?;
    for c in &CASES {
        failures += vectored(&mut vcpu, c)?;
    }
    failures += not_present_gate(&mut vcpu)?;
    failures += ept_idt(&mut vcpu, &caps)?;

    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-events: all checks passed" } else { "vmx-events: some checks FAILED" });
    Ok(failures)
}

/// Puts L2 at the landing sled with `rflags`, no blocking, and the event in the VM-entry
/// fields.
fn prepare(vcpu: &mut Vcpu, rflags: u64, entry: u32, error_code: u32, len: u32) -> Result<(), VmFail> {
    hv::write(field::GUEST_RIP, land())?;
    hv::write(field::GUEST_RSP, rsp0())?;
    hv::write(field::GUEST_RFLAGS, rflags)?;
    hv::write(field::GUEST_INTERRUPTIBILITY_INFO, 0)?;
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, entry.into())?;
    hv::write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, error_code.into())?;
    hv::write(field::VM_ENTRY_INSTRUCTION_LEN, len.into())?;
    vcpu.regs.rdx = LAND_PORT.into();
    Ok(())
}

/// Whether the exit is L2's handler reporting a delivery.
fn reported(e: &Exit) -> bool {
    e.port() == Some(REPORT_PORT)
}

/// After any VM exit the valid bit of the VM-entry interruption-information field is 0 and
/// the rest of the field is as L1 wrote it (SDM 25.8.3).
fn valid_bit_cleared(failures: &mut u32, entry: u32) -> Result<(), VmFail> {
    let after = hv::read(field::VM_ENTRY_INTR_INFO_FIELD)? as u32;
    let mut f = 0u32;
    rt::check!(
        f,
        after == entry & !VALID,
        "  VM-entry interruption information reads ",
        Hex(after.into()),
        " after the VM exit: valid bit cleared (written ",
        Hex(entry.into()),
        ")"
    );
    *failures += f;
    Ok(())
}

/// Before any injection: L2 executes INT3 itself, and its handler reports it (L2's IDT,
/// handlers and the way back work).
fn own_int3(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("L2 executes INT3 itself (no injection):");
    l2idt::reset(false);
    prepare(vcpu, RFLAGS_FIXED | RFLAGS_IF, 0, 0, 0)?;
    let at = vmx_events_int3 as *const () as u64;
    hv::write(field::GUEST_RIP, at)?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let d = l2idt::last();
    rt::check!(
        failures,
        reported(&e) && d.count == 1 && d.vector == u64::from(BP) && d.rip == at + 1,
        "  L2's handler entered with vector ",
        Hex(d.vector),
        ", RIP ",
        Hex(d.rip),
        " after the INT3 (",
        Seen(&e),
        ")"
    );
    if reported(&e) {
        e.skip()?;
        let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
        let at = landed_at(&e)?;
        rt::check!(
            failures,
            at == Some(land()),
            "  and returned (",
            Seen(&e),
            ", into the sled at ",
            Hex(at.unwrap_or(0)),
            ")"
        );
    }
    Ok(failures)
}

/// Injects `c` at the sled and checks the delivery, then the handler's return.
fn vectored(vcpu: &mut Vcpu, c: &Case) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let entry = info(c.ty, c.vector, c.error_code.is_some());
    let how = if vcpu.launched { "VMRESUME" } else { "VMLAUNCH" };
    rt::println!(c.name, " (", intr::type_name(c.ty), ", information ", Hex(entry.into()), "):");
    l2idt::reset(false);
    prepare(vcpu, c.rflags, entry, c.error_code.unwrap_or(0), c.len)?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let d = l2idt::last();
    let ok = reported(&e) && d.count == 1 && d.vector == u64::from(c.vector);
    rt::check!(
        failures,
        ok,
        "  ",
        how,
        " delivered vector ",
        Hex(c.vector.into()),
        " through L2's IDT (",
        Seen(&e),
        "; handler entered ",
        d.count,
        " time(s), last with vector ",
        Hex(d.vector),
        ")"
    );
    valid_bit_cleared(&mut failures, entry)?;
    if !ok {
        return Ok(failures);
    }
    if let Some(ec) = c.error_code {
        rt::check!(
            failures,
            d.error_code == u64::from(ec),
            "  error code on the stack ",
            Hex(d.error_code),
            " = VM-entry exception error code ",
            Hex(ec.into())
        );
    }
    let next = intr::pushes_next_rip(c.ty);
    let want_rip = land() + if next { u64::from(c.len) } else { 0 };
    rt::check!(
        failures,
        d.rip == want_rip,
        "  pushed RIP ",
        Hex(d.rip),
        " = GUEST_RIP ",
        Hex(land()),
        if next { " + VM-entry instruction length " } else { " (VM-entry instruction length ignored: " },
        c.len,
        if next { "" } else { ")" }
    );
    rt::check!(failures, d.rflags == c.rflags, "  pushed RFLAGS ", Hex(d.rflags), " = GUEST_RFLAGS ", Hex(c.rflags));
    rt::check!(
        failures,
        d.cs == u64::from(CODE_SELECTOR) && d.ss == u64::from(DATA_SELECTOR) && d.rsp == rsp0(),
        "  pushed CS ",
        Hex(d.cs),
        ", SS ",
        Hex(d.ss),
        ", RSP ",
        Hex(d.rsp),
        " = GUEST_RSP"
    );
    rt::check!(
        failures,
        d.handler_rflags & RFLAGS_IF == 0,
        "  the handler runs with RFLAGS ",
        Hex(d.handler_rflags),
        ": IF clear (interrupt gate)"
    );
    if c.ty == intr::NMI {
        let blocking = hv::read(field::GUEST_INTERRUPTIBILITY_INFO)?;
        rt::check!(
            failures,
            blocking & BLOCKING_BY_NMI != 0,
            "  GUEST_INTERRUPTIBILITY_INFO ",
            Hex(blocking),
            " at an exit in the NMI handler: blocking by NMI"
        );
    }
    // On past the handler's OUT: IRETQ to the pushed RIP.
    e.skip()?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let at = landed_at(&e)?;
    let n = l2idt::last().count;
    rt::check!(
        failures,
        at == Some(want_rip) && n == 1,
        "  IRETQ returned to ",
        Hex(at.unwrap_or(0)),
        ", the pushed RIP (",
        Seen(&e),
        "); one delivery (",
        n,
        ")"
    );
    if c.ty == intr::NMI {
        let blocking = hv::read(field::GUEST_INTERRUPTIBILITY_INFO)?;
        rt::check!(
            failures,
            blocking & BLOCKING_BY_NMI == 0,
            "  GUEST_INTERRUPTIBILITY_INFO ",
            Hex(blocking),
            " after the IRETQ: no blocking by NMI"
        );
    }
    Ok(failures)
}

/// The exit of an injected event whose delivery did not complete: IDT-vectoring information
/// (and error code) describe the event, GUEST_RIP and GUEST_RSP are as before the delivery,
/// no handler ran (SDM 27.6.1.2, 28.2.3).
fn vectoring_info(failures: &mut u32, e: &Exit, entry: u32, error_code: Option<u32>) -> Result<u32, VmFail> {
    let mut f = 0u32;
    let idt = hv::read(field::IDT_VECTORING_INFO_FIELD)? as u32;
    rt::check!(
        f,
        idt & DEFINED == entry,
        "  IDT-vectoring information ",
        Hex(idt.into()),
        " describes the injected event ",
        Hex(entry.into()),
        " (bits 31, 11:0)"
    );
    if let Some(ec) = error_code {
        let got = hv::read(field::IDT_VECTORING_ERROR_CODE)?;
        rt::check!(f, got == u64::from(ec), "  IDT-vectoring error code ", Hex(got), " = ", Hex(ec.into()));
    }
    let rsp = hv::read(field::GUEST_RSP)?;
    let n = l2idt::last().count;
    rt::check!(
        f,
        e.rip == land() && rsp == rsp0() && n == 0,
        "  GUEST_RIP ",
        Hex(e.rip),
        ", GUEST_RSP ",
        Hex(rsp),
        " as before the delivery; no handler ran (",
        n,
        ")"
    );
    valid_bit_cleared(&mut f, entry)?;
    *failures += f;
    Ok(idt)
}

/// Re-injects the event of the last exit's IDT-vectoring information (bits 31, 11:0, with
/// its error code and the VM-exit instruction length) and checks that L2's handler gets it.
fn reinject(vcpu: &mut Vcpu, failures: &mut u32, idt: u32, vector: u8, error_code: Option<u32>) -> Result<(), VmFail> {
    let entry = idt & DEFINED;
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, entry.into())?;
    if entry & ERROR_CODE != 0 {
        hv::write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, hv::read(field::IDT_VECTORING_ERROR_CODE)?)?;
    }
    let len = hv::read(field::VM_EXIT_INSTRUCTION_LEN)?;
    hv::write(field::VM_ENTRY_INSTRUCTION_LEN, len)?;
    let Some(e) = vcpu.enter(failures) else { return Ok(()) };
    let d = l2idt::last();
    let want_rip = land() + if intr::pushes_next_rip(intr::type_of(entry)) { len } else { 0 };
    let mut f = 0u32;
    rt::check!(
        f,
        reported(&e)
            && d.count == 1
            && d.vector == u64::from(vector)
            && d.rip == want_rip
            && error_code.is_none_or(|ec| d.error_code == u64::from(ec)),
        "  re-injected from the IDT-vectoring information: handler entered with vector ",
        Hex(d.vector),
        ", error code ",
        Hex(d.error_code),
        ", RIP ",
        Hex(d.rip),
        " (",
        Seen(&e),
        ")"
    );
    *failures += f;
    Ok(())
}

/// Injected events whose gate is not present: #NP during delivery, intercepted by the
/// exception bitmap (SDM 26.2, 27.6.1.2).
fn not_present_gate(vcpu: &mut Vcpu) -> Result<u32, VmFail> {
    const V: u8 = 0x31;
    let mut failures = 0u32;
    hv::write(field::EXCEPTION_BITMAP, 1 << NP)?;
    for (name, ty, len, ext) in [
        ("external interrupt 0x31", intr::EXTERNAL_INTERRUPT, 0u32, EC_EXT),
        ("software interrupt INT 0x31 (length 2)", intr::SOFTWARE_INTERRUPT, 2, 0),
    ] {
        rt::println!(name, " through a not-present gate, exception bitmap bit 11 (#NP) set:");
        let entry = info(ty, V, false);
        l2idt::reset(false);
        l2idt::set_present(V, false);
        prepare(vcpu, RFLAGS_FIXED | RFLAGS_IF, entry, 0, len)?;
        let Some(e) = vcpu.enter(&mut failures) else { break };
        let ok = e.basic() == reason::EXCEPTION_OR_NMI;
        rt::check!(failures, ok, "  VM exit for the #NP of the delivery (", Seen(&e), "; reason 0 expected)");
        if !ok && reported(&e) {
            let d = l2idt::last();
            rt::println!("    L2's handler ran instead: vector ", Hex(d.vector), ", error code ", Hex(d.error_code));
        }
        if !ok {
            valid_bit_cleared(&mut failures, entry)?;
            continue;
        }
        let exit_info = hv::read(field::VM_EXIT_INTR_INFO)? as u32;
        let want = info(intr::HARDWARE_EXCEPTION, NP, true);
        rt::check!(
            failures,
            exit_info & DEFINED == want,
            "  VM-exit interruption information ",
            Hex(exit_info.into()),
            " = ",
            Hex(want.into()),
            " (#NP, hardware exception, error code valid)"
        );
        let ec = hv::read(field::VM_EXIT_INTR_ERROR_CODE)?;
        let want_ec = u64::from(V) * 8 + EC_IDT + ext;
        rt::check!(
            failures,
            ec == want_ec,
            "  VM-exit interruption error code ",
            Hex(ec),
            " = ",
            Hex(want_ec),
            " (the gate's index, IDT",
            if ext != 0 { ", EXT)" } else { "; EXT clear for a software interrupt)" }
        );
        let idt = vectoring_info(&mut failures, &e, entry, None)?;
        if ty == intr::SOFTWARE_INTERRUPT {
            let got = hv::read(field::VM_EXIT_INSTRUCTION_LEN)?;
            rt::check!(
                failures,
                got == u64::from(len),
                "  VM-exit instruction length ",
                got,
                " = the VM-entry instruction length (SDM 28.2.4)"
            );
        }
        l2idt::set_present(V, true);
        reinject(vcpu, &mut failures, idt, V, None)?;
    }
    l2idt::set_present(V, true);
    hv::write(field::EXCEPTION_BITMAP, 0)?;
    Ok(failures)
}

/// EPT entry bits (SDM 29.3.2): read, write, execute, memory type WB, page (leaf) size.
const R: u64 = 1;
const W: u64 = 2;
const X: u64 = 4;
const WB: u64 = 6 << 3;
const PAGE: u64 = 1 << 7;
/// EPTP: memory type WB, page-walk length 4 (SDM 25.6.11).
const EPTP_FLAGS: u64 = 6 | 3 << 3;

/// Identity EPT for the first GiB with 2-MByte pages, except 4-KByte pages around EPT_IDT.
fn build_ept() -> u64 {
    for p in [&EPT_PML4, &EPT_PDPT, &EPT_PD, &EPT_PT] {
        p.clear();
    }
    EPT_PML4.write_u64(0, EPT_PDPT.addr() | R | W | X);
    EPT_PDPT.write_u64(0, EPT_PD.addr() | R | W | X);
    let big = (EPT_IDT.addr() >> 21) as usize;
    for i in 0..512usize {
        let e = if i == big { EPT_PT.addr() | R | W | X } else { ((i as u64) << 21) | WB | PAGE | R | W | X };
        EPT_PD.write_u64(8 * i, e);
    }
    for j in 0..512u64 {
        EPT_PT.write_u64(8 * j as usize, ((big as u64) << 21 | j << 12) | WB | R | W | X);
    }
    EPT_PML4.addr() | EPTP_FLAGS
}

/// Maps or unmaps EPT_IDT in L1's EPT, then INVEPT (single-context).
fn map_idt(eptp: u64, mapped: bool) -> Result<(), VmFail> {
    let slot = ((EPT_IDT.addr() >> 12) & 511) as usize * 8;
    EPT_PT.write_u64(slot, if mapped { EPT_IDT.addr() | WB | R | W | X } else { 0 });
    vmx::invept(1, &[eptp, 0]).inspect_err(|e| rt::println!("FAIL INVEPT: ", *e))
}

/// Injected events whose IDT entry L1's EPT does not map: an EPT violation during delivery
/// (SDM 27.6.1.2, 28.2.3).
fn ept_idt(vcpu: &mut Vcpu, caps: &Caps) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    // Page-walk length 4, WB, INVEPT single-context (SDM A.10).
    let need = 1 << 6 | 1 << 14 | 1 << 20 | 1 << 25;
    if caps.proc.allowed1 & ctl::PROC_ACTIVATE_SECONDARY == 0
        || caps.proc2.allowed1 & ctl::PROC2_ENABLE_EPT == 0
        || caps.ept_vpid & need != need
    {
        rt::println!("-- EPT (with INVEPT single-context) not offered: IDT-vectoring information of an EPT violation not checked");
        return Ok(0);
    }
    let eptp = build_ept();
    l2idt::copy_to(&EPT_IDT);
    let proc = hv::read(field::CPU_BASED_VM_EXEC_CONTROL)? as u32;
    hv::write(field::CPU_BASED_VM_EXEC_CONTROL, u64::from(proc | ctl::PROC_ACTIVATE_SECONDARY))?;
    hv::write(field::SECONDARY_VM_EXEC_CONTROL, u64::from(caps.proc2.adjust(ctl::PROC2_ENABLE_EPT)))?;
    hv::write(field::EPT_POINTER, eptp)?;
    hv::write(field::GUEST_IDTR_BASE, EPT_IDT.addr())?;
    for (name, ty, vector, error_code) in [
        ("external interrupt 0x30", intr::EXTERNAL_INTERRUPT, 0x30u8, None),
        ("hardware exception #GP with error code 0xa5c", intr::HARDWARE_EXCEPTION, GP, Some(0xa5cu32)),
    ] {
        rt::println!(name, " with L2's IDT in a page L1's EPT does not map:");
        let entry = info(ty, vector, error_code.is_some());
        l2idt::reset(false);
        map_idt(eptp, false)?;
        prepare(vcpu, RFLAGS_FIXED | RFLAGS_IF, entry, error_code.unwrap_or(0), 0)?;
        let Some(e) = vcpu.enter(&mut failures) else { break };
        let ok = e.basic() == reason::EPT_VIOLATION;
        rt::check!(failures, ok, "  EPT violation during the delivery (", Seen(&e), "; reason 48 expected)");
        if !ok {
            valid_bit_cleared(&mut failures, entry)?;
            map_idt(eptp, true)?;
            continue;
        }
        let gate = EPT_IDT.addr() + u64::from(vector) * 16;
        let (gpa, gla) = (hv::read(field::GUEST_PHYSICAL_ADDRESS)?, hv::read(field::GUEST_LINEAR_ADDRESS)?);
        rt::check!(
            failures,
            gpa & !0xf == gate && gla & !0xf == gate,
            "  guest-physical ",
            Hex(gpa),
            " and guest-linear ",
            Hex(gla),
            " address in the gate at ",
            Hex(gate)
        );
        // Data read, not readable, guest-linear address valid and translated (SDM 28.2.1,
        // Table 28-7, bits 0-5, 7, 8).
        rt::check!(
            failures,
            e.qualification & 0x1bf == 0x181,
            "  exit qualification ",
            Hex(e.qualification),
            " (expected 0x181 in bits 0-5, 7, 8: a read of a not-present page)"
        );
        let idt = vectoring_info(&mut failures, &e, entry, error_code)?;
        map_idt(eptp, true)?;
        reinject(vcpu, &mut failures, idt, vector, error_code)?;
    }
    Ok(failures)
}
