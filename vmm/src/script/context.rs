//! The state of one exit as scripts see it (`ExitContext`), and the handle scripts hold on it
//! (`ExitRef`, the Rhai type `Exit`), with every read, change and decision as a checked
//! operation that returns an error value instead of panicking.

use std::cell::RefCell;
use std::rc::Rc;

use crate::exit::{Action, Exit, ExitDetail, Handler, Level};
use crate::machine::arch_rules;
use crate::machine::memory::{GuestRam, MemFault};
use crate::machine::paging::{self, PagingMode, PhysMem, WalkError};
use crate::nested::space::Region;
use crate::vmx::fields;
use crate::vmx::vmcs::Vmcs;

/// Register names in SDM order (the order of `ExitContext::gprs`).
pub const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// IA32_EFER.LMA: IA-32e mode is active.
const EFER_LMA: u64 = 1 << 10;

/// Largest block `read_phys`/`read_virt` return in one call.
pub const MAX_READ: i64 = 1 << 20;

/// Control registers and EFER (read-only to scripts), and the paging mode they make.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlRegs {
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub paging: PagingMode,
    /// Interruptibility state in GUEST_INTERRUPTIBILITY_INFO's format (SDM 25.4.2): blocking
    /// by STI, MOV SS, NMI.
    pub interruptibility: u32,
    /// The event the vCPU is delivering or has pending (an injected interrupt, exception or
    /// NMI) in interruption-information format (SDM 25.8.3), 0 if none.
    pub pending_event: u32,
}

/// An exit's own record: all a script that only observes can read. The run loop copies it at
/// the exit and hands it to the pipelined scripts' thread.
#[derive(Clone)]
pub struct ExitRecord {
    /// The exit as nestbed normalized it.
    pub exit: Exit,
    /// Who handles the exit unless a script decides: L1 for an L2 exit L1 asked for, else L0.
    pub route: Handler,
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// Captured only when a script names them (`analysis::Needs::control_regs`): reading them
    /// costs KVM a copy of SREGS on every exit.
    pub control: Option<ControlRegs>,
}

/// What the run loop fills for each exit and reads back after `on_exit`: the exit's record,
/// which scripts may change, and the live state around it.
#[derive(Clone)]
pub struct ExitContext {
    pub record: ExitRecord,
    /// Set when a script changed `gprs`, `rip` or `rflags`.
    pub regs_dirty: bool,
    /// L1's RAM; `None` in a copy of the exit taken for a script that only observes, which
    /// then may neither read nor change anything beyond the copy.
    pub ram: Option<GuestRam>,
    /// For an L2 exit while L1 uses EPT: L2-physical memory as L1's EPT maps it (else L2- and
    /// L1-physical are the same).
    pub l2_regions: Option<Vec<Region>>,
    /// Copy of L1's current VMCS, `None` when there is none.
    pub vmcs: Option<Vmcs>,
    /// Whether the run loop captured what memory accesses (`l2_regions`) and the VMCS calls
    /// (`vmcs`) need; it does only when the code analysis found a use (`Needs`).
    pub memory_captured: bool,
    pub vmcs_captured: bool,
    /// Set when a script wrote `vmcs`.
    pub vmcs_dirty: bool,
    /// Every VMCS write in order as (encoding, stored value), so the run loop can replay them
    /// after it fills the exit-information fields of a reflected exit.
    pub vmcs_writes: Vec<(u32, u64)>,
    /// The scripts' decision; `Default` unless one decided.
    pub action: Action,
    /// Readable record of every change ("rax=0x5", "action=skip"), for the trace.
    pub changes: Vec<String>,
    /// `patch_range` requests: (virtual address at the exit's level, length).
    pub patch_requests: Vec<(u64, u64)>,
}

impl ExitContext {
    /// A context with zeroed registers, no control registers and no VMCS; the run loop fills
    /// the rest. `ram` is `None` for a copy.
    pub fn new(exit: Exit, ram: Option<GuestRam>) -> Self {
        let record = ExitRecord { exit, route: Handler::L0, gprs: [0; 16], rip: 0, rflags: 0, control: None };
        ExitContext::with_record(record, ram)
    }

    /// A context on `record`; without `ram`, for the thread of pipelined scripts, it refuses
    /// changes and reads of memory or the VMCS (`ApiError::Copy`).
    pub fn with_record(record: ExitRecord, ram: Option<GuestRam>) -> Self {
        ExitContext {
            record,
            regs_dirty: false,
            ram,
            l2_regions: None,
            vmcs: None,
            memory_captured: true,
            vmcs_captured: true,
            vmcs_dirty: false,
            vmcs_writes: Vec::new(),
            action: Action::Default,
            changes: Vec::new(),
            patch_requests: Vec::new(),
        }
    }

    /// A cheap stand-in left in the caller's place while scripts hold the real context.
    pub(crate) fn placeholder(&self) -> Self {
        let exit = Exit {
            seq: self.record.exit.seq,
            level: self.record.exit.level,
            reason: self.record.exit.reason,
            qualification: 0,
            rip: 0,
            insn: Vec::new(),
            detail: ExitDetail::None,
            vmcs: None,
            guest_level: None,
        };
        ExitContext::new(exit, None)
    }
}

impl ExitContext {
    /// The exiting guest's physical memory (refused on a copy).
    fn mem(&self) -> ApiResult<GuestView<'_>> {
        let ram = self.ram.as_ref().ok_or(ApiError::Copy)?;
        if !self.memory_captured {
            return Err(ApiError::NotCaptured("guest memory"));
        }
        Ok(GuestView { ram, regions: self.l2_regions.as_deref() })
    }

    /// The control registers, when they were captured.
    pub fn control(&self) -> ApiResult<&ControlRegs> {
        self.record.control.as_ref().ok_or(ApiError::NotCaptured("the control registers"))
    }

    /// The current VMCS as captured (refused on a copy, or when not captured).
    fn vmcs(&self) -> ApiResult<&Option<Vmcs>> {
        if self.ram.is_none() {
            return Err(ApiError::Copy);
        }
        if !self.vmcs_captured {
            return Err(ApiError::NotCaptured("the VMCS"));
        }
        Ok(&self.vmcs)
    }

    /// Refuses changes and decisions on a copy.
    fn live(&mut self) -> ApiResult<&mut Self> {
        if self.ram.is_none() {
            return Err(ApiError::Copy);
        }
        Ok(self)
    }
}

/// Physical memory as the exiting guest sees it: L1's RAM, through L1's EPT for L2.
struct GuestView<'a> {
    ram: &'a GuestRam,
    regions: Option<&'a [Region]>,
}

impl GuestView<'_> {
    fn to_l1(&self, gpa: u64, len: usize, write: bool) -> Result<u64, MemFault> {
        let Some(regions) = self.regions else { return Ok(gpa) };
        let fault = MemFault { gpa, len };
        let i = regions.partition_point(|r| r.gpa <= gpa);
        let r = regions.get(i.checked_sub(1).ok_or(fault)?).ok_or(fault)?;
        let end = gpa.checked_add(len as u64).ok_or(fault)?;
        if end - r.gpa > r.size || (write && r.readonly) {
            return Err(fault);
        }
        Ok(r.l1 + (gpa - r.gpa))
    }
}

impl PhysMem for GuestView<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.ram.read(self.to_l1(gpa, buf.len(), false)?, buf)
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        self.ram.write(self.to_l1(gpa, buf.len(), true)?, buf)
    }
}

/// Why a script operation on an exit failed; shown to the script author as the error text.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the exit object is only valid during the on_exit call that received it")]
    Expired,
    #[error("the exit object is in use")]
    Busy,
    #[error(
        "this script runs on a copy of the exit, after nestbed handled it, because its code only \
         observes; memory, the VMCS or a change is out of its reach (run with --script-mode inline)"
    )]
    Copy,
    #[error("{0} was not captured for this script (internal: the code analysis missed a use; run with --script-mode inline and report it)")]
    NotCaptured(&'static str),
    #[error("no current VMCS (L1 has not made one current with VMPTRLD)")]
    NoVmcs,
    #[error("unknown VMCS field '{0}' (use the SDM/Linux name, e.g. EXIT_QUALIFICATION)")]
    UnknownField(String),
    #[error("{what} {value:#x} is out of range")]
    Range { what: &'static str, value: i64 },
    #[error("{what} is only possible on {when} (this is a {level} {reason} exit)")]
    NotHere { what: &'static str, when: &'static str, level: &'static str, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Memory(#[from] MemFault),
    #[error("{0}")]
    Walk(#[from] WalkError),
}

type ApiResult<T> = Result<T, ApiError>;

/// A script's handle on the current exit, shared with the host for the duration of `on_exit`.
#[derive(Clone)]
pub struct ExitRef(Rc<RefCell<Option<ExitContext>>>);

impl ExitRef {
    pub fn new(ctx: ExitContext) -> Self {
        ExitRef(Rc::new(RefCell::new(Some(ctx))))
    }

    /// Takes the context back; the handle (and any copy a script kept) expires.
    pub fn take(&self) -> Option<ExitContext> {
        self.0.try_borrow_mut().ok()?.take()
    }

    pub fn with<T>(&self, f: impl FnOnce(&ExitContext) -> ApiResult<T>) -> ApiResult<T> {
        let guard = self.0.try_borrow().map_err(|_| ApiError::Busy)?;
        f(guard.as_ref().ok_or(ApiError::Expired)?)
    }

    fn with_mut<T>(&self, f: impl FnOnce(&mut ExitContext) -> ApiResult<T>) -> ApiResult<T> {
        let mut guard = self.0.try_borrow_mut().map_err(|_| ApiError::Busy)?;
        f(guard.as_mut().ok_or(ApiError::Expired)?.live()?)
    }

    /// Reads any field of the context.
    pub fn get<T>(&self, f: impl FnOnce(&ExitContext) -> T) -> ApiResult<T> {
        self.with(|c| Ok(f(c)))
    }

    pub fn exit_detail<T>(&self, f: impl FnOnce(&ExitDetail) -> Option<T>) -> ApiResult<Option<T>> {
        self.with(|c| Ok(f(&c.record.exit.detail)))
    }

    /// Rhai writes a property back after any method call on it (`e.rax.to_string()`): storing
    /// the value it already has changes nothing, not even on a copy.
    fn unchanged(&self, current: impl FnOnce(&ExitContext) -> u64, v: u64) -> ApiResult<bool> {
        self.with(|c| Ok(current(c) == v))
    }

    pub fn set_gpr(&self, i: usize, v: u64) -> ApiResult<()> {
        if self.unchanged(|c| c.record.gprs[i], v)? {
            return Ok(());
        }
        self.with_mut(|c| {
            c.record.gprs[i] = v;
            c.regs_dirty = true;
            c.changes.push(format!("{}={v:#x}", GPR_NAMES[i]));
            Ok(())
        })
    }

    pub fn set_rip(&self, v: u64) -> ApiResult<()> {
        if self.unchanged(|c| c.record.rip, v)? {
            return Ok(());
        }
        self.with_mut(|c| {
            let code64 = c.record.control.and_then(|cr| (cr.efer & EFER_LMA == 0).then_some(false));
            arch_rules::check_rip(v, code64).map_err(|e| ApiError::Refused(format!("e.rip = {v:#x}: {e}")))?;
            c.record.rip = v;
            c.regs_dirty = true;
            c.changes.push(format!("rip={v:#x}"));
            Ok(())
        })
    }

    pub fn set_rflags(&self, v: u64) -> ApiResult<()> {
        if self.unchanged(|c| c.record.rflags, v)? {
            return Ok(());
        }
        self.with_mut(|c| {
            let ia32e = c.record.control.is_some_and(|cr| cr.efer & EFER_LMA != 0);
            arch_rules::check_rflags(v, ia32e).map_err(|e| ApiError::Refused(format!("e.rflags = {v:#x}: {e}")))?;
            c.record.rflags = v;
            c.regs_dirty = true;
            c.changes.push(format!("rflags={v:#x}"));
            Ok(())
        })
    }

    pub fn read_phys(&self, addr: i64, len: i64) -> ApiResult<Vec<u8>> {
        let len = read_len(len)?;
        self.with(|c| {
            let mut buf = vec![0; len];
            c.mem()?.read_phys(addr as u64, &mut buf)?;
            Ok(buf)
        })
    }

    pub fn write_phys(&self, addr: i64, data: &[u8]) -> ApiResult<()> {
        self.with_mut(|c| {
            c.mem()?.write_phys(addr as u64, data)?;
            c.changes.push(format!("phys[{addr:#x}]<-{} bytes", data.len()));
            Ok(())
        })
    }

    pub fn read_u64(&self, addr: i64) -> ApiResult<i64> {
        self.with(|c| {
            let mut b = [0u8; 8];
            c.mem()?.read_phys(addr as u64, &mut b)?;
            Ok(i64::from_le_bytes(b))
        })
    }

    pub fn write_u64(&self, addr: i64, v: i64) -> ApiResult<()> {
        self.with_mut(|c| {
            c.mem()?.write_phys(addr as u64, &v.to_le_bytes())?;
            c.changes.push(format!("phys[{addr:#x}]={:#x}", v as u64));
            Ok(())
        })
    }

    pub fn read_virt(&self, addr: i64, len: i64) -> ApiResult<Vec<u8>> {
        let len = read_len(len)?;
        self.with(|c| {
            let mut buf = vec![0; len];
            paging::read_virt(&c.mem()?, c.control()?.paging, addr as u64, &mut buf)?;
            Ok(buf)
        })
    }

    pub fn write_virt(&self, addr: i64, data: &[u8]) -> ApiResult<()> {
        self.with_mut(|c| {
            paging::write_virt(&c.mem()?, c.control()?.paging, addr as u64, data)?;
            c.changes.push(format!("virt[{addr:#x}]<-{} bytes", data.len()));
            Ok(())
        })
    }

    pub fn vmcs_read(&self, field: &str) -> ApiResult<i64> {
        let enc = encoding(field)?;
        self.vmcs_read_enc(enc)
    }

    pub fn vmcs_read_enc(&self, enc: u32) -> ApiResult<i64> {
        self.with(|c| {
            let vmcs = c.vmcs()?.as_ref().ok_or(ApiError::NoVmcs)?;
            let v = vmcs.read(enc).ok_or_else(|| ApiError::UnknownField(format!("{enc:#x}")))?;
            Ok(v as i64)
        })
    }

    pub fn vmcs_write(&self, field: &str, v: i64) -> ApiResult<()> {
        let enc = encoding(field)?;
        self.vmcs_write_enc(enc, v)
    }

    /// Stores like VMWRITE (truncated to the field's width) but also into exit-information
    /// fields, so scripts can change what L1 will see.
    pub fn vmcs_write_enc(&self, enc: u32, v: i64) -> ApiResult<()> {
        self.with_mut(|c| {
            c.vmcs()?;
            let vmcs = c.vmcs.as_mut().ok_or(ApiError::NoVmcs)?;
            if !vmcs.write(enc, v as u64) {
                return Err(ApiError::UnknownField(format!("{enc:#x}")));
            }
            let stored = vmcs.get(enc);
            let name = fields::by_encoding(enc).map_or("?", |(_, f)| f.name);
            c.vmcs_dirty = true;
            c.vmcs_writes.push((enc, stored));
            c.changes.push(format!("vmcs {name}={stored:#x}"));
            Ok(())
        })
    }

    /// Asks nestbed to patch the sensitive instructions in `len` bytes of code at virtual
    /// `addr` of the exiting level (code the load-time scan could not see, e.g. copied at run
    /// time). At most 1 MiB at a time.
    pub fn patch_range(&self, addr: i64, len: i64) -> ApiResult<()> {
        if !(1..=1 << 20).contains(&len) {
            return Err(ApiError::Range { what: "patch_range length", value: len });
        }
        self.with_mut(|c| {
            c.patch_requests.push((addr as u64, len as u64));
            c.changes.push(format!("patch_range {:#x}+{len:#x}", addr as u64));
            Ok(())
        })
    }

    pub fn decide(&self, action: Action) -> ApiResult<()> {
        self.with_mut(|c| {
            if matches!(action, Action::Reflect | Action::KeepInL0) && c.record.exit.level != Level::L2 {
                return Err(not_here(c, action_name(&action), "L2 exits"));
            }
            if matches!(action, Action::Value(_)) && !is_read(&c.record.exit.detail) {
                return Err(not_here(c, "set_result", "in, RDMSR and MMIO-read exits"));
            }
            c.changes.push(format!("action={}", describe(&action)));
            c.action = action;
            Ok(())
        })
    }
}

/// The name scripts see for an action (`e.action`).
pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Default => "default",
        Action::Skip => "skip",
        Action::Value(_) => "set_result",
        Action::Inject { .. } => "inject",
        Action::Reflect => "reflect",
        Action::KeepInL0 => "keep_in_l0",
        Action::Stop(_) => "stop",
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Value(v) => format!("set_result {v:#x}"),
        Action::Inject { vector, error_code: Some(ec) } => format!("inject {vector} error {ec:#x}"),
        Action::Inject { vector, error_code: None } => format!("inject {vector}"),
        Action::Stop(why) => format!("stop {why:?}"),
        other => action_name(other).to_string(),
    }
}

fn is_read(d: &ExitDetail) -> bool {
    matches!(
        d,
        ExitDetail::Io { write: false, .. }
            | ExitDetail::Msr { write: false, .. }
            | ExitDetail::Mmio { write: false, .. }
    )
}

fn not_here(c: &ExitContext, what: &'static str, when: &'static str) -> ApiError {
    ApiError::NotHere { what, when, level: c.record.exit.level.as_str(), reason: c.record.exit.reason_name() }
}

fn read_len(len: i64) -> ApiResult<usize> {
    if !(0..=MAX_READ).contains(&len) {
        return Err(ApiError::Range { what: "length", value: len });
    }
    Ok(len as usize)
}

fn encoding(field: &str) -> ApiResult<u32> {
    fields::by_name(field).map(|(_, f)| f.encoding).ok_or_else(|| ApiError::UnknownField(field.into()))
}

/// Checks that a script integer fits in `bits` unsigned bits.
pub fn unsigned(what: &'static str, v: i64, bits: u32) -> ApiResult<u64> {
    if v < 0 || (bits < 64 && (v as u64) >> bits != 0) {
        return Err(ApiError::Range { what, value: v });
    }
    Ok(v as u64)
}
