//! Known-good VMCS values for tests elsewhere in the crate.

use crate::vmx::caps::{entry, exit, proc, proc2, VmxCaps};
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

/// A VMCS that passes every check: 64-bit host, 64-bit guest, EPT + VPID, MSR bitmap.
pub fn test_vmcs_64bit() -> Vmcs {
    let caps = VmxCaps::default();
    let mut v = Vmcs::new(caps.revision());
    let s = |v: &mut Vmcs, e, x| v.set(e, x);
    s(&mut v, PIN_BASED_VM_EXEC_CONTROL, u64::from(caps.true_pin.allowed0));
    s(
        &mut v,
        CPU_BASED_VM_EXEC_CONTROL,
        u64::from(
            caps.true_primary.allowed0 | proc::HLT_EXITING | proc::USE_MSR_BITMAPS | proc::ACTIVATE_SECONDARY_CONTROLS,
        ),
    );
    s(&mut v, SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::ENABLE_EPT | proc2::ENABLE_VPID));
    s(
        &mut v,
        VM_EXIT_CONTROLS,
        u64::from(caps.true_exit.allowed0 | exit::HOST_ADDR_SPACE_SIZE | exit::SAVE_IA32_EFER | exit::LOAD_IA32_EFER),
    );
    s(&mut v, VM_ENTRY_CONTROLS, u64::from(caps.true_entry.allowed0 | entry::IA32E_MODE_GUEST | entry::LOAD_IA32_EFER));
    s(&mut v, MSR_BITMAP, 0x6000);
    s(&mut v, EPT_POINTER, 0x7000 | 6 | 3 << 3);
    s(&mut v, VIRTUAL_PROCESSOR_ID, 1);
    // Host.
    s(&mut v, HOST_CR0, 0x8005_0033);
    s(&mut v, HOST_CR3, 0x8000);
    s(&mut v, HOST_CR4, 0x2020);
    s(&mut v, HOST_CS_SELECTOR, 0x08);
    for e in [HOST_SS_SELECTOR, HOST_DS_SELECTOR, HOST_ES_SELECTOR] {
        s(&mut v, e, 0x10);
    }
    s(&mut v, HOST_TR_SELECTOR, 0x18);
    s(&mut v, HOST_TR_BASE, 0xffff_8000_0000_3000);
    s(&mut v, HOST_GDTR_BASE, 0xffff_8000_0000_4000);
    s(&mut v, HOST_IDTR_BASE, 0xffff_8000_0000_5000);
    s(&mut v, HOST_GS_BASE, 0xffff_8000_0000_6000);
    s(&mut v, HOST_RSP, 0xffff_8000_0001_0000);
    s(&mut v, HOST_RIP, 0xffff_ffff_8000_1000);
    s(&mut v, HOST_IA32_EFER, 0xd01);
    s(&mut v, HOST_IA32_PAT, 0x0007_0406_0007_0406);
    // Guest.
    s(&mut v, GUEST_CR0, 0x8000_0031);
    s(&mut v, GUEST_CR3, 0x9000);
    s(&mut v, GUEST_CR4, 0x2020);
    s(&mut v, GUEST_DR7, 0x400);
    s(&mut v, GUEST_RSP, 0x8000);
    s(&mut v, GUEST_RIP, 0x1000);
    s(&mut v, GUEST_RFLAGS, 0x2);
    s(&mut v, GUEST_CS_SELECTOR, 0x08);
    s(&mut v, GUEST_CS_LIMIT, 0xffff_ffff);
    s(&mut v, GUEST_CS_AR_BYTES, 0xa09b);
    for (sel, lim, ar) in [
        (GUEST_SS_SELECTOR, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES),
        (GUEST_DS_SELECTOR, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES),
        (GUEST_ES_SELECTOR, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES),
    ] {
        s(&mut v, sel, 0x10);
        s(&mut v, lim, 0xffff_ffff);
        s(&mut v, ar, 0xc093);
    }
    for ar in [GUEST_FS_AR_BYTES, GUEST_GS_AR_BYTES, GUEST_LDTR_AR_BYTES] {
        s(&mut v, ar, 0x1_0000);
    }
    s(&mut v, GUEST_TR_SELECTOR, 0x18);
    s(&mut v, GUEST_TR_BASE, 0x3000);
    s(&mut v, GUEST_TR_LIMIT, 0x67);
    s(&mut v, GUEST_TR_AR_BYTES, 0x8b);
    s(&mut v, GUEST_GDTR_BASE, 0x4000);
    s(&mut v, GUEST_GDTR_LIMIT, 0x27);
    s(&mut v, GUEST_IDTR_BASE, 0x5000);
    s(&mut v, GUEST_IDTR_LIMIT, 0xfff);
    s(&mut v, GUEST_IA32_EFER, 0x500);
    s(&mut v, GUEST_IA32_PAT, 0x0007_0406_0007_0406);
    s(&mut v, VMCS_LINK_POINTER, u64::MAX);
    v
}
