//! Basic exit reasons (SDM Vol. 3D, Appendix C) and the exit-qualification formats nestbed
//! produces (SDM Vol. 3C, 28.2.1).

/// Bit 31 of the exit-reason field: VM-entry failure (SDM 28.2.1, 27.8).
pub const VM_ENTRY_FAILURE: u32 = 1 << 31;

macro_rules! exit_reasons {
    ($($name:ident = $num:expr),* $(,)?) => {
        /// A basic exit reason, numbered as in SDM Appendix C.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ExitReason { $($name = $num),* }

        impl ExitReason {
            pub const ALL: &'static [ExitReason] = &[$(ExitReason::$name),*];

            pub fn from_u32(n: u32) -> Option<Self> {
                match n { $($num => Some(ExitReason::$name),)* _ => None }
            }

            /// The SDM's name, e.g. `IO_INSTRUCTION`.
            pub fn name(self) -> &'static str {
                match self { $(ExitReason::$name => stringify!($name)),* }
            }
        }
    };
}

exit_reasons! {
    EXCEPTION_NMI = 0,
    EXTERNAL_INTERRUPT = 1,
    TRIPLE_FAULT = 2,
    INIT_SIGNAL = 3,
    SIPI = 4,
    IO_SMI = 5,
    OTHER_SMI = 6,
    INTERRUPT_WINDOW = 7,
    NMI_WINDOW = 8,
    TASK_SWITCH = 9,
    CPUID = 10,
    GETSEC = 11,
    HLT = 12,
    INVD = 13,
    INVLPG = 14,
    RDPMC = 15,
    RDTSC = 16,
    RSM = 17,
    VMCALL = 18,
    VMCLEAR = 19,
    VMLAUNCH = 20,
    VMPTRLD = 21,
    VMPTRST = 22,
    VMREAD = 23,
    VMRESUME = 24,
    VMWRITE = 25,
    VMXOFF = 26,
    VMXON = 27,
    CR_ACCESS = 28,
    DR_ACCESS = 29,
    IO_INSTRUCTION = 30,
    RDMSR = 31,
    WRMSR = 32,
    ENTRY_FAIL_GUEST_STATE = 33,
    ENTRY_FAIL_MSR_LOADING = 34,
    MWAIT = 36,
    MONITOR_TRAP_FLAG = 37,
    MONITOR = 39,
    PAUSE = 40,
    ENTRY_FAIL_MACHINE_CHECK = 41,
    TPR_BELOW_THRESHOLD = 43,
    APIC_ACCESS = 44,
    VIRTUALIZED_EOI = 45,
    GDTR_IDTR_ACCESS = 46,
    LDTR_TR_ACCESS = 47,
    EPT_VIOLATION = 48,
    EPT_MISCONFIG = 49,
    INVEPT = 50,
    RDTSCP = 51,
    PREEMPTION_TIMER = 52,
    INVVPID = 53,
    WBINVD = 54,
    XSETBV = 55,
    APIC_WRITE = 56,
    RDRAND = 57,
    INVPCID = 58,
    VMFUNC = 59,
    ENCLS = 60,
    RDSEED = 61,
    PML_FULL = 62,
    XSAVES = 63,
    XRSTORS = 64,
    SPP_EVENT = 66,
    UMWAIT = 67,
    TPAUSE = 68,
    LOADIWKEY = 69,
    ENCLV = 70,
    ENQCMD_PASID = 72,
    ENQCMDS_PASID = 73,
    BUS_LOCK = 74,
    INSTRUCTION_TIMEOUT = 75,
    SEAMCALL = 76,
    TDCALL = 77,
}

impl ExitReason {
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name().eq_ignore_ascii_case(name))
    }
}

/// Name of a raw exit-reason value, with the entry-failure bit shown.
pub fn reason_name(raw: u32) -> String {
    let basic = raw & 0xffff;
    let name = ExitReason::from_u32(basic).map_or("UNKNOWN", ExitReason::name);
    if raw & VM_ENTRY_FAILURE != 0 {
        format!("{name}|ENTRY_FAILURE")
    } else {
        name.to_string()
    }
}

/// Exit qualification for I/O instructions (SDM 28.2.1, Table 28-5).
pub fn io_qualification(port: u16, size: u8, input: bool, string: bool, rep: bool, imm: bool) -> u64 {
    (u64::from(size.saturating_sub(1)) & 7)
        | (u64::from(input) << 3)
        | (u64::from(string) << 4)
        | (u64::from(rep) << 5)
        | (u64::from(imm) << 6)
        | (u64::from(port) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in ExitReason::ALL {
            assert_eq!(ExitReason::from_u32(*r as u32), Some(*r));
            assert_eq!(ExitReason::from_name(r.name()), Some(*r));
        }
        assert_eq!(ExitReason::IO_INSTRUCTION as u32, 30);
        assert_eq!(reason_name(33 | VM_ENTRY_FAILURE), "ENTRY_FAIL_GUEST_STATE|ENTRY_FAILURE");
    }

    #[test]
    fn io_qualification_layout() {
        // out dx, al to port 0x3f8: size 1 -> 0, output, not string, dx form.
        assert_eq!(io_qualification(0x3f8, 1, false, false, false, false), 0x03f8_0000);
        assert_eq!(io_qualification(0x80, 4, true, true, true, true), 0x0080_007b);
    }
}
