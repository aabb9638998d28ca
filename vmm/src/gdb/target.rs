//! nestbed as a gdbstub target: L1 and L2 as threads 1 and 2, registers and memory of either,
//! breakpoints, watchpoints and stepping, with the guest running inside `wait_for_stop_reason`.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};

use super::arch::{NestbedX86, Regs};
use super::{monitor, regs};
use crate::error::Error;
use crate::exit::Level;
use crate::runner::debug::{DebugEvent, HwKind, HwSlot, Link};
use crate::runner::{Outcome, Runner, Stop};
use crate::vmx::fields;

pub const TID_L1: usize = 1;
pub const TID_L2: usize = 2;

/// The error number of a refused register write (`E16`).
const EINVAL: u8 = 22;

pub struct Debuggee {
    pub runner: Runner,
    pub link: Arc<Link>,
    /// Tells the watcher thread to look for gdb data again.
    pub rearm: Sender<()>,
    /// How the run ended, if it did during the session.
    pub outcome: Option<Outcome>,
    /// The thread gdb last addressed: breakpoint addresses are its linear addresses.
    selected: Level,
}

impl Debuggee {
    pub fn new(runner: Runner, link: Arc<Link>, rearm: Sender<()>) -> Self {
        let selected = runner.level();
        Debuggee { runner, link, rearm, outcome: None, selected }
    }
}

fn tid(l: Level) -> Tid {
    let n = match l {
        Level::L1 => TID_L1,
        Level::L2 => TID_L2,
    };
    Tid::new(n).unwrap_or(Tid::MIN)
}

fn level(t: Tid) -> Level {
    if t.get() == TID_L2 {
        Level::L2
    } else {
        Level::L1
    }
}

fn fatal(e: Error) -> TargetError<Error> {
    TargetError::Fatal(e)
}

impl Target for Debuggee {
    type Arch = NestbedX86;
    type Error = Error;

    fn base_ops(&mut self) -> BaseOps<'_, NestbedX86, Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for Debuggee {
    fn read_registers(&mut self, out: &mut Regs, t: Tid) -> TargetResult<(), Self> {
        self.selected = level(t);
        let vmxe = self.runner.virtual_vmxe(level(t));
        let v = self.runner.vcpu_of(level(t)).ok_or(TargetError::NonFatal)?;
        *out = regs::read(v).map_err(fatal)?;
        out.cr4 |= vmxe;
        // While L1 runs, L2's RIP, RSP and RFLAGS are the VMCS guest-state area's (SDM 28.3.1):
        // at an exit, RIP is the exiting instruction's as L1 reads it, and what L1 wrote there
        // is where L2 resumes. L2's vCPU may already be past an instruction KVM completed.
        if level(t) == Level::L2 && self.runner.level() == Level::L1 {
            if let Some(vmcs) = self.runner.vmcs_view() {
                out.rip = vmcs.get(fields::GUEST_RIP);
                out.gpr[7] = vmcs.get(fields::GUEST_RSP);
                out.eflags = vmcs.get(fields::GUEST_RFLAGS) as u32;
            }
        }
        Ok(())
    }

    fn write_registers(&mut self, r: &Regs, t: Tid) -> TargetResult<(), Self> {
        self.selected = level(t);
        // L2's registers live in its vCPU only while it runs; otherwise in L1's VMCS.
        if level(t) != self.runner.level() {
            return Err(TargetError::NonFatal);
        }
        // A virtual CR4.VMXE is the model's; KVM never holds it.
        let mut r = r.clone();
        r.cr4 = self.runner.set_virtual_vmxe(level(t), r.cr4);
        let v = self.runner.vcpu_of(level(t)).ok_or(TargetError::NonFatal)?;
        match regs::write(v, &r) {
            Ok(()) => Ok(()),
            Err(regs::WriteError::Refused(why)) => {
                crate::error::to_stderr(&format!("nestbed: gdb register write refused: {why}\n"));
                Err(TargetError::Errno(EINVAL))
            }
            Err(regs::WriteError::Host(e)) => Err(fatal(e)),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], t: Tid) -> TargetResult<usize, Self> {
        self.selected = level(t);
        match self.runner.debug_read(level(t), start, data) {
            0 if !data.is_empty() => Err(TargetError::NonFatal),
            n => Ok(n),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], t: Tid) -> TargetResult<(), Self> {
        self.selected = level(t);
        if self.runner.debug_write(level(t), start, data) {
            Ok(())
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), Error> {
        active(tid(Level::L1));
        if self.runner.l2_vmcs().is_some() {
            active(tid(Level::L2));
        }
        Ok(())
    }

    fn is_thread_alive(&mut self, t: Tid) -> Result<bool, Error> {
        Ok(t.get() == TID_L1 || (t.get() == TID_L2 && self.runner.l2_vmcs().is_some()))
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for Debuggee {
    fn thread_extra_info(&self, t: Tid, buf: &mut [u8]) -> Result<usize, Error> {
        let running = |l: Level| if self.runner.level() == l { "running" } else { "waiting" };
        let text = match (level(t), self.runner.l2_vmcs()) {
            (Level::L2, Some(vmcs)) => format!("L2 vmcs@{vmcs:#x} ({})", running(Level::L2)),
            (Level::L2, None) => "L2 (no launched VMCS)".to_string(),
            (Level::L1, _) => format!("L1 vcpu0 ({})", running(Level::L1)),
        };
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl MultiThreadResume for Debuggee {
    fn resume(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Error> {
        self.runner.set_step(false);
        Ok(())
    }

    fn set_resume_action_continue(&mut self, _: Tid, _: Option<Signal>) -> Result<(), Error> {
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

/// Only one level executes at a time (L1 waits in VMLAUNCH/VMRESUME while L2 runs), so
/// stepping one thread never runs the other: locking is what already happens.
impl MultiThreadSchedulerLocking for Debuggee {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

impl MultiThreadSingleStep for Debuggee {
    /// Steps whichever level runs: the other one is not executing.
    fn set_resume_action_step(&mut self, _: Tid, _: Option<Signal>) -> Result<(), Error> {
        self.runner.set_step(true);
        Ok(())
    }
}

impl Breakpoints for Debuggee {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Debuggee {
    fn add_sw_breakpoint(&mut self, addr: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(self.runner.add_sw_breakpoint(self.selected, addr))
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(self.runner.remove_sw_breakpoint(self.selected, addr))
    }
}

impl HwBreakpoint for Debuggee {
    fn add_hw_breakpoint(&mut self, addr: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(self.runner.add_hw(HwSlot { addr, kind: HwKind::Exec, len: 1 }))
    }
    fn remove_hw_breakpoint(&mut self, addr: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(self.runner.remove_hw(addr, HwKind::Exec))
    }
}

fn hw_kind(k: WatchKind) -> HwKind {
    match k {
        WatchKind::Write => HwKind::Write,
        // Like x86 debug registers (no read-only condition, SDM 17.2.5), reads watch accesses.
        WatchKind::Read | WatchKind::ReadWrite => HwKind::Access,
    }
}

impl HwWatchpoint for Debuggee {
    /// Emulated by single-stepping: on our hosts the debug registers fire on execution but
    /// not on data accesses (see the gdb guide), so any length and alignment works.
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.runner.add_watch(self.selected, addr, len, hw_kind(kind)))
    }
    fn remove_hw_watchpoint(&mut self, addr: u64, _: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        Ok(self.runner.remove_watch(addr, hw_kind(kind)))
    }
}

impl MonitorCmd for Debuggee {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Error> {
        let text = monitor::run(&mut self.runner, &String::from_utf8_lossy(cmd));
        gdbstub::output!(out, "{}", text);
        Ok(())
    }
}

pub enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = Debuggee;
    type Connection = Box<dyn ConnectionExt<Error = std::io::Error>>;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Debuggee,
        conn: &mut Self::Connection,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<Error, std::io::Error>> {
        target.link.data.store(false, Ordering::SeqCst);
        // Bytes already read off the socket (a packet right behind another) are not seen by
        // the watcher: hand them over first.
        if let Ok(Some(_)) = conn.peek() {
            let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
            return Ok(Event::IncomingData(byte));
        }
        let _ = target.rearm.send(());
        loop {
            let stop = match target.runner.run_until_stop() {
                Ok(s) => s,
                Err(e) => Stop::Finished(Outcome::Failed { code: e.exit_code(), message: e.to_string() }),
            };
            let t = tid(target.runner.level());
            let reason = match stop {
                Stop::Debugger => {
                    target.link.attach.store(false, Ordering::SeqCst);
                    if target.link.data.swap(false, Ordering::SeqCst) {
                        let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                        return Ok(Event::IncomingData(byte));
                    }
                    continue;
                }
                Stop::Debug(DebugEvent::Step) => {
                    MultiThreadStopReason::SignalWithThread { tid: t, signal: Signal::SIGTRAP }
                }
                Stop::Debug(DebugEvent::SwBreak) => MultiThreadStopReason::SwBreak(t),
                Stop::Debug(DebugEvent::HwBreak) => MultiThreadStopReason::HwBreak(t),
                Stop::Debug(DebugEvent::Watch { addr, kind }) => MultiThreadStopReason::Watch {
                    tid: t,
                    kind: if kind == HwKind::Write { WatchKind::Write } else { WatchKind::ReadWrite },
                    addr,
                },
                Stop::Debug(DebugEvent::ScriptStop(why)) => {
                    crate::error::to_stderr(&format!("nestbed: stopped by script: {why}\n"));
                    MultiThreadStopReason::SignalWithThread { tid: t, signal: Signal::SIGTRAP }
                }
                Stop::Debug(DebugEvent::BreakOnExit(what)) => {
                    crate::error::to_stderr(&format!("nestbed: break on exit: {what}\n"));
                    MultiThreadStopReason::SignalWithThread { tid: t, signal: Signal::SIGTRAP }
                }
                Stop::Finished(o) => {
                    let r = match &o {
                        Outcome::GuestExit(c) => MultiThreadStopReason::Exited(*c),
                        Outcome::Interrupted | Outcome::Debugger(_) => {
                            MultiThreadStopReason::Terminated(Signal::SIGINT)
                        }
                        Outcome::Timeout => MultiThreadStopReason::Terminated(Signal::SIGALRM),
                        Outcome::TripleFault { .. } => MultiThreadStopReason::Terminated(Signal::SIGSEGV),
                        _ => MultiThreadStopReason::Terminated(Signal::SIGABRT),
                    };
                    target.outcome = Some(o);
                    r
                }
            };
            return Ok(Event::TargetStopped(reason));
        }
    }

    fn on_interrupt(target: &mut Debuggee) -> Result<Option<Self::StopReason>, Error> {
        Ok(Some(MultiThreadStopReason::SignalWithThread { tid: tid(target.runner.level()), signal: Signal::SIGINT }))
    }
}
