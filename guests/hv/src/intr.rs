//! Event fields of the VMCS: the interruption-information format shared by the VM-entry
//! interruption-information field (SDM 25.8.3), the VM-exit interruption-information field
//! (25.9.2) and the IDT-vectoring information field (25.9.3), and the guest interruptibility
//! state (25.4.2, Table 25-3).

/// Bits 7:0: the vector.
pub const VECTOR: u32 = 0xff;
/// Bits 10:8: the interruption type.
pub const TYPE_SHIFT: u32 = 8;
/// Bit 11: deliver (entry) or valid (exit, IDT-vectoring) error code.
pub const ERROR_CODE: u32 = 1 << 11;
/// Bit 12 of the exit fields: NMI unblocking due to IRET (undefined for most exits).
pub const NMI_UNBLOCKING: u32 = 1 << 12;
/// Bit 31: valid.
pub const VALID: u32 = 1 << 31;
/// The bits every one of the three fields defines: valid, error code, type, vector.
pub const DEFINED: u32 = VALID | ERROR_CODE | 0x7ff;

/// Interruption types (bits 10:8).
pub const EXTERNAL_INTERRUPT: u32 = 0;
pub const NMI: u32 = 2;
pub const HARDWARE_EXCEPTION: u32 = 3;
pub const SOFTWARE_INTERRUPT: u32 = 4;
pub const PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5;
pub const SOFTWARE_EXCEPTION: u32 = 6;
/// Type 7 with vector 0: a pending MTF VM exit (SDM 27.6.2).
pub const OTHER_EVENT: u32 = 7;

/// A valid interruption-information value of `ty` with `vector`, with the error-code bit
/// when `error_code`.
pub const fn info(ty: u32, vector: u8, error_code: bool) -> u32 {
    VALID | (ty & 7) << TYPE_SHIFT | vector as u32 | if error_code { ERROR_CODE } else { 0 }
}

/// The interruption type of an information value.
pub const fn type_of(info: u32) -> u32 {
    (info >> TYPE_SHIFT) & 7
}

/// The name of an interruption type.
pub fn type_name(ty: u32) -> &'static str {
    match ty {
        EXTERNAL_INTERRUPT => "external interrupt",
        NMI => "NMI",
        HARDWARE_EXCEPTION => "hardware exception",
        SOFTWARE_INTERRUPT => "software interrupt",
        PRIVILEGED_SOFTWARE_EXCEPTION => "privileged software exception",
        SOFTWARE_EXCEPTION => "software exception",
        OTHER_EVENT => "other event",
        _ => "reserved",
    }
}

/// Whether delivery of an event of this type pushes "current guest RIP + VM-entry instruction
/// length" rather than the current guest RIP (SDM 27.6.1.1).
pub const fn pushes_next_rip(ty: u32) -> bool {
    matches!(ty, SOFTWARE_INTERRUPT | PRIVILEGED_SOFTWARE_EXCEPTION | SOFTWARE_EXCEPTION)
}

/// Guest interruptibility state bits (SDM 25.4.2, Table 25-3).
pub const BLOCKING_BY_STI: u64 = 1 << 0;
pub const BLOCKING_BY_MOV_SS: u64 = 1 << 1;
pub const BLOCKING_BY_SMI: u64 = 1 << 2;
pub const BLOCKING_BY_NMI: u64 = 1 << 3;

/// RFLAGS bits the event checks look at.
pub const RFLAGS_FIXED: u64 = 1 << 1;
pub const RFLAGS_CF: u64 = 1 << 0;
pub const RFLAGS_ZF: u64 = 1 << 6;
pub const RFLAGS_TF: u64 = 1 << 8;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_RF: u64 = 1 << 16;
