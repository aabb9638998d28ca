//! Whether gdbstub would take a packet: gdbstub ends the session on any packet it cannot parse
//! (`Hg-1`, `m` without a length, a `Z` of an unknown type, ...), so each packet is first
//! handed to a fresh stub over a stand-in target with the same features as the real one, which
//! does nothing and writes its replies nowhere.

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::GdbStub;
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
use gdbstub::target::{Target, TargetResult};

use super::arch::{NestbedX86, Regs};

/// True when gdbstub parses and handles `packet` (`$...#xx`, checksum valid) without ending
/// the session.
pub fn accepts(packet: &[u8]) -> bool {
    let mut target = Shadow;
    let Ok(mut sm) = GdbStub::new(Sink { written: 0 }).run_state_machine(&mut target) else { return false };
    for &b in packet {
        sm = match sm {
            GdbStubStateMachine::Idle(s) => match s.incoming_data(&mut target, b) {
                Ok(next) => next,
                Err(_) => return false,
            },
            // Only the last byte completes a packet; a stub that left Idle has taken it.
            _ => return true,
        };
    }
    true
}

/// Takes the stand-in's replies, up to what one real reply packet can hold: a packet whose
/// reply would be longer is one the real stub must not be given either.
struct Sink {
    written: usize,
}

/// Longer than any reply nestbed's stub sends (its packet buffer).
const REPLY_LIMIT: usize = 2 * 4096;

impl Connection for Sink {
    type Error = &'static str;

    fn write(&mut self, _: u8) -> Result<(), Self::Error> {
        self.written += 1;
        if self.written > REPLY_LIMIT {
            return Err("reply longer than a packet");
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The features `target::Debuggee` offers, each a no-op.
struct Shadow;

impl Target for Shadow {
    type Arch = NestbedX86;
    type Error = ();

    fn base_ops(&mut self) -> BaseOps<'_, NestbedX86, ()> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for Shadow {
    fn read_registers(&mut self, _: &mut Regs, _: Tid) -> TargetResult<(), Self> {
        Ok(())
    }
    fn write_registers(&mut self, _: &Regs, _: Tid) -> TargetResult<(), Self> {
        Ok(())
    }
    fn read_addrs(&mut self, _: u64, data: &mut [u8], _: Tid) -> TargetResult<usize, Self> {
        Ok(data.len())
    }
    fn write_addrs(&mut self, _: u64, _: &[u8], _: Tid) -> TargetResult<(), Self> {
        Ok(())
    }
    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), ()> {
        if let Some(t) = Tid::new(super::target::TID_L1) {
            active(t);
        }
        Ok(())
    }
    fn is_thread_alive(&mut self, _: Tid) -> Result<bool, ()> {
        Ok(true)
    }
    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for Shadow {
    fn thread_extra_info(&self, _: Tid, _: &mut [u8]) -> Result<usize, ()> {
        Ok(0)
    }
}

impl MultiThreadResume for Shadow {
    fn resume(&mut self) -> Result<(), ()> {
        Ok(())
    }
    fn clear_resume_actions(&mut self) -> Result<(), ()> {
        Ok(())
    }
    fn set_resume_action_continue(&mut self, _: Tid, _: Option<Signal>) -> Result<(), ()> {
        Ok(())
    }
    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for Shadow {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), ()> {
        Ok(())
    }
}

impl MultiThreadSingleStep for Shadow {
    fn set_resume_action_step(&mut self, _: Tid, _: Option<Signal>) -> Result<(), ()> {
        Ok(())
    }
}

impl Breakpoints for Shadow {
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

impl SwBreakpoint for Shadow {
    fn add_sw_breakpoint(&mut self, _: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(true)
    }
    fn remove_sw_breakpoint(&mut self, _: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(true)
    }
}

impl HwBreakpoint for Shadow {
    fn add_hw_breakpoint(&mut self, _: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(true)
    }
    fn remove_hw_breakpoint(&mut self, _: u64, _: usize) -> TargetResult<bool, Self> {
        Ok(true)
    }
}

impl HwWatchpoint for Shadow {
    fn add_hw_watchpoint(&mut self, _: u64, _: u64, _: WatchKind) -> TargetResult<bool, Self> {
        Ok(true)
    }
    fn remove_hw_watchpoint(&mut self, _: u64, _: u64, _: WatchKind) -> TargetResult<bool, Self> {
        Ok(true)
    }
}

impl MonitorCmd for Shadow {
    fn handle_monitor_cmd(&mut self, _: &[u8], _: ConsoleOutput<'_>) -> Result<(), ()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::accepts;

    fn packet(body: &str) -> Vec<u8> {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        format!("${body}#{sum:02x}").into_bytes()
    }

    #[test]
    fn well_formed_packets_pass_and_malformed_ones_do_not() {
        for ok in
            ["?", "g", "m100000,10", "Hg1", "qSupported:multiprocess+", "vCont;c", "Z0,1000,1", "Z9,1000,1", "D", "xyz"]
        {
            assert!(accepts(&packet(ok)), "{ok}");
        }
        for bad in ["Hg-1", "m", "mzz,1", "M1,2:zz", "G1", "Z0,1", "vCont;x", "vCont;t", "T-1", "qRcmd,zz", "D;zz"] {
            assert!(!accepts(&packet(bad)), "{bad}");
        }
    }
}
