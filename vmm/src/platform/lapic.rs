//! The local APIC (Intel SDM Vol. 3, chapter 11) of the one CPU, the BSP, as a pure state
//! machine: xAPIC MMIO, the x2APIC MSRs, IA32_APIC_BASE and IA32_TSC_DEADLINE, interrupt
//! acceptance and the APIC timer.
//!
//! Time: the timer counts cycles of a nominal 1 GHz APIC bus (one cycle per ns, as KVM), derived
//! from the TSC through the `tsc_khz` given to [`Lapic::new`]: bus cycle `c` is TSC
//! `ceil(c * tsc_khz / 10^6)`. Every access that can observe the timer takes `now_tsc` and first
//! catches the timer up to it; a `now_tsc` below the latest one seen counts as the latest.
//! Guests that compare the count with the TSC (kvm-unit-tests) assume a TSC at least as fast as
//! the bus, i.e. `tsc_khz >= 1_000_000`. A periodic period is at least [`MIN_PERIOD_CYCLES`].
//!
//! Register writes return an [`Effect`] for the rest of the machine: level EOIs for the IOAPIC,
//! IPIs to this CPU other than fixed ones, and IPIs to absent CPUs.
//!
//! Totality: no input panics. MMIO reads of 1, 2 or 4 bytes within the first dword of a register
//! return those bytes; other reads return 0. Only aligned 4-byte MMIO writes take effect (as
//! KVM). Architectural faults are values ([`Gp`]).
//!
//! Not modelled: other CPUs (IPIs to them are [`Effect::Dropped`]), arbitration priority (APR
//! reads 0, as KVM), focus-processor checking, directed EOI (version bit 24 clear), remote read,
//! the LINT pins' inputs (the integrator asks [`Lapic::accepts_pic_intr`]), CMCI, thermal and
//! performance-monitor sources (their LVTs are storage), spurious-interrupt delivery, and what
//! SMI, INIT and start-up IPIs do to this CPU (they are reported as [`Effect`]s).

#[cfg(test)]
mod tests;

/// IA32_APIC_BASE (SDM 11.4.4).
pub const APIC_BASE_MSR: u32 = 0x1b;
/// IA32_TSC_DEADLINE (SDM 11.5.4.1).
pub const TSC_DEADLINE_MSR: u32 = 0x6e0;
/// The x2APIC register MSRs, `0x800 + (xAPIC offset >> 4)` (SDM 11.12.1.2).
pub const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0x8ff;
/// The xAPIC MMIO base after reset.
pub const DEFAULT_BASE: u64 = 0xfee0_0000;
/// Size of the xAPIC MMIO page.
pub const MMIO_SIZE: u64 = 0x1000;
/// APIC bus cycles per millisecond: a 1 GHz bus.
pub const BUS_KHZ: u64 = 1_000_000;
/// Shortest period of the periodic timer in bus cycles (200 us, KVM's `min_timer_period_us`),
/// so that a tiny initial count cannot swamp the vCPU with timer exits.
pub const MIN_PERIOD_CYCLES: u64 = 200_000;

/// Register offsets in the xAPIC page (SDM 11.4.1, Table 11-1).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const RRD: u32 = 0xc0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SPIV: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const INITIAL_COUNT: u32 = 0x380;
    pub const CURRENT_COUNT: u32 = 0x390;
    pub const DIVIDE_CONFIG: u32 = 0x3e0;
    /// x2APIC only (SDM 11.12.11).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// Version 0x14 (integrated APIC) with max LVT entry 5, as QEMU (SDM 11.4.8).
pub const VERSION_VALUE: u32 = 0x0005_0014;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bits 35:12: a MAXPHYADDR of 36.
const BASE_ADDR: u64 = 0xf_ffff_f000;

const SPIV_ENABLE: u32 = 1 << 8;
const SPIV_WRITABLE: u32 = 0x3ff;

/// ESR bits (SDM 11.5.3).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

// LVT fields (SDM 11.5.1, Figure 11-8).
const LVT_DELIVERY_MODE: u32 = 0x700;
const LVT_POLARITY: u32 = 1 << 13;
const LVT_TRIGGER_LEVEL: u32 = 1 << 15;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE: u32 = 3 << 17;
const LVT_EXTINT: u32 = 0x700;

// LVT slots, in register order.
const CMCI: usize = 0;
const TIMER: usize = 1;
const LINT0: usize = 4;
const LINT1: usize = 5;
const ERROR: usize = 6;

// ICR fields (SDM 11.6.1, Figure 11-12; x2APIC: 11.12.9).
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
const ICR_LOGICAL: u32 = 1 << 11;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_SHORTHAND_SELF: u32 = 1 << 18;
/// x2APIC ICR bits whose setting faults: 31:20, 17:16 and 13 (as KVM, which leaves the former
/// delivery-status bit 12 alone).
const X2APIC_ICR_RESERVED: u64 = 0xfff3_2000;

/// The x2APIC ID of the one CPU.
pub const X2APIC_ID: u32 = 0;

/// The state IA32_APIC_BASE's EN and EXTD select (SDM 11.12.5, Figure 11-27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disabled,
    XApic,
    X2Apic,
}

/// The general-protection fault an MSR access raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("#GP(0)")]
pub struct Gp;

/// What a register write asks of the rest of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// `vector` left service; `level` when its TMR bit was set, so the IOAPIC gets the EOI
    /// (SDM 11.8.5).
    Eoi {
        vector: u8,
        level: bool,
    },
    /// An NMI IPI to this CPU.
    Nmi,
    /// An SMI IPI to this CPU.
    Smi,
    /// An INIT IPI to this CPU (INIT level de-assert sends nothing).
    Init,
    /// A start-up IPI to this CPU, which as BSP never waits for one.
    Startup {
        vector: u8,
    },
    /// An IPI only absent CPUs would receive; `icr` as written (SDM 11.6.1).
    Dropped {
        icr: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// The local APIC. See the module documentation for time and totality.
#[derive(Debug, Clone)]
pub struct Lapic {
    tsc_khz: u64,
    /// Latest TSC seen.
    now: u64,
    base: u64,
    /// xAPIC ID (bits 31:24 of the ID register).
    id: u8,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    spiv: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as read; errors since the last ESR write wait in `esr_pending`.
    esr: u32,
    esr_pending: u32,
    /// CMCI, timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; 7],
    icr_low: u32,
    icr_high: u32,
    initial_count: u32,
    divide_config: u32,
    /// Bus cycle at which the one-shot or periodic count next reaches 0; `None` when stopped.
    expiry: Option<u64>,
    /// IA32_TSC_DEADLINE; 0 is disarmed.
    tsc_deadline: u64,
}

impl Lapic {
    /// A local APIC after power-up, enabled in xAPIC mode at [`DEFAULT_BASE`].
    pub fn new(tsc_khz: u64) -> Lapic {
        let mut apic = Lapic {
            tsc_khz: tsc_khz.max(1),
            now: 0,
            base: DEFAULT_BASE | BASE_EN | BASE_BSP,
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            spiv: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            lvt: [0; 7],
            icr_low: 0,
            icr_high: 0,
            initial_count: 0,
            divide_config: 0,
            expiry: None,
            tsc_deadline: 0,
        };
        apic.reset_registers();
        apic
    }

    /// Register values after power-up or INIT (SDM 11.4.7.1, 11.4.7.3); ID and IA32_APIC_BASE
    /// are kept. LINT0 is left in ExtINT mode, unmasked, as firmware leaves the BSP's (QEMU and
    /// KVM do the same), so the 8259's INTR reaches the CPU.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.spiv = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; 7];
        self.lvt[LINT0] = LVT_EXTINT;
        self.icr_low = 0;
        self.icr_high = 0;
        self.initial_count = 0;
        self.divide_config = 0;
        self.expiry = None;
        self.tsc_deadline = 0;
    }

    /// An INIT: registers reset, ID and IA32_APIC_BASE kept (SDM 11.4.7.3).
    pub fn init(&mut self) {
        self.reset_registers();
    }

    pub fn mode(&self) -> Mode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (false, _) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
        }
    }

    /// The guest-physical page the MMIO registers occupy: only in xAPIC mode (SDM 11.12.2).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == Mode::XApic).then_some(self.base & BASE_ADDR)
    }

    /// APIC software enable, SPIV bit 8 (SDM 11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.spiv & SPIV_ENABLE != 0
    }

    fn enabled(&self) -> bool {
        self.mode() != Mode::Disabled && self.software_enabled()
    }

    /// Whether the MSR is one of [`Lapic::rdmsr`] and [`Lapic::wrmsr`]'s.
    pub fn handles_msr(index: u32) -> bool {
        index == APIC_BASE_MSR || index == TSC_DEADLINE_MSR || X2APIC_MSRS.contains(&index)
    }

    /// LVT LINT0 is unmasked in ExtINT mode: the 8259's INTR passes through (SDM 11.5.1).
    pub fn lint0_extint_enabled(&self) -> bool {
        self.mode() != Mode::Disabled && self.lvt[LINT0] & (LVT_MASKED | LVT_DELIVERY_MODE) == LVT_EXTINT
    }

    /// Whether the 8259's INTR reaches the CPU: through LINT0 in ExtINT mode, or directly while
    /// the APIC is disabled (SDM 11.4.3). The CPU then takes the vector from the 8259, not from
    /// this model.
    pub fn accepts_pic_intr(&self) -> bool {
        self.mode() == Mode::Disabled || self.lint0_extint_enabled()
    }

    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// The whole TPR; CR8 is its bits 7:4 (SDM 11.8.6.1).
    pub fn set_tpr(&mut self, value: u8) {
        self.tpr = value;
    }

    /// PPR (SDM 11.8.3.1): the TPR, or the class of the highest in-service vector if higher.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0) & 0xf0;
        if self.tpr & 0xf0 >= isrv {
            self.tpr
        } else {
            isrv
        }
    }

    /// Sets IRR, and TMR for a level-triggered interrupt (SDM 11.8.4). Vectors 0-15 are illegal
    /// (SDM 11.5.2). A disabled or software-disabled APIC drops it (as KVM). Returns whether the
    /// interrupt was accepted.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if self.mode() == Mode::Disabled {
            return false;
        }
        if vector < 16 {
            self.set_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        if !self.software_enabled() {
            return false;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level_triggered);
        true
    }

    /// The vector the CPU would take now: the highest IRR vector whose priority class is above
    /// PPR's (SDM 11.8.3.1). Whether the CPU is interruptible (RFLAGS.IF, shadows) is the
    /// caller's concern.
    pub fn pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        highest(&self.irr).filter(|&v| v & 0xf0 > self.ppr() & 0xf0)
    }

    /// The CPU takes [`Lapic::pending`]'s vector: IRR to ISR (SDM 11.8.4).
    pub fn ack(&mut self) -> Option<u8> {
        let vector = self.pending()?;
        set_bit(&mut self.irr, vector, false);
        set_bit(&mut self.isr, vector, true);
        Some(vector)
    }

    /// An EOI: the highest in-service vector leaves service (SDM 11.8.5).
    fn eoi(&mut self) -> Effect {
        match highest(&self.isr) {
            Some(vector) => {
                set_bit(&mut self.isr, vector, false);
                Effect::Eoi { vector, level: bit(&self.tmr, vector) }
            }
            None => Effect::None,
        }
    }

    /// Logs errors for the next ESR write and raises the LVT error interrupt for new ones
    /// (SDM 11.5.3).
    fn set_error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        let lvt = self.lvt[ERROR];
        if new != 0 && lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
    }

    /// An ESR write publishes the errors logged since the previous one (SDM 11.5.3).
    fn latch_esr(&mut self) {
        self.esr = std::mem::take(&mut self.esr_pending);
    }

    // ---- registers ----

    /// Register value as both modes read it; `None` for reserved offsets.
    fn read_reg(&self, reg: u32) -> Option<u32> {
        let index = (reg as usize >> 4) & 7;
        Some(match reg {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => VERSION_VALUE,
            reg::TPR => u32::from(self.tpr),
            reg::APR | reg::RRD | reg::EOI => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SPIV => self.spiv,
            0x100..=0x170 => self.isr[index],
            0x180..=0x1f0 => self.tmr[index],
            0x200..=0x270 => self.irr[index],
            reg::ESR => self.esr,
            reg::LVT_CMCI => self.lvt[CMCI],
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::LVT_TIMER..=reg::LVT_ERROR => self.lvt[lvt_slot(reg)],
            reg::INITIAL_COUNT => self.initial_count,
            reg::CURRENT_COUNT => self.current_count(),
            reg::DIVIDE_CONFIG => self.divide_config,
            _ => return None,
        })
    }

    /// Writes of the registers both modes write alike; `None` for the others.
    fn write_common(&mut self, reg: u32, value: u32) -> Option<Effect> {
        match reg {
            reg::TPR => self.tpr = value as u8,
            reg::EOI => return Some(self.eoi()),
            reg::SPIV => {
                self.spiv = value & SPIV_WRITABLE;
                if !self.software_enabled() {
                    // SDM 11.4.7.2: software disable masks every LVT entry.
                    self.lvt.iter_mut().for_each(|lvt| *lvt |= LVT_MASKED);
                }
            }
            reg::ESR => self.latch_esr(),
            reg::LVT_CMCI => self.write_lvt(CMCI, value),
            reg::LVT_TIMER..=reg::LVT_ERROR => self.write_lvt(lvt_slot(reg), value),
            reg::INITIAL_COUNT => self.write_initial_count(value),
            reg::DIVIDE_CONFIG => self.write_divide_config(value),
            _ => return None,
        }
        Some(Effect::None)
    }

    fn write_lvt(&mut self, slot: usize, value: u32) {
        let writable = match slot {
            TIMER => 0xff | LVT_MASKED | LVT_TIMER_MODE,
            LINT0 | LINT1 => 0xff | LVT_DELIVERY_MODE | LVT_POLARITY | LVT_TRIGGER_LEVEL | LVT_MASKED,
            ERROR => 0xff | LVT_MASKED,
            _ => 0xff | LVT_DELIVERY_MODE | LVT_MASKED,
        };
        // SDM 11.4.7.2: masks stay set while software-disabled.
        let forced = if self.software_enabled() { 0 } else { LVT_MASKED };
        let old_mode = self.timer_mode();
        self.lvt[slot] = (value & writable) | forced;
        if slot == TIMER && (old_mode == TimerMode::TscDeadline) != (self.timer_mode() == TimerMode::TscDeadline) {
            // SDM 11.5.4.1: moving into or out of TSC-deadline mode disarms the timer.
            self.initial_count = 0;
            self.expiry = None;
            self.tsc_deadline = 0;
        }
    }

    /// Reads the xAPIC page at `offset` (see the module documentation for lengths).
    /// Reserved registers read 0 and log an illegal register address (SDM 11.5.3), as QEMU.
    pub fn read(&mut self, offset: u64, len: usize, now_tsc: u64) -> u32 {
        if self.mode() != Mode::XApic
            || offset >= MMIO_SIZE
            || !matches!(len, 1 | 2 | 4)
            || (offset & 0xf) + len as u64 > 4
        {
            return 0;
        }
        self.tick(now_tsc);
        let reg = (offset & !0xf) as u32;
        let value = match self.read_reg(reg) {
            Some(value) => value,
            None => {
                self.set_error(esr::ILLEGAL_REGISTER_ADDRESS);
                0
            }
        };
        let value = value >> ((offset & 3) * 8);
        if len == 4 {
            value
        } else {
            value & ((1 << (len * 8)) - 1)
        }
    }

    /// Writes the xAPIC page at `offset`. Writes to read-only registers are ignored; reserved
    /// registers log an illegal register address, as on reads.
    pub fn write(&mut self, offset: u64, len: usize, value: u32, now_tsc: u64) -> Effect {
        if self.mode() != Mode::XApic || offset >= MMIO_SIZE || len != 4 || offset & 0xf != 0 {
            return Effect::None;
        }
        self.tick(now_tsc);
        let reg = offset as u32;
        match reg {
            reg::ID => self.id = (value >> 24) as u8,
            reg::LDR => self.ldr = value & 0xff00_0000,
            // SDM 11.6.2.2: bits 27:0 read as ones.
            reg::DFR => self.dfr = value | 0x0fff_ffff,
            reg::ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                return self.send_ipi((u64::from(self.icr_high) << 32) | u64::from(self.icr_low));
            }
            reg::ICR_HIGH => self.icr_high = value & 0xff00_0000,
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::CURRENT_COUNT | 0x100..=0x270 => {}
            _ => match self.write_common(reg, value) {
                Some(effect) => return effect,
                None => self.set_error(esr::ILLEGAL_REGISTER_ADDRESS),
            },
        }
        Effect::None
    }

    /// RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register (SDM 11.12.1.2: #GP
    /// outside x2APIC mode and for write-only and reserved registers).
    pub fn rdmsr(&mut self, index: u32, now_tsc: u64) -> Result<u64, Gp> {
        self.tick(now_tsc);
        match index {
            APIC_BASE_MSR => return Ok(self.base),
            // SDM 11.5.4.1: reads 0 outside TSC-deadline mode.
            TSC_DEADLINE_MSR => {
                return Ok(if self.timer_mode() == TimerMode::TscDeadline { self.tsc_deadline } else { 0 })
            }
            _ => {}
        }
        if !X2APIC_MSRS.contains(&index) || self.mode() != Mode::X2Apic {
            return Err(Gp);
        }
        let reg = (index - 0x800) << 4;
        match reg {
            reg::ID => Ok(u64::from(X2APIC_ID)),
            reg::LDR => Ok(u64::from(x2apic_ldr())),
            reg::ICR_LOW => Ok((u64::from(self.icr_high) << 32) | u64::from(self.icr_low)),
            // No CMCI LVT: the version register's max LVT entry is 5 (SDM 11.5.1).
            reg::APR | reg::RRD | reg::DFR | reg::ICR_HIGH | reg::EOI | reg::SELF_IPI | reg::LVT_CMCI => Err(Gp),
            _ => self.read_reg(reg).map(u64::from).ok_or(Gp),
        }
    }

    /// WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register (SDM 11.12.1.2-3: #GP
    /// outside x2APIC mode, for read-only and reserved registers, for bits 63:32 except in the
    /// ICR, for non-zero EOI and ESR writes and for the ICR's reserved bits; other reserved
    /// bits are ignored, as KVM).
    pub fn wrmsr(&mut self, index: u32, value: u64, now_tsc: u64) -> Result<Effect, Gp> {
        self.tick(now_tsc);
        match index {
            APIC_BASE_MSR => return self.write_apic_base(value).map(|()| Effect::None),
            TSC_DEADLINE_MSR => {
                self.write_tsc_deadline(value);
                return Ok(Effect::None);
            }
            _ => {}
        }
        if !X2APIC_MSRS.contains(&index) || self.mode() != Mode::X2Apic {
            return Err(Gp);
        }
        let reg = (index - 0x800) << 4;
        if reg != reg::ICR_LOW && value >> 32 != 0 {
            return Err(Gp);
        }
        match reg {
            reg::EOI | reg::ESR if value != 0 => Err(Gp),
            reg::ICR_LOW => {
                if value & X2APIC_ICR_RESERVED != 0 {
                    return Err(Gp);
                }
                self.icr_low = value as u32 & ICR_LOW_WRITABLE;
                self.icr_high = (value >> 32) as u32;
                Ok(self.send_ipi((u64::from(self.icr_high) << 32) | u64::from(self.icr_low)))
            }
            // SDM 11.12.11: a fixed, edge-triggered IPI to self; bits 31:8 are reserved.
            reg::SELF_IPI if value & !0xff != 0 => Err(Gp),
            reg::SELF_IPI => Ok(self.send_ipi(u64::from(ICR_SHORTHAND_SELF | (value as u32 & 0xff)))),
            reg::TPR
            | reg::EOI
            | reg::SPIV
            | reg::ESR
            | reg::LVT_TIMER..=reg::LVT_ERROR
            | reg::INITIAL_COUNT
            | reg::DIVIDE_CONFIG => self.write_common(reg, value as u32).ok_or(Gp),
            _ => Err(Gp),
        }
    }

    /// IA32_APIC_BASE (SDM 11.4.4) with the transitions of SDM 11.12.5: x2APIC is entered from
    /// xAPIC only and left for disabled only; disabling resets the registers. BSP stays set.
    fn write_apic_base(&mut self, value: u64) -> Result<(), Gp> {
        if value & !(BASE_ADDR | BASE_EN | BASE_EXTD | BASE_BSP) != 0 {
            return Err(Gp);
        }
        let new = match (value & BASE_EN != 0, value & BASE_EXTD != 0) {
            (false, false) => Mode::Disabled,
            (false, true) => return Err(Gp),
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
        };
        let old = self.mode();
        if matches!((old, new), (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic)) {
            return Err(Gp);
        }
        self.base = (value & (BASE_ADDR | BASE_EN | BASE_EXTD)) | BASE_BSP;
        if new == Mode::Disabled && old != Mode::Disabled {
            self.reset_registers();
        }
        Ok(())
    }

    // ---- IPIs ----

    /// Sends the IPI `icr` describes (SDM 11.6.1); the destination field is bits 63:56 in xAPIC
    /// mode and 63:32 in x2APIC mode (SDM 11.12.9).
    fn send_ipi(&mut self, icr: u64) -> Effect {
        let low = icr as u32;
        let vector = low as u8;
        let to_self = match (low >> 18) & 3 {
            0 => self.is_destination(icr, low & ICR_LOGICAL != 0),
            1 | 2 => true,
            _ => false,
        };
        let effect = match (low >> 8) & 7 {
            // Fixed and lowest priority: on one CPU, lowest priority picks this one.
            0 | 1 => {
                if vector < 16 {
                    self.set_error(esr::SEND_ILLEGAL_VECTOR);
                    return Effect::None;
                }
                if to_self {
                    self.accept(vector, low & ICR_TRIGGER_LEVEL != 0);
                }
                Effect::None
            }
            2 => Effect::Smi,
            4 => Effect::Nmi,
            // SDM 11.6.1: INIT level de-assert carries no message since the Pentium 4.
            5 if low & (ICR_ASSERT | ICR_TRIGGER_LEVEL) == ICR_TRIGGER_LEVEL => return Effect::None,
            5 => Effect::Init,
            6 => Effect::Startup { vector },
            _ => Effect::None,
        };
        if to_self {
            effect
        } else {
            Effect::Dropped { icr }
        }
    }

    /// Whether this CPU is the ICR's destination (SDM 11.6.2, 11.12.10).
    fn is_destination(&self, icr: u64, logical: bool) -> bool {
        if self.mode() == Mode::X2Apic {
            let dest = (icr >> 32) as u32;
            if dest == u32::MAX {
                return true;
            }
            if !logical {
                return dest == X2APIC_ID;
            }
            let ldr = x2apic_ldr();
            dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0
        } else {
            let dest = (icr >> 56) as u8;
            if dest == 0xff {
                return true;
            }
            if !logical {
                return dest == self.id;
            }
            let ldr = (self.ldr >> 24) as u8;
            match self.dfr >> 28 {
                0xf => dest & ldr != 0,
                0x0 => dest >> 4 == ldr >> 4 && dest & ldr & 0xf != 0,
                _ => false,
            }
        }
    }

    // ---- timer (SDM 11.5.4) ----

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt[TIMER] & LVT_TIMER_MODE) >> 17 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            // 3 is reserved; treated as one-shot, as KVM.
            _ => TimerMode::OneShot,
        }
    }

    /// Divide configuration bits 3 and 1:0 (SDM 11.5.4, Figure 11-10).
    fn divide(&self) -> u64 {
        match (self.divide_config & 3) | ((self.divide_config >> 1) & 4) {
            7 => 1,
            shift => 2 << shift,
        }
    }

    fn period(&self) -> u64 {
        let period = u64::from(self.initial_count) * self.divide();
        if self.timer_mode() == TimerMode::Periodic {
            period.max(MIN_PERIOD_CYCLES)
        } else {
            period
        }
    }

    fn cycles_at(&self, tsc: u64) -> u64 {
        let cycles = u128::from(tsc) * u128::from(BUS_KHZ) / u128::from(self.tsc_khz);
        u64::try_from(cycles).unwrap_or(u64::MAX)
    }

    /// The first TSC value at which `cycles` bus cycles have passed.
    fn tsc_at(&self, cycles: u64) -> u64 {
        let tsc = (u128::from(cycles) * u128::from(self.tsc_khz)).div_ceil(u128::from(BUS_KHZ));
        u64::try_from(tsc).unwrap_or(u64::MAX)
    }

    /// The current count at the latest time seen; 0 when stopped or in TSC-deadline mode.
    fn current_count(&self) -> u32 {
        if self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let Some(expiry) = self.expiry else { return 0 };
        let left = expiry.saturating_sub(self.cycles_at(self.now)).div_ceil(self.divide());
        u32::try_from(left).unwrap_or(u32::MAX).min(self.initial_count)
    }

    /// An initial-count write starts the count at the current time; 0 stops it. Ignored in
    /// TSC-deadline mode (SDM 11.5.4.1).
    fn write_initial_count(&mut self, value: u32) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = value;
        self.expiry = (value != 0).then(|| self.cycles_at(self.now).saturating_add(self.period()));
    }

    /// A new divisor applies from now on to the count left.
    fn write_divide_config(&mut self, value: u32) {
        let count = u64::from(self.current_count());
        self.divide_config = value & 0xb;
        if self.expiry.is_some() {
            self.expiry = Some(self.cycles_at(self.now).saturating_add(count * self.divide()));
        }
    }

    /// Arms the TSC deadline (0 disarms); ignored outside TSC-deadline mode (SDM 11.5.4.1). A
    /// deadline already past fires at once.
    fn write_tsc_deadline(&mut self, value: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline = value;
            self.tick(self.now);
        }
    }

    /// Catches the timer up to `now_tsc`: an expiry sets the timer vector in IRR unless the LVT
    /// is masked; a periodic count reloads once however many periods passed (IRR holds one
    /// instance); one-shot and TSC-deadline timers disarm. See [`Lapic::pending`] afterwards.
    pub fn tick(&mut self, now_tsc: u64) {
        self.now = self.now.max(now_tsc);
        let fired = match self.timer_mode() {
            TimerMode::TscDeadline => {
                let fired = self.tsc_deadline != 0 && self.now >= self.tsc_deadline;
                if fired {
                    self.tsc_deadline = 0;
                }
                fired
            }
            mode => match self.expiry {
                Some(expiry) if self.cycles_at(self.now) >= expiry => {
                    self.expiry = (mode == TimerMode::Periodic).then(|| {
                        let period = self.period();
                        let periods = (self.cycles_at(self.now) - expiry) / period + 1;
                        expiry.saturating_add(periods.saturating_mul(period))
                    });
                    true
                }
                _ => false,
            },
        };
        let lvt = self.lvt[TIMER];
        if fired && lvt & LVT_MASKED == 0 {
            self.accept(lvt as u8, false);
        }
    }

    /// The TSC value at which the timer next expires: `None` when stopped or masked (a masked
    /// timer keeps counting and reloading without delivering; any later access catches it up).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lvt[TIMER] & LVT_MASKED != 0 || self.mode() == Mode::Disabled {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            _ => self.expiry.map(|cycles| self.tsc_at(cycles)),
        }
    }
}

/// The LDR an x2APIC derives from its ID (SDM 11.12.10.2).
fn x2apic_ldr() -> u32 {
    ((X2APIC_ID >> 4) << 16) | (1 << (X2APIC_ID & 0xf))
}

/// LVT slot of a register from LVT_TIMER to LVT_ERROR.
fn lvt_slot(reg: u32) -> usize {
    ((reg - reg::LVT_TIMER) >> 4) as usize + TIMER
}

fn bit(bits: &[u32; 8], vector: u8) -> bool {
    bits[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

fn set_bit(bits: &mut [u32; 8], vector: u8, on: bool) {
    let word = &mut bits[usize::from(vector >> 5)];
    if on {
        *word |= 1 << (vector & 31);
    } else {
        *word &= !(1 << (vector & 31));
    }
}

fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| bits[i] != 0).map(|i| (i * 32 + 31 - bits[i].leading_zeros() as usize) as u8)
}
