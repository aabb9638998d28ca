//! VMCS component encodings (SDM Vol. 3C, Appendix B) in one table.
//!
//! An encoding (SDM 25.11.2, Table 25-21) is: bit 0 access type (1 = high half of a 64-bit
//! field), bits 9:1 index, bits 11:10 type, bit 12 reserved, bits 14:13 width, bits 31:15
//! reserved. Names follow Linux `enum vmcs_field` (arch/x86/include/asm/vmx.h).

/// Field width from encoding bits 14:13 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    W16,
    W64,
    W32,
    Natural,
}

impl Width {
    /// Mask of the bits a field of this width holds (natural width = 64 bits on Intel 64).
    pub fn mask(self) -> u64 {
        match self {
            Width::W16 => 0xffff,
            Width::W32 => 0xffff_ffff,
            Width::W64 | Width::Natural => u64::MAX,
        }
    }
}

/// Field type from encoding bits 11:10 (SDM 25.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Control,
    /// VM-exit information fields (read-only data).
    ReadOnly,
    Guest,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub encoding: u32,
    pub name: &'static str,
}

impl Field {
    pub fn width(&self) -> Width {
        match (self.encoding >> 13) & 3 {
            0 => Width::W16,
            1 => Width::W64,
            2 => Width::W32,
            _ => Width::Natural,
        }
    }

    pub fn kind(&self) -> FieldKind {
        match (self.encoding >> 10) & 3 {
            0 => FieldKind::Control,
            1 => FieldKind::ReadOnly,
            2 => FieldKind::Guest,
            _ => FieldKind::Host,
        }
    }

    /// Index (encoding bits 9:1), the value IA32_VMX_VMCS_ENUM reports the maximum of.
    pub fn index(&self) -> u32 {
        (self.encoding >> 1) & 0x1ff
    }

    pub fn read_only(&self) -> bool {
        self.kind() == FieldKind::ReadOnly
    }
}

macro_rules! vmcs_fields {
    ($($name:ident = $enc:expr),* $(,)?) => {
        $(pub const $name: u32 = $enc;)*
        /// Every VMCS field nestbed stores; a field's position here is its slot in the
        /// VMCS region (see `vmcs`).
        pub static FIELDS: &[Field] = &[$(Field { encoding: $enc, name: stringify!($name) }),*];
    };
}

vmcs_fields! {
    // B.1.1 16-bit control fields
    VIRTUAL_PROCESSOR_ID = 0x0000,
    POSTED_INTR_NV = 0x0002,
    EPTP_INDEX = 0x0004,
    HLAT_PREFIX_SIZE = 0x0006,
    LAST_PID_POINTER_INDEX = 0x0008,
    // B.1.2 16-bit guest-state fields
    GUEST_ES_SELECTOR = 0x0800,
    GUEST_CS_SELECTOR = 0x0802,
    GUEST_SS_SELECTOR = 0x0804,
    GUEST_DS_SELECTOR = 0x0806,
    GUEST_FS_SELECTOR = 0x0808,
    GUEST_GS_SELECTOR = 0x080a,
    GUEST_LDTR_SELECTOR = 0x080c,
    GUEST_TR_SELECTOR = 0x080e,
    GUEST_INTR_STATUS = 0x0810,
    GUEST_PML_INDEX = 0x0812,
    GUEST_UINV = 0x0814,
    // B.1.3 16-bit host-state fields
    HOST_ES_SELECTOR = 0x0c00,
    HOST_CS_SELECTOR = 0x0c02,
    HOST_SS_SELECTOR = 0x0c04,
    HOST_DS_SELECTOR = 0x0c06,
    HOST_FS_SELECTOR = 0x0c08,
    HOST_GS_SELECTOR = 0x0c0a,
    HOST_TR_SELECTOR = 0x0c0c,
    // B.2.1 64-bit control fields
    IO_BITMAP_A = 0x2000,
    IO_BITMAP_B = 0x2002,
    MSR_BITMAP = 0x2004,
    VM_EXIT_MSR_STORE_ADDR = 0x2006,
    VM_EXIT_MSR_LOAD_ADDR = 0x2008,
    VM_ENTRY_MSR_LOAD_ADDR = 0x200a,
    EXECUTIVE_VMCS_POINTER = 0x200c,
    PML_ADDRESS = 0x200e,
    TSC_OFFSET = 0x2010,
    VIRTUAL_APIC_PAGE_ADDR = 0x2012,
    APIC_ACCESS_ADDR = 0x2014,
    POSTED_INTR_DESC_ADDR = 0x2016,
    VM_FUNCTION_CONTROL = 0x2018,
    EPT_POINTER = 0x201a,
    EOI_EXIT_BITMAP0 = 0x201c,
    EOI_EXIT_BITMAP1 = 0x201e,
    EOI_EXIT_BITMAP2 = 0x2020,
    EOI_EXIT_BITMAP3 = 0x2022,
    EPTP_LIST_ADDRESS = 0x2024,
    VMREAD_BITMAP = 0x2026,
    VMWRITE_BITMAP = 0x2028,
    VE_INFORMATION_ADDRESS = 0x202a,
    XSS_EXIT_BITMAP = 0x202c,
    ENCLS_EXITING_BITMAP = 0x202e,
    SPP_TABLE_POINTER = 0x2030,
    TSC_MULTIPLIER = 0x2032,
    TERTIARY_VM_EXEC_CONTROL = 0x2034,
    ENCLV_EXITING_BITMAP = 0x2036,
    LOW_PASID_DIRECTORY_ADDRESS = 0x2038,
    HIGH_PASID_DIRECTORY_ADDRESS = 0x203a,
    SHARED_EPT_POINTER = 0x203c,
    PCONFIG_EXITING_BITMAP = 0x203e,
    HLAT_POINTER = 0x2040,
    PID_POINTER_TABLE = 0x2042,
    SECONDARY_VM_EXIT_CONTROLS = 0x2044,
    IA32_SPEC_CTRL_MASK = 0x204a,
    IA32_SPEC_CTRL_SHADOW = 0x204c,
    // B.2.2 64-bit read-only data fields
    GUEST_PHYSICAL_ADDRESS = 0x2400,
    // B.2.3 64-bit guest-state fields
    VMCS_LINK_POINTER = 0x2800,
    GUEST_IA32_DEBUGCTL = 0x2802,
    GUEST_IA32_PAT = 0x2804,
    GUEST_IA32_EFER = 0x2806,
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808,
    GUEST_PDPTR0 = 0x280a,
    GUEST_PDPTR1 = 0x280c,
    GUEST_PDPTR2 = 0x280e,
    GUEST_PDPTR3 = 0x2810,
    GUEST_BNDCFGS = 0x2812,
    GUEST_IA32_RTIT_CTL = 0x2814,
    GUEST_IA32_LBR_CTL = 0x2816,
    GUEST_IA32_PKRS = 0x2818,
    // B.2.4 64-bit host-state fields
    HOST_IA32_PAT = 0x2c00,
    HOST_IA32_EFER = 0x2c02,
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04,
    HOST_IA32_PKRS = 0x2c06,
    // B.3.1 32-bit control fields
    PIN_BASED_VM_EXEC_CONTROL = 0x4000,
    CPU_BASED_VM_EXEC_CONTROL = 0x4002,
    EXCEPTION_BITMAP = 0x4004,
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006,
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008,
    CR3_TARGET_COUNT = 0x400a,
    VM_EXIT_CONTROLS = 0x400c,
    VM_EXIT_MSR_STORE_COUNT = 0x400e,
    VM_EXIT_MSR_LOAD_COUNT = 0x4010,
    VM_ENTRY_CONTROLS = 0x4012,
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014,
    VM_ENTRY_INTR_INFO_FIELD = 0x4016,
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018,
    VM_ENTRY_INSTRUCTION_LEN = 0x401a,
    TPR_THRESHOLD = 0x401c,
    SECONDARY_VM_EXEC_CONTROL = 0x401e,
    PLE_GAP = 0x4020,
    PLE_WINDOW = 0x4022,
    NOTIFY_WINDOW = 0x4024,
    // B.3.2 32-bit read-only data fields
    VM_INSTRUCTION_ERROR = 0x4400,
    VM_EXIT_REASON = 0x4402,
    VM_EXIT_INTR_INFO = 0x4404,
    VM_EXIT_INTR_ERROR_CODE = 0x4406,
    IDT_VECTORING_INFO_FIELD = 0x4408,
    IDT_VECTORING_ERROR_CODE = 0x440a,
    VM_EXIT_INSTRUCTION_LEN = 0x440c,
    VMX_INSTRUCTION_INFO = 0x440e,
    // B.3.3 32-bit guest-state fields
    GUEST_ES_LIMIT = 0x4800,
    GUEST_CS_LIMIT = 0x4802,
    GUEST_SS_LIMIT = 0x4804,
    GUEST_DS_LIMIT = 0x4806,
    GUEST_FS_LIMIT = 0x4808,
    GUEST_GS_LIMIT = 0x480a,
    GUEST_LDTR_LIMIT = 0x480c,
    GUEST_TR_LIMIT = 0x480e,
    GUEST_GDTR_LIMIT = 0x4810,
    GUEST_IDTR_LIMIT = 0x4812,
    GUEST_ES_AR_BYTES = 0x4814,
    GUEST_CS_AR_BYTES = 0x4816,
    GUEST_SS_AR_BYTES = 0x4818,
    GUEST_DS_AR_BYTES = 0x481a,
    GUEST_FS_AR_BYTES = 0x481c,
    GUEST_GS_AR_BYTES = 0x481e,
    GUEST_LDTR_AR_BYTES = 0x4820,
    GUEST_TR_AR_BYTES = 0x4822,
    GUEST_INTERRUPTIBILITY_INFO = 0x4824,
    GUEST_ACTIVITY_STATE = 0x4826,
    GUEST_SMBASE = 0x4828,
    GUEST_SYSENTER_CS = 0x482a,
    VMX_PREEMPTION_TIMER_VALUE = 0x482e,
    // B.3.4 32-bit host-state field
    HOST_IA32_SYSENTER_CS = 0x4c00,
    // B.4.1 natural-width control fields
    CR0_GUEST_HOST_MASK = 0x6000,
    CR4_GUEST_HOST_MASK = 0x6002,
    CR0_READ_SHADOW = 0x6004,
    CR4_READ_SHADOW = 0x6006,
    CR3_TARGET_VALUE0 = 0x6008,
    CR3_TARGET_VALUE1 = 0x600a,
    CR3_TARGET_VALUE2 = 0x600c,
    CR3_TARGET_VALUE3 = 0x600e,
    // B.4.2 natural-width read-only data fields
    EXIT_QUALIFICATION = 0x6400,
    EXIT_IO_RCX = 0x6402,
    EXIT_IO_RSI = 0x6404,
    EXIT_IO_RDI = 0x6406,
    EXIT_IO_RIP = 0x6408,
    GUEST_LINEAR_ADDRESS = 0x640a,
    // B.4.3 natural-width guest-state fields
    GUEST_CR0 = 0x6800,
    GUEST_CR3 = 0x6802,
    GUEST_CR4 = 0x6804,
    GUEST_ES_BASE = 0x6806,
    GUEST_CS_BASE = 0x6808,
    GUEST_SS_BASE = 0x680a,
    GUEST_DS_BASE = 0x680c,
    GUEST_FS_BASE = 0x680e,
    GUEST_GS_BASE = 0x6810,
    GUEST_LDTR_BASE = 0x6812,
    GUEST_TR_BASE = 0x6814,
    GUEST_GDTR_BASE = 0x6816,
    GUEST_IDTR_BASE = 0x6818,
    GUEST_DR7 = 0x681a,
    GUEST_RSP = 0x681c,
    GUEST_RIP = 0x681e,
    GUEST_RFLAGS = 0x6820,
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822,
    GUEST_SYSENTER_ESP = 0x6824,
    GUEST_SYSENTER_EIP = 0x6826,
    GUEST_S_CET = 0x6828,
    GUEST_SSP = 0x682a,
    GUEST_INTR_SSP_TABLE = 0x682c,
    // B.4.4 natural-width host-state fields
    HOST_CR0 = 0x6c00,
    HOST_CR3 = 0x6c02,
    HOST_CR4 = 0x6c04,
    HOST_FS_BASE = 0x6c06,
    HOST_GS_BASE = 0x6c08,
    HOST_TR_BASE = 0x6c0a,
    HOST_GDTR_BASE = 0x6c0c,
    HOST_IDTR_BASE = 0x6c0e,
    HOST_IA32_SYSENTER_ESP = 0x6c10,
    HOST_IA32_SYSENTER_EIP = 0x6c12,
    HOST_RSP = 0x6c14,
    HOST_RIP = 0x6c16,
    HOST_S_CET = 0x6c18,
    HOST_SSP = 0x6c1a,
    HOST_INTR_SSP_TABLE = 0x6c1c,
}

/// SDM spelling of the PDPTE fields (Appendix B.2.3 "Guest PDPTE0").
pub const GUEST_PDPTE0: u32 = GUEST_PDPTR0;
pub const GUEST_PDPTE1: u32 = GUEST_PDPTR1;
pub const GUEST_PDPTE2: u32 = GUEST_PDPTR2;
pub const GUEST_PDPTE3: u32 = GUEST_PDPTR3;

/// Bits of an encoding that must be zero: 31:15 and 12 (SDM 25.11.2).
const ENCODING_RESERVED: u32 = 0xffff_9000;

/// True when `enc` is the high-access encoding (bit 0 set) of a 64-bit field.
pub fn is_high_access(enc: u32) -> bool {
    enc & 1 == 1
}

/// Finds a field by encoding. The high-access encoding of a 64-bit field (`enc | 1`)
/// also matches; check [`is_high_access`] to know which half is meant.
pub fn by_encoding(enc: u32) -> Option<(usize, &'static Field)> {
    if enc & ENCODING_RESERVED != 0 {
        return None;
    }
    // Every VM entry and exit looks up about a hundred fields: a table indexed by encoding
    // bits 14:1 (bits 15 and 12 are reserved, checked above).
    static INDEX: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut v = vec![u16::MAX; 1 << 14];
        for (i, f) in FIELDS.iter().enumerate() {
            v[(f.encoding >> 1) as usize & 0x3fff] = i as u16;
        }
        v
    });
    let i = usize::from(*index.get((enc >> 1) as usize)?);
    let f = FIELDS.get(i)?;
    if is_high_access(enc) && f.width() != Width::W64 {
        return None;
    }
    Some((i, f))
}

/// Finds a field by name, ignoring case.
pub fn by_name(name: &str) -> Option<(usize, &'static Field)> {
    FIELDS.iter().enumerate().find(|(_, f)| f.name.eq_ignore_ascii_case(name))
}

/// Highest index (encoding bits 9:1) of any field, for IA32_VMX_VMCS_ENUM (SDM A.9).
pub fn max_index() -> u32 {
    FIELDS.iter().map(Field::index).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_and_names_unique() {
        for (i, a) in FIELDS.iter().enumerate() {
            for b in &FIELDS[i + 1..] {
                assert_ne!(a.encoding, b.encoding, "{} vs {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
            assert_eq!(a.encoding & 1, 0, "{}", a.name);
            assert_eq!(a.encoding & ENCODING_RESERVED, 0, "{}", a.name);
        }
    }

    #[test]
    fn sdm_spot_checks() {
        let cases = [
            (GUEST_RIP, 0x681e, Width::Natural, FieldKind::Guest),
            (VM_EXIT_REASON, 0x4402, Width::W32, FieldKind::ReadOnly),
            (EPT_POINTER, 0x201a, Width::W64, FieldKind::Control),
            (HOST_RIP, 0x6c16, Width::Natural, FieldKind::Host),
            (VMCS_LINK_POINTER, 0x2800, Width::W64, FieldKind::Guest),
            (VIRTUAL_PROCESSOR_ID, 0x0000, Width::W16, FieldKind::Control),
            (HOST_TR_SELECTOR, 0x0c0c, Width::W16, FieldKind::Host),
            (GUEST_ACTIVITY_STATE, 0x4826, Width::W32, FieldKind::Guest),
            (EXIT_QUALIFICATION, 0x6400, Width::Natural, FieldKind::ReadOnly),
            (HOST_IA32_EFER, 0x2c02, Width::W64, FieldKind::Host),
            (SECONDARY_VM_EXEC_CONTROL, 0x401e, Width::W32, FieldKind::Control),
        ];
        for (enc, want, width, kind) in cases {
            assert_eq!(enc, want);
            let (_, f) = by_encoding(enc).unwrap();
            assert_eq!(f.width(), width, "{}", f.name);
            assert_eq!(f.kind(), kind, "{}", f.name);
        }
    }

    #[test]
    fn lookups() {
        let (i, f) = by_name("guest_rip").unwrap();
        assert_eq!(f.encoding, GUEST_RIP);
        assert_eq!(by_encoding(GUEST_RIP).unwrap().0, i);
        // High access of a 64-bit field matches; of other widths it does not.
        let (j, f) = by_encoding(EPT_POINTER | 1).unwrap();
        assert_eq!(f.encoding, EPT_POINTER);
        assert_eq!(j, by_encoding(EPT_POINTER).unwrap().0);
        assert!(is_high_access(EPT_POINTER | 1));
        assert!(by_encoding(GUEST_RIP | 1).is_none());
        assert!(by_encoding(0x1_0000 | GUEST_RIP).is_none());
        assert!(by_encoding(0x4830).is_none());
        assert!(by_name("NO_SUCH_FIELD").is_none());
        assert_eq!(GUEST_PDPTE3, 0x2810);
        assert!(16 + 8 * FIELDS.len() <= 4096);
        assert_eq!(max_index(), IA32_SPEC_CTRL_SHADOW >> 1 & 0x1ff);
    }
}
