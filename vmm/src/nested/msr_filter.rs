//! L2's RDMSR/WRMSR normally stay inside KVM. For L1's MSR bitmap to be honoured (SDM 26.1.3,
//! 25.6.9), the L2 VM's MSR filter denies exactly the MSRs L1 intercepts, so those accesses
//! reach userspace and can be reflected. The filter is rebuilt only when the bitmap changes.
//! Writes of IA32_SYSENTER_CS/ESP/EIP, IA32_PAT and IA32_DEBUGCTL always reach nestbed, which
//! keeps their values for VM exits to save (see `transfer::SYSENTER_MSRS`, `debug_regs`).

use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};

use super::debug_regs::IA32_DEBUGCTL;
use super::transfer::{IA32_PAT, SYSENTER_MSRS};
use crate::error::{host, Error};
use crate::machine::{GuestRam, Vm};
use crate::vmx::fields::{CPU_BASED_VM_EXEC_CONTROL, MSR_BITMAP};
use crate::vmx::vmcs::Vmcs;

const USE_MSR_BITMAPS: u64 = 1 << 28;

#[derive(Default)]
pub struct MsrFilterState {
    /// The bitmap the filter was built from (None: "use MSR bitmaps" off, everything exits).
    applied: Option<Option<Vec<u8>>>,
}

impl MsrFilterState {
    /// Makes the L2 VM's filter match L1's current MSR-bitmap controls.
    pub fn sync(&mut self, vm: &Vm, ram: &GuestRam, vmcs: &Vmcs) -> Result<(), Error> {
        let want = if vmcs.get(CPU_BASED_VM_EXEC_CONTROL) & USE_MSR_BITMAPS != 0 {
            let mut b = vec![0u8; 4096];
            // A bitmap outside RAM reads as all ones: every access exits.
            if ram.read(vmcs.get(MSR_BITMAP), &mut b).is_err() {
                b.fill(0xff);
            }
            Some(b)
        } else {
            None
        };
        if self.applied.as_ref() == Some(&want) {
            return Ok(());
        }
        match &want {
            // KVM refuses a deny-all filter without ranges: give it one denied MSR.
            None => vm.fd.set_msr_filter(
                MsrFilterDefaultAction::DENY,
                &[MsrFilterRange {
                    flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                    base: 0,
                    msr_count: 1,
                    bitmap: &[0],
                }],
            ),
            Some(b) => {
                // Filter bitmaps allow where the bit is 1; MSR bitmaps exit where it is 1.
                let mut inv: Vec<Vec<u8>> = b.chunks(1024).map(|c| c.iter().map(|x| !x).collect()).collect();
                for msr in SYSENTER_MSRS.into_iter().chain([IA32_PAT, IA32_DEBUGCTL]) {
                    inv[2][msr as usize / 8] &= !(1 << (msr % 8));
                }
                let ranges = [
                    (MsrFilterRangeFlags::READ, 0u32, &inv[0]),
                    (MsrFilterRangeFlags::READ, 0xc000_0000, &inv[1]),
                    (MsrFilterRangeFlags::WRITE, 0, &inv[2]),
                    (MsrFilterRangeFlags::WRITE, 0xc000_0000, &inv[3]),
                ]
                .map(|(flags, base, bitmap)| MsrFilterRange { flags, base, msr_count: 0x2000, bitmap });
                // MSRs outside both ranges always exit (SDM 26.1.3).
                vm.fd.set_msr_filter(MsrFilterDefaultAction::DENY, &ranges)
            }
        }
        .map_err(host("KVM_X86_SET_MSR_FILTER (L2)"))?;
        self.applied = Some(want);
        Ok(())
    }
}
