//! L1's PC platform in the run loop: port, MMIO and MSR accesses routed to the device models
//! of `crate::platform`, their interrupts delivered into L1's vCPU, HLT that sleeps until the
//! next interrupt, and the APIC timer kicking the vCPU out of KVM_RUN at its deadline.
//!
//! nestbed models the interrupt controllers in userspace instead of KVM's in-kernel irqchip:
//! with the in-kernel one, KVM would handle L1's HLT and APIC itself, and nestbed could not turn
//! L1's interrupts into VM exits while L2 runs (external-interrupt exiting) or let L2's HLT
//! reach it.

use std::time::Duration;

use super::{signals, Runner};
use crate::exit::Level;
use crate::platform::acpi_pm::{self, AcpiPm};
use crate::platform::fw_cfg::FwCfg;
use crate::platform::ioapic::{self, Delivery, DeliveryMode, IoApic, IOAPIC_BASE};
use crate::platform::lapic::{self, Lapic};
use crate::platform::pic::Pic;
use crate::platform::pit::Pit;
use crate::platform::rtc::Rtc;
use crate::platform::testdev::{self, TestDev, IOMEM_BASE, IOMEM_LEN};

const IOAPIC_SIZE: u64 = 0x1000;
/// The longest HLT sleep between checks for a signal (Ctrl-C, --timeout, a debugger).
const HLT_SLICE: Duration = Duration::from_millis(10);
/// How many of L1's instructions in a row, without another exit, nestbed single-steps while an
/// interrupt waits for L1 to open its window (`Runner::deliver_l1_interrupt`); past them it
/// looks every `WINDOW_POLL`.
pub const WINDOW_STEPS: u32 = 4096;
const WINDOW_POLL: Duration = Duration::from_millis(1);

/// The devices and the timer that kicks the vCPU.
pub struct Platform {
    pub lapic: Lapic,
    pub pic: Pic,
    pub pit: Pit,
    pub rtc: Rtc,
    pub pm: AcpiPm,
    /// IRQ 8 as the RTC drives it (register C's IRQF).
    rtc_irq: bool,
    pub ioapic: IoApic,
    pub fw_cfg: FwCfg,
    pub testdev: TestDev,
    /// An NMI for L1's processor (an NMI IPI to itself), not yet taken.
    pub nmi: bool,
    /// Guest TSC minus host TSC (KVM runs the guest's TSC at the host's rate).
    tsc_offset: u64,
    tsc_khz: u64,
    kick: Option<KickTimer>,
    /// The deadline the kick timer is armed for.
    armed: Option<u64>,
}

/// A POSIX timer that sends SIGUSR1 to the vCPU thread (`signals` then sets immediate_exit).
struct KickTimer(libc::timer_t);

impl KickTimer {
    fn new() -> Option<Self> {
        // SAFETY: a zeroed sigevent is valid; the fields set name this thread and SIGUSR1.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGUSR1;
        // SAFETY: gettid has no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `ev` and `id` are valid for the call.
        let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) };
        (rc == 0).then_some(KickTimer(id))
    }

    /// Fires once after `after` (zero disarms).
    fn arm(&self, after: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos()),
            },
        };
        // SAFETY: the timer id is live (deleted only in drop); `spec` is valid.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for KickTimer {
    fn drop(&mut self) {
        // SAFETY: the id came from timer_create and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; x86_64 always has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Platform {
    /// The platform of a machine with `ram_size` bytes; `guest_tsc` is the guest's TSC read
    /// now (for the TSC-deadline timer), `tsc_khz` its rate.
    pub fn new(ram_size: u64, tsc_khz: u64, guest_tsc: Option<u64>) -> Self {
        let tsc_offset = guest_tsc.map_or(0, |g| g.wrapping_sub(host_tsc()));
        Platform {
            lapic: Lapic::new(tsc_khz),
            pic: Pic::new(),
            pit: Pit::new(tsc_khz, host_tsc().wrapping_add(tsc_offset)),
            rtc: Rtc::new(unix_now(), tsc_khz, host_tsc().wrapping_add(tsc_offset)),
            pm: AcpiPm::new(tsc_khz, host_tsc().wrapping_add(tsc_offset)),
            rtc_irq: false,
            ioapic: IoApic::new(),
            fw_cfg: FwCfg::new(ram_size, 1),
            testdev: TestDev::new(),
            nmi: false,
            tsc_offset,
            tsc_khz,
            kick: KickTimer::new(),
            armed: None,
        }
    }

    /// The guest's TSC now.
    pub fn now(&self) -> u64 {
        host_tsc().wrapping_add(self.tsc_offset)
    }

    /// Whether a port belongs to the platform's devices.
    pub fn claims_port(port: u16) -> bool {
        Pic::claims(port)
            || Pit::claims(port)
            || Rtc::claims(port)
            || AcpiPm::claims(port)
            || FwCfg::claims(port)
            || TestDev::claims(port)
    }

    pub fn port_read(&mut self, port: u16, size: u8) -> u64 {
        let size = usize::from(size);
        let v = if Pic::claims(port) {
            u32::from(self.pic.port_read(port))
        } else if Pit::claims(port) {
            let now = self.now();
            u32::from(self.pit.port_read(port, now))
        } else if Rtc::claims(port) {
            let now = self.now();
            let v = self.rtc.port_read(port, now);
            self.sync_rtc_irq();
            u32::from(v)
        } else if AcpiPm::claims(port) {
            self.pm.read(port, size, self.now())
        } else if FwCfg::claims(port) {
            self.fw_cfg.port_read(port, size)
        } else {
            self.testdev.port_read(port, size)
        };
        u64::from(v)
    }

    /// A port write; what it asks of the machine beyond the device (ACPI sleep) is returned.
    pub fn port_write(&mut self, port: u16, size: u8, value: u64) -> acpi_pm::Effect {
        let size = usize::from(size);
        if AcpiPm::claims(port) {
            return self.pm.write(port, size, value as u32);
        }
        if Rtc::claims(port) {
            let now = self.now();
            self.rtc.port_write(port, value as u8, now);
            self.sync_rtc_irq();
        } else if Pic::claims(port) {
            self.pic.port_write(port, value as u8);
        } else if Pit::claims(port) {
            let now = self.now();
            self.pit.port_write(port, value as u8, now);
        } else if FwCfg::claims(port) {
            self.fw_cfg.port_write(port, size, value as u32);
        } else if let testdev::Effect::SetIrq { line, level } = self.testdev.port_write(port, size, value as u32) {
            self.set_irq(line, level);
        }
        acpi_pm::Effect::None
    }

    /// IRQ 8 follows the RTC's IRQF: up when an enabled flag is set, down when register C is
    /// read.
    fn sync_rtc_irq(&mut self) {
        let level = self.rtc.irq_line();
        if level != self.rtc_irq {
            self.rtc_irq = level;
            self.set_irq(8, level);
        }
    }

    /// Asleep in S3: whether a wake event has come (an RTC alarm, when PM1_EN.RTC_EN lets it
    /// wake), and the guest TSC to look again at otherwise.
    pub fn s3_wake_event(&mut self) -> (bool, Option<u64>) {
        let now = self.now();
        let tick = self.rtc.tick(now);
        (tick.alarm && self.pm.rtc_wakes(), self.rtc.next_second())
    }

    /// Host time until the guest TSC reaches `deadline`, at most one HLT slice.
    pub fn slice_until(&self, deadline: Option<u64>) -> Duration {
        deadline.map_or(HLT_SLICE, |d| self.until(d).min(HLT_SLICE))
    }

    /// The interrupt controllers and timers as at power-on (S3 resume: the processor and its
    /// chipset lost their state; the RTC, the PM registers, fw_cfg and the test device keep
    /// theirs).
    pub fn power_on_reset(&mut self) {
        let now = self.now();
        self.lapic = Lapic::new(self.tsc_khz);
        self.pic = Pic::new();
        self.pit = Pit::new(self.tsc_khz, now);
        self.ioapic = IoApic::new();
        self.nmi = false;
        self.rtc_irq = false;
    }

    /// A device line: the PIC sees ISA lines 0-15, the IOAPIC its pins (ISA IRQ 0 on pin 2).
    fn set_irq(&mut self, line: u8, level: bool) {
        if line < 16 {
            self.pic.set_irq(line, level);
        }
        let pin = ioapic::isa_irq_to_pin(line);
        if let Some(d) = self.ioapic.set_irq(usize::from(pin), level) {
            self.deliver(d);
        }
    }

    /// An IOAPIC message to the local APIC (one CPU: every destination is this one).
    fn deliver(&mut self, d: Delivery) {
        match d.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.lapic.accept(d.vector, d.level_triggered);
            }
            other => tracing::debug!(?other, vector = d.vector, "IOAPIC delivery mode not modelled: dropped"),
        }
    }

    fn lapic_effect(&mut self, e: lapic::Effect) {
        match e {
            lapic::Effect::Eoi { vector, level: true } => {
                for d in self.ioapic.eoi(vector) {
                    self.deliver(d);
                }
            }
            lapic::Effect::Nmi => self.nmi = true,
            lapic::Effect::None | lapic::Effect::Eoi { .. } => {}
            other => tracing::debug!(?other, "local APIC IPI to a CPU nestbed does not have: dropped"),
        }
    }

    /// An MMIO read of the platform's pages; None when no device is at `gpa`.
    pub fn mmio_read(&mut self, gpa: u64, len: u8) -> Option<u64> {
        let len = usize::from(len);
        let now = self.now();
        if let Some(base) = self.lapic.mmio_base().filter(|&b| (b..b + lapic::MMIO_SIZE).contains(&gpa)) {
            return Some(u64::from(self.lapic.read(gpa - base, len, now)));
        }
        if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&gpa) {
            return Some(u64::from(self.ioapic.mmio_read(gpa - IOAPIC_BASE, len)));
        }
        if (IOMEM_BASE..IOMEM_BASE + IOMEM_LEN as u64).contains(&gpa) {
            return Some(self.testdev.mmio_read(gpa - IOMEM_BASE, len));
        }
        None
    }

    /// An MMIO write to the platform's pages; false when no device is at `gpa`.
    pub fn mmio_write(&mut self, gpa: u64, len: u8, value: u64) -> bool {
        let len = usize::from(len);
        let now = self.now();
        if let Some(base) = self.lapic.mmio_base().filter(|&b| (b..b + lapic::MMIO_SIZE).contains(&gpa)) {
            let e = self.lapic.write(gpa - base, len, value as u32, now);
            self.lapic_effect(e);
            return true;
        }
        if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&gpa) {
            for d in self.ioapic.mmio_write(gpa - IOAPIC_BASE, len, value as u32) {
                self.deliver(d);
            }
            return true;
        }
        if (IOMEM_BASE..IOMEM_BASE + IOMEM_LEN as u64).contains(&gpa) {
            self.testdev.mmio_write(gpa - IOMEM_BASE, len, value);
            return true;
        }
        false
    }

    /// RDMSR of the local APIC's MSRs: Some(Ok) value, Some(Err) #GP, None not the APIC's.
    pub fn rdmsr(&mut self, index: u32) -> Option<Result<u64, lapic::Gp>> {
        let now = self.now();
        Lapic::handles_msr(index).then(|| self.lapic.rdmsr(index, now))
    }

    pub fn wrmsr(&mut self, index: u32, value: u64) -> Option<Result<(), lapic::Gp>> {
        if !Lapic::handles_msr(index) {
            return None;
        }
        let now = self.now();
        Some(self.lapic.wrmsr(index, value, now).map(|e| self.lapic_effect(e)))
    }

    /// The vector L1 takes next, if an interrupt is pending: the local APIC's, else the PIC's
    /// through LINT0 (ExtINT) or, with the APIC disabled, directly.
    pub fn pending(&mut self) -> Option<Source> {
        let now = self.now();
        self.lapic.tick(now);
        if self.rtc.tick(now).irq {
            self.sync_rtc_irq();
        }
        if self.pit.tick(now) {
            // IRQ 0 is an edge: a pulse is latched by the PIC and the IOAPIC alike.
            self.set_irq(0, true);
            self.set_irq(0, false);
        }
        if self.lapic.pending().is_some() {
            Some(Source::Lapic)
        } else if self.pic.output() && self.lapic.accepts_pic_intr() {
            Some(Source::Pic)
        } else {
            None
        }
    }

    /// INTA: the vector of `source`'s interrupt, now in service.
    pub fn acknowledge(&mut self, source: Source) -> Option<u8> {
        match source {
            Source::Lapic => self.lapic.ack(),
            Source::Pic => Some(self.pic.ack()),
        }
    }

    /// Arms the kick for the APIC timer's next deadline (once per new deadline).
    pub fn arm_kick(&mut self) {
        self.arm_kick_with(None);
    }

    /// Arms the kick for the earlier of the APIC timer's next deadline and `extra` (a guest TSC
    /// value: L2's VMX-preemption timer).
    pub fn arm_kick_with(&mut self, extra: Option<u64>) {
        let deadline = earliest(self.timer_deadline(), extra);
        if deadline == self.armed {
            return;
        }
        // A kick armed earlier than needed only makes one spurious exit, after which the kick
        // is armed again: a later deadline, or none (each VM entry restarts the preemption
        // timer; L1 runs without it), needs no system call while the armed one is still ahead.
        if let Some(a) = self.armed {
            if deadline.is_none_or(|d| a <= d) && a > self.now() {
                return;
            }
        }
        self.armed = deadline;
        if let Some(k) = &self.kick {
            k.arm(deadline.map_or(Duration::ZERO, |d| self.until(d).max(Duration::from_nanos(1))));
        }
    }

    /// Kicks the vCPU out of KVM_RUN within `after` (to look at the guest again).
    pub fn kick_within(&mut self, after: Duration) {
        let deadline = self.now().saturating_add((after.as_nanos() as u64).saturating_mul(self.tsc_khz) / 1_000_000);
        if self.armed.is_none_or(|a| a > deadline || a <= self.now()) {
            self.armed = Some(deadline);
            if let Some(k) = &self.kick {
                k.arm(after);
            }
        }
    }

    /// The guest TSC of the platform timers' next interrupt: the APIC timer's, or the PIT's
    /// IRQ 0 while the PIC or the IOAPIC lets it through.
    fn timer_deadline(&self) -> Option<u64> {
        let irq0 = (!self.pic.masked(0)
            || self
                .ioapic
                .redirection(usize::from(ioapic::isa_irq_to_pin(0)))
                .is_some_and(|e| e & ioapic::MASKED == 0))
        .then(|| self.pit.next_deadline())
        .flatten();
        earliest(earliest(self.lapic.next_deadline(), irq0), self.rtc.next_deadline())
    }

    /// Host time until the guest TSC reaches `deadline`.
    fn until(&self, deadline: u64) -> Duration {
        let ticks = deadline.saturating_sub(self.now());
        Duration::from_nanos((u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz.max(1))) as u64)
    }

    /// HLT with interrupts enabled: sleeps, in slices, until an interrupt is pending, a
    /// signal stops the run, or `attention` (a debugger) asks for the run loop. A guest that
    /// nothing can wake sleeps until one of those, as a CPU would.
    pub fn sleep_until_interrupt(&mut self, attention: impl Fn() -> bool) {
        self.sleep_until_interrupt_or(None, attention);
    }

    /// The same, waking also when the guest TSC reaches `deadline` (one slice at most: the
    /// caller looks again).
    pub fn sleep_until_interrupt_or(&mut self, deadline: Option<u64>, attention: impl Fn() -> bool) {
        loop {
            if self.pending().is_some() || self.nmi || signals::cause() != signals::NONE || attention() {
                return;
            }
            if deadline.is_some_and(|d| self.now() >= d) {
                return;
            }
            let next = earliest(self.timer_deadline(), deadline);
            let slice = next.map_or(HLT_SLICE, |d| self.until(d).min(HLT_SLICE));
            std::thread::sleep(slice);
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where a pending interrupt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Lapic,
    Pic,
}

impl Runner {
    /// Before L1 runs: an interrupt the platform has pending is injected when L1 can take it
    /// (IF set, no interrupt shadow), else KVM is asked to exit when it can (interrupt
    /// window). The APIC timer's kick is armed for its next deadline.
    pub(super) fn deliver_l1_interrupt(&mut self) {
        let cr8 = self.l1.cr8();
        let tpr = self.sync_tpr(Level::L1, cr8);
        self.l1.set_cr8(tpr);
        let p = &mut self.platform;
        p.arm_kick();
        if p.nmi {
            // KVM delivers it when L1 is not blocking NMIs (SDM 6.7.1).
            p.nmi = false;
            let e = self.l1.events_mut();
            e.nmi.pending = 1;
            e.flags |= super::events::KVM_VCPUEVENT_VALID_NMI_PENDING;
        }
        let p = &mut self.platform;
        let Some(source) = p.pending() else {
            self.l1.request_interrupt_window(false);
            self.set_l1_window_step(false);
            self.l1_window_budget = WINDOW_STEPS;
            return;
        };
        if !self.l1.ready_for_interrupt() {
            self.l1.request_interrupt_window(true);
            // Stepping is bounded: past the budget, L1 keeps interrupts off for long, and a
            // kick every `WINDOW_POLL` looks again instead.
            let step = self.l1_window_budget > 0;
            self.set_l1_window_step(step);
            if !step {
                self.platform.kick_within(WINDOW_POLL);
            }
            return;
        }
        if let Some(vector) = p.acknowledge(source) {
            self.l1.inject_interrupt(vector);
        }
        self.l1.request_interrupt_window(false);
        self.set_l1_window_step(false);
        self.l1_window_budget = WINDOW_STEPS;
    }

    /// CR8 is the local APIC's TPR[7:4] (SDM 11.8.6.1): a guest's MOV to CR8 (which KVM runs
    /// itself, leaving it in `kvm_run->cr8`) becomes the TPR of nestbed's APIC model.
    /// Returns the CR8 the vCPU of `level` runs with next.
    pub(super) fn sync_tpr(&mut self, level: Level, cr8: u64) -> u64 {
        let i = usize::from(level == Level::L2);
        if cr8 != self.cr8_seen[i] {
            self.platform.lapic.set_tpr((cr8 as u8 & 0xf) << 4);
        }
        self.cr8_seen[i] = u64::from(self.platform.lapic.tpr() >> 4);
        self.cr8_seen[i]
    }

    /// While an interrupt waits for L1 to open its window, L1 runs single-stepped: this host's
    /// KVM reports the open window only at an exit it sees, not after STI.
    fn set_l1_window_step(&mut self, on: bool) {
        if self.l1_window_step != on {
            self.l1_window_step = on;
            self.debug_generation_changed();
        }
    }
}

/// L1's MSRs the VM-exit MSR-load area reaches through the platform (the local APIC's).
impl crate::nested::msr_lists::ModelMsrs for Platform {
    fn handles(&self, index: u32) -> bool {
        Lapic::handles_msr(index)
    }
    fn write(&mut self, index: u32, value: u64) -> bool {
        self.wrmsr(index, value).is_some_and(|r| r.is_ok())
    }
}
