//! Events in VMX non-root operation, as pure rules: the event a VM entry injects (SDM 27.6),
//! the interruption-information format of exits and IDT vectoring (25.9.2, 28.2.2, 28.2.3), the
//! VMX-preemption timer (26.5.1), and what happens at an instruction boundary of L2 when
//! something is pending for it or for L1 (26.2, 26.7, 7.9 event priority).

use super::caps::{pin, proc};
use super::exits::ExitReason;

/// Interruption-information bit 31: valid.
pub const INTR_INFO_VALID: u32 = 1 << 31;
/// Interruption-information bit 11: an error code is delivered (or was saved).
pub const INTR_INFO_DELIVER_ERROR_CODE: u32 = 1 << 11;
/// Interruption-information bit 12 of exit and IDT-vectoring information: NMI unblocking due
/// to IRET (SDM 28.2.2).
pub const INTR_INFO_NMI_UNBLOCKING: u32 = 1 << 12;

/// GUEST_INTERRUPTIBILITY_INFO bits (SDM 25.4.2, Table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    pub const BLOCKING_BY_SMI: u32 = 1 << 2;
    pub const BLOCKING_BY_NMI: u32 = 1 << 3;
}

/// GUEST_ACTIVITY_STATE values (SDM 25.4.2).
pub mod activity {
    pub const ACTIVE: u32 = 0;
    pub const HLT: u32 = 1;
}

/// The rate of nestbed's VMX-preemption timer: it counts down by one every 2^5 TSC ticks
/// (IA32_VMX_MISC bits 4:0, SDM A.6).
pub const PREEMPTION_TIMER_RATE: u32 = 5;

/// Interruption types (SDM 25.8.3, Table 25-17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptionType {
    ExternalInterrupt = 0,
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    /// With vector 0: a pending MTF VM exit.
    OtherEvent = 7,
}

impl InterruptionType {
    fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::ExternalInterrupt,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            7 => Self::OtherEvent,
            _ => return None,
        })
    }

    /// Software interrupts and exceptions push the address after the instruction that raised
    /// them: for an injected one, GUEST_RIP plus the VM-entry instruction length (SDM 27.6.1.1).
    pub fn is_software(self) -> bool {
        matches!(self, Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException)
    }
}

/// An event with its vector, error code and, for software events, instruction length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub ty: InterruptionType,
    pub vector: u8,
    pub error_code: Option<u32>,
    /// VM_ENTRY_INSTRUCTION_LEN for software events (0 otherwise).
    pub instruction_len: u32,
}

impl Event {
    /// The event of a VM-entry interruption-information field, `None` when its valid bit is
    /// clear (the checks of 27.2.1.3 have already accepted it).
    pub fn from_entry(info: u32, error_code: u32, instruction_len: u32) -> Option<Event> {
        if info & INTR_INFO_VALID == 0 {
            return None;
        }
        let ty = InterruptionType::from_bits(info >> 8)?;
        Some(Event {
            ty,
            vector: info as u8,
            error_code: (info & INTR_INFO_DELIVER_ERROR_CODE != 0).then_some(error_code),
            instruction_len: if ty.is_software() { instruction_len } else { 0 },
        })
    }

    pub fn external_interrupt(vector: u8) -> Event {
        Event { ty: InterruptionType::ExternalInterrupt, vector, error_code: None, instruction_len: 0 }
    }

    /// A #DB trap (hardware exception 1), as pending debug exceptions deliver it.
    pub fn debug_trap() -> Event {
        Event { ty: InterruptionType::HardwareException, vector: 1, error_code: None, instruction_len: 0 }
    }

    pub fn nmi() -> Event {
        Event { ty: InterruptionType::Nmi, vector: 2, error_code: None, instruction_len: 0 }
    }

    /// The event in interruption-information format (valid bit set).
    pub fn info(&self) -> u32 {
        let code = if self.error_code.is_some() { INTR_INFO_DELIVER_ERROR_CODE } else { 0 };
        INTR_INFO_VALID | code | (self.ty as u32) << 8 | u32::from(self.vector)
    }

    /// The pending MTF VM exit VM entry can inject (type 7, vector 0; SDM 27.6.2).
    pub fn is_pending_mtf(&self) -> bool {
        self.ty == InterruptionType::OtherEvent && self.vector == 0
    }
}

/// The VMX-preemption timer of one VM entry (SDM 26.5.1): it counts down from its value by one
/// every 2^rate TSC ticks and causes a VM exit when it reaches zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptionTimer {
    /// TSC at which the value reaches zero.
    pub deadline: u64,
    rate: u32,
}

impl PreemptionTimer {
    pub fn start(value: u32, rate: u32, tsc: u64) -> Self {
        PreemptionTimer { deadline: tsc.saturating_add(u64::from(value) << rate), rate }
    }

    pub fn expired(&self, tsc: u64) -> bool {
        tsc >= self.deadline
    }

    /// The value a VM exit saves with "save VMX-preemption timer value" (SDM 28.3.4).
    pub fn remaining(&self, tsc: u64) -> u32 {
        (self.deadline.saturating_sub(tsc) >> self.rate).min(u64::from(u32::MAX)) as u32
    }
}

/// What is pending at an instruction boundary of L2, and L2's own blocking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Boundary {
    /// An MTF VM exit is pending (after an instruction L2 executed with the monitor trap flag,
    /// or injected at VM entry).
    pub mtf: bool,
    pub preemption_timer_expired: bool,
    /// An NMI for L1's processor.
    pub nmi: bool,
    /// An external interrupt L1's interrupt controllers present to the processor.
    pub interrupt: bool,
    /// L2's RFLAGS.IF.
    pub l2_if: bool,
    /// GUEST_INTERRUPTIBILITY_INFO as L2 now has it.
    pub l2_interruptibility: u32,
    /// L2 is in the HLT activity state.
    pub l2_halted: bool,
}

/// What nestbed does at an instruction boundary of L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtBoundary {
    /// A VM exit to L1 (or a script's choice) with this basic reason.
    Exit(ExitReason),
    /// L1's NMI goes to L2 through its IDT (NMI exiting is 0).
    DeliverNmi,
    /// L1's external interrupt goes to L2 through its IDT (external-interrupt exiting is 0).
    DeliverInterrupt,
    /// Nothing to do now: L2 runs; `window` when something waits for L2 to open an
    /// interrupt or NMI window.
    Run { window: bool },
}

/// The VM-execution controls that decide events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventControls {
    pub pin: u32,
    pub primary: u32,
}

/// The rules of SDM 26.2 (exits from events), 26.7.5-26.7.6 (window exits) and the priority of
/// 7.9 / 26.7: MTF, then the VMX-preemption timer, then NMIs, then the NMI window, then external
/// interrupts, then the interrupt window, then delivery of an interrupt to L2.
pub fn at_boundary(c: EventControls, b: Boundary) -> AtBoundary {
    use interruptibility::*;
    let sti_or_mov_ss = b.l2_interruptibility & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS) != 0;
    let nmi_blocked = b.l2_interruptibility & BLOCKING_BY_NMI != 0;
    if b.mtf {
        return AtBoundary::Exit(ExitReason::MONITOR_TRAP_FLAG);
    }
    if b.preemption_timer_expired && c.pin & pin::ACTIVATE_PREEMPTION_TIMER != 0 {
        return AtBoundary::Exit(ExitReason::PREEMPTION_TIMER);
    }
    let nmi_open = !nmi_blocked && b.l2_interruptibility & BLOCKING_BY_MOV_SS == 0;
    // An NMI, or the NMI window, waiting for L2 to unblock NMIs.
    let mut nmi_wait = false;
    if b.nmi {
        if c.pin & pin::NMI_EXITING != 0 {
            return AtBoundary::Exit(ExitReason::EXCEPTION_NMI);
        }
        if nmi_open {
            return AtBoundary::DeliverNmi;
        }
        nmi_wait = true;
    }
    // With virtual NMIs, blocking by NMI is virtual-NMI blocking (SDM 26.3, 26.7.6).
    if c.primary & proc::NMI_WINDOW_EXITING != 0 {
        if nmi_open {
            return AtBoundary::Exit(ExitReason::NMI_WINDOW);
        }
        nmi_wait = true;
    }
    // External-interrupt exiting ignores RFLAGS.IF and interruptibility (SDM 26.2).
    if b.interrupt && c.pin & pin::EXT_INTR_EXITING != 0 {
        return AtBoundary::Exit(ExitReason::EXTERNAL_INTERRUPT);
    }
    let open = b.l2_if && !sti_or_mov_ss;
    if c.primary & proc::INTR_WINDOW_EXITING != 0 {
        if open {
            return AtBoundary::Exit(ExitReason::INTERRUPT_WINDOW);
        }
        return AtBoundary::Run { window: true };
    }
    if b.interrupt {
        if open {
            return AtBoundary::DeliverInterrupt;
        }
        return AtBoundary::Run { window: true };
    }
    AtBoundary::Run { window: nmi_wait }
}

#[cfg(test)]
mod tests {
    use super::interruptibility::*;
    use super::*;

    fn ctl(pin: u32, primary: u32) -> EventControls {
        EventControls { pin, primary }
    }

    #[test]
    fn entry_events_decode_as_the_sdm_lays_them_out() {
        assert_eq!(Event::from_entry(0x30d, 0, 0), None, "valid bit clear");
        let gp = Event::from_entry(0x8000_0b0d, 0x18, 5).unwrap();
        assert_eq!(
            gp,
            Event { ty: InterruptionType::HardwareException, vector: 13, error_code: Some(0x18), instruction_len: 0 }
        );
        assert_eq!(gp.info(), 0x8000_0b0d);
        let int80 = Event::from_entry(0x8000_0480, 0, 2).unwrap();
        assert!(int80.ty.is_software());
        assert_eq!(int80.instruction_len, 2);
        assert!(Event::from_entry(0x8000_0700, 0, 0).unwrap().is_pending_mtf());
        assert_eq!(Event::nmi().info(), 0x8000_0202);
        assert_eq!(Event::external_interrupt(0x20).info(), 0x8000_0020);
        assert_eq!(Event::from_entry(0x8000_0100, 0, 0), None, "type 1 is reserved");
    }

    #[test]
    fn preemption_timer_counts_down_at_the_advertised_rate() {
        let t = PreemptionTimer::start(100, 5, 1_000);
        assert_eq!(t.deadline, 1_000 + 3_200);
        assert!(!t.expired(4_199) && t.expired(4_200));
        assert_eq!(t.remaining(1_000), 100);
        assert_eq!(t.remaining(1_000 + 32 * 40), 60);
        assert_eq!(t.remaining(9_999), 0);
        assert!(PreemptionTimer::start(0, 5, 7).expired(7), "zero exits before any instruction");
    }

    #[test]
    fn priority_at_an_instruction_boundary() {
        let all = Boundary {
            mtf: true,
            preemption_timer_expired: true,
            nmi: true,
            interrupt: true,
            l2_if: true,
            ..Default::default()
        };
        let every = ctl(
            pin::EXT_INTR_EXITING | pin::NMI_EXITING | pin::ACTIVATE_PREEMPTION_TIMER,
            proc::INTR_WINDOW_EXITING | proc::NMI_WINDOW_EXITING,
        );
        assert_eq!(at_boundary(every, all), AtBoundary::Exit(ExitReason::MONITOR_TRAP_FLAG));
        let b = Boundary { mtf: false, ..all };
        assert_eq!(at_boundary(every, b), AtBoundary::Exit(ExitReason::PREEMPTION_TIMER));
        let b = Boundary { preemption_timer_expired: false, ..b };
        assert_eq!(at_boundary(every, b), AtBoundary::Exit(ExitReason::EXCEPTION_NMI));
        let b = Boundary { nmi: false, ..b };
        assert_eq!(at_boundary(every, b), AtBoundary::Exit(ExitReason::NMI_WINDOW));
        let every = ctl(every.pin, proc::INTR_WINDOW_EXITING);
        assert_eq!(at_boundary(every, b), AtBoundary::Exit(ExitReason::EXTERNAL_INTERRUPT));
        let b = Boundary { interrupt: false, ..b };
        assert_eq!(at_boundary(every, b), AtBoundary::Exit(ExitReason::INTERRUPT_WINDOW));
        assert_eq!(at_boundary(ctl(0, 0), b), AtBoundary::Run { window: false });
        assert_eq!(
            at_boundary(ctl(0, 0), Boundary { preemption_timer_expired: true, ..b }),
            AtBoundary::Run { window: false },
            "timer not active"
        );
    }

    #[test]
    fn external_interrupts_exit_whatever_l2s_blocking() {
        let b =
            Boundary { interrupt: true, l2_if: false, l2_interruptibility: BLOCKING_BY_MOV_SS, ..Default::default() };
        assert_eq!(at_boundary(ctl(pin::EXT_INTR_EXITING, 0), b), AtBoundary::Exit(ExitReason::EXTERNAL_INTERRUPT));
        // Without the control the interrupt waits for L2's window.
        assert_eq!(at_boundary(ctl(0, 0), b), AtBoundary::Run { window: true });
        let open = Boundary { l2_if: true, l2_interruptibility: 0, ..b };
        assert_eq!(at_boundary(ctl(0, 0), open), AtBoundary::DeliverInterrupt);
        let sti = Boundary { l2_interruptibility: BLOCKING_BY_STI, ..open };
        assert_eq!(at_boundary(ctl(0, 0), sti), AtBoundary::Run { window: true });
    }

    #[test]
    fn window_exits_wait_for_l2_to_be_interruptible() {
        let iw = ctl(0, proc::INTR_WINDOW_EXITING);
        let closed = Boundary { l2_if: false, ..Default::default() };
        assert_eq!(at_boundary(iw, closed), AtBoundary::Run { window: true });
        let sti = Boundary { l2_if: true, l2_interruptibility: BLOCKING_BY_STI, ..Default::default() };
        assert_eq!(at_boundary(iw, sti), AtBoundary::Run { window: true });
        assert_eq!(
            at_boundary(iw, Boundary { l2_if: true, ..Default::default() }),
            AtBoundary::Exit(ExitReason::INTERRUPT_WINDOW)
        );
        // The interrupt window comes before delivering L1's interrupt to L2.
        let pending = Boundary { l2_if: true, interrupt: true, ..Default::default() };
        assert_eq!(at_boundary(iw, pending), AtBoundary::Exit(ExitReason::INTERRUPT_WINDOW));
        let nw = ctl(pin::VIRTUAL_NMIS | pin::NMI_EXITING, proc::NMI_WINDOW_EXITING);
        let blocked = Boundary { l2_interruptibility: BLOCKING_BY_NMI, ..Default::default() };
        assert_eq!(at_boundary(nw, blocked), AtBoundary::Run { window: true });
        assert_eq!(at_boundary(nw, Boundary::default()), AtBoundary::Exit(ExitReason::NMI_WINDOW));
    }

    #[test]
    fn nmis_go_to_l2_unless_blocked() {
        let b = Boundary { nmi: true, ..Default::default() };
        assert_eq!(at_boundary(ctl(0, 0), b), AtBoundary::DeliverNmi);
        let blocked = Boundary { l2_interruptibility: BLOCKING_BY_NMI, ..b };
        assert_eq!(at_boundary(ctl(0, 0), blocked), AtBoundary::Run { window: true });
    }
}
