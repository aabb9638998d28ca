//! L2's events in the run loop: what a VM entry injects into L2's vCPU (SDM 27.6), what happens
//! at each instruction boundary where nestbed regains control of L2 (before every KVM_RUN of
//! L2: L1's interrupts and NMIs, the VMX-preemption timer, the window exits, the monitor trap
//! flag, `vmx::events::at_boundary` deciding), the HLT activity state, and what a VM exit saves
//! of them (28.2.2, 28.2.3, 28.3.4).
//!
//! nestbed regains control of L2 at its exits and when a timer kicks it out of KVM_RUN (the
//! platform arms the kick for each timer deadline, the preemption timer's included). This
//! host's KVM reports an open interrupt window only at an exit it sees, not after the
//! instruction that opened it (STI, the end of a MOV-SS shadow, an IRET ending NMI blocking),
//! so while an event waits for L2 to open a window nestbed single-steps L2 and looks at every
//! instruction boundary.

use super::dispatch::{Event as ExitEvent, L2Event, Work};
use super::{Flow, Outcome, Runner};
use crate::error::Error;
use crate::exit::{ExitDetail, Level};
use crate::nested::env::KVM_X86_SHADOW_INT_MOV_SS;
use crate::nested::Insn;
use crate::vmx::caps::{exit, pin, proc};
use crate::vmx::events::{
    activity, at_boundary, interruptibility, AtBoundary, Boundary, Event, EventControls, InterruptionType,
    PreemptionTimer, PREEMPTION_TIMER_RATE,
};
use crate::vmx::exit_info::ExitInfo;
use crate::vmx::exits::ExitReason;
use crate::vmx::fields::*;
use crate::vmx::route::ExitFacts;

const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_TF: u64 = 1 << 8;
/// GUEST_PENDING_DBG_EXCEPTIONS.BS: a single-step trap is pending (SDM 25.4.2).
const PENDING_DBG_BS: u64 = 1 << 14;
/// kvm_vcpu_events.interrupt.shadow: blocking by STI (Linux uapi asm/kvm.h).
const KVM_X86_SHADOW_INT_STI: u8 = 2;
/// kvm_vcpu_events.flags: nmi.pending is valid.
pub(super) const KVM_VCPUEVENT_VALID_NMI_PENDING: u32 = 1;
const KVM_VCPUEVENT_VALID_SHADOW: u32 = 4;
/// GUEST_PENDING_DBG_EXCEPTIONS bits that make a #DB trap pending: B3-B0, BS (SDM 25.4.2).
const PENDING_DBG_TRAPS: u64 = 0xf | 1 << 14;

/// The event state of the L2 nestbed runs, for one VM entry.
#[derive(Debug, Default)]
pub struct L2Events {
    pub controls: EventControls,
    pub preemption: Option<PreemptionTimer>,
    /// L2 is in the HLT activity state: nestbed does not run it until an event wakes it.
    pub halted: bool,
    /// "monitor trap flag" is 1: L2 runs single-stepped.
    pub mtf: bool,
    pub mtf_pending: bool,
    /// The event the VM entry injected, until KVM has delivered it.
    pub injected: Option<Event>,
    /// A synthesized exit a script kept in L0: not raised again until L2 has run.
    pub kept: Option<u32>,
    /// An execution breakpoint where nestbed must see L2 before it runs the instruction there:
    /// the injected event's handler (the event is then delivered, and no handler instruction
    /// ran), or the return address of an IRET that ends NMI blocking (a single step over IRET
    /// is not always reported at once on this host).
    pub stop_at: Option<u64>,
    /// Pending debug exceptions whose #DB L1 intercepts: an exception exit before any
    /// instruction, with them as the qualification.
    pub pending_db_exit: Option<u64>,
    /// L2 runs single-stepped until an interrupt window opens: this host's KVM reports an
    /// open window only at an exit it sees, so nestbed looks at every instruction boundary.
    pub window_step: bool,
    /// The instruction L2 was stepped over was an IRET: it ended blocking by NMI (SDM 6.7.1;
    /// virtual-NMI blocking too, 26.3), which this host's KVM does not always show at once.
    pub stepped_iret: bool,
    /// KVM holds the instruction of L2's last exit until the next KVM_RUN (I/O, MSR, MMIO):
    /// a VM exit now lets KVM finish it first.
    pub kvm_holds_insn: bool,
    /// An external interrupt a script injects into L2, until L2 can take it.
    pub script_interrupt: Option<u8>,
    /// L1's exception bitmap intercepts #BP: L2's INT3 reaches nestbed (guest debug's
    /// software breakpoints) and exits to L1.
    pub intercept_bp: bool,
    /// L2 stepped an instruction with RFLAGS.TF set under the monitor trap flag: its #DB trap
    /// stays pending behind the MTF exit (SDM 26.5.2), saved as BS in the pending debug
    /// exceptions.
    pub pending_bs: bool,
    /// GUEST_RFLAGS.TF at VM entry (KVM hides the guest's TF while it single-steps it).
    pub entry_tf: bool,
}

/// What the run loop does before running L2.
pub(super) enum BeforeL2 {
    Run,
    /// Look again (L2 is halted and nestbed waited, or an event was delivered).
    Again,
    Flow(Flow),
}

impl Runner {
    /// After a VM entry: L2's interruptibility and activity state, the event it injects, the
    /// VMX-preemption timer and the monitor trap flag (SDM 27.3.2.5, 27.6, 27.7).
    pub(super) fn events_at_vm_entry(&mut self) {
        let Some(vmcs) = self.nested.vmx.current_vmcs() else { return };
        let controls = EventControls {
            pin: vmcs.get32(PIN_BASED_VM_EXEC_CONTROL),
            primary: vmcs.get32(CPU_BASED_VM_EXEC_CONTROL),
        };
        let injected = Event::from_entry(
            vmcs.get32(VM_ENTRY_INTR_INFO_FIELD),
            vmcs.get32(VM_ENTRY_EXCEPTION_ERROR_CODE),
            vmcs.get32(VM_ENTRY_INSTRUCTION_LEN),
        );
        let guest_interruptibility = vmcs.get32(GUEST_INTERRUPTIBILITY_INFO);
        // Pending debug exceptions (SDM 27.7.3): without an injected event, a #DB trap is
        // delivered right after VM entry, or exits to L1 if its exception bitmap asks.
        let pending_dbg = vmcs.get(GUEST_PENDING_DBG_EXCEPTIONS) & PENDING_DBG_TRAPS;
        let intercept_db = vmcs.get32(EXCEPTION_BITMAP) & 1 << 1 != 0;
        let injected = match injected {
            None if pending_dbg != 0 && !intercept_db => Some(Event::debug_trap()),
            i => i,
        };
        let pending_db_exit = injected.is_none() && pending_dbg != 0 && intercept_db;
        let halted = vmcs.get32(GUEST_ACTIVITY_STATE) == activity::HLT;
        let preemption = (controls.pin & pin::ACTIVATE_PREEMPTION_TIMER != 0).then(|| {
            PreemptionTimer::start(vmcs.get32(VMX_PREEMPTION_TIMER_VALUE), PREEMPTION_TIMER_RATE, self.platform.now())
        });
        let mtf = controls.primary & proc::MONITOR_TRAP_FLAG != 0;
        let intercept_bp = vmcs.get32(EXCEPTION_BITMAP) & 1 << 3 != 0;
        let entry_tf = vmcs.get(GUEST_RFLAGS) & RFLAGS_TF != 0;
        let mut ev = L2Events {
            intercept_bp,
            entry_tf,
            controls,
            preemption,
            halted,
            mtf,
            pending_db_exit: pending_db_exit.then_some(pending_dbg),
            ..Default::default()
        };
        // L2 starts with L1's TPR in CR8.
        let tpr = u64::from(self.platform.lapic.tpr() >> 4);
        self.cr8_seen[1] = tpr;
        let Some(l2) = self.nested.l2.as_mut() else { return };
        let vcpu = &mut l2.vcpu;
        vcpu.set_cr8(tpr);
        let e = vcpu.events_mut();
        e.interrupt.shadow = 0;
        if guest_interruptibility & interruptibility::BLOCKING_BY_STI != 0 {
            e.interrupt.shadow |= KVM_X86_SHADOW_INT_STI;
        }
        if guest_interruptibility & interruptibility::BLOCKING_BY_MOV_SS != 0 {
            e.interrupt.shadow |= KVM_X86_SHADOW_INT_MOV_SS;
        }
        e.flags |= KVM_VCPUEVENT_VALID_SHADOW;
        e.nmi.masked = u8::from(guest_interruptibility & interruptibility::BLOCKING_BY_NMI != 0);
        e.nmi.injected = 0;
        e.interrupt.injected = 0;
        e.exception.injected = 0;
        match injected {
            Some(i) if i.is_pending_mtf() => ev.mtf_pending = true,
            Some(i) => {
                // Injecting an event makes a halted L2 active (SDM 27.6.2).
                ev.halted = false;
                ev.injected = Some(i);
                match i.ty {
                    InterruptionType::ExternalInterrupt => vcpu.inject_interrupt(i.vector),
                    InterruptionType::Nmi => {
                        let e = vcpu.events_mut();
                        e.nmi.injected = 1;
                        e.nmi.masked = 1;
                    }
                    InterruptionType::HardwareException => vcpu.inject_exception(i.vector, i.error_code),
                    // Delivered as INT n would be: the return address is past the instruction
                    // (SDM 27.6.1.1). KVM's own soft injection reuses the length of its last
                    // exit, so nestbed moves RIP and injects the vector.
                    InterruptionType::SoftwareInterrupt
                    | InterruptionType::PrivilegedSoftwareException
                    | InterruptionType::SoftwareException => {
                        let r = vcpu.regs_mut();
                        r.rip = r.rip.wrapping_add(u64::from(i.instruction_len));
                        vcpu.inject_interrupt(i.vector);
                    }
                    InterruptionType::OtherEvent => {}
                }
            }
            None => {}
        }
        if ev.mtf != self.l2_events.mtf || ev.intercept_bp != self.l2_events.intercept_bp {
            self.debug_generation_changed();
        }
        self.l2_events = ev;
    }

    /// Before each KVM_RUN of L2: the pending events by priority (`at_boundary`).
    pub(super) fn events_before_l2(&mut self) -> Result<BeforeL2, Error> {
        // Without "use TPR shadow" (not offered), L2's CR8 is L1's APIC's TPR (SDM 29.1).
        if let Some(cr8) = self.nested.l2.as_ref().map(|l2| l2.vcpu.cr8()) {
            let tpr = self.sync_tpr(Level::L2, cr8);
            if let Some(l2) = self.nested.l2.as_mut() {
                l2.vcpu.set_cr8(tpr);
            }
        }
        if let Some(q) = self.l2_events.pending_db_exit.take() {
            return Ok(BeforeL2::Flow(
                self.boundary_exit_with(ExitReason::EXCEPTION_NMI, Some((Event::debug_trap(), q)))?,
            ));
        }
        let now = self.platform.now();
        let b = self.boundary(now);
        // With the monitor trap flag, the MTF exit comes after the injected event is delivered,
        // before the handler's first instruction (SDM 26.5.2).
        if self.l2_events.mtf && self.l2_events.injected.is_some_and(|i| !i.is_pending_mtf()) {
            self.await_delivery();
        }
        let decision = match at_boundary(self.l2_events.controls, b) {
            // The injected event is delivered first (SDM 27.6, 26.7): L2 runs until its
            // handler's first instruction, then the exit comes.
            AtBoundary::Exit(r)
                if self.l2_events.injected.is_some()
                    && !(r == ExitReason::MONITOR_TRAP_FLAG
                        && self.l2_events.injected.is_some_and(|i| i.is_pending_mtf())) =>
            {
                self.await_delivery();
                AtBoundary::Run { window: false }
            }
            AtBoundary::Exit(r) if self.l2_events.kept == Some(r as u32) => AtBoundary::Run { window: false },
            d => d,
        };
        let extra = self.l2_events.preemption.map(|t| t.deadline);
        self.platform.arm_kick_with(extra);
        // A HLT with RFLAGS.IF = 0 cannot open the interrupt window: L2 runs into the HLT exit
        // (or its HLT state) without the single steps that watch for the window, which keep a
        // halted vCPU inside KVM_RUN for good on some hosts.
        let wants_window =
            matches!(decision, AtBoundary::Run { window: true }) || self.l2_events.script_interrupt.is_some();
        let halts_closed = wants_window && !b.l2_if && self.l2_next_is_hlt();
        let Some(l2) = self.nested.l2.as_mut() else { return Ok(BeforeL2::Run) };
        match decision {
            AtBoundary::Exit(reason) => return Ok(BeforeL2::Flow(self.boundary_exit(reason)?)),
            AtBoundary::DeliverNmi => {
                self.platform.nmi = false;
                let e = l2.vcpu.events_mut();
                e.nmi.pending = 1;
                e.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING;
                self.l2_events.halted = false;
            }
            AtBoundary::DeliverInterrupt => {
                if let Some(vector) = self.platform.pending().and_then(|s| self.platform.acknowledge(s)) {
                    l2.vcpu.inject_interrupt(vector);
                    self.l2_events.halted = false;
                }
                l2.vcpu.request_interrupt_window(false);
            }
            AtBoundary::Run { window } => {
                let open = b.l2_if
                    && b.l2_interruptibility
                        & (interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS)
                        == 0;
                let mut window = window;
                if let Some(v) = self.l2_events.script_interrupt {
                    if open {
                        l2.vcpu.inject_interrupt(v);
                        self.l2_events.script_interrupt = None;
                        self.l2_events.halted = false;
                    } else {
                        window = true;
                    }
                }
                let window = window && !halts_closed;
                l2.vcpu.request_interrupt_window(window);
                if window != self.l2_events.window_step {
                    self.l2_events.window_step = window;
                    self.debug_generation_changed();
                }
                if window && b.l2_interruptibility & interruptibility::BLOCKING_BY_NMI != 0 {
                    let rip = self.nested.l2.as_ref().map_or(0, |l2| l2.vcpu.peek_regs().rip);
                    let mut insn = [0u8; 2];
                    let read = self.l2_bytes(rip, &mut insn);
                    // IRET, IRETD, IRETQ (an operand-size or REX.W prefix before 0xCF).
                    let iret = read && (insn[0] == 0xcf || matches!(insn[0], 0x48 | 0x66) && insn[1] == 0xcf);
                    self.l2_events.stepped_iret = iret;
                    if iret && self.l2_events.stop_at.is_none() {
                        let (rsp, long) = self
                            .nested
                            .l2
                            .as_ref()
                            .map_or((0, false), |l2| (l2.vcpu.peek_regs().rsp, l2.vcpu.peek_sregs().cs.l != 0));
                        let mut ret = [0u8; 8];
                        if self.l2_bytes(rsp, &mut ret) {
                            let ret = u64::from_le_bytes(ret);
                            let wide = long && insn[0] == 0x48;
                            self.l2_events.stop_at = Some(if wide { ret } else { ret & 0xffff_ffff });
                            self.debug_generation_changed();
                        }
                    }
                }
                if self.l2_events.halted {
                    return self.wait_while_halted(b);
                }
            }
        }
        Ok(BeforeL2::Run)
    }

    /// Whether L2's next instruction is HLT.
    fn l2_next_is_hlt(&mut self) -> bool {
        let rip = self.nested.l2.as_ref().map_or(0, |l2| l2.vcpu.peek_regs().rip);
        let mut insn = [0u8];
        self.l2_bytes(rip, &mut insn) && insn[0] == 0xf4
    }

    /// Arms the execution breakpoint at the injected event's handler (once).
    fn await_delivery(&mut self) {
        if self.l2_events.stop_at.is_some() {
            return;
        }
        let Some(vector) = self.l2_events.injected.map(|i| i.vector) else { return };
        let target = self.nested.l2.as_ref().and_then(|l2| l2.view().idt_target(vector));
        if let Some(t) = target {
            self.l2_events.stop_at = Some(t);
            self.debug_generation_changed();
        }
    }

    /// nestbed's own breakpoint in L2, while L2 runs.
    pub(super) fn stop_breakpoint(&self) -> Option<u64> {
        if self.level == Level::L2 {
            self.l2_events.stop_at
        } else {
            None
        }
    }

    /// nestbed's breakpoint was hit: an injected event is delivered, or an IRET returned.
    pub(super) fn delivered(&mut self) -> bool {
        self.l2_events.stop_at = None;
        self.debug_generation_changed();
        if self.l2_events.injected.take().is_some() && self.l2_events.mtf {
            self.l2_events.mtf_pending = true;
        }
        self.debug_generation_changed();
        true
    }

    /// What is pending for L2 at this boundary, and L2's blocking as its vCPU has it.
    fn boundary(&mut self, now: u64) -> Boundary {
        if std::mem::take(&mut self.l2_events.stepped_iret) {
            if let Some(l2) = self.nested.l2.as_mut() {
                l2.vcpu.events_mut().nmi.masked = 0;
            }
        }
        let interrupt = self.platform.pending().is_some();
        let (l2_if, l2_interruptibility) = match self.nested.l2.as_ref() {
            Some(l2) => {
                let (i, _) = event_state(l2.vcpu.peek_events());
                (l2.vcpu.peek_regs().rflags & RFLAGS_IF != 0, i)
            }
            None => (false, 0),
        };
        Boundary {
            mtf: self.l2_events.mtf_pending,
            preemption_timer_expired: self.l2_events.preemption.is_some_and(|t| t.expired(now)),
            nmi: self.platform.nmi,
            interrupt,
            l2_if,
            l2_interruptibility,
            l2_halted: self.l2_events.halted,
        }
    }

    /// L2 is halted and nothing is pending: sleep (in slices, so that signals and a debugger
    /// are served) until L1's platform has an interrupt or the preemption timer's deadline.
    fn wait_while_halted(&mut self, b: Boundary) -> Result<BeforeL2, Error> {
        let c = self.l2_events.controls;
        let can_wake = self.l2_events.preemption.is_some()
            || c.pin & (pin::EXT_INTR_EXITING | pin::NMI_EXITING) != 0
            || b.l2_if
            || b.nmi;
        if !can_wake {
            let rip = self.nested.l2.as_ref().map_or(0, |l2| l2.vcpu.peek_regs().rip);
            return Ok(BeforeL2::Flow(Flow::Stop(Outcome::Unsupported(format!(
                "L2 is in the HLT state at RIP {rip:#x} with interrupts disabled, without external-interrupt or NMI \
                 exiting or a VMX-preemption timer: it would never wake"
            )))));
        }
        let link = self.debug.link.clone();
        let deadline = self.l2_events.preemption.map(|t| t.deadline);
        self.platform.sleep_until_interrupt_or(deadline, || link.as_ref().is_some_and(|l| l.wants_attention()));
        Ok(BeforeL2::Again)
    }

    /// An exit nestbed raises at an instruction boundary of L2, taken through the one dispatch
    /// path (scripts and the trace see it; L1 gets it when its controls ask).
    fn boundary_exit(&mut self, reason: ExitReason) -> Result<Flow, Error> {
        self.boundary_exit_with(reason, None)
    }

    /// L2 executed INT3 and L1's exception bitmap intercepts #BP: an exception exit with the
    /// software exception and the instruction's length (SDM 26.2, 28.2.2), at the INT3.
    pub(super) fn l2_breakpoint(&mut self, pc: u64) -> Option<Result<Flow, Error>> {
        if self.level != Level::L2 || !self.l2_events.intercept_bp {
            return None;
        }
        let bp = Event { ty: InterruptionType::SoftwareException, vector: 3, error_code: None, instruction_len: 1 };
        Some(self.boundary_exit_at(ExitReason::EXCEPTION_NMI, Some((bp, 0)), pc, 1))
    }

    /// The same, for an exception exit with its event and qualification.
    fn boundary_exit_with(&mut self, reason: ExitReason, exception: Option<(Event, u64)>) -> Result<Flow, Error> {
        let rip = self.nested.l2.as_ref().map_or(0, |l2| l2.vcpu.peek_regs().rip);
        self.boundary_exit_at(reason, exception, rip, 0)
    }

    /// An exit at L2's `rip` with its instruction length.
    fn boundary_exit_at(
        &mut self,
        reason: ExitReason,
        exception: Option<(Event, u64)>,
        rip: u64,
        len: u8,
    ) -> Result<Flow, Error> {
        let t0 = self.clock.now();
        let (qualification, mut info) = match exception {
            Some((e, q)) => (q, ExitInfo { intr_info: e.info(), ..ExitInfo::new(reason as u32, q) }),
            None => (0, ExitInfo::new(reason as u32, 0)),
        };
        info.instruction_len = u32::from(len);
        match reason {
            ExitReason::MONITOR_TRAP_FLAG => self.l2_events.mtf_pending = false,
            ExitReason::EXCEPTION_NMI => {
                self.platform.nmi = false;
                info.intr_info = Event::nmi().info();
            }
            _ => {}
        }
        let mut exit = self.next_exit(Level::L2, reason as u32, qualification, rip);
        exit.detail = ExitDetail::None;
        let pending = std::mem::take(&mut self.l2_events.kvm_holds_insn);
        let insn = Insn { rip, len, pending };
        let facts =
            ExitFacts { reason: reason as u32, qualification, intr_info: info.intr_info, ..ExitFacts::default() };
        let l2 = L2Event { facts, keeps: None, reflect: Ok((info, insn)) };
        let ev = ExitEvent { exit, work: Work::KeptEvent { reason: reason as u32 }, l2: Some(l2) };
        self.dispatch_event(ev, t0)
    }

    /// A synthesized exit a script kept in L0: L2 goes on; the exit is not raised again until
    /// L2 has run (an external interrupt then waits for L2's window).
    pub(super) fn keep_event(&mut self, reason: u32) -> Flow {
        self.l2_events.kept = Some(reason);
        Flow::Continue
    }

    /// A KVM exit of L2 came back: what KVM delivered, and which synthesized exit may come again.
    pub(super) fn events_after_l2_run(&mut self) {
        self.l2_events.kept = None;
        // While the breakpoint at its handler is armed, `delivered` says when it arrived.
        if self.l2_events.injected.is_some() && self.l2_events.stop_at.is_none() && !self.injection_pending() {
            self.l2_events.injected = None;
        }
    }

    /// Whether the event injected at VM entry is still waiting in L2's vCPU (not delivered).
    fn injection_pending(&self) -> bool {
        let Some(l2) = self.nested.l2.as_ref() else { return false };
        let e = l2.vcpu.peek_events();
        e.interrupt.injected != 0 || e.exception.injected != 0 || e.nmi.injected != 0
    }

    /// A script's `e.inject` into the guest that exited: an exception now, an NMI when the
    /// guest does not block NMIs (KVM's pending NMI), an external interrupt (vector 32-255) for
    /// L1 raised at its local APIC (L1 acknowledges it with an EOI; while L2 runs it follows
    /// L1's external-interrupt exiting), for L2 delivered directly when L2 can take it.
    pub(super) fn script_inject(&mut self, vector: u8, error_code: Option<u32>) {
        match vector {
            // An NMI arrives at the processor: L1 takes it, or, while L2 runs, L1's NMI exiting
            // decides (`at_boundary`), as for an NMI IPI.
            2 => self.platform.nmi = true,
            0..=31 => self.active().inject_exception(vector, error_code),
            _ if self.level == Level::L1 => {
                self.platform.lapic.accept(vector, false);
            }
            _ => self.l2_events.script_interrupt = Some(vector),
        }
    }

    /// nestbed handles an exit of L2's instruction for L0 (`pending`: KVM finishes it at the
    /// next KVM_RUN). The host's single step does not always report such an instruction, so
    /// the monitor trap flag's exit is raised here (SDM 26.5.2: after the instruction).
    pub(super) fn instruction_completed(&mut self, work: &Work, pending: bool) {
        if !self.l2_events.mtf || matches!(work, Work::KeptEvent { .. } | Work::Inject { .. }) {
            return;
        }
        self.l2_events.mtf_pending = true;
        self.l2_events.kvm_holds_insn = pending;
        self.l2_events.pending_bs = self.l2_events.entry_tf;
    }

    /// L2 executed HLT and L1 does not exit on it: the HLT activity state.
    pub(super) fn l2_halt(&mut self) -> Flow {
        self.l2_events.halted = true;
        Flow::Continue
    }

    /// An L2 single-step that is nestbed's (the monitor trap flag's, or a wait for an
    /// interrupt window), not a debugger's.
    pub(super) fn events_step(&mut self, pc: u64) -> bool {
        if self.debug.step {
            return false;
        }
        if self.level == Level::L2 && self.l2_events.stop_at == Some(pc) {
            self.l2_events.stop_at = None;
            self.debug_generation_changed();
        }
        if self.level == Level::L1 {
            self.l1_window_budget = self.l1_window_budget.saturating_sub(u32::from(self.l1_window_step));
            return self.l1_window_step;
        }
        if self.l2_events.mtf {
            self.l2_events.mtf_pending = true;
            self.l2_events.pending_bs = self.l2_events.entry_tf;
            return true;
        }
        self.l2_events.window_step
    }

    /// Whether L2 runs single-stepped for the monitor trap flag or an interrupt window.
    pub(super) fn events_stepping(&self) -> bool {
        match self.level {
            Level::L1 => self.l1_window_step || self.ud_stepping(),
            // Not while an injected event is on its way to the breakpoint at its handler: this
            // host reports a step over an event's delivery only after the handler's first
            // instruction.
            Level::L2 => {
                (self.l2_events.mtf && !(self.l2_events.injected.is_some() && self.l2_events.stop_at.is_some()))
                    || self.l2_events.window_step
            }
        }
    }

    /// A VM exit to L1 is about to be recorded: the event information it carries (an
    /// acknowledged interrupt's vector, an undelivered injected event as IDT-vectoring
    /// information), then, after it, what it saves of L2's event state.
    pub(super) fn events_at_vm_exit(&mut self, info: &mut ExitInfo) {
        let ack =
            self.nested.vmx.current_vmcs().is_some_and(|v| v.get32(VM_EXIT_CONTROLS) & exit::ACK_INTR_ON_EXIT != 0);
        if info.reason == ExitReason::EXTERNAL_INTERRUPT as u32 && ack && info.intr_info == 0 {
            // Acknowledge interrupt on exit (SDM 28.2.2): the vector, now in service.
            if let Some(vector) = self.platform.pending().and_then(|s| self.platform.acknowledge(s)) {
                info.intr_info = Event::external_interrupt(vector).info();
            }
        }
        if let Some(i) = self.l2_events.injected.take() {
            if self.injection_pending() {
                // The exit interrupted the delivery of the injected event (SDM 28.2.3).
                info.idt_vectoring_info = i.info();
                info.idt_vectoring_error_code = i.error_code.unwrap_or(0);
                if let Some(l2) = self.nested.l2.as_mut() {
                    let e = l2.vcpu.events_mut();
                    (e.interrupt.injected, e.exception.injected, e.nmi.injected) = (0, 0, 0);
                    if i.ty.is_software() {
                        // L1 re-injects it with the same length: GUEST_RIP is the instruction.
                        let r = l2.vcpu.regs_mut();
                        r.rip = r.rip.wrapping_sub(u64::from(i.instruction_len));
                    }
                }
            }
        }
    }

    /// After the VM exit was recorded: L2's activity and interruptibility state, and the
    /// preemption timer's value with "save VMX-preemption timer value" (SDM 28.3.4).
    pub(super) fn events_saved_at_vm_exit(&mut self) {
        // L2's last CR8 is the TPR L1 finds (no TPR shadow).
        if let Some(cr8) = self.nested.l2.as_ref().map(|l2| l2.vcpu.cr8()) {
            self.sync_tpr(Level::L2, cr8);
        }
        let now = self.platform.now();
        let ev = std::mem::take(&mut self.l2_events);
        if ev.mtf || ev.window_step || ev.stop_at.is_some() || ev.intercept_bp {
            self.debug_generation_changed();
        }
        let blocking = self.nested.l2.as_ref().map(|l2| event_state(l2.vcpu.peek_events()).0);
        let Some(vmcs) = self.nested.vmx.current_vmcs_mut() else { return };
        let keep = interruptibility::BLOCKING_BY_STI
            | interruptibility::BLOCKING_BY_MOV_SS
            | interruptibility::BLOCKING_BY_NMI;
        let i = vmcs.get32(GUEST_INTERRUPTIBILITY_INFO) & !keep | blocking.unwrap_or(0);
        vmcs.set(GUEST_INTERRUPTIBILITY_INFO, u64::from(i));
        // Nothing else stays pending: nestbed delivers or reports pending debug exceptions at entry.
        vmcs.set(GUEST_PENDING_DBG_EXCEPTIONS, if ev.pending_bs && ev.mtf { PENDING_DBG_BS } else { 0 });
        vmcs.set(GUEST_ACTIVITY_STATE, u64::from(if ev.halted { activity::HLT } else { activity::ACTIVE }));
        if let Some(t) = ev.preemption {
            if vmcs.get32(VM_EXIT_CONTROLS) & exit::SAVE_PREEMPTION_TIMER != 0 {
                vmcs.set(VMX_PREEMPTION_TIMER_VALUE, u64::from(t.remaining(now)));
            }
        }
    }
}

impl Runner {
    /// gdb's `monitor events`.
    pub fn events_report(&mut self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let describe = |e: &kvm_bindings::kvm_vcpu_events| {
            let (i, p) = event_state(e);
            let pending = if p == 0 { "none".to_string() } else { format!("{p:#010x} (vector {:#x})", p & 0xff) };
            format!("interruptibility {i:#x}, event in delivery or pending {pending}")
        };
        let _ = self.l1.refresh();
        let _ = writeln!(s, "L1: {}", describe(self.l1.peek_events()));
        let irq = self.platform.pending().map(|src| format!("{src:?}")).unwrap_or_else(|| "none".into());
        let _ = writeln!(s, "L1's platform: interrupt pending {irq}, NMI pending {}", self.platform.nmi);
        if self.level == Level::L2 {
            let now = self.platform.now();
            if let Some(l2) = self.nested.l2.as_ref() {
                let _ = writeln!(s, "L2: {}", describe(l2.vcpu.peek_events()));
            }
            let ev = &self.l2_events;
            let timer = ev.preemption.map_or("inactive".to_string(), |t| format!("{} left", t.remaining(now)));
            let _ = writeln!(
                s,
                "L2: VMX-preemption timer {timer}, activity {}, monitor trap flag {}, injected event {}",
                if ev.halted { "HLT" } else { "active" },
                if ev.mtf { "on" } else { "off" },
                ev.injected.map_or("none".to_string(), |i| format!("{:#010x} (not yet delivered)", i.info()))
            );
        }
        s
    }
}

/// A vCPU's event state as scripts and gdb show it: interruptibility in
/// GUEST_INTERRUPTIBILITY_INFO's format and the event being delivered or pending, in
/// interruption-information format (0: none).
pub fn event_state(e: &kvm_bindings::kvm_vcpu_events) -> (u32, u32) {
    let mut i = 0;
    if e.interrupt.shadow & KVM_X86_SHADOW_INT_STI != 0 {
        i |= interruptibility::BLOCKING_BY_STI;
    }
    if e.interrupt.shadow & KVM_X86_SHADOW_INT_MOV_SS != 0 {
        i |= interruptibility::BLOCKING_BY_MOV_SS;
    }
    if e.nmi.masked != 0 {
        i |= interruptibility::BLOCKING_BY_NMI;
    }
    let pending = if e.exception.injected != 0 || e.exception.pending != 0 {
        let code = (e.exception.has_error_code != 0).then_some(e.exception.error_code);
        Event { ty: InterruptionType::HardwareException, vector: e.exception.nr, error_code: code, instruction_len: 0 }
            .info()
    } else if e.nmi.injected != 0 || e.nmi.pending != 0 {
        Event::nmi().info()
    } else if e.interrupt.injected != 0 {
        Event::external_interrupt(e.interrupt.nr).info()
    } else {
        0
    };
    (i, pending)
}
