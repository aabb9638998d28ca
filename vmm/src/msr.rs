//! Architectural names of the MSRs a guest commonly reaches nestbed with (SDM Vol. 4, ch. 2,
//! "Architectural MSRs"; the x2APIC range from SDM Vol. 3, 11.12.1.2), for traces, scripts and
//! gdb.

const NAMES: &[(u32, &str)] = &[
    (0x10, "IA32_TIME_STAMP_COUNTER"),
    (0x1b, "IA32_APIC_BASE"),
    (0x3a, "IA32_FEATURE_CONTROL"),
    (0x3b, "IA32_TSC_ADJUST"),
    (0x48, "IA32_SPEC_CTRL"),
    (0x49, "IA32_PRED_CMD"),
    (0x8b, "IA32_BIOS_SIGN_ID"),
    (0xe7, "IA32_MPERF"),
    (0xe8, "IA32_APERF"),
    (0xfe, "IA32_MTRRCAP"),
    (0x10a, "IA32_ARCH_CAPABILITIES"),
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0x179, "IA32_MCG_CAP"),
    (0x17a, "IA32_MCG_STATUS"),
    (0x1a0, "IA32_MISC_ENABLE"),
    (0x1d9, "IA32_DEBUGCTL"),
    (0x277, "IA32_PAT"),
    (0x2ff, "IA32_MTRR_DEF_TYPE"),
    (0x480, "IA32_VMX_BASIC"),
    (0x481, "IA32_VMX_PINBASED_CTLS"),
    (0x482, "IA32_VMX_PROCBASED_CTLS"),
    (0x483, "IA32_VMX_EXIT_CTLS"),
    (0x484, "IA32_VMX_ENTRY_CTLS"),
    (0x485, "IA32_VMX_MISC"),
    (0x486, "IA32_VMX_CR0_FIXED0"),
    (0x487, "IA32_VMX_CR0_FIXED1"),
    (0x488, "IA32_VMX_CR4_FIXED0"),
    (0x489, "IA32_VMX_CR4_FIXED1"),
    (0x48a, "IA32_VMX_VMCS_ENUM"),
    (0x48b, "IA32_VMX_PROCBASED_CTLS2"),
    (0x48c, "IA32_VMX_EPT_VPID_CAP"),
    (0x48d, "IA32_VMX_TRUE_PINBASED_CTLS"),
    (0x48e, "IA32_VMX_TRUE_PROCBASED_CTLS"),
    (0x48f, "IA32_VMX_TRUE_EXIT_CTLS"),
    (0x490, "IA32_VMX_TRUE_ENTRY_CTLS"),
    (0x491, "IA32_VMX_VMFUNC"),
    (0x492, "IA32_VMX_PROCBASED_CTLS3"),
    (0x6e0, "IA32_TSC_DEADLINE"),
    (0x802, "IA32_X2APIC_APICID"),
    (0x803, "IA32_X2APIC_VERSION"),
    (0x808, "IA32_X2APIC_TPR"),
    (0x80a, "IA32_X2APIC_PPR"),
    (0x80b, "IA32_X2APIC_EOI"),
    (0x80d, "IA32_X2APIC_LDR"),
    (0x80f, "IA32_X2APIC_SIVR"),
    (0x828, "IA32_X2APIC_ESR"),
    (0x830, "IA32_X2APIC_ICR"),
    (0x832, "IA32_X2APIC_LVT_TIMER"),
    (0x835, "IA32_X2APIC_LVT_LINT0"),
    (0x836, "IA32_X2APIC_LVT_LINT1"),
    (0x837, "IA32_X2APIC_LVT_ERROR"),
    (0x838, "IA32_X2APIC_INIT_COUNT"),
    (0x839, "IA32_X2APIC_CUR_COUNT"),
    (0x83e, "IA32_X2APIC_DIV_CONF"),
    (0x83f, "IA32_X2APIC_SELF_IPI"),
    (0xc000_0080, "IA32_EFER"),
    (0xc000_0081, "IA32_STAR"),
    (0xc000_0082, "IA32_LSTAR"),
    (0xc000_0083, "IA32_CSTAR"),
    (0xc000_0084, "IA32_FMASK"),
    (0xc000_0100, "IA32_FS_BASE"),
    (0xc000_0101, "IA32_GS_BASE"),
    (0xc000_0102, "IA32_KERNEL_GS_BASE"),
    (0xc000_0103, "IA32_TSC_AUX"),
];

/// The architectural name of MSR `index`, when it is one of these.
pub fn name(index: u32) -> Option<&'static str> {
    NAMES.binary_search_by_key(&index, |&(i, _)| i).ok().map(|i| NAMES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_found() {
        assert!(NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(name(0x3a), Some("IA32_FEATURE_CONTROL"));
        assert_eq!(name(0xc000_0080), Some("IA32_EFER"));
        assert_eq!(name(0x12345), None);
    }
}
