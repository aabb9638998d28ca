//! Sensitive instructions other than the VMX instructions, as they reach nestbed from patched
//! sites: decoded, with the exit reason and qualification VMX non-root operation gives them
//! (SDM 26.1, 28.2.1 Table 28-3 for control-register accesses).

use iced_x86::{Code, Decoder, DecoderOptions, OpKind, Register};

use super::decode::Gpr;
use super::exits::ExitReason;

/// CR-access exit qualification access types (SDM Table 28-3, bits 5:4).
pub const CR_MOV_TO: u64 = 0;
pub const CR_MOV_FROM: u64 = 1;
pub const CR_CLTS: u64 = 2;
pub const CR_LMSW: u64 = 3;

/// One sensitive instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitive {
    /// MOV to CR0, CR3, CR4 or CR8 from a general register.
    MovToCr {
        cr: u8,
        gpr: Gpr,
    },
    /// MOV from CR0, CR3, CR4 or CR8 to a general register.
    MovFromCr {
        cr: u8,
        gpr: Gpr,
    },
    Clts,
    /// LMSW with a register operand (`Some`) or a memory operand (`None`: not emulated).
    Lmsw {
        gpr: Option<Gpr>,
    },
    Cpuid,
    Rdtsc,
    Rdtscp,
    Rdpmc,
    Invd,
    Wbinvd,
    Invlpg,
    Xsetbv,
}

/// A decoded sensitive instruction and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensitiveInsn {
    pub op: Sensitive,
    pub len: u8,
}

impl SensitiveInsn {
    /// The basic exit reason VMX non-root operation gives it (SDM Appendix C).
    pub fn exit_reason(&self) -> ExitReason {
        match self.op {
            Sensitive::MovToCr { .. } | Sensitive::MovFromCr { .. } | Sensitive::Clts | Sensitive::Lmsw { .. } => {
                ExitReason::CR_ACCESS
            }
            Sensitive::Cpuid => ExitReason::CPUID,
            Sensitive::Rdtsc => ExitReason::RDTSC,
            Sensitive::Rdtscp => ExitReason::RDTSCP,
            Sensitive::Rdpmc => ExitReason::RDPMC,
            Sensitive::Invd => ExitReason::INVD,
            Sensitive::Wbinvd => ExitReason::WBINVD,
            Sensitive::Invlpg => ExitReason::INVLPG,
            Sensitive::Xsetbv => ExitReason::XSETBV,
        }
    }

    /// The exit qualification (SDM 28.2.1): Table 28-3 for control-register accesses (`lmsw_source`
    /// is LMSW's 16-bit operand), the linear address for INVLPG (`invlpg_address`), else 0.
    pub fn qualification(&self, lmsw_source: u16, invlpg_address: u64) -> u64 {
        match self.op {
            Sensitive::MovToCr { cr, gpr } => u64::from(cr) | CR_MOV_TO << 4 | (gpr.index() as u64) << 8,
            Sensitive::MovFromCr { cr, gpr } => u64::from(cr) | CR_MOV_FROM << 4 | (gpr.index() as u64) << 8,
            Sensitive::Clts => CR_CLTS << 4,
            Sensitive::Lmsw { gpr } => CR_LMSW << 4 | u64::from(gpr.is_none()) << 6 | u64::from(lmsw_source) << 16,
            Sensitive::Invlpg => invlpg_address,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.op {
            Sensitive::MovToCr { .. } | Sensitive::MovFromCr { .. } => "mov cr",
            Sensitive::Clts => "clts",
            Sensitive::Lmsw { .. } => "lmsw",
            Sensitive::Cpuid => "cpuid",
            Sensitive::Rdtsc => "rdtsc",
            Sensitive::Rdtscp => "rdtscp",
            Sensitive::Rdpmc => "rdpmc",
            Sensitive::Invd => "invd",
            Sensitive::Wbinvd => "wbinvd",
            Sensitive::Invlpg => "invlpg",
            Sensitive::Xsetbv => "xsetbv",
        }
    }
}

fn cr_number(r: Register) -> Option<u8> {
    match r {
        Register::CR0 => Some(0),
        Register::CR3 => Some(3),
        Register::CR4 => Some(4),
        Register::CR8 => Some(8),
        _ => None,
    }
}

/// The linear address of INVLPG's memory operand, its exit qualification (SDM 28.2.1): the
/// effective address plus the segment base, which in 64-bit mode only FS and GS have.
/// `value` gives a general register's value and a segment register's base. `None` when
/// `bytes` is no INVLPG.
pub fn invlpg_address(bytes: &[u8], bitness: u32, rip: u64, value: impl Fn(Register) -> Option<u64>) -> Option<u64> {
    let ins = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE).decode();
    if ins.code() != Code::Invlpg_m {
        return None;
    }
    let la = ins.virtual_address(0, 0, |reg, _, _| match reg {
        Register::ES | Register::CS | Register::SS | Register::DS if bitness == 64 => Some(0),
        _ => value(reg),
    })?;
    Some(if bitness == 64 { la } else { la & 0xffff_ffff })
}

/// Decodes one sensitive instruction; `None` for anything else (VMX instructions included).
pub fn decode_sensitive(bytes: &[u8], bitness: u32, rip: u64) -> Option<SensitiveInsn> {
    if !matches!(bitness, 16 | 32 | 64) {
        return None;
    }
    let ins = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE).decode();
    if ins.is_invalid() {
        return None;
    }
    let op = match ins.code() {
        Code::Mov_cr_r32 | Code::Mov_cr_r64 => {
            Sensitive::MovToCr { cr: cr_number(ins.op0_register())?, gpr: Gpr::from_iced(ins.op1_register())? }
        }
        Code::Mov_r32_cr | Code::Mov_r64_cr => {
            Sensitive::MovFromCr { cr: cr_number(ins.op1_register())?, gpr: Gpr::from_iced(ins.op0_register())? }
        }
        Code::Clts => Sensitive::Clts,
        Code::Lmsw_rm16 | Code::Lmsw_r32m16 | Code::Lmsw_r64m16 => Sensitive::Lmsw {
            gpr: (ins.op0_kind() == OpKind::Register).then(|| Gpr::from_iced(ins.op0_register())).flatten(),
        },
        Code::Cpuid => Sensitive::Cpuid,
        Code::Rdtsc => Sensitive::Rdtsc,
        Code::Rdtscp => Sensitive::Rdtscp,
        Code::Rdpmc => Sensitive::Rdpmc,
        Code::Invd => Sensitive::Invd,
        Code::Wbinvd => Sensitive::Wbinvd,
        Code::Invlpg_m => Sensitive::Invlpg,
        Code::Xsetbv => Sensitive::Xsetbv,
        _ => return None,
    };
    Some(SensitiveInsn { op, len: ins.len() as u8 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_control_register_moves_with_their_qualification() {
        // mov cr4, rax
        let i = decode_sensitive(&[0x0f, 0x22, 0xe0], 64, 0).unwrap();
        assert_eq!(i.op, Sensitive::MovToCr { cr: 4, gpr: Gpr::RAX });
        assert_eq!(i.len, 3);
        assert_eq!(i.exit_reason(), ExitReason::CR_ACCESS);
        assert_eq!(i.qualification(0, 0), 4);
        // mov rbx, cr4
        let i = decode_sensitive(&[0x0f, 0x20, 0xe3], 64, 0).unwrap();
        assert_eq!(i.op, Sensitive::MovFromCr { cr: 4, gpr: Gpr::RBX });
        assert_eq!(i.qualification(0, 0), 4 | 1 << 4 | 3 << 8);
        // mov cr3, r9
        let i = decode_sensitive(&[0x41, 0x0f, 0x22, 0xd9], 64, 0).unwrap();
        assert_eq!(i.op, Sensitive::MovToCr { cr: 3, gpr: Gpr(9) });
        assert_eq!(i.qualification(0, 0), 3 | 9 << 8);
        // mov cr8, rax (REX.R selects CR8)
        let i = decode_sensitive(&[0x44, 0x0f, 0x22, 0xc0], 64, 0).unwrap();
        assert_eq!(i.op, Sensitive::MovToCr { cr: 8, gpr: Gpr::RAX });
        // mov cr2, rax is not one nestbed patches
        assert_eq!(decode_sensitive(&[0x0f, 0x22, 0xd0], 64, 0), None);
    }

    #[test]
    fn decodes_the_other_sensitive_instructions() {
        let cases: [(&[u8], Sensitive, ExitReason); 9] = [
            (&[0x0f, 0xa2], Sensitive::Cpuid, ExitReason::CPUID),
            (&[0x0f, 0x31], Sensitive::Rdtsc, ExitReason::RDTSC),
            (&[0x0f, 0x01, 0xf9], Sensitive::Rdtscp, ExitReason::RDTSCP),
            (&[0x0f, 0x33], Sensitive::Rdpmc, ExitReason::RDPMC),
            (&[0x0f, 0x08], Sensitive::Invd, ExitReason::INVD),
            (&[0x0f, 0x09], Sensitive::Wbinvd, ExitReason::WBINVD),
            (&[0x0f, 0x01, 0x38], Sensitive::Invlpg, ExitReason::INVLPG),
            (&[0x0f, 0x01, 0xd1], Sensitive::Xsetbv, ExitReason::XSETBV),
            (&[0x0f, 0x06], Sensitive::Clts, ExitReason::CR_ACCESS),
        ];
        for (bytes, op, reason) in cases {
            let i = decode_sensitive(bytes, 64, 0).unwrap_or_else(|| panic!("{bytes:02x?}"));
            assert_eq!((i.op, i.exit_reason(), usize::from(i.len)), (op, reason, bytes.len()));
        }
        // lmsw ax: register form, source data in bits 31:16
        let i = decode_sensitive(&[0x0f, 0x01, 0xf0], 64, 0).unwrap();
        assert_eq!(i.op, Sensitive::Lmsw { gpr: Some(Gpr::RAX) });
        assert_eq!(i.qualification(0x1234, 0), 3 << 4 | 0x1234 << 16);
        assert_eq!(decode_sensitive(&[0x0f, 0x01, 0xc4], 64, 0), None, "vmxoff is the VMX decoder's");
        assert_eq!(decode_sensitive(&[0x90], 64, 0), None);
        assert_eq!(decode_sensitive(&[0x0f], 64, 0), None, "truncated");
    }

    #[test]
    fn invlpg_qualification_is_the_linear_address() {
        let regs = |r: Register| match r {
            Register::R14 => Some(0x10_c000),
            Register::DS => Some(0x5000),
            Register::FS => Some(0x7_0000),
            _ => Some(0),
        };
        // invlpg [r14 + 0x40]: DS has no base in 64-bit mode
        assert_eq!(invlpg_address(&[0x41, 0x0f, 0x01, 0x7e, 0x40], 64, 0, regs), Some(0x10_c040));
        // invlpg fs:[r14]
        assert_eq!(invlpg_address(&[0x64, 0x41, 0x0f, 0x01, 0x3e], 64, 0, regs), Some(0x7_0000 + 0x10_c000));
        assert_eq!(invlpg_address(&[0x0f, 0x08], 64, 0, regs), None, "invd");
    }
}
