//! DR7 and IA32_DEBUGCTL across VM entries and exits. On hardware one processor holds them:
//! VM entry loads GUEST_DR7 and GUEST_IA32_DEBUGCTL with "load debug controls", else L2 goes on
//! with L1's (SDM 27.3.2.1); VM exit saves them with "save debug controls" (28.3.1), then sets
//! DR7 to 400H and clears IA32_DEBUGCTL (28.5.1); DR0-DR3 and DR6 are never switched.
//!
//! nestbed's L1 and L2 are two vCPUs whose debug registers KVM holds, and every access is an
//! ioctl (7.5 µs measured on the project's host, a third of a nested round trip), so nestbed
//! moves them only where it knows a value changes:
//! - IA32_DEBUGCTL of both levels is known exactly: their WRMSRs always reach nestbed (L1's VM
//!   filter, L2's MSR filter), which performs them and keeps what the host took.
//! - DR7 changes with MOV DR, which KVM runs without an exit. Until L1 shows that it uses the
//!   debug registers, nestbed presumes that L1's DR7 is 400H (read at each VMLAUNCH) and that
//!   L2's is what nestbed last loaded or read; the DR7 "save debug controls" saves stays in
//!   L2's vCPU until L1 reads GUEST_DR7, the VMCS leaves the processor, or a VM entry would
//!   overwrite it. L1 shows it (DR7 ≠ 400H at a VMLAUNCH, a VM entry loading a DR7 ≠ 400H, or
//!   L2's saved DR7 found changed by L2): from then on every VM entry and exit moves DR0-DR3,
//!   DR6 and DR7 between the vCPUs as the SDM says, at up to two ioctls each.
//!
//! The hole left by the presumption: before L1 shows it, a MOV to DR7 of L1 between a VM exit
//! and the following VMRESUME (or of L2 when L1 does not save its DR7) is not seen.
//!
//! gdb's hardware breakpoints (KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW_BP) replace the
//! debug registers the vCPU runs with while gdb has some; KVM keeps the guest's own values
//! apart, so what this module loads and saves is what the guest reads, while only gdb's
//! breakpoints fire.

use kvm_bindings::kvm_debugregs;

use crate::error::Error;
use crate::machine::Vcpu;
use crate::vmx::caps::{entry, exit};
use crate::vmx::fields::{GUEST_DR7, GUEST_IA32_DEBUGCTL, VM_ENTRY_CONTROLS, VM_EXIT_CONTROLS};
use crate::vmx::vmcs::Vmcs;

/// DR7 after reset and after every VM exit (SDM 28.5.1).
pub const DR7_INIT: u64 = 0x400;
pub const IA32_DEBUGCTL: u32 = 0x1d9;

/// DR0-DR3, DR6, DR7 of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugRegs {
    pub db: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
}

/// A vCPU's debug registers and IA32_DEBUGCTL.
pub trait DebugAccess {
    fn get(&self) -> Result<DebugRegs, Error>;
    fn set(&self, d: &DebugRegs) -> Result<(), Error>;
    /// Writes IA32_DEBUGCTL and returns what the host kept (it may drop bits it does not
    /// support); `Ok(None)` when it refuses the value.
    fn write_debugctl(&self, v: u64) -> Result<Option<u64>, Error>;
    fn read_debugctl(&self) -> Result<u64, Error>;
}

impl DebugAccess for Vcpu {
    fn get(&self) -> Result<DebugRegs, Error> {
        let d = self.debugregs()?;
        Ok(DebugRegs { db: d.db, dr6: d.dr6, dr7: d.dr7 })
    }

    fn set(&self, d: &DebugRegs) -> Result<(), Error> {
        self.set_debugregs(&kvm_debugregs { db: d.db, dr6: d.dr6, dr7: d.dr7, ..Default::default() })
    }

    fn write_debugctl(&self, v: u64) -> Result<Option<u64>, Error> {
        if self.set_msrs_prefix(&[(IA32_DEBUGCTL, v)])? == 0 {
            return Ok(None);
        }
        self.read_debugctl().map(Some)
    }

    fn read_debugctl(&self) -> Result<u64, Error> {
        Ok(self.get_msrs(&[IA32_DEBUGCTL])?.first().copied().unwrap_or(0))
    }
}

/// What nestbed knows of both levels' debug registers and IA32_DEBUGCTL.
#[derive(Debug, Default)]
pub struct DebugState {
    /// L1 uses the debug registers: every transition moves them exactly.
    exact: bool,
    /// L1's registers read at the VM entry in progress; `None`: DR7 presumed 400H.
    l1_at_entry: Option<DebugRegs>,
    /// L2's registers as its vCPU holds them, as far as nestbed knows.
    l2: Option<DebugRegs>,
    /// The VMCS whose GUEST_DR7 is L2's DR7 as of the last VM exit, still in L2's vCPU.
    pending: Option<u64>,
    /// IA32_DEBUGCTL as the host holds it for L1 (0 after reset).
    l1_debugctl: u64,
    /// IA32_DEBUGCTL as the host holds it for L2, once known.
    l2_debugctl: Option<u64>,
}

impl DebugState {
    /// Whether every transition moves the debug registers (see the module comment).
    pub fn exact(&self) -> bool {
        self.exact
    }

    /// Whether the VMCS at `vmcs_addr` has GUEST_DR7 waiting in L2's vCPU.
    pub fn dr7_pending(&self, vmcs_addr: u64) -> bool {
        self.pending == Some(vmcs_addr)
    }

    /// Reads L2's DR7 into GUEST_DR7 of `vmcs` (the VMCS at `vmcs_addr`) if it is waiting there.
    pub fn resolve(&mut self, l2: &dyn DebugAccess, vmcs: &mut Vmcs, vmcs_addr: u64) -> Result<(), Error> {
        if self.pending != Some(vmcs_addr) {
            return Ok(());
        }
        self.pending = None;
        let d = l2.get()?;
        // L2 wrote DR7 itself: it uses the debug registers.
        self.exact |= self.l2.is_some_and(|k| k.dr7 != d.dr7);
        self.l2 = Some(d);
        vmcs.set(GUEST_DR7, d.dr7);
        Ok(())
    }

    /// L1 wrote GUEST_DR7: the saved value waiting in L2's vCPU is gone, and L2's DR7 (which
    /// L2 may have changed before the exit) is not known any more.
    pub fn guest_dr7_written(&mut self, vmcs_addr: u64) {
        if self.pending == Some(vmcs_addr) {
            self.pending = None;
            self.l2 = None;
        }
    }

    /// VM entry (SDM 27.3.2.1), after the checks: L2's DR7 and IA32_DEBUGCTL are GUEST_DR7 and
    /// GUEST_IA32_DEBUGCTL with "load debug controls", else L1's; DR0-DR3 and DR6 are L1's.
    pub fn entry(
        &mut self,
        l1: &dyn DebugAccess,
        l2: &dyn DebugAccess,
        vmcs: &mut Vmcs,
        vmcs_addr: u64,
        launch: bool,
    ) -> Result<(), Error> {
        let load = vmcs.get32(VM_ENTRY_CONTROLS) & entry::LOAD_DEBUG_CONTROLS != 0;
        let save = vmcs.get32(VM_EXIT_CONTROLS) & exit::SAVE_DEBUG_CONTROLS != 0;
        self.l1_at_entry = None;
        if launch || self.exact {
            let d = l1.get()?;
            self.exact |= d.dr7 != DR7_INIT;
            self.l1_at_entry = Some(d);
        }
        // Resuming with the DR7 the last exit saved: it is still in L2's vCPU, and stays the
        // value to save unless L2 changes it, when the next exit saves it again.
        let resumes_saved = !self.exact && load && save && self.pending == Some(vmcs_addr);
        if !resumes_saved {
            self.resolve(l2, vmcs, vmcs_addr)?;
            let dr7 = if load { vmcs.get(GUEST_DR7) } else { self.l1_at_entry.map_or(DR7_INIT, |d| d.dr7) };
            self.exact |= load && dr7 != DR7_INIT;
            let base = match (self.l1_at_entry, self.l2) {
                (Some(d), _) | (None, Some(d)) => d,
                (None, None) => l2.get()?,
            };
            let want = DebugRegs { dr7, ..base };
            if self.l2 != Some(want) {
                l2.set(&want)?;
                self.l2 = Some(want);
            }
        }
        let debugctl = if load { vmcs.get(GUEST_IA32_DEBUGCTL) } else { self.l1_debugctl };
        if self.l2_debugctl != Some(debugctl) {
            self.l2_debugctl = match l2.write_debugctl(debugctl)? {
                Some(kept) => Some(kept),
                None => Some(l2.read_debugctl()?),
            };
        }
        Ok(())
    }

    /// VM exit, saving the guest state (SDM 28.3.1): the DR7 to store into GUEST_DR7 now
    /// (`None`: keep the field, either because "save debug controls" is 0 or because L2's DR7
    /// stays waiting in its vCPU) and the IA32_DEBUGCTL to store.
    pub fn exit_save(&mut self, l2: &dyn DebugAccess, save: bool, vmcs_addr: u64) -> Result<(Option<u64>, u64), Error> {
        let mut dr7 = None;
        if self.exact {
            let d = l2.get()?;
            self.l2 = Some(d);
            dr7 = Some(d.dr7).filter(|_| save);
        } else if save {
            self.pending = Some(vmcs_addr);
        }
        let debugctl = match self.l2_debugctl {
            Some(v) => v,
            None => {
                let v = l2.read_debugctl()?;
                self.l2_debugctl = Some(v);
                v
            }
        };
        Ok((dr7, debugctl))
    }

    /// Loading the host state into L1 after a VM exit or a VM-entry failure (SDM 28.5.1, 27.8):
    /// DR7 := 400H, IA32_DEBUGCTL := 0; DR0-DR3 and DR6 are what L2 left (`from_l2`, after an
    /// exit) or L1's own.
    pub fn host_state(&mut self, l1: &dyn DebugAccess, from_l2: bool) -> Result<(), Error> {
        if self.exact {
            let base = match (from_l2, self.l2, self.l1_at_entry) {
                (true, Some(d), _) | (false, _, Some(d)) => d,
                _ => l1.get()?,
            };
            let want = DebugRegs { dr7: DR7_INIT, ..base };
            if self.l1_at_entry != Some(want) {
                l1.set(&want)?;
            }
        }
        self.l1_at_entry = None;
        if self.l1_debugctl != 0 {
            l1.write_debugctl(0)?;
            self.l1_debugctl = 0;
        }
        Ok(())
    }

    /// L1's WRMSR of IA32_DEBUGCTL, which always reaches nestbed: false when the host
    /// refuses it (#GP for L1).
    pub fn l1_debugctl_write(&mut self, l1: &dyn DebugAccess, v: u64) -> Result<bool, Error> {
        Ok(match l1.write_debugctl(v)? {
            Some(kept) => {
                self.l1_debugctl = kept;
                true
            }
            None => false,
        })
    }

    /// L2's WRMSR of IA32_DEBUGCTL that L1 does not intercept: false when the host refuses it.
    pub fn l2_debugctl_write(&mut self, l2: &dyn DebugAccess, v: u64) -> Result<bool, Error> {
        Ok(match l2.write_debugctl(v)? {
            Some(kept) => {
                self.l2_debugctl = Some(kept);
                true
            }
            None => false,
        })
    }

    /// An MSR area loaded IA32_DEBUGCTL into L1's vCPU: its value is read again.
    pub fn l1_debugctl_loaded(&mut self, l1: &dyn DebugAccess) -> Result<(), Error> {
        self.l1_debugctl = l1.read_debugctl()?;
        Ok(())
    }

    /// An MSR area loaded IA32_DEBUGCTL into L2's vCPU: read again when needed.
    pub fn l2_debugctl_loaded(&mut self) {
        self.l2_debugctl = None;
    }

    /// L2's IA32_DEBUGCTL if known without an ioctl.
    pub fn l2_debugctl(&self) -> Option<u64> {
        self.l2_debugctl
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::vmx::checks::testing::test_vmcs_64bit;

    /// A vCPU that counts ioctls; its IA32_DEBUGCTL keeps `supported` bits, as a host that
    /// drops the others does.
    #[derive(Default)]
    struct Fake {
        regs: RefCell<DebugRegs>,
        debugctl: Cell<u64>,
        supported: u64,
        ioctls: Cell<u32>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                regs: RefCell::new(DebugRegs { dr6: 0xffff_0ff0, dr7: DR7_INIT, ..Default::default() }),
                ..Default::default()
            }
        }
        fn mov_dr7(&self, v: u64) {
            self.regs.borrow_mut().dr7 = v;
        }
        fn dr7(&self) -> u64 {
            self.regs.borrow().dr7
        }
        fn take_ioctls(&self) -> u32 {
            self.ioctls.replace(0)
        }
    }

    impl DebugAccess for Fake {
        fn get(&self) -> Result<DebugRegs, Error> {
            self.ioctls.set(self.ioctls.get() + 1);
            Ok(*self.regs.borrow())
        }
        fn set(&self, d: &DebugRegs) -> Result<(), Error> {
            self.ioctls.set(self.ioctls.get() + 1);
            *self.regs.borrow_mut() = *d;
            Ok(())
        }
        fn write_debugctl(&self, v: u64) -> Result<Option<u64>, Error> {
            self.ioctls.set(self.ioctls.get() + 1);
            self.debugctl.set(v & self.supported);
            Ok(Some(v & self.supported))
        }
        fn read_debugctl(&self) -> Result<u64, Error> {
            self.ioctls.set(self.ioctls.get() + 1);
            Ok(self.debugctl.get())
        }
    }

    const VMCS_ADDR: u64 = 0x5000;

    fn vmcs(load: bool, save: bool, dr7: u64) -> Vmcs {
        let mut v = test_vmcs_64bit();
        let e = v.get32(VM_ENTRY_CONTROLS) & !entry::LOAD_DEBUG_CONTROLS;
        v.set(VM_ENTRY_CONTROLS, u64::from(e | if load { entry::LOAD_DEBUG_CONTROLS } else { 0 }));
        let x = v.get32(VM_EXIT_CONTROLS) & !exit::SAVE_DEBUG_CONTROLS;
        v.set(VM_EXIT_CONTROLS, u64::from(x | if save { exit::SAVE_DEBUG_CONTROLS } else { 0 }));
        v.set(GUEST_DR7, dr7);
        v
    }

    /// One VM exit as `vm_exit` does it: the save, then the host state.
    fn exit(s: &mut DebugState, l1: &Fake, l2: &Fake, v: &mut Vmcs) {
        let save = v.get32(VM_EXIT_CONTROLS) & exit::SAVE_DEBUG_CONTROLS != 0;
        let (dr7, debugctl) = s.exit_save(l2, save, VMCS_ADDR).unwrap();
        if save {
            if let Some(d) = dr7 {
                v.set(GUEST_DR7, d);
            }
            v.set(GUEST_IA32_DEBUGCTL, debugctl);
        }
        s.host_state(l1, true).unwrap();
    }

    /// An L1 that never touches the debug registers, without the debug controls (nestbed's own
    /// guests): one read at VMLAUNCH, then no ioctl at all.
    #[test]
    fn no_ioctls_without_debug_use() {
        let (l1, l2, mut s) = (Fake::new(), Fake::new(), DebugState::default());
        let mut v = vmcs(false, false, DR7_INIT);
        s.entry(&l1, &l2, &mut v, VMCS_ADDR, true).unwrap();
        // The launch reads L1; L2's first entry reads and writes its DEBUGCTL once.
        assert!(l1.take_ioctls() == 1 && l2.take_ioctls() <= 2);
        for _ in 0..10 {
            exit(&mut s, &l1, &l2, &mut v);
            s.entry(&l1, &l2, &mut v, VMCS_ADDR, false).unwrap();
        }
        assert_eq!((l1.take_ioctls(), l2.take_ioctls()), (0, 0));
        assert!(!s.exact());
    }

    /// A KVM-style L1 (load and save debug controls with DR7 = 400H): the saved DR7 waits in
    /// L2's vCPU; reading GUEST_DR7 fetches it once.
    #[test]
    fn saved_dr7_is_read_when_l1_asks() {
        let (l1, l2, mut s) = (Fake::new(), Fake::new(), DebugState::default());
        let mut v = vmcs(true, true, DR7_INIT);
        s.entry(&l1, &l2, &mut v, VMCS_ADDR, true).unwrap();
        l1.take_ioctls();
        l2.take_ioctls();
        for _ in 0..10 {
            exit(&mut s, &l1, &l2, &mut v);
            s.entry(&l1, &l2, &mut v, VMCS_ADDR, false).unwrap();
        }
        assert_eq!((l1.take_ioctls(), l2.take_ioctls()), (0, 0));
        exit(&mut s, &l1, &l2, &mut v);
        assert!(s.dr7_pending(VMCS_ADDR));
        s.resolve(&l2, &mut v, VMCS_ADDR).unwrap();
        assert_eq!((v.get(GUEST_DR7), l2.take_ioctls()), (DR7_INIT, 1));
        assert!(!s.exact());
        // L2 set DR7 itself: the save finds it, and from then on nestbed moves DR7 exactly.
        s.entry(&l1, &l2, &mut v, VMCS_ADDR, false).unwrap();
        l2.mov_dr7(0x408);
        exit(&mut s, &l1, &l2, &mut v);
        s.resolve(&l2, &mut v, VMCS_ADDR).unwrap();
        assert_eq!(v.get(GUEST_DR7), 0x408);
        assert!(s.exact());
    }

    /// kvm-unit-tests' "debug controls": load and save with L1's DR7 = 402H at the launch, then
    /// neither control.
    #[test]
    fn debug_controls_as_kvm_unit_tests_checks_them() {
        let (l1, l2, mut s) = (Fake::new(), Fake::new(), DebugState::default());
        l1.mov_dr7(0x402);
        let mut v = vmcs(true, true, 0x404);
        v.set(GUEST_IA32_DEBUGCTL, 2);
        s.entry(&l1, &l2, &mut v, VMCS_ADDR, true).unwrap();
        assert!(s.exact());
        assert_eq!(l2.dr7(), 0x404, "Load debug controls");
        assert_eq!(l2.debugctl.get(), 0, "this host keeps no DEBUGCTL bit");
        l2.mov_dr7(0x408);
        exit(&mut s, &l1, &l2, &mut v);
        assert_eq!((l1.dr7(), v.get(GUEST_DR7)), (DR7_INIT, 0x408), "Save debug controls");
        // Stage 2: L1 sets DR7 = 402H and clears both controls: L2 goes on with L1's DR7.
        l1.mov_dr7(0x402);
        let mut v2 = vmcs(false, false, 0x404);
        s.entry(&l1, &l2, &mut v2, VMCS_ADDR, false).unwrap();
        assert_eq!(l2.dr7(), 0x402, "Guest=host debug controls");
        l2.mov_dr7(0x408);
        exit(&mut s, &l1, &l2, &mut v2);
        assert_eq!((l1.dr7(), v2.get(GUEST_DR7)), (DR7_INIT, 0x404), "Don't save debug controls");
    }

    #[test]
    fn debugctl_follows_what_the_host_keeps() {
        let (l1, mut l2, mut s) = (Fake::new(), Fake::new(), DebugState::default());
        l2.supported = 1;
        let mut v = vmcs(true, true, DR7_INIT);
        v.set(GUEST_IA32_DEBUGCTL, 3);
        s.entry(&l1, &l2, &mut v, VMCS_ADDR, true).unwrap();
        assert_eq!(l2.debugctl.get(), 1);
        assert!(s.l2_debugctl_write(&l2, 0).unwrap());
        exit(&mut s, &l1, &l2, &mut v);
        assert_eq!(v.get(GUEST_IA32_DEBUGCTL), 0);
        // L1's IA32_DEBUGCTL is cleared at the exit only when it is not 0 already.
        let mut l1 = Fake::new();
        l1.supported = u64::MAX;
        assert!(s.l1_debugctl_write(&l1, 1).unwrap());
        l1.take_ioctls();
        s.host_state(&l1, true).unwrap();
        assert_eq!((l1.debugctl.get(), l1.take_ioctls()), (0, 1));
        s.host_state(&l1, true).unwrap();
        assert_eq!(l1.take_ioctls(), 0);
    }
}
