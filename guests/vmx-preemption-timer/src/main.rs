//! The VMX-preemption timer (SDM 26.5.1, 27.7.4, 28.3.4). With the pin-based control
//! "activate VMX-preemption timer", VM entry loads the timer from the guest-state field
//! VMX_PREEMPTION_TIMER_VALUE; in VMX non-root operation it counts down by 1 each time bit X of
//! the TSC changes, X = IA32_VMX_MISC[4:0] (so once every 2^X TSC ticks), and a VM exit with
//! reason 52 occurs when it reaches 0. L1 checks:
//! - value 0: the VM exit occurs before L2 executes any instruction (GUEST_RIP unchanged; L2's
//!   first instruction, an OUT L1 would see, is not executed);
//! - L2 spins: the exit arrives no earlier than (value - 1) << X TSC ticks after VM entry (the
//!   first decrement comes at the first change of bit X, at most 2^X ticks after entry) and
//!   at most 50 ms late (this host is slow and noisy; the lateness is printed); without
//!   "save VMX-preemption timer value" the field keeps L1's value;
//! - with the VM-exit control "save VMX-preemption timer value", an exit for another reason
//!   (an OUT of L2 after a known number of TSC ticks) saves a value that decreased by about
//!   those ticks >> X and is no larger than the one programmed; VMRESUME continues from it; a
//!   timer exit saves 0;
//! - without "save", VMRESUME after another exit starts again from L1's value.
//!
//! L1 measures times with its TSC just before VM entry and just after the VM exit, so its
//! lower bounds are necessary conditions. Where the capability MSRs do not offer the timer it
//! says so and exits 77.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

use hv::{ctl, field, reason, Caps, Config, Exit, Page, Seen, Stack, Vcpu};
use rt::io::rdtsc;
use rt::time::Rate;
use rt::vmx::{self, VmFail};
use rt::Hex;

rt::entry!(main);

/// Exit code when the timer is not offered.
const NOT_OFFERED: u32 = 77;
/// L2's first instruction at `vmx_pt_first`: `out MUST_NOT_PORT, al`.
const MUST_NOT_PORT: u16 = 0xe7;
/// L2 spun R8 TSC ticks.
const SPUN_PORT: u16 = 0xe6;
/// L2 spun R9 TSC ticks and the timer never fired.
const GAVE_UP_PORT: u16 = 0xe8;
/// How late a timer exit may be.
const LATE_LIMIT_MS: u64 = 50;
/// L2's bound on its whole spin: far above any timer value here.
const GIVE_UP_MS: u64 = 2000;

static VMXON_REGION: Page = Page::new();
static VMCS: Page = Page::new();
static L2_STACK: Stack = Stack::new();

// L2. At vmx_pt_first an OUT that must never run. At vmx_pt_spin L2 takes its TSC as the
// start (R10), then spins, keeping the last TSC in R11 and counting rounds in RCX: after R8
// ticks (R8 != 0) it executes `out SPUN_PORT, al` once, after R9 ticks `out GAVE_UP_PORT, al`.
global_asm!(
    r#"
    .section .text.vmx_pt_l2, "ax"
    .global vmx_pt_first
    vmx_pt_first:
        out {must_not}, al
    .global vmx_pt_spin
    vmx_pt_spin:
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r10, rax
    2:  inc rcx
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r11, rax
        sub rax, r10
        cmp rax, r9
        jae 4f
        test r8, r8
        jz 2b
        cmp rax, r8
        jb 2b
        xor r8d, r8d
        out {spun}, al
        jmp 2b
    4:  out {gave_up}, al
        jmp 2b
    .global vmx_pt_end
    vmx_pt_end:
    "#,
    must_not = const MUST_NOT_PORT,
    spun = const SPUN_PORT,
    gave_up = const GAVE_UP_PORT,
);

extern "C" {
    fn vmx_pt_first() -> !;
    fn vmx_pt_spin() -> !;
    static vmx_pt_end: u8;
}

extern "C" fn l2_main() -> ! {
    // SAFETY: jumps to L2's code above, which never returns.
    unsafe { asm!("jmp {}", sym vmx_pt_first, options(noreturn)) }
}

fn first() -> u64 {
    vmx_pt_first as *const () as u64
}

fn spin() -> u64 {
    vmx_pt_spin as *const () as u64
}

/// Whether `rip` is in L2's spin loop.
fn in_spin(rip: u64) -> bool {
    (spin()..(&raw const vmx_pt_end) as u64).contains(&rip)
}

/// The timer's rate and the TSC's, and what the checks derive from them.
struct Timer {
    /// IA32_VMX_MISC[4:0]: the timer counts once every 2^shift TSC ticks.
    shift: u32,
    tsc: Option<Rate>,
}

impl Timer {
    /// TSC ticks of `ms` milliseconds (a nominal 1 GHz without a known rate).
    fn ticks(&self, ms: u64) -> u64 {
        self.tsc.map_or(ms * 1_000_000, |r| r.ticks(ms * 1_000_000))
    }

    /// The timer value that expires after `ms` milliseconds.
    fn value(&self, ms: u64) -> u64 {
        (self.ticks(ms) >> self.shift).min(u64::from(u32::MAX))
    }

    /// Prints "N us" (or "N TSC ticks" without a known rate).
    fn show(&self, ticks: u64) -> Duration {
        Duration(ticks, self.tsc.map(|r| r.khz))
    }
}

struct Duration(u64, Option<u64>);

impl rt::serial::Show for Duration {
    fn show(&self) {
        match self.1 {
            Some(khz) => rt::print!(self.0.saturating_mul(1000) / khz.max(1), " us"),
            None => rt::print!(self.0, " TSC ticks"),
        }
    }
}

fn main(_: &rt::BootInfo) -> u32 {
    let caps = Caps::read();
    let msr = if caps.basic & (1 << 55) != 0 { "IA32_VMX_TRUE_PINBASED_CTLS" } else { "IA32_VMX_PINBASED_CTLS" };
    if caps.pin.allowed1 & ctl::PIN_ACTIVATE_PREEMPTION_TIMER == 0 {
        rt::println!("-- VMX-preemption timer not offered: pin-based bit 6 is not allowed-1 in ", msr);
        return NOT_OFFERED;
    }
    let timer = Timer { shift: (caps.misc & 0x1f) as u32, tsc: rt::time::tsc_rate() };
    rt::println!("IA32_VMX_MISC ", Hex(caps.misc), ": the timer counts once every 2^", timer.shift, " TSC ticks");
    match run(&caps, &timer) {
        Ok(failures) => failures,
        Err(e) => {
            rt::println!("FAIL a VMX instruction failed: ", e);
            rt::EXIT_CHECK_FAILED
        }
    }
}

fn run(caps: &Caps, timer: &Timer) -> Result<u32, VmFail> {
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
    let pin = hv::read(field::PIN_BASED_VM_EXEC_CONTROL)? as u32;
    hv::write(field::PIN_BASED_VM_EXEC_CONTROL, u64::from(pin | ctl::PIN_ACTIVATE_PREEMPTION_TIMER))?;
    let exit_ctls = hv::read(field::VM_EXIT_CONTROLS)? as u32;
    let save_offered = caps.exit.allowed1 & ctl::EXIT_SAVE_PREEMPTION_TIMER != 0;

    let mut vcpu = Vcpu::default();
    let save = |on: bool| {
        let v = if on { exit_ctls | ctl::EXIT_SAVE_PREEMPTION_TIMER } else { exit_ctls };
        hv::write(field::VM_EXIT_CONTROLS, u64::from(v))
    };
    save(save_offered)?;
    failures += value_zero(&mut vcpu, save_offered)?;
    save(false)?;
    failures += expires(&mut vcpu, timer)?;
    if save_offered {
        save(true)?;
        failures += saved_and_resumed(&mut vcpu, timer)?;
    } else {
        rt::println!("-- 'save VMX-preemption timer value' (VM-exit control bit 22) not offered: not checked");
    }
    save(false)?;
    failures += reloaded(&mut vcpu, timer)?;

    let r = vmx::vmxoff();
    rt::check!(failures, r.is_ok(), "VMXOFF: ", hv::Outcome(r));
    rt::println!(if failures == 0 {
        "vmx-preemption-timer: all checks passed"
    } else {
        "vmx-preemption-timer: some checks FAILED"
    });
    Ok(failures)
}

/// Puts L2 at `rip` with the timer at `value`; L2 says it spun after `spun` TSC ticks (0:
/// never).
fn prepare(vcpu: &mut Vcpu, rip: u64, value: u64, spun: u64) -> Result<(), VmFail> {
    hv::write(field::GUEST_RIP, rip)?;
    hv::write(field::GUEST_RSP, L2_STACK.top())?;
    hv::write(field::VMX_PREEMPTION_TIMER_VALUE, value)?;
    vcpu.regs.rcx = 0;
    vcpu.regs.r8 = spun;
    vcpu.regs.r9 = u64::MAX;
    Ok(())
}

/// Enters L2 between two TSC readings: (exit, ticks from before VM entry to after VM exit).
fn timed(vcpu: &mut Vcpu, failures: &mut u32) -> Option<(Exit, u64)> {
    let t0 = rdtsc();
    let e = vcpu.enter(failures)?;
    Some((e, rdtsc().wrapping_sub(t0)))
}

/// A timer exit `elapsed` ticks after VM entry for a timer started at `value`: no earlier than
/// (value - 1) << X ticks, at most LATE_LIMIT_MS late.
fn check_expiry(failures: &mut u32, timer: &Timer, e: &Exit, value: u64, elapsed: u64, what: &str) {
    let mut f = 0u32;
    let due = value << timer.shift;
    let earliest = value.saturating_sub(1) << timer.shift;
    let late = elapsed.saturating_sub(due);
    let ok = e.basic() == reason::PREEMPTION_TIMER && in_spin(e.rip);
    rt::check!(f, ok, "  ", what, ": VMX-preemption timer exit from L2's spin loop (", Seen(e), ")");
    if ok {
        rt::check!(
            f,
            elapsed >= earliest,
            "  after ",
            timer.show(elapsed),
            " (",
            elapsed,
            " TSC ticks) >= (value - 1) << ",
            timer.shift,
            " = ",
            earliest,
            " ticks"
        );
        rt::check!(
            f,
            late <= timer.ticks(LATE_LIMIT_MS),
            "  late by ",
            timer.show(late),
            " (at most ",
            LATE_LIMIT_MS,
            " ms)"
        );
    }
    *failures += f;
}

/// Value 0: a VM exit before any instruction (SDM 27.7.4).
fn value_zero(vcpu: &mut Vcpu, save: bool) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    rt::println!("value 0:");
    prepare(vcpu, first(), 0, 0)?;
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    rt::check!(
        failures,
        e.basic() == reason::PREEMPTION_TIMER && e.rip == first(),
        "  VM exit (reason 52) before L2's first instruction, an OUT to port ",
        Hex(MUST_NOT_PORT.into()),
        " (",
        Seen(&e),
        ", GUEST_RIP unchanged)"
    );
    if save {
        let v = hv::read(field::VMX_PREEMPTION_TIMER_VALUE)?;
        rt::check!(failures, v == 0, "  saved timer value ", v, " (0 after expiry)");
    }
    Ok(failures)
}

/// L2 spins until the timer expires (SDM 26.5.1); without "save" the field keeps L1's value.
fn expires(vcpu: &mut Vcpu, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let value = timer.value(20);
    rt::println!("value ", value, " (about 20 ms), L2 spins, no 'save VMX-preemption timer value':");
    prepare(vcpu, spin(), value, 0)?;
    vcpu.regs.r9 = timer.ticks(GIVE_UP_MS);
    let Some((e, elapsed)) = timed(vcpu, &mut failures) else { return Ok(failures) };
    check_expiry(&mut failures, timer, &e, value, elapsed, "timer exit");
    rt::println!("  L2 ran ", vcpu.regs.rcx, " rounds of its loop");
    let v = hv::read(field::VMX_PREEMPTION_TIMER_VALUE)?;
    rt::check!(failures, v == value, "  the field keeps L1's value ", v, " (nothing saved)");
    Ok(failures)
}

/// "Save VMX-preemption timer value": an OUT exit saves what is left, VMRESUME continues from
/// it, the timer exit saves 0 (SDM 28.3.4, 27.7.4).
fn saved_and_resumed(vcpu: &mut Vcpu, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let value = timer.value(200);
    let spun = timer.ticks(150);
    rt::println!(
        "value ",
        value,
        " (about 200 ms) with 'save VMX-preemption timer value'; L2 exits with an OUT after 150 ms:"
    );
    prepare(vcpu, spin(), value, spun)?;
    vcpu.regs.r9 = timer.ticks(GIVE_UP_MS);
    let Some((e, elapsed)) = timed(vcpu, &mut failures) else { return Ok(failures) };
    let ok = e.port() == Some(SPUN_PORT);
    rt::check!(failures, ok, "  L2's OUT after its spin (", Seen(&e), ")");
    if !ok {
        return Ok(failures);
    }
    let saved = hv::read(field::VMX_PREEMPTION_TIMER_VALUE)?;
    let counted = value.saturating_sub(saved);
    // At most one count per 2^X ticks between VM entry and VM exit (plus the one a change of
    // bit X right after entry makes), at least one per 2^X ticks of L2's spin, less one.
    let most = (elapsed >> timer.shift) + 1;
    let least = (spun >> timer.shift).saturating_sub(1);
    rt::check!(
        failures,
        saved != 0 && saved < value,
        "  saved value ",
        saved,
        ": decreased from ",
        value,
        ", not expired"
    );
    rt::check!(
        failures,
        (least..=most).contains(&counted),
        "  counted ",
        counted,
        " in ",
        least,
        "..=",
        most,
        " (L2 spun ",
        spun,
        " ticks, ",
        elapsed,
        " ticks from before VM entry to after VM exit, >> ",
        timer.shift,
        ")"
    );
    e.skip()?;
    let Some((e, elapsed)) = timed(vcpu, &mut failures) else { return Ok(failures) };
    check_expiry(&mut failures, timer, &e, saved, elapsed, "VMRESUME continued from the saved value");
    let v = hv::read(field::VMX_PREEMPTION_TIMER_VALUE)?;
    rt::check!(failures, v == 0, "  saved timer value ", v, " at the timer exit (0)");
    Ok(failures)
}

/// Without "save", VM entry after another exit loads L1's value again (SDM 27.7.4).
fn reloaded(vcpu: &mut Vcpu, timer: &Timer) -> Result<u32, VmFail> {
    let mut failures = 0u32;
    let value = timer.value(40);
    rt::println!("value ", value, " (about 40 ms) without 'save'; L2 exits with an OUT after 10 ms:");
    prepare(vcpu, spin(), value, timer.ticks(10))?;
    vcpu.regs.r9 = timer.ticks(GIVE_UP_MS);
    let Some(e) = vcpu.enter(&mut failures) else { return Ok(failures) };
    let ok = e.port() == Some(SPUN_PORT);
    rt::check!(failures, ok, "  L2's OUT after its spin (", Seen(&e), ")");
    if !ok {
        return Ok(failures);
    }
    let v = hv::read(field::VMX_PREEMPTION_TIMER_VALUE)?;
    rt::check!(failures, v == value, "  the field keeps L1's value ", v);
    e.skip()?;
    let Some((e, elapsed)) = timed(vcpu, &mut failures) else { return Ok(failures) };
    check_expiry(&mut failures, timer, &e, value, elapsed, "VMRESUME started again from L1's value");
    Ok(failures)
}
