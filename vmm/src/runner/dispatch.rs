//! One exit's life, the same for every exit of either level:
//! KVM exit -> `Exit` (normalize) -> route -> scripts -> trace -> handle or reflect -> statistics.
//! [`Runner::dispatch`] is the one place that decides who handled an exit, so the trace, the
//! statistics, scripts and gdb always agree.

use super::platform::Platform;
use super::{Flow, Outcome, Runner};
use crate::error::Error;
use crate::exit::{Action, Exit, Handler, Level};
use crate::machine::devices::PortEffect;
use crate::machine::RawExit;
use crate::nested::env::RamView;
use crate::nested::route::{route, L0Keeps, Route};
use crate::nested::{Entry, Insn};
use crate::platform::acpi_pm;
use crate::trace::Phase;
use crate::vmx::cpu::{apply_rflags, Fault};
use crate::vmx::decode::{VmxInsn, VmxOp};
use crate::vmx::exit_info::ExitInfo;
use crate::vmx::route::{l1_wants_exit, ExitFacts};
use crate::vmx::sensitive::SensitiveInsn;

const RFLAGS_IF: u64 = 1 << 9;
/// KVM's answer to a hypercall it does not know (include/uapi/linux/kvm_para.h).
const KVM_ENOSYS: u64 = 1000;

/// The phases timed inside the handling of an exit.
const INNER: &[Phase] = &[Phase::Model, Phase::Memslots, Phase::Transfer];

/// A KVM exit, normalized. Returned by value once per exit and never stored, so the size
/// difference of its variants costs less than boxing the event would.
#[allow(clippy::large_enum_variant)]
pub(super) enum Normalized {
    Event(Event),
    /// Dealt with while normalizing, without an exit anyone observes: #UD for an instruction
    /// KVM could not run that is no VMX instruction, memslots refreshed before a retry, or a
    /// condition nestbed cannot continue from.
    Quiet {
        reason: u32,
        flow: Flow,
    },
}

/// An exit as the trace and scripts see it, with what handling it means.
pub(super) struct Event {
    pub exit: Exit,
    /// What nestbed does when it handles the exit as the L0.
    pub work: Work,
    /// L2 exits only: what the reflect decision and a VM exit to L1 need.
    pub l2: Option<L2Event>,
}

pub(super) struct L2Event {
    pub facts: ExitFacts,
    pub keeps: Option<L0Keeps>,
    /// The VM exit L1 gets if the exit is reflected, or why the host makes that impossible.
    pub reflect: Result<(ExitInfo, Insn), String>,
}

/// What nestbed does with an exit it handles itself.
pub(super) enum Work {
    PortOut {
        port: u16,
        size: u8,
        data: u64,
    },
    /// IN, or every element of an INS.
    PortIn {
        port: u16,
        size: u8,
        count: u32,
    },
    /// An MMIO read of L1-physical `gpa` outside RAM: a platform device, else all ones.
    MmioRead {
        gpa: u64,
        len: u8,
    },
    /// An MMIO write of L1-physical `gpa` outside RAM: a platform device, else dropped.
    MmioWrite {
        gpa: u64,
        len: u8,
        data: u64,
    },
    /// An MMIO read that reaches nothing: all ones.
    ReadAllOnes,
    /// An MMIO write that reaches nothing.
    DropWrite,
    L1Hlt,
    TripleFault,
    L1Rdmsr {
        index: u32,
    },
    L1Wrmsr {
        index: u32,
        value: u64,
    },
    /// A VMX instruction L1 executed, for the model.
    L1Vmx {
        insn: VmxInsn,
        rip: u64,
    },
    /// A hypercall of L1 to nestbed (VMCALL outside VMX operation, VMMCALL).
    Hypercall {
        len: u8,
        rip: u64,
    },
    /// A sensitive instruction from a patched site, executed by nestbed.
    Sensitive {
        insn: SensitiveInsn,
        rip: u64,
    },
    L2Rdmsr {
        index: u32,
    },
    L2Wrmsr {
        index: u32,
        value: u64,
    },
    /// An access L1's EPT allows, done on L1's memory at `hpa`.
    EptAllowed {
        eptp: u64,
        hpa: u64,
        len: u8,
        data: Option<u64>,
    },
    /// L2's VMREAD or VMWRITE that VMCS shadowing serves from the shadow VMCS, without a VM
    /// exit (SDM 25.10).
    Shadowed {
        insn: VmxInsn,
        rip: u64,
    },
    /// An exception for the guest that exited (a VMX instruction of L2 kept in L0: #UD).
    Inject {
        vector: u8,
    },
    /// L2 executed HLT without HLT exiting: the HLT activity state.
    L2Hlt,
    /// An exit nestbed raised at an instruction boundary of L2 (an interrupt, a window, the
    /// preemption timer, the monitor trap flag) that a script kept from L1.
    KeptEvent {
        reason: u32,
    },
    /// nestbed cannot continue.
    Unsupported(String),
}

impl Runner {
    /// Takes one KVM exit of the active level through the whole path. `t0` is the clock reading
    /// when KVM_RUN returned.
    pub(super) fn dispatch(&mut self, raw: RawExit, t0: u64) -> Result<Flow, Error> {
        let level = self.level;
        let normalized = match level {
            Level::L1 => self.normalize_l1(raw)?,
            Level::L2 => self.normalize_l2(raw)?,
        };
        let ev = match normalized {
            Normalized::Event(ev) => ev,
            Normalized::Quiet { reason, flow } => {
                self.stats.record(level, reason, Handler::L0, self.clock.since(t0));
                if let Some(p) = &self.progress {
                    p.counters.note(level, reason);
                }
                return Ok(flow);
            }
        };
        self.dispatch_event(ev, t0)
    }

    /// An exit from `normalize` or raised by nestbed itself, from route on.
    pub(super) fn dispatch_event(&mut self, mut ev: Event, t0: u64) -> Result<Flow, Error> {
        let level = ev.exit.level;
        if level == Level::L2 {
            ev.exit.vmcs = self.nested.vmx.current;
            ev.exit.guest_level = ev.exit.vmcs.map(|v| self.nested.levels.level_of(v)).filter(|&g| g > 2);
        }
        if level == Level::L1 {
            // What L1 marked changed in an enlightened VMCS is the VMCS scripts and gdb see.
            self.nested.vmx.absorb_enlightened(&mut RamView(&self.l1_vm.ram));
        }
        // An exit between steps: L1 may be stepped again for as long while an interrupt waits.
        self.l1_window_budget = super::platform::WINDOW_STEPS;
        let route = self.route(&ev);
        let t = self.stats.phases.add_since(Phase::Decode, t0);
        let reflectable = ev.l2.as_ref().is_some_and(|l2| l2.keeps.is_none());
        let info = ev.l2.as_mut().and_then(|l2| l2.reflect.as_mut().ok()).map(|(info, _)| info);
        let (action, handler) = self.observe(&ev.exit, route_handler(route), info)?;
        let t = self.stats.phases.add_since(Phase::Hooks, t);
        let inner_before = self.stats.phases.ticks(INNER);
        // An L2 instruction nestbed completes (KVM holds it until the next KVM_RUN when
        // `pending`): with the monitor trap flag, an MTF exit follows it.
        let completes = ev.l2.as_ref().and_then(|l2| l2.reflect.as_ref().ok()).map(|(_, insn)| insn.pending);
        let flow = match action {
            Action::Default if route == Route::L1 => self.reflect(ev.l2.take())?,
            Action::Reflect if reflectable => self.reflect(ev.l2.take())?,
            Action::Default | Action::Reflect | Action::KeepInL0 => {
                if let Some(pending) = completes {
                    self.instruction_completed(&ev.work, pending);
                }
                let holds = holds_instruction(&ev.work);
                let flow = self.handle(ev.work)?;
                self.script_rip_after(holds);
                flow
            }
            other => self.apply_action(other, &ev.work)?,
        };
        self.stats.phases.add_since_except(Phase::Other, t, INNER, inner_before);
        self.stats.record(level, ev.exit.reason, handler, self.clock.since(t0));
        if let Some(p) = &self.progress {
            p.counters.note(level, ev.exit.reason);
        }
        self.verify_patches();
        Ok(flow)
    }

    /// Who handles an exit unless a script decides otherwise: nestbed for every L1 exit; for
    /// an L2 exit, L0's own reasons, then L1's controls (`vmx::route`).
    fn route(&self, ev: &Event) -> Route {
        let Some(l2) = ev.l2.as_ref() else { return Route::L0 };
        route(l2.keeps, || {
            self.nested.vmx.current_vmcs().is_some_and(|vmcs| l1_wants_exit(vmcs, &RamView(&self.l1_vm.ram), &l2.facts))
        })
    }

    /// A VM exit to L1, or a stop when the host made the exit impossible to reflect.
    fn reflect(&mut self, l2: Option<L2Event>) -> Result<Flow, Error> {
        match l2.map(|l2| l2.reflect) {
            Some(Ok((mut info, insn))) => {
                let t = self.clock.now();
                if let Some(vmcs) = self.nested.vmx.current {
                    self.nested.levels.reflected(vmcs, info.reason & 0xffff);
                }
                self.events_at_vm_exit(&mut info);
                let abort = self.nested.vm_exit(&mut self.l1, &self.l1_vm.ram, &info, &insn, &mut self.platform)?;
                self.events_saved_at_vm_exit();
                self.sync_enlightened()?;
                self.level = Level::L1;
                self.stats.phases.add_since(Phase::Transfer, t);
                Ok(match abort {
                    Some(a) => Flow::Stop(Outcome::VmxAbort(a.to_string())),
                    None => Flow::Continue,
                })
            }
            Some(Err(why)) => Ok(Flow::Stop(Outcome::Unsupported(why))),
            None => Ok(Flow::Continue),
        }
    }

    /// nestbed handles the exit as the L0.
    fn handle(&mut self, work: Work) -> Result<Flow, Error> {
        match work {
            Work::L1Vmx { insn, rip } => self.execute_vmx(&insn, rip),
            Work::Sensitive { insn, rip } => self.execute_sensitive(insn, rip),
            Work::Hypercall { len, rip } => Ok(self.hypercall(len, rip)),
            Work::L1Rdmsr { index } => Ok(self.l1_rdmsr(index)),
            Work::L1Wrmsr { index, value } => Ok(self.l1_wrmsr(index, value)),
            Work::L2Rdmsr { index } => self.l2_rdmsr(index),
            Work::L2Wrmsr { index, value } => self.l2_wrmsr(index, value),
            Work::EptAllowed { eptp, hpa, len, data } => self.l2_ept_allowed(eptp, hpa, len, data),
            Work::PortOut { port, size, data } => Ok(self.port_write(port, size, data)),
            Work::PortIn { port, size, count } => {
                self.device_in(port, size, count);
                Ok(Flow::Continue)
            }
            Work::MmioRead { gpa, len } => {
                let v = self.platform.mmio_read(gpa, len).unwrap_or_else(|| {
                    tracing::debug!(gpa = format_args!("{gpa:#x}"), "read outside RAM: all ones");
                    u64::MAX
                });
                self.active().complete_read(v);
                Ok(Flow::Continue)
            }
            Work::MmioWrite { gpa, len, data } => {
                if !self.platform.mmio_write(gpa, len, data) {
                    tracing::debug!(gpa = format_args!("{gpa:#x}"), "write outside RAM ignored");
                }
                Ok(Flow::Continue)
            }
            Work::ReadAllOnes => {
                self.active().complete_read(u64::MAX);
                Ok(Flow::Continue)
            }
            Work::DropWrite => Ok(Flow::Continue),
            Work::L1Hlt => {
                let r = *self.l1.regs();
                if r.rflags & RFLAGS_IF == 0 && self.platform.pending().is_none() {
                    return Ok(Flow::Stop(Outcome::Unsupported(format!(
                        "L1 executed HLT with interrupts disabled at RIP {:#x} and no interrupt pending: it would never wake",
                        r.rip
                    ))));
                }
                let link = self.debug.link.clone();
                self.platform.sleep_until_interrupt(|| link.as_ref().is_some_and(|l| l.wants_attention()));
                Ok(Flow::Continue)
            }
            Work::TripleFault => {
                let level = self.level;
                let registers = super::dump_registers(self.active());
                Ok(Flow::Stop(Outcome::TripleFault { level, registers }))
            }
            Work::Inject { vector } => {
                self.active().raise_fault(vector, None);
                Ok(Flow::Continue)
            }
            Work::Shadowed { insn, rip } => Ok(self.l2_shadowed(&insn, rip)),
            Work::L2Hlt => Ok(self.l2_halt()),
            Work::KeptEvent { reason } => Ok(self.keep_event(reason)),
            Work::Unsupported(why) => Ok(Flow::Stop(Outcome::Unsupported(why))),
        }
    }

    /// Carries out a script's decision on the vCPU that exited.
    fn apply_action(&mut self, action: Action, work: &Work) -> Result<Flow, Error> {
        Ok(match action {
            Action::Default | Action::Reflect | Action::KeepInL0 => Flow::Continue,
            Action::Skip => {
                // A trapped VMX instruction left RIP at itself; the others are past it or
                // completed by KVM.
                match work {
                    Work::L1Vmx { insn, rip } => self.l1.regs_mut().rip = rip.wrapping_add(u64::from(insn.len)),
                    Work::Sensitive { insn, rip } => {
                        self.active().regs_mut().rip = rip.wrapping_add(u64::from(insn.len));
                    }
                    Work::Shadowed { insn, rip } => {
                        self.active().regs_mut().rip = rip.wrapping_add(u64::from(insn.len));
                    }
                    _ => {}
                }
                Flow::Continue
            }
            Action::Value(v) => {
                self.active().complete_read(v);
                Flow::Continue
            }
            Action::Inject { vector, error_code } => {
                self.script_inject(vector, error_code);
                Flow::Continue
            }
            Action::Stop(reason) => Flow::Stop(Outcome::ScriptStop(reason)),
        })
    }

    /// Executes a VMX instruction of L1 on the model; VMLAUNCH and VMRESUME that pass the
    /// instruction checks go on to VM entry.
    fn execute_vmx(&mut self, insn: &VmxInsn, rip: u64) -> Result<Flow, Error> {
        let t = self.clock.now();
        let len = u64::from(insn.len);
        if insn.op == VmxOp::Vmcall && !self.nested.vmx.vmxon {
            return Ok(self.hypercall(insn.len, rip));
        }
        let written = self.vmwrite_field(insn);
        let outcome = self.nested.execute(insn, &mut self.l1, &self.l1_vm.ram, written)?;
        tracing::debug!(rip = format_args!("{rip:#x}"), insn = %insn, ?outcome, "L1 VMX instruction");
        // The instruction completes (or enters L2): blocking by MOV SS or STI ends with it.
        if self.l1.peek_events().interrupt.shadow != 0 {
            self.l1.events_mut().interrupt.shadow = 0;
        }
        match outcome {
            crate::vmx::cpu::Outcome::Fault(f) => {
                self.inject_fault(f);
                self.stats.phases.add_since(Phase::Model, t);
            }
            crate::vmx::cpu::Outcome::Entry { launch } => {
                let entry = self.nested.vm_entry(
                    &mut self.l1,
                    &self.l1_vm.ram,
                    &mut self.notes,
                    &mut self.stats.phases,
                    t,
                    launch,
                    &mut self.platform,
                )?;
                // A VMRESUME that entered changed nothing in the VMCS: the page is up to date.
                if launch || !matches!(entry, Entry::Entered) {
                    self.sync_enlightened()?;
                }
                match entry {
                    Entry::Entered => {
                        if let Some(vmcs) = self.nested.vmx.current {
                            self.nested.levels.entered(vmcs);
                        }
                        self.level = Level::L2;
                        self.patch_for_controls();
                        self.events_at_vm_entry();
                    }
                    Entry::ExitedOnEntry => {}
                    Entry::Failed(o) => {
                        let r = self.l1.regs_mut();
                        r.rflags = apply_rflags(r.rflags, &o);
                        r.rip = rip.wrapping_add(len);
                    }
                    Entry::Refused(why) => {
                        return Ok(Flow::Stop(Outcome::Unsupported(format!("VM entry at L1 RIP {rip:#x}: {why}"))))
                    }
                    Entry::Aborted(a) => return Ok(Flow::Stop(Outcome::VmxAbort(a.to_string()))),
                }
            }
            o => {
                let r = self.l1.regs_mut();
                r.rflags = apply_rflags(r.rflags, &o);
                r.rip = rip.wrapping_add(len);
                self.stats.phases.add_since(Phase::Model, t);
            }
        }
        Ok(Flow::Continue)
    }

    /// An enlightened current VMCS is written back to its page, where L1 reads it (EVMCS.md),
    /// with GUEST_DR7 up to date.
    fn sync_enlightened(&mut self) -> Result<(), Error> {
        if self.nested.vmx.enlightened {
            self.nested.settle_guest_dr7()?;
            self.nested.vmx.sync_enlightened(&mut RamView(&self.l1_vm.ram));
        }
        Ok(())
    }

    /// A hypercall of L1 to its hypervisor, nestbed, which offers none: the answer is KVM's
    /// for an unknown one, -KVM_ENOSYS in RAX.
    fn hypercall(&mut self, len: u8, rip: u64) -> Flow {
        let r = self.l1.regs_mut();
        r.rax = KVM_ENOSYS.wrapping_neg();
        r.rip = rip.wrapping_add(u64::from(len));
        Flow::Continue
    }

    pub(super) fn inject_fault(&mut self, f: Fault) {
        if let Fault::PageFault { address, .. } = f {
            self.active().sregs_mut().cr2 = address;
        }
        self.active().raise_fault(f.vector(), f.error_code());
    }

    /// Completes an `in` (or every element of an INS) on the active vCPU from the devices.
    fn device_in(&mut self, port: u16, size: u8, count: u32) {
        if count <= 1 {
            let v = self.port_read(port, size);
            self.active().complete_read(v);
            return;
        }
        let mut bytes = Vec::with_capacity(usize::from(size) * count as usize);
        for _ in 0..count {
            let v = self.port_read(port, size);
            bytes.extend_from_slice(&v.to_le_bytes()[..usize::from(size).min(8)]);
        }
        self.active().complete_string_in(&bytes);
    }

    /// A port read: the platform's devices (PIC, fw_cfg, test device), else the serial port.
    fn port_read(&mut self, port: u16, size: u8) -> u64 {
        if Platform::claims_port(port) {
            self.platform.port_read(port, size)
        } else {
            self.devices.read(port, size)
        }
    }

    fn port_write(&mut self, port: u16, size: u8, data: u64) -> Flow {
        if Platform::claims_port(port) {
            return match self.platform.port_write(port, size, data) {
                acpi_pm::Effect::None => Flow::Continue,
                acpi_pm::Effect::SleepS3 => self.sleep_s3(),
                // ACPI soft off: the machine powers down, as QEMU's exits with status 0.
                acpi_pm::Effect::PowerOff => Flow::Stop(Outcome::GuestExit(0)),
            };
        }
        match self.devices.write(port, size, data) {
            PortEffect::Exit(c) => Flow::Stop(Outcome::GuestExit(c)),
            PortEffect::None => Flow::Continue,
            PortEffect::ConsoleFailed(std::io::ErrorKind::BrokenPipe) => Flow::Stop(Outcome::OutputClosed),
            PortEffect::ConsoleFailed(kind) => Flow::Stop(Outcome::Failed {
                code: crate::error::code::HOST,
                message: format!("serial console: {}", std::io::Error::from(kind)),
            }),
        }
    }

    /// Numbers the next exit.
    pub(super) fn next_exit(&mut self, level: Level, reason: u32, qualification: u64, rip: u64) -> Exit {
        self.seq += 1;
        Exit {
            seq: self.seq,
            level,
            reason,
            qualification,
            rip,
            insn: Vec::new(),
            detail: crate::exit::ExitDetail::None,
            vmcs: None,
            guest_level: None,
        }
    }
}

/// Whether KVM holds the exit's instruction until the next KVM_RUN, which completes it and
/// moves RIP past it.
fn holds_instruction(work: &Work) -> bool {
    matches!(
        work,
        Work::PortIn { .. }
            | Work::PortOut { .. }
            | Work::MmioRead { .. }
            | Work::MmioWrite { .. }
            | Work::L1Rdmsr { .. }
            | Work::L1Wrmsr { .. }
            | Work::L2Rdmsr { .. }
            | Work::L2Wrmsr { .. }
    )
}

impl Runner {
    /// A script wrote RIP or RFLAGS at an exit whose instruction KVM still holds: KVM's
    /// completion would move RIP on from the script's value, so KVM finishes the instruction
    /// first and the script's values are written after it.
    fn script_rip_after(&mut self, holds: bool) {
        let Some((rip, rflags)) = self.script_rip.take() else { return };
        if !holds {
            return;
        }
        self.active().finish_pending();
        let r = self.active().regs_mut();
        (r.rip, r.rflags) = (rip, rflags);
    }
}

/// The handler an exit has when no script decides otherwise.
fn route_handler(route: Route) -> Handler {
    match route {
        Route::L1 => Handler::L1,
        Route::L0 | Route::L0Keeps(_) => Handler::L0,
    }
}
