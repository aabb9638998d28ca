//! The VM-entry rules, each made to fail from a known-good VMCS, and the count of named
//! rules.

use std::collections::BTreeSet;
use std::path::Path;

use super::testing::test_vmcs_64bit;
use super::*;
use crate::vmx::caps::{entry, proc, proc2, VmxCaps};
use crate::vmx::cpu::testing::Ram;
use crate::vmx::fields::*;

/// L1-physical memory for the VMCS link pointer: nothing there.
const NO_RAM: &Ram = &Ram(Vec::new());

fn check(v: &Vmcs) -> Result<(), Violation> {
    check_vm_entry(v, &VmxCaps::default(), 36, NO_RAM)
}

fn expect(changes: &[(u32, u64)], rule: &str, class: CheckClass) {
    let mut v = test_vmcs_64bit();
    for &(e, x) in changes {
        v.set(e, x);
    }
    let got = check(&v).expect_err(rule);
    assert_eq!(got.rule, rule);
    assert_eq!(got.class, class, "{rule}");
}

#[test]
fn good_vmcs_passes() {
    assert_eq!(check(&test_vmcs_64bit()), Ok(()));
}

#[test]
fn control_rules() {
    let v = test_vmcs_64bit();
    let primary = v.get(CPU_BASED_VM_EXEC_CONTROL);
    let sec = v.get(SECONDARY_VM_EXEC_CONTROL);
    let entryv = v.get(VM_ENTRY_CONTROLS);
    let pinv = v.get(PIN_BASED_VM_EXEC_CONTROL);
    let cases: &[(&[(u32, u64)], &str)] = &[
        (&[(PIN_BASED_VM_EXEC_CONTROL, 0)], "pin-based controls violate IA32_VMX_TRUE_PINBASED_CTLS"),
        (&[(PIN_BASED_VM_EXEC_CONTROL, pinv | 1 << 7)], "pin-based controls violate IA32_VMX_TRUE_PINBASED_CTLS"),
        (
            &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 3)],
            "primary processor-based controls violate IA32_VMX_TRUE_PROCBASED_CTLS",
        ),
        (
            &[(SECONDARY_VM_EXEC_CONTROL, sec | 1 << 13)],
            "secondary processor-based controls violate IA32_VMX_PROCBASED_CTLS2",
        ),
        (&[(CR3_TARGET_COUNT, 5)], "CR3-target count greater than supported"),
        (
            &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 25), (IO_BITMAP_A, 0x1001)],
            "I/O bitmap A address not 4-KByte aligned or beyond physical-address width",
        ),
        (
            &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 25), (IO_BITMAP_B, 1 << 40)],
            "I/O bitmap B address not 4-KByte aligned or beyond physical-address width",
        ),
        (&[(MSR_BITMAP, 0x6008)], "MSR bitmap address not 4-KByte aligned or beyond physical-address width"),
        (&[(VIRTUAL_PROCESSOR_ID, 0)], "VPID is 0 while enable VPID is set"),
        (&[(EPT_POINTER, 0x7000 | 3 << 3)], "EPTP memory type not supported"),
        (&[(EPT_POINTER, 0x7000 | 6 | 2 << 3)], "EPTP page-walk length not supported"),
        (&[(EPT_POINTER, 0x7000 | 6 | 3 << 3 | 1 << 6)], "EPTP accessed/dirty enable set without support"),
        (&[(EPT_POINTER, 0x7000 | 6 | 3 << 3 | 1 << 8)], "EPTP reserved bits 11:7 set"),
        (&[(EPT_POINTER, 1 << 36 | 6 | 3 << 3)], "EPTP address beyond physical-address width"),
        (&[(VM_EXIT_CONTROLS, 0)], "VM-exit controls violate IA32_VMX_TRUE_EXIT_CTLS"),
        (
            &[(VM_EXIT_MSR_STORE_COUNT, 1), (VM_EXIT_MSR_STORE_ADDR, 0x1008)],
            "VM-exit MSR-store address not 16-byte aligned or list beyond physical-address width",
        ),
        (
            &[(VM_EXIT_MSR_LOAD_COUNT, 1), (VM_EXIT_MSR_LOAD_ADDR, 0x1004)],
            "VM-exit MSR-load address not 16-byte aligned or list beyond physical-address width",
        ),
        (&[(VM_ENTRY_CONTROLS, entryv | 1 << 13)], "VM-entry controls violate IA32_VMX_TRUE_ENTRY_CTLS"),
        (
            &[(VM_ENTRY_MSR_LOAD_COUNT, 2), (VM_ENTRY_MSR_LOAD_ADDR, (1 << 36) - 16)],
            "VM-entry MSR-load address not 16-byte aligned or list beyond physical-address width",
        ),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0100)], "VM-entry interruption type reserved"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0203)], "VM-entry NMI injection with vector other than 2"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0320)], "VM-entry hardware exception with vector above 31"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0701)], "VM-entry other-event injection with vector other than 0"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b06)], "VM-entry deliver-error-code set for event without error code"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_030d)], "VM-entry deliver-error-code clear for exception with error code"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_1020)], "VM-entry interruption-information reserved bits 30:12 set"),
        (
            &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b0d), (VM_ENTRY_EXCEPTION_ERROR_CODE, 0x1_0000)],
            "VM-entry exception error code bits 31:15 set",
        ),
        (
            &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0603), (VM_ENTRY_INSTRUCTION_LEN, 0)],
            "VM-entry instruction length out of range for software event",
        ),
    ];
    for (changes, rule) in cases {
        expect(changes, rule, CheckClass::Control);
    }
    // Secondary controls are ignored unless activated.
    let mut v = test_vmcs_64bit();
    v.set(SECONDARY_VM_EXEC_CONTROL, 0xffff_ffff);
    v.set(CPU_BASED_VM_EXEC_CONTROL, primary & !u64::from(proc::ACTIVATE_SECONDARY_CONTROLS));
    assert_eq!(check(&v), Ok(()));
    // A valid injected #GP with error code passes.
    let mut v = test_vmcs_64bit();
    v.set(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b0d);
    assert_eq!(check(&v), Ok(()));
    assert!(eptp_valid(0x7000 | 6 | 3 << 3, &VmxCaps::default(), 36));
}

#[test]
fn host_rules() {
    let v = test_vmcs_64bit();
    let exitv = v.get(VM_EXIT_CONTROLS);
    let cases: &[(&[(u32, u64)], &str)] = &[
        (&[(HOST_CR0, 0x8005_0013)], "host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
        (&[(HOST_CR0, 0x1_8005_0033)], "host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
        (&[(HOST_CR4, 0x20)], "host CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
        (&[(HOST_CR3, 1 << 40)], "host CR3 beyond physical-address width"),
        (&[(HOST_IA32_SYSENTER_ESP, 1 << 47)], "host IA32_SYSENTER_ESP not canonical"),
        (&[(HOST_IA32_SYSENTER_EIP, 1 << 50)], "host IA32_SYSENTER_EIP not canonical"),
        (&[(VM_EXIT_CONTROLS, exitv | 1 << 19), (HOST_IA32_PAT, 2)], "host IA32_PAT has an invalid memory type"),
        (&[(HOST_IA32_EFER, 0xd01 | 1 << 20)], "host IA32_EFER reserved bits set"),
        (&[(HOST_IA32_EFER, 0x901)], "host IA32_EFER.LMA differs from host address-space size"),
        (&[(HOST_IA32_EFER, 0xc01)], "host IA32_EFER.LME differs from host address-space size"),
        (&[(HOST_ES_SELECTOR, 0x13)], "host ES selector RPL or TI not 0"),
        (&[(HOST_CS_SELECTOR, 0x0c)], "host CS selector RPL or TI not 0"),
        (&[(HOST_TR_SELECTOR, 0x1b)], "host TR selector RPL or TI not 0"),
        (&[(HOST_CS_SELECTOR, 0)], "host CS selector is 0"),
        (&[(HOST_TR_SELECTOR, 0)], "host TR selector is 0"),
        (&[(HOST_FS_BASE, 1 << 47)], "host FS base not canonical"),
        (&[(HOST_GS_BASE, 1 << 47)], "host GS base not canonical"),
        (&[(HOST_GDTR_BASE, 1 << 47)], "host GDTR base not canonical"),
        (&[(HOST_IDTR_BASE, 1 << 47)], "host IDTR base not canonical"),
        (&[(HOST_TR_BASE, 1 << 47)], "host TR base not canonical"),
        (&[(HOST_CR4, 0x2000)], "host CR4.PAE clear while host address-space size is 1"),
        (&[(HOST_RIP, 0x0000_8000_0000_0000)], "host RIP not canonical"),
        (
            &[(VM_EXIT_CONTROLS, exitv & !(1 << 9)), (HOST_IA32_EFER, 0x1)],
            "host address-space size is 0 in IA-32e mode",
        ),
    ];
    for (changes, rule) in cases {
        expect(changes, rule, CheckClass::HostState);
    }
    // SS may be 0 with a 64-bit host.
    let mut v = test_vmcs_64bit();
    v.set(HOST_SS_SELECTOR, 0);
    assert_eq!(check(&v), Ok(()));
    // 32-bit host (processor outside IA-32e mode).
    let mut v = test_vmcs_64bit();
    v.set(VM_EXIT_CONTROLS, exitv & !(1 << 9));
    v.set(HOST_IA32_EFER, 1);
    let caps = VmxCaps::default();
    let e = check_vm_entry_from(&v, &caps, 36, false, NO_RAM).unwrap_err();
    assert_eq!((e.rule, e.class), ("IA-32e mode guest set outside IA-32e mode", CheckClass::Control));
    let entryv = v.get(VM_ENTRY_CONTROLS) & !(1 << 9);
    v.set(VM_ENTRY_CONTROLS, entryv);
    v.set(HOST_SS_SELECTOR, 0);
    assert_eq!(
        check_vm_entry_from(&v, &caps, 36, false, NO_RAM).unwrap_err().rule,
        "host SS selector is 0 while host address-space size is 0"
    );
    v.set(HOST_SS_SELECTOR, 0x10);
    v.set(HOST_CR4, 0x2000 | 1 << 17);
    assert_eq!(
        check_vm_entry_from(&v, &caps, 36, false, NO_RAM).unwrap_err().rule,
        "host CR4.PCIDE set while host address-space size is 0"
    );
    v.set(HOST_CR4, 0x2000);
    assert_eq!(
        check_vm_entry_from(&v, &caps, 36, false, NO_RAM).unwrap_err().rule,
        "host RIP bits 63:32 set while host address-space size is 0"
    );
}

#[test]
fn guest_rules() {
    let g = CheckClass::GuestState { qualification: 0 };
    let entryv = test_vmcs_64bit().get(VM_ENTRY_CONTROLS);
    let cases: &[(&[(u32, u64)], &str)] = &[
        (&[(GUEST_CR0, 0x8000_0011)], "guest CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
        (&[(GUEST_CR4, 0x20)], "guest CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
        (&[(GUEST_CR4, 0x2020 | 1 << 22)], "guest CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
        (&[(VM_ENTRY_CONTROLS, entryv | 4), (GUEST_IA32_DEBUGCTL, 1 << 3)], "guest IA32_DEBUGCTL reserved bits set"),
        (&[(GUEST_CR4, 0x2000)], "IA-32e mode guest with CR4.PAE clear"),
        (&[(GUEST_CR3, 1 << 36)], "guest CR3 beyond physical-address width"),
        (&[(VM_ENTRY_CONTROLS, entryv | 4), (GUEST_DR7, 1 << 32)], "guest DR7 bits 63:32 set"),
        (&[(GUEST_SYSENTER_ESP, 1 << 47)], "guest IA32_SYSENTER_ESP not canonical"),
        (&[(GUEST_SYSENTER_EIP, 1 << 47)], "guest IA32_SYSENTER_EIP not canonical"),
        (&[(VM_ENTRY_CONTROLS, entryv | 1 << 14), (GUEST_IA32_PAT, 3)], "guest IA32_PAT has an invalid memory type"),
        (&[(GUEST_IA32_EFER, 0x500 | 1 << 9)], "guest IA32_EFER reserved bits set"),
        (&[(GUEST_IA32_EFER, 0x100)], "guest IA32_EFER.LMA differs from IA-32e mode guest"),
        (&[(GUEST_IA32_EFER, 0x400)], "guest IA32_EFER.LME differs from LMA while CR0.PG set"),
        (&[(GUEST_TR_SELECTOR, 0x1c)], "guest TR selector TI flag set"),
        (&[(GUEST_LDTR_AR_BYTES, 0x82), (GUEST_LDTR_SELECTOR, 0x24)], "guest LDTR selector TI flag set"),
        (
            &[(GUEST_SS_SELECTOR, 0x13), (GUEST_SS_AR_BYTES, 0xc0f3)],
            "guest SS selector RPL differs from CS selector RPL",
        ),
        (&[(GUEST_TR_BASE, 1 << 47)], "guest TR base not canonical"),
        (&[(GUEST_FS_BASE, 1 << 47)], "guest FS base not canonical"),
        (&[(GUEST_GS_BASE, 1 << 47)], "guest GS base not canonical"),
        (&[(GUEST_LDTR_AR_BYTES, 0x82), (GUEST_LDTR_BASE, 1 << 47)], "guest LDTR base not canonical"),
        (&[(GUEST_CS_BASE, 1 << 32)], "guest CS base bits 63:32 set"),
        (&[(GUEST_SS_BASE, 1 << 32)], "guest SS base bits 63:32 set"),
        (&[(GUEST_DS_BASE, 1 << 32)], "guest DS base bits 63:32 set"),
        (&[(GUEST_ES_BASE, 1 << 32)], "guest ES base bits 63:32 set"),
        (&[(GUEST_CS_AR_BYTES, 0xa093)], "guest CS type not an accessed code segment"),
        (&[(GUEST_CS_AR_BYTES, 0xa09a)], "guest CS type not an accessed code segment"),
        (&[(GUEST_CS_AR_BYTES, 0xa08b)], "guest CS S flag clear"),
        (&[(GUEST_CS_AR_BYTES, 0xa0bb)], "guest CS DPL differs from SS DPL for non-conforming code"),
        (&[(GUEST_CS_AR_BYTES, 0xa0ff)], "guest CS DPL greater than SS DPL for conforming code"),
        (&[(GUEST_CS_AR_BYTES, 0xa01b)], "guest CS not present"),
        (&[(GUEST_CS_AR_BYTES, 0xa19b)], "guest CS access-rights reserved bits set"),
        (&[(GUEST_CS_AR_BYTES, 0xe09b)], "guest CS.L and CS.D both set in IA-32e mode"),
        (&[(GUEST_CS_AR_BYTES, 0x209b)], "guest CS granularity inconsistent with limit"),
        (&[(GUEST_SS_AR_BYTES, 0xc09b)], "guest SS type not read/write accessed data"),
        (&[(GUEST_SS_AR_BYTES, 0xc083)], "guest SS S flag clear"),
        (&[(GUEST_SS_AR_BYTES, 0xc013)], "guest SS not present"),
        (&[(GUEST_SS_AR_BYTES, 0xc293)], "guest SS access-rights reserved bits set"),
        (&[(GUEST_SS_LIMIT, 0xfff0)], "guest SS granularity inconsistent with limit"),
        (&[(GUEST_DS_AR_BYTES, 0xc092)], "guest DS type not accessed or unreadable code"),
        (&[(GUEST_DS_AR_BYTES, 0xc099)], "guest DS type not accessed or unreadable code"),
        (&[(GUEST_ES_AR_BYTES, 0xc083)], "guest ES S flag clear"),
        (
            &[(GUEST_FS_AR_BYTES, 0xc093), (GUEST_FS_SELECTOR, 3), (GUEST_FS_LIMIT, 0xffff_ffff)],
            "guest FS DPL less than RPL",
        ),
        (&[(GUEST_GS_AR_BYTES, 0xc013), (GUEST_GS_LIMIT, 0xffff_ffff)], "guest GS not present"),
        (
            &[(GUEST_GS_AR_BYTES, 0xc093 | 1 << 20), (GUEST_GS_LIMIT, 0xffff_ffff)],
            "guest GS access-rights reserved bits set",
        ),
        (&[(GUEST_DS_LIMIT, 0x1_0000)], "guest DS granularity inconsistent with limit"),
        (&[(GUEST_TR_AR_BYTES, 0x1_008b)], "guest TR unusable"),
        (&[(GUEST_TR_AR_BYTES, 0x83)], "guest TR type not a busy TSS"),
        (&[(GUEST_TR_AR_BYTES, 0x89)], "guest TR type not a busy TSS"),
        (&[(GUEST_TR_AR_BYTES, 0x9b)], "guest TR S flag set"),
        (&[(GUEST_TR_AR_BYTES, 0x0b)], "guest TR not present"),
        (&[(GUEST_TR_AR_BYTES, 0x2_008b)], "guest TR access-rights reserved bits set"),
        (&[(GUEST_TR_LIMIT, 0x10_0000)], "guest TR granularity inconsistent with limit"),
        (&[(GUEST_LDTR_AR_BYTES, 0x83)], "guest LDTR type not LDT"),
        (&[(GUEST_LDTR_AR_BYTES, 0x92)], "guest LDTR S flag set"),
        (&[(GUEST_LDTR_AR_BYTES, 0x02)], "guest LDTR not present"),
        (&[(GUEST_LDTR_AR_BYTES, 0x8082)], "guest LDTR granularity inconsistent with limit"),
        (&[(GUEST_GDTR_BASE, 1 << 47)], "guest GDTR base not canonical"),
        (&[(GUEST_IDTR_BASE, 1 << 47)], "guest IDTR base not canonical"),
        (&[(GUEST_GDTR_LIMIT, 0x1_0000)], "guest GDTR limit bits 31:16 set"),
        (&[(GUEST_IDTR_LIMIT, 0x1_0000)], "guest IDTR limit bits 31:16 set"),
        (&[(GUEST_RIP, 1 << 47)], "guest RIP not canonical in 64-bit mode"),
        (&[(GUEST_CS_AR_BYTES, 0xc09b), (GUEST_RIP, 1 << 32)], "guest RIP bits 63:32 set outside 64-bit mode"),
        (&[(GUEST_RFLAGS, 0x2 | 1 << 15)], "guest RFLAGS reserved bits set"),
        (&[(GUEST_RFLAGS, 0x2 | 1 << 22)], "guest RFLAGS reserved bits set"),
        (&[(GUEST_RFLAGS, 0)], "guest RFLAGS bit 1 clear"),
        (&[(GUEST_RFLAGS, 0x2 | 1 << 17)], "guest RFLAGS.VM set in IA-32e mode or real mode"),
        (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0020)], "guest RFLAGS.IF clear while injecting an external interrupt"),
        (&[(GUEST_ACTIVITY_STATE, 2)], "guest activity state not supported"),
        (&[(GUEST_INTERRUPTIBILITY_INFO, 1 << 5)], "guest interruptibility-state reserved bits set"),
        (&[(GUEST_INTERRUPTIBILITY_INFO, 3), (GUEST_RFLAGS, 0x202)], "guest blocking by STI and by MOV SS both set"),
        (&[(GUEST_INTERRUPTIBILITY_INFO, 1)], "guest blocking by STI set while RFLAGS.IF clear"),
        (
            &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_RFLAGS, 0x202), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0020)],
            "guest blocking by STI or MOV SS while injecting an external interrupt",
        ),
        (
            &[(GUEST_INTERRUPTIBILITY_INFO, 2), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0202)],
            "guest blocking by MOV SS while injecting an NMI",
        ),
        (&[(GUEST_INTERRUPTIBILITY_INFO, 4)], "guest blocking by SMI set outside SMM"),
        (&[(GUEST_PENDING_DBG_EXCEPTIONS, 1 << 4)], "guest pending debug exceptions reserved bits set"),
        (
            &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_RFLAGS, 0x102)],
            "guest pending debug BS clear while single-stepping with interrupts blocked",
        ),
        (
            &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_PENDING_DBG_EXCEPTIONS, 1 << 14)],
            "guest pending debug BS set while not single-stepping",
        ),
    ];
    for (changes, rule) in cases {
        expect(changes, rule, g);
    }
    expect(
        &[(VMCS_LINK_POINTER, 0x1000)],
        "VMCS link pointer region's revision identifier not the processor's",
        CheckClass::GuestState { qualification: ENTRY_FAIL_VMCS_LINK_PTR },
    );
    expect(
        &[(GUEST_INTERRUPTIBILITY_INFO, 1), (GUEST_RFLAGS, 0x202), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0202)],
        "guest blocking by STI while injecting an NMI",
        CheckClass::GuestState { qualification: ENTRY_FAIL_NMI },
    );
}

/// SDM 27.2.1.1 (VMREAD/VMWRITE bitmaps with VMCS shadowing) and 27.3.1.5 (VMCS link pointer:
/// all ones, or a VMCS region with the processor's revision and the shadow-VMCS indicator equal
/// to the "VMCS shadowing" control; memory outside RAM reads as all ones).
#[test]
fn vmcs_shadowing_and_link_pointer() {
    let caps = VmxCaps::default();
    let rev = caps.revision();
    let mut ram = Ram(vec![0; 0x4000]);
    ram.put_u32(0x1000, rev);
    ram.put_u32(0x2000, rev | 1 << 31);
    ram.put_u32(0x3000, 0x1234);
    let link = CheckClass::GuestState { qualification: ENTRY_FAIL_VMCS_LINK_PTR };
    let run = |v: &Vmcs, ram: &Ram| check_vm_entry(v, &caps, 36, ram).map_err(|e| (e.rule, e.class));
    let base = test_vmcs_64bit();
    let sec = base.get(SECONDARY_VM_EXEC_CONTROL);

    // Without shadowing: a VMCS that is no shadow VMCS is accepted.
    let mut v = base.clone();
    for (ptr, want) in [
        (u64::MAX, Ok(())),
        (0x1000, Ok(())),
        (0x1008, Err(("VMCS link pointer not 4-KByte aligned or beyond physical-address width", link))),
        (1 << 36, Err(("VMCS link pointer not 4-KByte aligned or beyond physical-address width", link))),
        (0x2000, Err(("VMCS link pointer region's shadow-VMCS indicator differs from VMCS shadowing", link))),
        (0x3000, Err(("VMCS link pointer region's revision identifier not the processor's", link))),
        (0x8000, Err(("VMCS link pointer region's revision identifier not the processor's", link))),
    ] {
        v.set(VMCS_LINK_POINTER, ptr);
        assert_eq!(run(&v, &ram), want, "link pointer {ptr:#x} without shadowing");
    }

    // With shadowing: the bitmaps' addresses are checked with the controls, the link pointer
    // must name a shadow VMCS or be all ones.
    let mut v = base.clone();
    v.set(SECONDARY_VM_EXEC_CONTROL, sec | u64::from(proc2::VMCS_SHADOWING));
    v.set(VMREAD_BITMAP, 0x1000);
    v.set(VMWRITE_BITMAP, 0x3000);
    for (ptr, want) in [
        (u64::MAX, Ok(())),
        (0x2000, Ok(())),
        (0x1000, Err(("VMCS link pointer region's shadow-VMCS indicator differs from VMCS shadowing", link))),
        (0x8000, Err(("VMCS link pointer region's revision identifier not the processor's", link))),
    ] {
        v.set(VMCS_LINK_POINTER, ptr);
        assert_eq!(run(&v, &ram), want, "link pointer {ptr:#x} with shadowing");
    }
    v.set(VMREAD_BITMAP, 0x1004);
    assert_eq!(
        run(&v, &ram),
        Err(("VMREAD-bitmap address not 4-KByte aligned or beyond physical-address width", CheckClass::Control))
    );
    v.set(VMREAD_BITMAP, 0x1000);
    v.set(VMWRITE_BITMAP, 1 << 40);
    assert_eq!(
        run(&v, &ram),
        Err(("VMWRITE-bitmap address not 4-KByte aligned or beyond physical-address width", CheckClass::Control))
    );
    // Without the capability, the control itself is refused.
    v.set(VMWRITE_BITMAP, 0x3000);
    v.set(VMCS_LINK_POINTER, 0x2000);
    assert_eq!(run(&v, &ram), Ok(()));
    let mut without = caps.clone();
    without.secondary.allowed1 &= !proc2::VMCS_SHADOWING;
    assert_eq!(
        check_vm_entry(&v, &without, 36, &ram).map_err(|e| e.rule),
        Err("secondary processor-based controls violate IA32_VMX_PROCBASED_CTLS2")
    );
}

/// A 32-bit protected-mode guest with PAE paging and a 16-bit real-mode-like v8086
/// guest exercise the non-IA-32e paths.
#[test]
fn non_ia32e_guests() {
    let mut v = test_vmcs_64bit();
    let entryv = v.get(VM_ENTRY_CONTROLS) & !u64::from(entry::IA32E_MODE_GUEST | entry::LOAD_IA32_EFER);
    v.set(VM_ENTRY_CONTROLS, entryv);
    v.set(GUEST_CS_AR_BYTES, 0xc09b);
    assert_eq!(check(&v), Ok(()));
    v.set(GUEST_CR4, 0x2020 | 1 << 17);
    assert_eq!(check(&v).unwrap_err().rule, "guest CR4.PCIDE set outside IA-32e mode");
    v.set(GUEST_CR4, 0x2020);
    v.set(GUEST_TR_AR_BYTES, 0x83);
    assert_eq!(check(&v), Ok(()));
    v.set(GUEST_PDPTR2, 1 | 1 << 5);
    let e = check(&v).unwrap_err();
    assert_eq!(
        (e.rule, e.class),
        ("guest PDPTE reserved bits set", CheckClass::GuestState { qualification: ENTRY_FAIL_PDPTE })
    );
    v.set(GUEST_PDPTR2, 0x1000 | 1);
    assert_eq!(check(&v), Ok(()));
    // Virtual-8086 segments.
    v.set(GUEST_RFLAGS, 0x2 | 1 << 17);
    v.set(GUEST_CS_BASE, 0x10 << 4);
    assert_eq!(check(&v).unwrap_err().rule, "guest CS base not selector*16 in virtual-8086 mode");
    v.set(GUEST_CS_BASE, 0x80);
    assert_eq!(check(&v).unwrap_err().rule, "guest CS limit not 0xffff in virtual-8086 mode");
    // PG without PE.
    let mut v = test_vmcs_64bit();
    v.set(VM_ENTRY_CONTROLS, entryv);
    v.set(GUEST_CS_AR_BYTES, 0xc09b);
    v.set(GUEST_CR0, 0x8000_0030);
    assert_eq!(check(&v).unwrap_err().rule, "guest CR0 violates IA32_VMX_CR0_FIXED0/FIXED1");
    // Unrestricted guest needs EPT (and is not advertised anyway).
    let mut caps = VmxCaps::default();
    caps.secondary.allowed1 |= proc2::UNRESTRICTED_GUEST;
    let mut v = test_vmcs_64bit();
    v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::UNRESTRICTED_GUEST | proc2::ENABLE_VPID));
    assert_eq!(
        check_vm_entry(&v, &caps, 36, NO_RAM).unwrap_err().rule,
        "unrestricted guest set while enable EPT is clear"
    );
    // With unrestricted guest, CR0.PE/PG may be 0 but PG still requires PE.
    v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::UNRESTRICTED_GUEST | proc2::ENABLE_VPID | proc2::ENABLE_EPT));
    v.set(VM_ENTRY_CONTROLS, entryv);
    v.set(GUEST_CS_AR_BYTES, 0xc09b);
    v.set(GUEST_CR0, 0x8000_0030);
    assert_eq!(check_vm_entry(&v, &caps, 36, NO_RAM).unwrap_err().rule, "guest CR0.PG set while CR0.PE clear");
}

/// String literals of the Rust source `src`, outside comments.
fn string_literals(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            // A char literal ('"', '\'') or a lifetime ('a).
            '\'' => {
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => {}
                }
            }
            '"' => {
                let mut lit = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => lit.extend(chars.next()),
                        '"' => break,
                        c => lit.push(c),
                    }
                }
                out.push(lit);
            }
            _ => {}
        }
    }
    out
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names of all rules: every string literal of the checks sources (tests excluded)
/// except SDM section numbers and format strings.
fn rule_names() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vmx/checks");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        if file.ends_with("tests.rs") || file.ends_with("testing.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&file).unwrap();
        for lit in string_literals(&src) {
            let section = lit.chars().all(|c| c.is_ascii_digit() || c == '.');
            if !section && !lit.contains('{') {
                names.insert(lit);
            }
        }
    }
    names
}

#[test]
fn named_rules() {
    let names = rule_names();
    println!("{} named VM-entry checks", names.len());
    assert!(!names.is_empty());
    for known in [
        "EPTP memory type not supported",
        "host ES selector RPL or TI not 0",
        "guest GS granularity inconsistent with limit",
        "guest CS access rights not 0xf3 in virtual-8086 mode",
        "VMCS link pointer region's shadow-VMCS indicator differs from VMCS shadowing",
        "guest PDPTE reserved bits set",
    ] {
        assert!(names.contains(known), "{known}");
    }
}
