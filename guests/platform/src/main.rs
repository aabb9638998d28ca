//! L1's PC platform as a kernel written for QEMU's PC machine sees it: fw_cfg's signature, CPU
//! count and RAM size; the local APIC's version and ID; its timer in one-shot, periodic and
//! TSC-deadline mode, each interrupt taken through `sti; hlt`; the IOAPIC with a level-triggered
//! and an edge-triggered pin whose lines pc-testdev raises; the 8254 PIT's IRQ 0 through the
//! 8259 and LINT0, and its counter 2 through port 0x61; the RTC's date, update cycle and
//! update-ended interrupt; a flood of self-IPIs. Exits 0 when
//! every check holds.
//!
//! Time: the APIC timer counts a nominal 1 GHz bus (one cycle per ns). The TSC rate comes from
//! KVM's paravirtual clock (its TSC-to-ns multiplier and shift), else CPUID 0x15, else CPUID
//! 0x16's base frequency; the timer checks are lower bounds in TSC ticks with a margin for that
//! rate's rounding (0.1%, 1% for CPUID 0x16) and no upper bound but the run's timeout, so they
//! hold on a loaded host. Without a rate the timer checks only say the interrupt came after
//! some TSC ticks.
//!
//! `platform cli-hlt`: HLT with interrupts disabled and nothing pending (nestbed ends the run:
//! the CPU would never wake). `platform sti-hlt`: HLT with interrupts enabled and nothing that
//! will ever interrupt (nestbed sleeps until its timeout, as a CPU would).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rt::idt::Frame;
use rt::io::{cli, cpuid, inb, outb, outw, rdmsr, rdtsc, sti_hlt, wrmsr};
use rt::time::Rate;
use rt::{apic, Hex};

rt::entry!(main);

const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
const FW_CFG_SIGNATURE: u16 = 0x00;
const FW_CFG_RAM_SIZE: u16 = 0x03;
const FW_CFG_NB_CPUS: u16 = 0x05;

const IOAPIC_BASE: u64 = 0xFEC0_0000;
const IOAPIC_REDIR: u32 = 0x10;
const REDIR_REMOTE_IRR: u32 = 1 << 14;
const REDIR_LEVEL: u32 = 1 << 15;
const REDIR_MASKED: u32 = 1 << 16;

/// pc-testdev: a byte write of 1 / 0 to `TESTDEV_IRQ + line` raises / lowers the line.
const TESTDEV_IRQ: u16 = 0x2000;

const TIMER_VECTOR: u8 = 0x40;
const LEVEL_VECTOR: u8 = 0x50;
const EDGE_VECTOR: u8 = 0x51;
const LEVEL_PIN: u8 = 10;
const EDGE_PIN: u8 = 11;

const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const LVT_TSC_DEADLINE: u32 = 2 << 17;
/// Divide configuration 0b1011: divide by 1.
const DIVIDE_BY_1: u32 = 0xB;
const SPIV_ENABLE: u32 = 1 << 8;
const IA32_TSC_DEADLINE: u32 = 0x6E0;
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// One-shot count: 10 ms of bus cycles.
const ONE_SHOT_CYCLES: u32 = 10_000_000;
/// Periodic count: 1 ms of bus cycles (above nestbed's and KVM's 200 us minimum period).
const PERIODIC_CYCLES: u32 = 1_000_000;
/// TSC-deadline distance in ns (converted to ticks with the rate, else taken as ticks).
const DEADLINE_NS: u64 = 10_000_000;

static TIMER_COUNT: AtomicU32 = AtomicU32::new(0);
static TIMER_TSC: AtomicU64 = AtomicU64::new(0);
static LEVEL_COUNT: AtomicU32 = AtomicU32::new(0);
/// The level pin's redirection entry (low half) as the level handler read it.
static LEVEL_REDIR_IN_HANDLER: AtomicU32 = AtomicU32::new(0);
static EDGE_COUNT: AtomicU32 = AtomicU32::new(0);
static IPI_COUNT: AtomicU32 = AtomicU32::new(0);
/// The vector of the self-IPIs.
const IPI_VECTOR: u8 = 0x60;
/// How many self-IPIs the flood sends each way.
const IPI_FLOOD: u32 = 2000;
/// ICR low: fixed delivery, destination shorthand "self" (SDM 11.6.1).
const ICR_LOW: u32 = 0x300;
const ICR_SELF: u32 = 1 << 18;

fn ipi_handler(_f: &mut Frame) {
    IPI_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

fn timer_handler(_f: &mut Frame) {
    TIMER_TSC.store(rdtsc(), Ordering::SeqCst);
    TIMER_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

/// The device "acknowledges" the interrupt: its line goes low before the EOI, so the EOI
/// clears remote IRR without the pin firing again.
fn level_handler(_f: &mut Frame) {
    LEVEL_REDIR_IN_HANDLER.store(ioapic_read(IOAPIC_REDIR + 2 * u32::from(LEVEL_PIN)), Ordering::SeqCst);
    LEVEL_COUNT.fetch_add(1, Ordering::SeqCst);
    set_line(LEVEL_PIN, false);
    apic::eoi();
}

fn edge_handler(_f: &mut Frame) {
    EDGE_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

fn main(info: &rt::BootInfo) -> u32 {
    match rt::next_word(info.args).0 {
        "cli-hlt" => {
            rt::println!("platform: HLT with interrupts disabled");
            cli();
            rt::io::hlt();
            return rt::EXIT_CHECK_FAILED;
        }
        "sti-hlt" => {
            rt::println!("platform: HLT with interrupts enabled, nothing to wake it");
            sti_hlt();
            return rt::EXIT_CHECK_FAILED;
        }
        _ => {}
    }
    let mut failures = 0u32;
    // Only the IOAPIC routes the lines: mask the 8259 pair (OCW1), as an OS using the IOAPIC
    // does, so that the testdev lines (also wired to the 8259) do not reach LINT0.
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    fw_cfg(info, &mut failures);
    local_apic(&mut failures);
    let khz = rt::time::tsc_rate();
    one_shot(&khz, &mut failures);
    periodic(&khz, &mut failures);
    tsc_deadline(&khz, &mut failures);
    ioapic_level(&mut failures);
    ioapic_edge(&mut failures);
    pit(&khz, &mut failures);
    rtc(&mut failures);
    self_ipi_flood(&mut failures);
    cli();
    if failures == 0 {
        rt::println!("platform: all checks passed");
        0
    } else {
        rt::println!("platform: ", failures, " check(s) failed");
        rt::EXIT_CHECK_FAILED
    }
}

// ---- fw_cfg ----

fn fw_cfg_read(key: u16, out: &mut [u8]) {
    outw(FW_CFG_SELECTOR, key);
    for b in out.iter_mut() {
        *b = inb(FW_CFG_DATA);
    }
}

fn fw_cfg(info: &rt::BootInfo, failures: &mut u32) {
    let mut f = *failures;
    let mut sig = [0u8; 4];
    fw_cfg_read(FW_CFG_SIGNATURE, &mut sig);
    let sig_word = u32::from_le_bytes(sig);
    rt::check!(f, &sig == b"QEMU", "fw_cfg signature ", Hex(sig_word.into()), " is \"QEMU\"");
    let mut cpus = [0u8; 2];
    fw_cfg_read(FW_CFG_NB_CPUS, &mut cpus);
    let cpus = u16::from_le_bytes(cpus);
    rt::check!(f, cpus == 1, "fw_cfg NB_CPUS = ", cpus);
    let mut ram = [0u8; 8];
    fw_cfg_read(FW_CFG_RAM_SIZE, &mut ram);
    let ram = u64::from_le_bytes(ram);
    // Multiboot's mem_upper is the RAM above 1 MiB in KiB.
    let multiboot = (u64::from(info.mem_upper_kib) + 1024) * 1024;
    rt::check!(
        f,
        info.mem_upper_kib != 0 && ram >= multiboot,
        "fw_cfg RAM_SIZE ",
        Hex(ram),
        " covers the multiboot memory (1 MiB + ",
        info.mem_upper_kib,
        " KiB = ",
        Hex(multiboot),
        if ram == multiboot { ", equal)" } else { ")" }
    );
    *failures = f;
}

// ---- local APIC ----

fn local_apic(failures: &mut u32) {
    let mut f = *failures;
    let base = rdmsr(0x1B);
    rt::check!(
        f,
        base & 0xFFFF_F000 == apic::BASE && base & (1 << 11) != 0 && base & (1 << 8) != 0,
        "IA32_APIC_BASE ",
        Hex(base),
        ": enabled BSP at ",
        Hex(apic::BASE)
    );
    apic::write(apic::SPIV, SPIV_ENABLE | 0xFF);
    let spiv = apic::read(apic::SPIV);
    rt::check!(f, spiv & SPIV_ENABLE != 0, "SPIV ", Hex(spiv.into()), ": software enabled");
    let version = apic::read(apic::VERSION);
    rt::check!(f, version == 0x0005_0014, "APIC version ", Hex(version.into()), " = 0x50014");
    let id = apic::read(apic::ID);
    rt::check!(f, id >> 24 == 0, "APIC ID register ", Hex(id.into()), ": ID 0");
    apic::write(apic::TPR, 0);
    for (vector, handler) in [
        (TIMER_VECTOR, timer_handler as rt::idt::Handler),
        (LEVEL_VECTOR, level_handler),
        (EDGE_VECTOR, edge_handler),
        (IPI_VECTOR, ipi_handler),
    ] {
        rt::idt::set_handler(vector, handler);
    }
    *failures = f;
}

/// `sti; hlt` until `count` reaches `want`; interrupts are disabled again on return.
fn wait_for(count: &AtomicU32, want: u32) {
    while count.load(Ordering::SeqCst) < want {
        sti_hlt();
        cli();
    }
}

/// Runs with interrupts enabled for `ticks` TSC ticks, then disables them.
fn open_window(ticks: u64) {
    let start = rdtsc();
    rt::io::sti();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
    cli();
}

fn one_shot(rate: &Option<Rate>, failures: &mut u32) {
    let mut f = *failures;
    TIMER_COUNT.store(0, Ordering::SeqCst);
    apic::write(apic::DIVIDE_CONFIG, DIVIDE_BY_1);
    apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR));
    let start = rdtsc();
    apic::write(apic::INITIAL_COUNT, ONE_SHOT_CYCLES);
    let current = apic::read(apic::CURRENT_COUNT);
    rt::check!(
        f,
        current > 0 && current <= ONE_SHOT_CYCLES,
        "one-shot: current count ",
        current,
        " counts down from ",
        ONE_SHOT_CYCLES
    );
    wait_for(&TIMER_COUNT, 1);
    let elapsed = TIMER_TSC.load(Ordering::SeqCst).wrapping_sub(start);
    report_lateness("one-shot", rate, elapsed, u64::from(ONE_SHOT_CYCLES), &mut f);
    // As long again with interrupts enabled: no second interrupt.
    open_window(rate.as_ref().map_or(elapsed, |r| r.ticks(u64::from(ONE_SHOT_CYCLES))));
    let n = TIMER_COUNT.load(Ordering::SeqCst);
    rt::check!(f, n == 1, "one-shot: ", n, " interrupt(s) on vector ", Hex(TIMER_VECTOR.into()), ", exactly one");
    let current = apic::read(apic::CURRENT_COUNT);
    rt::check!(f, current == 0, "one-shot: current count ", current, " after expiry");
    *failures = f;
}

/// Checks `elapsed` TSC ticks against `ns` bus cycles and prints the lateness.
fn report_lateness(what: &str, rate: &Option<Rate>, elapsed: u64, ns: u64, f: &mut u32) {
    let mut failures = *f;
    match rate {
        Some(r) => {
            let min = r.ticks_at_least(ns);
            let late_us = elapsed.saturating_sub(r.ticks(ns)) * 1000 / r.khz;
            rt::check!(
                failures,
                elapsed >= min,
                what,
                ": ",
                elapsed,
                " TSC ticks >= ",
                min,
                " (",
                ns,
                " bus cycles); late by ",
                late_us,
                " us"
            );
        }
        None => rt::check!(failures, elapsed > 0, what, ": fired after ", elapsed, " TSC ticks"),
    }
    *f = failures;
}

fn periodic(rate: &Option<Rate>, failures: &mut u32) {
    let mut f = *failures;
    TIMER_COUNT.store(0, Ordering::SeqCst);
    apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_PERIODIC);
    let start = rdtsc();
    apic::write(apic::INITIAL_COUNT, PERIODIC_CYCLES);
    wait_for(&TIMER_COUNT, 3);
    let third = TIMER_TSC.load(Ordering::SeqCst).wrapping_sub(start);
    apic::write(apic::INITIAL_COUNT, 0);
    report_lateness("periodic: third tick", rate, third, 3 * u64::from(PERIODIC_CYCLES), &mut f);
    // A tick already in IRR when the count stopped is still taken; then none.
    open_window(1000);
    let stopped = TIMER_COUNT.load(Ordering::SeqCst);
    rt::check!(f, stopped >= 3, "periodic: ", stopped, " ticks, at least 3");
    open_window(rate.as_ref().map_or(third, |r| r.ticks(5 * u64::from(PERIODIC_CYCLES))));
    let after = TIMER_COUNT.load(Ordering::SeqCst);
    rt::check!(f, after == stopped, "periodic: no tick after initial count 0 (", after - stopped, " more)");
    *failures = f;
}

fn tsc_deadline(rate: &Option<Rate>, failures: &mut u32) {
    let mut f = *failures;
    if cpuid(1, 0)[2] & CPUID_1_ECX_TSC_DEADLINE == 0 {
        rt::println!("skip TSC-deadline: CPUID.1:ECX[24] is clear");
        return;
    }
    TIMER_COUNT.store(0, Ordering::SeqCst);
    apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_TSC_DEADLINE);
    let delta = rate.as_ref().map_or(DEADLINE_NS, |r| r.ticks(DEADLINE_NS));
    let deadline = rdtsc() + delta;
    wrmsr(IA32_TSC_DEADLINE, deadline);
    let armed = rdmsr(IA32_TSC_DEADLINE);
    rt::check!(f, armed == deadline, "TSC-deadline: IA32_TSC_DEADLINE reads ", Hex(armed), " as written");
    wait_for(&TIMER_COUNT, 1);
    let at = TIMER_TSC.load(Ordering::SeqCst);
    let late_us = rate.as_ref().map_or(0, |r| at.saturating_sub(deadline) * 1000 / r.khz);
    rt::check!(
        f,
        at >= deadline,
        "TSC-deadline: interrupt at TSC ",
        Hex(at),
        " >= deadline ",
        Hex(deadline),
        " (",
        at.wrapping_sub(deadline),
        " ticks, ",
        late_us,
        " us late)"
    );
    let after = rdmsr(IA32_TSC_DEADLINE);
    rt::check!(f, after == 0, "TSC-deadline: IA32_TSC_DEADLINE reads ", Hex(after), " after firing: disarmed");
    open_window(delta);
    let n = TIMER_COUNT.load(Ordering::SeqCst);
    rt::check!(f, n == 1, "TSC-deadline: ", n, " interrupt(s), exactly one");
    apic::write(apic::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_MASKED);
    *failures = f;
}

// ---- IOAPIC ----

fn ioapic_read(reg: u32) -> u32 {
    // SAFETY: the IOAPIC page is identity-mapped; IOREGSEL then IOWIN, 32-bit accesses to
    // device registers, not RAM.
    unsafe {
        core::ptr::write_volatile(IOAPIC_BASE as *mut u32, reg);
        core::ptr::read_volatile((IOAPIC_BASE + 0x10) as *const u32)
    }
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: as for ioapic_read.
    unsafe {
        core::ptr::write_volatile(IOAPIC_BASE as *mut u32, reg);
        core::ptr::write_volatile((IOAPIC_BASE + 0x10) as *mut u32, value);
    }
}

/// Programs `pin`: `vector`, fixed delivery, physical destination APIC 0, active high.
fn route(pin: u8, vector: u8, level: bool) {
    let reg = IOAPIC_REDIR + 2 * u32::from(pin);
    ioapic_write(reg, REDIR_MASKED);
    ioapic_write(reg + 1, 0);
    ioapic_write(reg, u32::from(vector) | if level { REDIR_LEVEL } else { 0 });
}

fn set_line(line: u8, high: bool) {
    outb(TESTDEV_IRQ + u16::from(line), u8::from(high));
}

fn ioapic_level(failures: &mut u32) {
    let mut f = *failures;
    let version = ioapic_read(0x01);
    rt::check!(f, version & 0xFF == 0x20 && (version >> 16) & 0xFF == 23, "IOAPIC version ", Hex(version.into()));
    route(LEVEL_PIN, LEVEL_VECTOR, true);
    let reg = IOAPIC_REDIR + 2 * u32::from(LEVEL_PIN);
    set_line(LEVEL_PIN, true);
    let pending = apic::vector_bit(apic::IRR, LEVEL_VECTOR);
    let redir = ioapic_read(reg);
    rt::check!(
        f,
        pending && redir & REDIR_REMOTE_IRR != 0,
        "level pin ",
        LEVEL_PIN,
        " raised with IF=0: vector ",
        Hex(LEVEL_VECTOR.into()),
        " in IRR, remote IRR set (entry ",
        Hex(redir.into()),
        ")"
    );
    wait_for(&LEVEL_COUNT, 1);
    let in_handler = LEVEL_REDIR_IN_HANDLER.load(Ordering::SeqCst);
    rt::check!(
        f,
        in_handler & REDIR_REMOTE_IRR != 0,
        "level: remote IRR set in the handler (",
        Hex(in_handler.into()),
        ")"
    );
    let after = ioapic_read(reg);
    rt::check!(f, after & REDIR_REMOTE_IRR == 0, "level: remote IRR clear after EOI (", Hex(after.into()), ")");
    open_window(100_000);
    let n = LEVEL_COUNT.load(Ordering::SeqCst);
    rt::check!(f, n == 1, "level: ", n, " interrupt(s), exactly one (the line went low before EOI)");
    ioapic_write(reg, REDIR_MASKED);
    *failures = f;
}

fn ioapic_edge(failures: &mut u32) {
    let mut f = *failures;
    route(EDGE_PIN, EDGE_VECTOR, false);
    for raise in 1..=2u32 {
        set_line(EDGE_PIN, true);
        wait_for(&EDGE_COUNT, raise);
        // Still high: no new edge, no new interrupt.
        set_line(EDGE_PIN, true);
        open_window(100_000);
        let n = EDGE_COUNT.load(Ordering::SeqCst);
        rt::check!(f, n == raise, "edge pin ", EDGE_PIN, ": raise ", raise, ", ", n, " interrupt(s) so far");
        set_line(EDGE_PIN, false);
    }
    let reg = IOAPIC_REDIR + 2 * u32::from(EDGE_PIN);
    let entry = ioapic_read(reg);
    rt::check!(f, entry & REDIR_REMOTE_IRR == 0, "edge: no remote IRR (", Hex(entry.into()), ")");
    ioapic_write(reg, REDIR_MASKED);
    *failures = f;
}

// ---- 8254 PIT through the 8259 ----

const PIC_VECTOR_BASE: u8 = 0x20;
/// Counter 0's count: 11932 clocks of 1.193182 MHz, 10 ms.
const PIT_COUNT: u16 = 11_932;
const PIT_PERIOD_NS: u64 = 10_000_000;
static PIT_COUNT_SEEN: AtomicU32 = AtomicU32::new(0);
static PIT_TSC: AtomicU64 = AtomicU64::new(0);

/// IRQ 0 through the 8259 and LINT0 (ExtINT): the 8259 needs its EOI, the local APIC none.
fn pit_handler(_f: &mut Frame) {
    PIT_TSC.store(rdtsc(), Ordering::SeqCst);
    PIT_COUNT_SEEN.fetch_add(1, Ordering::SeqCst);
    outb(0x20, 0x20);
}

fn pit_count() -> u16 {
    outb(0x43, 0x00); // counter latch, counter 0
    u16::from_le_bytes([inb(0x40), inb(0x40)])
}

/// Counter 0 in mode 2 at 100 Hz: IRQ 0 through the 8259 (initialized with vectors 0x20-0x2F,
/// only IRQ 0 unmasked) and LINT0, three ticks no earlier than 30 ms; the latched count falls;
/// counter 2 gated by port 0x61 drives its OUT bit there.
fn pit(rate: &Option<Rate>, failures: &mut u32) {
    let mut f = *failures;
    for (port, value) in [(0x20, 0x11), (0xA0, 0x11), (0x21, PIC_VECTOR_BASE), (0xA1, PIC_VECTOR_BASE + 8)] {
        outb(port, value);
    }
    for (port, value) in [(0x21, 0x04), (0xA1, 0x02), (0x21, 0x01), (0xA1, 0x01), (0x21, 0xFE), (0xA1, 0xFF)] {
        outb(port, value);
    }
    rt::idt::set_handler(PIC_VECTOR_BASE, pit_handler);
    let start = rdtsc();
    outb(0x43, 0x34); // counter 0, LSB then MSB, mode 2
    outb(0x40, PIT_COUNT as u8);
    outb(0x40, (PIT_COUNT >> 8) as u8);
    let (a, b) = (pit_count(), pit_count());
    rt::check!(f, a <= PIT_COUNT && b <= a, "PIT: latched count ", a, " then ", b, ", counting down from ", PIT_COUNT);
    wait_for(&PIT_COUNT_SEEN, 3);
    let elapsed = PIT_TSC.load(Ordering::SeqCst).wrapping_sub(start);
    report_lateness("PIT: third IRQ 0", rate, elapsed, 3 * PIT_PERIOD_NS, &mut f);
    outb(0x21, 0xFF);
    outb(0x43, 0x30); // counter 0 stopped: mode 0 with no count written
                      // Counter 2, mode 0, 100 clocks: OUT stays low while its gate (port 0x61 bit 0) is low.
    outb(0x61, inb(0x61) & !1);
    outb(0x43, 0xB0);
    outb(0x42, 100);
    outb(0x42, 0);
    let gated = inb(0x61) & 0x20;
    outb(0x61, inb(0x61) | 1);
    let mut spins = 0u32;
    while inb(0x61) & 0x20 == 0 && spins < 1_000_000 {
        spins += 1;
    }
    rt::check!(f, gated == 0 && spins < 1_000_000, "PIT: counter 2's OUT rises in port 0x61 once its gate opens");
    outb(0x61, inb(0x61) & !1);
    *failures = f;
}

// ---- MC146818 RTC ----

const RTC_VECTOR: u8 = 0x52;
const RTC_PIN: u8 = 8;
static RTC_COUNT: AtomicU32 = AtomicU32::new(0);
static RTC_REG_C: AtomicU32 = AtomicU32::new(0);

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

/// Reading register C acknowledges the interrupt: IRQ 8 goes low before the EOI.
fn rtc_handler(_f: &mut Frame) {
    RTC_REG_C.store(cmos(0x0C).into(), Ordering::SeqCst);
    RTC_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

fn bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0xF)
}

fn bcd_ok(v: u8, max: u8) -> bool {
    v & 0xF < 10 && v >> 4 < 10 && (v >> 4) * 10 + (v & 0xF) <= max
}

/// The RTC in its BIOS state (24-hour BCD, valid RAM): a plausible date, the update-in-progress
/// bit seen set and then clear, and the update-ended interrupt (UIE) on IOAPIC pin 8.
fn rtc(failures: &mut u32) {
    let mut f = *failures;
    let (sec, min, hour, day, month, year, century) =
        (cmos(0x00), cmos(0x02), cmos(0x04), cmos(0x07), cmos(0x08), cmos(0x09), cmos(0x32));
    rt::check!(
        f,
        bcd_ok(sec, 59)
            && bcd_ok(min, 59)
            && bcd_ok(hour, 23)
            && bcd_ok(day, 31)
            && bcd_ok(month, 12)
            && bcd_ok(year, 99)
            && century == 0x20,
        "RTC: ",
        bcd(century) * 100 + bcd(year),
        "-",
        bcd(month),
        "-",
        bcd(day),
        " ",
        bcd(hour),
        "h",
        bcd(min),
        "m",
        bcd(sec),
        "s in BCD, 24-hour (register B ",
        Hex(cmos(0x0B).into()),
        "), register D ",
        Hex(cmos(0x0D).into())
    );
    let mut spins = 0u32;
    while cmos(0x0A) & 0x80 == 0 && spins < 10_000_000 {
        spins += 1;
    }
    while cmos(0x0A) & 0x80 != 0 && spins < 10_000_000 {
        spins += 1;
    }
    rt::check!(f, spins < 10_000_000, "RTC: update-in-progress seen set, then clear");
    rt::idt::set_handler(RTC_VECTOR, rtc_handler);
    route(RTC_PIN, RTC_VECTOR, false);
    cmos(0x0C);
    outb(0x70, 0x0B);
    let b = inb(0x71);
    outb(0x71, b | 0x10);
    wait_for(&RTC_COUNT, 1);
    outb(0x70, 0x0B);
    outb(0x71, b);
    let c = RTC_REG_C.load(Ordering::SeqCst);
    rt::check!(f, c & 0x90 == 0x90, "RTC: update-ended interrupt with register C ", Hex(c.into()), " (IRQF, UF)");
    ioapic_write(IOAPIC_REDIR + 2 * u32::from(RTC_PIN), REDIR_MASKED);
    *failures = f;
}

// ---- self-IPIs ----

/// A flood of self-IPIs (SDM 11.6.1, 11.8.4): with interrupts disabled they collapse into the
/// one IRR bit of their vector and are taken once; with interrupts enabled each is taken.
fn self_ipi_flood(failures: &mut u32) {
    let mut f = *failures;
    IPI_COUNT.store(0, Ordering::SeqCst);
    cli();
    for _ in 0..IPI_FLOOD {
        apic::write(ICR_LOW, ICR_SELF | u32::from(IPI_VECTOR));
    }
    let pending = apic::vector_bit(apic::IRR, IPI_VECTOR);
    wait_for(&IPI_COUNT, 1);
    open_window(100_000);
    let n = IPI_COUNT.load(Ordering::SeqCst);
    rt::check!(
        f,
        pending && n == 1,
        "self-IPI flood with IF=0: ",
        IPI_FLOOD,
        " IPIs, one IRR bit, ",
        n,
        " interrupt(s)"
    );
    IPI_COUNT.store(0, Ordering::SeqCst);
    rt::io::sti();
    for _ in 0..IPI_FLOOD {
        apic::write(ICR_LOW, ICR_SELF | u32::from(IPI_VECTOR));
    }
    cli();
    let n = IPI_COUNT.load(Ordering::SeqCst);
    rt::check!(f, n == IPI_FLOOD, "self-IPI flood with IF=1: ", n, " of ", IPI_FLOOD, " interrupts taken");
    *failures = f;
}
