//! The hooks every exit passes through before nestbed handles it: the scripts' `on_exit`
//! (with the registers, memory and VMCS of the exiting guest), then the trace line that records
//! what the scripts changed and who handles the exit.

use super::Runner;
use crate::error::Error;
use crate::exit::{Action, Exit, Handler, Level};
use crate::nested::env::{gprs, set_gpr};
use crate::script::{ControlRegs, ExitContext, ExitRecord, Needs};
use crate::vmx::decode::Gpr;
use crate::vmx::exit_info::ExitInfo;

impl Runner {
    /// Runs the scripts on `exit`, applies their register and VMCS changes, writes the trace
    /// line, and returns their decision with who handles the exit: `route` unless a script
    /// decided. For an L2 exit, `info`
    /// is the exit information L1 reads if it is reflected; scripts see and edit it there.
    /// A script error is traced, then returned.
    pub(super) fn observe(
        &mut self,
        exit: &Exit,
        route: Handler,
        info: Option<&mut ExitInfo>,
    ) -> Result<(Action, Handler), Error> {
        let mut notes = std::mem::take(&mut self.notes);
        let mut result = Ok(Action::Default);
        let mut handler = None;
        match self.scripts.as_ref().filter(|s| s.has_on_exit()).map(|s| (s.pipelined(), s.needs())) {
            Some((true, needs)) => {
                let record = self.exit_record(exit, route, needs);
                if let Some(s) = self.scripts.as_mut() {
                    result = s.queue(record).map(|()| Action::Default);
                }
                // An error here is an earlier exit's: this one was not the script's doing.
                handler = Some(route);
            }
            Some((false, needs)) => {
                let mut ctx = self.exit_context(exit, route, needs, info.as_deref());
                let r = match self.scripts.as_mut() {
                    Some(s) => s.on_exit(&mut ctx),
                    None => Ok(()),
                };
                self.apply_context(&ctx, info);
                for &(addr, len) in &ctx.patch_requests {
                    let note = self.patch_range(exit.level, addr, len);
                    ctx.changes.push(note);
                }
                notes.append(&mut ctx.changes);
                result = r.map(|()| ctx.action);
            }
            None => {}
        }
        let handler = handler.unwrap_or(match &result {
            Ok(a) => decided_handler(route, a),
            Err(_) => Handler::Script,
        });
        self.check_break_on_exit(exit);
        if let (Some(t), true) = (self.trace.as_mut(), self.tracing) {
            t.record(exit, handler, notes, self.start.elapsed().as_nanos() as u64)?;
        }
        if self.debug.attached {
            self.debug.remember(exit, handler);
        }
        result.map(|a| (a, handler))
    }

    /// Whether anything reads an exit's details: the trace, a script's `on_exit` or a debugger.
    pub(super) fn observed(&self) -> bool {
        (self.trace.is_some() && self.tracing)
            || self.scripts.as_ref().is_some_and(|s| s.has_on_exit())
            || self.debug.attached
    }

    /// The exit's own record, with the control registers when the scripts name them.
    fn exit_record(&mut self, exit: &Exit, route: Handler, needs: Needs) -> ExitRecord {
        let vmxe = self.virtual_vmxe(exit.level);
        let v = self.active();
        let r = v.regs();
        let (gprs, rip, rflags) = (gprs(r), r.rip, r.rflags);
        let control = needs.control_regs.then(|| {
            let s = *v.sregs();
            let (interruptibility, pending_event) = super::events::event_state(v.peek_events());
            ControlRegs {
                cr0: s.cr0,
                cr2: s.cr2,
                cr3: s.cr3,
                cr4: s.cr4 | vmxe,
                efer: s.efer,
                paging: v.paging(),
                interruptibility,
                pending_event,
            }
        });
        ExitRecord { exit: exit.clone(), route, gprs, rip, rflags, control }
    }

    /// The exit as inline scripts see it, with only what their code can use (`script::Needs`).
    fn exit_context(&mut self, exit: &Exit, route: Handler, needs: Needs, info: Option<&ExitInfo>) -> ExitContext {
        let mut ctx = ExitContext::with_record(self.exit_record(exit, route, needs), Some(self.l1_vm.ram.clone()));
        (ctx.memory_captured, ctx.vmcs_captured) = (needs.memory, needs.vmcs);
        if needs.vmcs {
            if let Err(e) = self.nested.settle_guest_dr7() {
                tracing::warn!("reading L2's DR7 for the script's VMCS: {e}");
            }
            ctx.vmcs = self.nested.vmx.current_vmcs().cloned();
        }
        if let (Some(info), Some(v)) = (info, ctx.vmcs.as_mut()) {
            // What L1 will read if the exit is reflected (SDM 28.2), so scripts see and change
            // this exit's values rather than the previous one's.
            info.record(v);
        }
        if let (Level::L2, Some(l2), true) = (exit.level, self.nested.l2.as_ref(), needs.memory) {
            if l2.space.eptp().is_some() {
                ctx.l2_regions = Some(l2.space.regions().copied().collect());
            }
        }
        ctx
    }

    /// Carries the scripts' register and VMCS changes back. Writes of exit-information fields
    /// during an L2 exit go into the exit's information (`info`), which a reflected exit
    /// records; the others go into the current VMCS.
    fn apply_context(&mut self, ctx: &ExitContext, mut info: Option<&mut ExitInfo>) {
        if ctx.regs_dirty {
            let r = self.active().regs_mut();
            for (i, v) in ctx.record.gprs.iter().enumerate() {
                set_gpr(r, Gpr(i as u8), *v);
            }
            r.rip = ctx.record.rip;
            r.rflags = ctx.record.rflags;
            self.script_rip = Some((ctx.record.rip, ctx.record.rflags));
        }
        if ctx.vmcs_dirty {
            for &(enc, v) in &ctx.vmcs_writes {
                if info.as_deref_mut().is_some_and(|i| i.write_field(enc, v)) {
                    continue;
                }
                if let Some(vmcs) = self.nested.vmx.current_vmcs_mut() {
                    vmcs.write(enc, v);
                }
            }
        }
    }
}

/// Who handles an exit after the scripts' decision: the route, unless a script decided
/// (including a script that sends an L2 exit to L1 or keeps it in nestbed).
fn decided_handler(route: Handler, action: &Action) -> Handler {
    match action {
        Action::Default => route,
        _ => Handler::Script,
    }
}
