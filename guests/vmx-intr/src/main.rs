//! External interrupts, interrupt windows and NMI windows of an L2 (SDM 26.2, 26.4.1, 27.7.5,
//! 27.7.6, 28.2.2). L1's local APIC timer (TSC-deadline mode where CPUID offers it, else
//! one-shot) fires while L2 spins; this L2 maps L1's APIC page (identity) and shares it.
//! - "External-interrupt exiting" (pin-based bit 0) with "acknowledge interrupt on exit"
//!   (VM-exit control bit 15): a VM exit with reason 1 whose VM-exit interruption information
//!   is valid, type 0 (external interrupt), with the timer's vector, which is in service in
//!   the APIC (L1 EOIs it); also when L2 runs with RFLAGS.IF = 0 (with the control set,
//!   RFLAGS.IF does not block external interrupts, SDM 26.4.1).
//! - The same without "acknowledge interrupt on exit": reason 1, the information not valid,
//!   the interrupt still requested in the APIC's IRR; L1 takes it through its own IDT once it
//!   sets RFLAGS.IF.
//! - "External-interrupt exiting" clear: the interrupt is delivered to L2 through L2's IDT
//!   (its handler EOIs the APIC L2 shares); with L2's RFLAGS.IF = 0 it is not, and stays
//!   requested for L1 to take after the next VM exit.
//! - "Interrupt-window exiting" (primary bit 2): with RFLAGS.IF = 1 and no blocking, a VM
//!   exit (reason 7) before L2's first instruction; with IF = 0, right after L2's STI and the
//!   instruction after it (blocking by STI); with blocking by STI or by MOV SS in the
//!   interruptibility state, after one instruction (SDM 27.7.1, 27.7.5).
//! - "NMI-window exiting" (primary bit 22) with "NMI exiting" and "virtual NMIs" (pin-based
//!   bits 3, 5): a VM exit (reason 8) before L2's first instruction without virtual-NMI
//!   blocking; with blocking by NMI in the interruptibility state, only after L2 executes
//!   IRET (SDM 26.3, 27.7.6); after an injected NMI, only after its handler's IRET.
//!
//! For the timer L1 prints the latency from the timer's deadline to the VM exit (and, when
//! L2 takes the interrupt, to L2's handler) in TSC ticks. Controls the capability MSRs do not
//! offer are not used: L1 says so and skips those checks.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use hv::intr::{self, info, BLOCKING_BY_MOV_SS, BLOCKING_BY_NMI, BLOCKING_BY_STI, DEFINED};
use hv::intr::{RFLAGS_FIXED, RFLAGS_IF};
use hv::l2idt::{self, REPORT_PORT};
use hv::{ctl, field, reason, Caps, Config, Exit, Page, Seen, Stack, Vcpu};
use rt::io::{cli, cpuid, rdtsc, sti_hlt, wrmsr};
use rt::time::Rate;
use rt::vmx::{self, VmFail};
use rt::{apic, Hex};

rt::entry!(main);

const TIMER_VECTOR: u8 = 0x40;
/// The timer fires this long after L1 arms it (ns): long enough for L2 to be running by then,
/// even on a loaded host.
const TIMER_NS: u64 = 20_000_000;
/// L2 gives up waiting for an interrupt after this long (ns) and says so with
/// `out GAVE_UP_PORT, al`.
const GIVE_UP_NS: u64 = 300_000_000;
const GAVE_UP_PORT: u16 = 0xe8;
/// The OUTs ending L2's interrupt-window and NMI-window code.
const WINDOW_END_PORT: u16 = 0xea;
const NMI_END_PORT: u16 = 0xeb;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 2 << 17;
/// Divide configuration 0b1011: divide by 1.
const DIVIDE_BY_1: u32 = 0xB;
const SPIV_ENABLE: u32 = 1 << 8;
const IA32_TSC_DEADLINE: u32 = 0x6E0;
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

/// L1's own timer handler: deliveries and the TSC at the last one.
static L1_TIMER_COUNT: AtomicU64 = AtomicU64::new(0);
static L1_TIMER_TSC: AtomicU64 = AtomicU64::new(0);

// L2's code.
// vmx_intr_spin: counts rounds in RCX for R9 TSC ticks (from its first RDTSC), then
//   `out GAVE_UP_PORT, al`.
// wN: the interrupt-window code (L1 enters at w0 with IF = 0 or at w2 with IF = 1).
// nN: the NMI-window code: two instructions, an IRETQ to n3 (a frame built by hand), two more.
global_asm!(
    r#"
    .section .text.vmx_intr_l2, "ax"
    .global vmx_intr_spin
    vmx_intr_spin:
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r10, rax
    2:  inc rcx
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, r10
        cmp rax, r9
        jb 2b
        out {gave_up}, al
        jmp 2b
    .global vmx_intr_spin_end
    vmx_intr_spin_end:

    .global vmx_intr_window
    vmx_intr_window:
    w0: inc rbx
    w1: sti
    w2: inc rbx
    w3: inc rbx
    w4: inc rbx
    w5: out {window_end}, al
        hlt

    .global vmx_intr_nmi
    vmx_intr_nmi:
    n0: inc rbx
    n1: inc rbx
    n2: mov rdx, rsp
        push 0x10
        push rdx
        pushfq
        push 0x08
        lea rax, [rip + n3]
        push rax
        iretq
    n3: inc rbx
    n4: inc rbx
        out {nmi_end}, al
        hlt

    .section .rodata.vmx_intr_labels, "a"
    .global vmx_intr_labels
    vmx_intr_labels:
    .quad w0, w1, w2, w3, w4, w5, n0, n1, n2, n3, n4
    "#,
    gave_up = const GAVE_UP_PORT,
    window_end = const WINDOW_END_PORT,
    nmi_end = const NMI_END_PORT,
);

extern "C" {
    fn vmx_intr_spin() -> !;
    static vmx_intr_spin_end: u8;
    static vmx_intr_labels: [u64; 11];
}

/// Indexes into vmx_intr_labels.
const W0: usize = 0;
const W2: usize = 2;
const W3: usize = 3;
const N0: usize = 6;
const N3: usize = 9;

fn label(i: usize) -> u64 {
    // SAFETY: an 11-entry table of addresses in this image's read-only data.
    unsafe { vmx_intr_labels[i] }
}

extern "C" fn l2_main() -> ! {
    // SAFETY: jumps to L2's code above, which never returns.
    unsafe { asm!("jmp {}", sym vmx_intr_spin, options(noreturn)) }
}

fn spin() -> u64 {
    vmx_intr_spin as *const () as u64
}

fn in_spin(rip: u64) -> bool {
    (spin()..(&raw const vmx_intr_spin_end) as u64).contains(&rip)
}

fn l1_timer(_: &mut rt::idt::Frame) {
    L1_TIMER_TSC.store(rdtsc(), Ordering::SeqCst);
    L1_TIMER_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

/// L1's APIC timer.
struct Timer {
    tsc_deadline: bool,
    rate: Option<Rate>,
}

impl Timer {
    /// TSC ticks of `ns` (a nominal 1 GHz without a known rate).
    fn ticks(&self, ns: u64) -> u64 {
        self.rate.map_or(ns, |r| r.ticks(ns))
    }

    /// Arms the timer to fire in TIMER_NS; returns the deadline in TSC ticks.
    fn arm(&self) -> u64 {
        if self.tsc_deadline {
            apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_TSC_DEADLINE);
            let deadline = rdtsc() + self.ticks(TIMER_NS);
            wrmsr(IA32_TSC_DEADLINE, deadline);
            deadline
        } else {
            // One-shot: the APIC timer counts a nominal 1 GHz bus, one count per ns.
            apic::write(apic::DIVIDE_CONFIG, DIVIDE_BY_1);
            apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR));
            let start = rdtsc();
            apic::write(apic::INITIAL_COUNT, TIMER_NS as u32);
            start + self.ticks(TIMER_NS)
        }
    }

    fn disarm(&self) {
        if self.tsc_deadline {
            wrmsr(IA32_TSC_DEADLINE, 0);
        } else {
            apic::write(apic::INITIAL_COUNT, 0);
        }
        apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_MASKED);
    }

    /// Prints the latency of `at` after `deadline`.
    fn latency(&self, what: &str, deadline: u64, at: u64) {
        let late = at.wrapping_sub(deadline) as i64;
        rt::print!("  latency ", what, ": ", late, " TSC ticks");
        match self.rate {
            Some(r) if late >= 0 => rt::println!(" (", r.us(late as u64), " us)"),
            _ => rt::println!(),
        }
    }
}

/// The controls of the VMCS as `setup_vmcs` left them, and what the capabilities offer.
struct Ctls {
    pin: u32,
    proc: u32,
    exit: u32,
    caps: Caps,
}

impl Ctls {
    /// Writes the pin-based, primary and exit controls: the base ones plus `pin`, `proc` and
    /// `exit`.
    fn set(&self, pin: u32, proc: u32, exit: u32) -> Result<(), VmFail> {
        hv::write(field::PIN_BASED_VM_EXEC_CONTROL, u64::from(self.pin | pin))?;
        hv::write(field::CPU_BASED_VM_EXEC_CONTROL, u64::from(self.proc | proc))?;
        hv::write(field::VM_EXIT_CONTROLS, u64::from(self.exit | exit))
    }

    fn offers_pin(&self, bits: u32) -> bool {
        self.caps.pin.allowed1 & bits == bits
    }

    fn offers_proc(&self, bits: u32) -> bool {
        self.caps.proc.allowed1 & bits == bits
    }

    fn offers_exit(&self, bits: u32) -> bool {
        self.caps.exit.allowed1 & bits == bits
    }
}

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
    let timer = Timer { tsc_deadline: cpuid(1, 0)[2] & CPUID_1_ECX_TSC_DEADLINE != 0, rate: rt::time::tsc_rate() };
    rt::println!(
        "L1's APIC timer: vector ",
        Hex(TIMER_VECTOR.into()),
        if timer.tsc_deadline { ", TSC-deadline mode" } else { ", one-shot mode" },
        ", ",
        TIMER_NS / 1000,
        " us after arming"
    );
    apic::write(apic::SPIV, SPIV_ENABLE | 0xFF);
    apic::write(apic::TPR, 0);
    rt::idt::set_handler(TIMER_VECTOR, l1_timer);

    vmx::enable(VMXON_REGION.addr())?;
    hv::load_vmcs(&caps, &VMCS)?;
    hv::setup_vmcs(
        &caps,
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
    let ctls = Ctls {
        pin: hv::read(field::PIN_BASED_VM_EXEC_CONTROL)? as u32,
        proc: hv::read(field::CPU_BASED_VM_EXEC_CONTROL)? as u32,
        exit: hv::read(field::VM_EXIT_CONTROLS)? as u32,
        caps,
    };
    let mut vcpu = Vcpu::default();

    if ctls.offers_pin(ctl::PIN_EXT_INTR_EXITING) {
        if ctls.offers_exit(ctl::EXIT_ACK_INTR_ON_EXIT) {
            failures += exiting_acknowledged(&mut vcpu, &ctls, &timer, true)?;
            failures += exiting_acknowledged(&mut vcpu, &ctls, &timer, false)?;
        } else {
            rt::println!("-- 'acknowledge interrupt on exit' (VM-exit control bit 15) not offered");
        }
        failures += exiting_unacknowledged(&mut vcpu, &ctls, &timer)?;
    } else {
        rt::println!("-- external-interrupt exiting (pin-based bit 0) not offered");
    }
    // External-interrupt exiting clear needs no capability: something is always checked.
    failures += delivered_to_l2(&mut vcpu, &ctls, &timer)?;
    failures += blocked_in_l2(&mut vcpu, &ctls, &timer)?;
    if ctls.offers_proc(ctl::PROC_INTR_WINDOW_EXITING) {
        failures += interrupt_window(&mut vcpu, &ctls)?;
    } else {
        rt::println!("-- interrupt-window exiting (primary processor-based bit 2) not offered");
    }
    let nmi_pin = ctl::PIN_NMI_EXITING | ctl::PIN_VIRTUAL_NMIS;
    if ctls.offers_pin(nmi_pin) && ctls.offers_proc(ctl::PROC_NMI_WINDOW_EXITING) {
        failures += nmi_window(&mut vcpu, &ctls)?;
    } else {
        rt::println!(
            "-- NMI-window exiting (primary bit 22) with NMI exiting and virtual NMIs (pin-based bits 3, 5) not offered"
        );
    }
    timer.disarm();
    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 { "vmx-intr: all checks passed" } else { "vmx-intr: some checks FAILED" });
    Ok(failures)
}

/// Puts L2 at `rip` with `rflags`, the interruptibility state `blocking` and nothing to
/// inject; L2's spin gives up after `give_up` TSC ticks. L2's handlers EOI.
fn prepare(vcpu: &mut Vcpu, rip: u64, rflags: u64, blocking: u64, give_up: u64) -> Result<(), VmFail> {
    hv::write(field::GUEST_RIP, rip)?;
    hv::write(field::GUEST_RSP, L2_STACK.top())?;
    hv::write(field::GUEST_RFLAGS, rflags)?;
    hv::write(field::GUEST_INTERRUPTIBILITY_INFO, blocking)?;
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, 0)?;
    vcpu.regs = hv::vmx::GuestRegs { r9: give_up, ..Default::default() };
    l2idt::reset(true);
    Ok(())
}

/// `sti; nop; cli`: a requested interrupt is taken at the boundary after the NOP (the STI
/// shadow ends there). Returns how many times L1's timer handler ran. If it did not run while
/// the APIC still requests the vector, L1 waits for it with `sti; hlt` and says so.
fn take_pending() -> u64 {
    let before = L1_TIMER_COUNT.load(Ordering::SeqCst);
    // SAFETY: only RFLAGS.IF changes; L1's timer handler is registered.
    unsafe { asm!("sti", "nop", "cli", options(nostack)) };
    if L1_TIMER_COUNT.load(Ordering::SeqCst) == before && apic::vector_bit(apic::IRR, TIMER_VECTOR) {
        sti_hlt();
        cli();
        rt::println!("  (L1's handler did not run right after STI's shadow, only at a later HLT)");
    }
    L1_TIMER_COUNT.load(Ordering::SeqCst) - before
}

/// Takes a timer interrupt still requested (IRR) in L1, so the next check starts clean.
fn drain() {
    if apic::vector_bit(apic::IRR, TIMER_VECTOR) {
        take_pending();
    }
}

/// Checks how many times L1's timer handler ran since `before` (after taking one still
/// requested).
fn l1_took(failures: &mut u32, before: u64, want: u64) {
    drain();
    let n = L1_TIMER_COUNT.load(Ordering::SeqCst) - before;
    let mut f = 0u32;
    rt::check!(f, n == want, "  L1's own handler ran ", n, " time(s) in all (", want, " expected)");
    *failures += f;
}

/// APIC state of the timer's vector: (requested in IRR, in service in ISR).
fn apic_state() -> (bool, bool) {
    (apic::vector_bit(apic::IRR, TIMER_VECTOR), apic::vector_bit(apic::ISR, TIMER_VECTOR))
}

/// The exit of an external interrupt out of L2's spin loop, `t` after the `deadline`.
fn interrupt_exit(failures: &mut u32, timer: &Timer, e: &Exit, vcpu: &Vcpu, deadline: u64, t: u64) -> bool {
    let mut f = 0u32;
    let ok = e.basic() == reason::EXTERNAL_INTERRUPT;
    rt::check!(
        f,
        ok && in_spin(e.rip),
        "  VM exit for the external interrupt while L2 spins: ",
        Seen(e),
        " after ",
        vcpu.regs.rcx,
        " rounds (reason 1 expected)"
    );
    if ok {
        rt::check!(
            f,
            t >= deadline,
            "  the exit came after the deadline (",
            t.wrapping_sub(deadline) as i64,
            " ticks)"
        );
        timer.latency("deadline to L1 at the VM exit", deadline, t);
    }
    *failures += f;
    ok
}

/// (a) External-interrupt exiting with "acknowledge interrupt on exit" (SDM 26.2, 28.2.2),
/// L2 with RFLAGS.IF = 1 or 0.
fn exiting_acknowledged(vcpu: &mut Vcpu, ctls: &Ctls, timer: &Timer, l2_if: bool) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!(
        "external-interrupt exiting, acknowledge interrupt on exit, L2 with RFLAGS.IF = ",
        u8::from(l2_if),
        ":"
    );
    ctls.set(ctl::PIN_EXT_INTR_EXITING, 0, ctl::EXIT_ACK_INTR_ON_EXIT)?;
    let rflags = if l2_if { RFLAGS_FIXED | RFLAGS_IF } else { RFLAGS_FIXED };
    prepare(vcpu, spin(), rflags, 0, timer.ticks(GIVE_UP_NS))?;
    let before = L1_TIMER_COUNT.load(Ordering::SeqCst);
    let deadline = timer.arm();
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let t = rdtsc();
    let (irr, isr) = apic_state();
    if interrupt_exit(&mut failures, timer, &e, vcpu, deadline, t) {
        let exit_info = hv::read(field::VM_EXIT_INTR_INFO)? as u32;
        let want = info(intr::EXTERNAL_INTERRUPT, TIMER_VECTOR, false);
        rt::check!(
            failures,
            exit_info & DEFINED == want,
            "  VM-exit interruption information ",
            Hex(exit_info.into()),
            ": valid, external interrupt, vector ",
            Hex(TIMER_VECTOR.into()),
            " (",
            Hex(want.into()),
            ")"
        );
        rt::check!(
            failures,
            isr && !irr,
            "  acknowledged: the vector is in service in L1's APIC, no longer requested (ISR ",
            isr,
            ", IRR ",
            irr,
            ")"
        );
        apic::eoi();
        let (_, isr) = apic_state();
        rt::check!(failures, !isr, "  L1's EOI ended it (ISR ", isr, ")");
    }
    l1_took(&mut failures, before, 0);
    Ok(failures)
}

/// (b) External-interrupt exiting without "acknowledge interrupt on exit": the interrupt stays
/// requested; L1 takes it through its own IDT with RFLAGS.IF = 1 (SDM 28.2.2).
fn exiting_unacknowledged(vcpu: &mut Vcpu, ctls: &Ctls, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("external-interrupt exiting without acknowledge interrupt on exit:");
    ctls.set(ctl::PIN_EXT_INTR_EXITING, 0, 0)?;
    prepare(vcpu, spin(), RFLAGS_FIXED | RFLAGS_IF, 0, timer.ticks(GIVE_UP_NS))?;
    let before = L1_TIMER_COUNT.load(Ordering::SeqCst);
    let deadline = timer.arm();
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let t = rdtsc();
    let (irr, isr) = apic_state();
    if interrupt_exit(&mut failures, timer, &e, vcpu, deadline, t) {
        let exit_info = hv::read(field::VM_EXIT_INTR_INFO)? as u32;
        rt::check!(
            failures,
            exit_info & intr::VALID == 0,
            "  VM-exit interruption information ",
            Hex(exit_info.into()),
            ": not valid"
        );
        rt::check!(
            failures,
            irr && !isr,
            "  not acknowledged: still requested in L1's APIC (IRR ",
            irr,
            ", ISR ",
            isr,
            ")"
        );
        let n = take_pending();
        rt::check!(failures, n == 1, "  L1 took it through its own IDT once it set RFLAGS.IF (", n, " time(s))");
    }
    l1_took(&mut failures, before, 1);
    Ok(failures)
}

/// (c) External-interrupt exiting clear: the interrupt goes to L2 through L2's IDT.
fn delivered_to_l2(vcpu: &mut Vcpu, ctls: &Ctls, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("external-interrupt exiting clear, L2 with RFLAGS.IF = 1:");
    ctls.set(0, 0, 0)?;
    prepare(vcpu, spin(), RFLAGS_FIXED | RFLAGS_IF, 0, timer.ticks(GIVE_UP_NS))?;
    let before = L1_TIMER_COUNT.load(Ordering::SeqCst);
    let deadline = timer.arm();
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let t = rdtsc();
    let d = l2idt::last();
    let ok = e.port() == Some(REPORT_PORT) && d.count == 1 && d.vector == u64::from(TIMER_VECTOR);
    rt::check!(failures, ok, "  L2's handler got vector ", Hex(d.vector), " (", d.count, " delivery; ", Seen(&e), ")");
    if ok {
        rt::check!(
            failures,
            in_spin(d.rip) && d.rflags & RFLAGS_IF != 0 && d.handler_rflags & RFLAGS_IF == 0,
            "  it interrupted the spin loop at ",
            Hex(d.rip),
            " with RFLAGS ",
            Hex(d.rflags),
            "; the handler runs with RFLAGS ",
            Hex(d.handler_rflags)
        );
        let (irr, isr) = apic_state();
        rt::check!(
            failures,
            !irr && !isr,
            "  L2's EOI reached L1's APIC: neither requested nor in service (IRR ",
            irr,
            ", ISR ",
            isr,
            ")"
        );
        timer.latency("deadline to L2's handler (L2's TSC)", deadline, d.tsc);
        timer.latency("deadline to L1 at the handler's VM exit", deadline, t);
    }
    l1_took(&mut failures, before, 0);
    Ok(failures)
}

/// (c') External-interrupt exiting clear and L2 with RFLAGS.IF = 0: no delivery, no exit; the
/// interrupt stays requested and L1 takes it after L2's next exit.
fn blocked_in_l2(vcpu: &mut Vcpu, ctls: &Ctls, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("external-interrupt exiting clear, L2 with RFLAGS.IF = 0:");
    ctls.set(0, 0, 0)?;
    prepare(vcpu, spin(), RFLAGS_FIXED, 0, timer.ticks(3 * TIMER_NS))?;
    let before = L1_TIMER_COUNT.load(Ordering::SeqCst);
    let deadline = timer.arm();
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let t = rdtsc();
    let n = l2idt::last().count;
    rt::check!(
        failures,
        e.port() == Some(GAVE_UP_PORT) && n == 0,
        "  L2 spun to its end without a delivery or an exit (",
        Seen(&e),
        ", ",
        n,
        " deliveries)"
    );
    let (irr, _) = apic_state();
    rt::check!(
        failures,
        irr && t >= deadline,
        "  the interrupt is requested in L1's APIC (IRR ",
        irr,
        ", ",
        t.wrapping_sub(deadline) as i64,
        " ticks after the deadline)"
    );
    let took = take_pending();
    rt::check!(failures, took == 1, "  L1 took it once it set RFLAGS.IF (", took, " time(s))");
    l1_took(&mut failures, before, 1);
    Ok(failures)
}

/// (d) Interrupt-window exiting (SDM 26.2, 27.7.1, 27.7.5).
fn interrupt_window(vcpu: &mut Vcpu, ctls: &Ctls) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("interrupt-window exiting:");
    ctls.set(0, ctl::PROC_INTR_WINDOW_EXITING, 0)?;
    for (what, start, rflags, blocking, at, rbx) in [
        ("RFLAGS.IF = 1, no blocking: before L2's first instruction", W2, RFLAGS_FIXED | RFLAGS_IF, 0, W2, 0),
        ("RFLAGS.IF = 0: after STI and the instruction after it", W0, RFLAGS_FIXED, 0, W3, 2),
        ("RFLAGS.IF = 1, blocking by STI: after one instruction", W2, RFLAGS_FIXED | RFLAGS_IF, BLOCKING_BY_STI, W3, 1),
        (
            "RFLAGS.IF = 1, blocking by MOV SS: after one instruction",
            W2,
            RFLAGS_FIXED | RFLAGS_IF,
            BLOCKING_BY_MOV_SS,
            W3,
            1,
        ),
    ] {
        prepare(vcpu, label(start), rflags, blocking, 0)?;
        let Some(e) = vcpu.enter(&mut failures) else { continue };
        let (now_rflags, now_blocking) =
            (hv::read(field::GUEST_RFLAGS)?, hv::read(field::GUEST_INTERRUPTIBILITY_INFO)?);
        rt::check!(
            failures,
            e.basic() == reason::INTERRUPT_WINDOW
                && e.rip == label(at)
                && vcpu.regs.rbx == rbx
                && now_rflags & RFLAGS_IF != 0
                && now_blocking & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) == 0,
            "  ",
            what,
            ": ",
            Seen(&e),
            " (w",
            at,
            " at ",
            Hex(label(at)),
            "), RBX ",
            vcpu.regs.rbx,
            ", RFLAGS ",
            Hex(now_rflags),
            ", interruptibility ",
            Hex(now_blocking)
        );
    }
    Ok(failures)
}

/// (e) NMI-window exiting with virtual NMIs (SDM 26.2, 26.3, 27.7.6).
fn nmi_window(vcpu: &mut Vcpu, ctls: &Ctls) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("NMI-window exiting with NMI exiting and virtual NMIs:");
    ctls.set(ctl::PIN_NMI_EXITING | ctl::PIN_VIRTUAL_NMIS, ctl::PROC_NMI_WINDOW_EXITING, 0)?;
    for (what, blocking, at, rbx) in [
        ("no virtual-NMI blocking: before L2's first instruction", 0, N0, 0),
        ("blocking by NMI: right after L2's IRET", BLOCKING_BY_NMI, N3, 2),
    ] {
        prepare(vcpu, label(N0), RFLAGS_FIXED | RFLAGS_IF, blocking, 0)?;
        let Some(e) = vcpu.enter(&mut failures) else { continue };
        let now_blocking = hv::read(field::GUEST_INTERRUPTIBILITY_INFO)?;
        rt::check!(
            failures,
            e.basic() == reason::NMI_WINDOW
                && e.rip == label(at)
                && vcpu.regs.rbx == rbx
                && now_blocking & BLOCKING_BY_NMI == 0,
            "  ",
            what,
            ": ",
            Seen(&e),
            " (n",
            at - N0,
            " at ",
            Hex(label(at)),
            "), RBX ",
            vcpu.regs.rbx,
            ", interruptibility ",
            Hex(now_blocking)
        );
    }
    // An injected NMI blocks virtual NMIs until its handler's IRET (SDM 27.6.1.1).
    prepare(vcpu, label(N3), RFLAGS_FIXED | RFLAGS_IF, 0, 0)?;
    l2idt::reset(false);
    hv::write(field::VM_ENTRY_INTR_INFO_FIELD, info(intr::NMI, 2, false).into())?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let d = l2idt::last();
    let blocking = hv::read(field::GUEST_INTERRUPTIBILITY_INFO)?;
    let ok = e.port() == Some(REPORT_PORT) && d.vector == 2;
    rt::check!(
        failures,
        ok && blocking & BLOCKING_BY_NMI != 0,
        "  injected NMI: no NMI-window exit before its handler, which runs with virtual-NMI blocking (",
        Seen(&e),
        ", vector ",
        Hex(d.vector),
        ", interruptibility ",
        Hex(blocking),
        ")"
    );
    if ok {
        e.skip()?;
        let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
        rt::check!(
            failures,
            e.basic() == reason::NMI_WINDOW && e.rip == label(N3) && vcpu.regs.rbx == 0,
            "  the NMI-window exit comes right after the handler's IRETQ: ",
            Seen(&e),
            " (n3 at ",
            Hex(label(N3)),
            ")"
        );
    }
    Ok(failures)
}
