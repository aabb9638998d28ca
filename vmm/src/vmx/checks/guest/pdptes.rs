//! SDM 27.3.1.6: checks on guest page-directory-pointer-table entries.

use crate::vmx::caps::{cr, proc2};
use crate::vmx::checks::{CheckClass, Violation, ENTRY_FAIL_PDPTE};
use crate::vmx::fields::{GUEST_PDPTR0, GUEST_PDPTR1, GUEST_PDPTR2, GUEST_PDPTR3};
use crate::vmx::vmcs::Vmcs;

use super::Guest;

/// SDM 27.3.1.6: guest PDPTEs, checked from the VMCS when PAE paging is used with EPT.
pub(super) fn check_pdptes(vmcs: &Vmcs, width: u8, g: &Guest) -> Result<(), Violation> {
    let &Guest { sec, ia32e, cr0, cr4, .. } = g;

    let pae_paging = cr0 & cr::CR0_PG != 0 && cr4 & cr::CR4_PAE != 0 && !ia32e;
    if pae_paging && sec & proc2::ENABLE_EPT != 0 {
        let reserved = 0x1e6 | if width < 64 { u64::MAX << width } else { 0 };
        for enc in [GUEST_PDPTR0, GUEST_PDPTR1, GUEST_PDPTR2, GUEST_PDPTR3] {
            let e = vmcs.get(enc);
            rule!(
                e & 1 != 0 && e & reserved != 0,
                CheckClass::GuestState { qualification: ENTRY_FAIL_PDPTE },
                "27.3.1.6",
                "guest PDPTE reserved bits set"
            );
        }
    }
    Ok(())
}
