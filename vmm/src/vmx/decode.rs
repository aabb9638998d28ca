//! Decoding of the 13 VMX instructions (SDM ch. 31) and the VM-exit information derived
//! from an instruction: instruction-information field (SDM 28.2.5) and exit qualification
//! (SDM 28.2.1).

use std::fmt;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

use super::exits::ExitReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmxOp {
    Vmxon,
    Vmxoff,
    Vmclear,
    Vmptrld,
    Vmptrst,
    Vmread,
    Vmwrite,
    Vmlaunch,
    Vmresume,
    Invept,
    Invvpid,
    Vmcall,
    Vmfunc,
}

impl VmxOp {
    /// The basic exit reason an attempt to execute this instruction in VMX non-root
    /// operation causes (SDM Appendix C).
    pub fn exit_reason(self) -> ExitReason {
        match self {
            VmxOp::Vmxon => ExitReason::VMXON,
            VmxOp::Vmxoff => ExitReason::VMXOFF,
            VmxOp::Vmclear => ExitReason::VMCLEAR,
            VmxOp::Vmptrld => ExitReason::VMPTRLD,
            VmxOp::Vmptrst => ExitReason::VMPTRST,
            VmxOp::Vmread => ExitReason::VMREAD,
            VmxOp::Vmwrite => ExitReason::VMWRITE,
            VmxOp::Vmlaunch => ExitReason::VMLAUNCH,
            VmxOp::Vmresume => ExitReason::VMRESUME,
            VmxOp::Invept => ExitReason::INVEPT,
            VmxOp::Invvpid => ExitReason::INVVPID,
            VmxOp::Vmcall => ExitReason::VMCALL,
            VmxOp::Vmfunc => ExitReason::VMFUNC,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VmxOp::Vmxon => "vmxon",
            VmxOp::Vmxoff => "vmxoff",
            VmxOp::Vmclear => "vmclear",
            VmxOp::Vmptrld => "vmptrld",
            VmxOp::Vmptrst => "vmptrst",
            VmxOp::Vmread => "vmread",
            VmxOp::Vmwrite => "vmwrite",
            VmxOp::Vmlaunch => "vmlaunch",
            VmxOp::Vmresume => "vmresume",
            VmxOp::Invept => "invept",
            VmxOp::Invvpid => "invvpid",
            VmxOp::Vmcall => "vmcall",
            VmxOp::Vmfunc => "vmfunc",
        }
    }
}

/// A general-purpose register by its SDM number: RAX=0, RCX=1, RDX=2, RBX=3, RSP=4, RBP=5,
/// RSI=6, RDI=7, R8..R15 = 8..15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gpr(pub u8);

impl Gpr {
    pub const RAX: Gpr = Gpr(0);
    pub const RCX: Gpr = Gpr(1);
    pub const RDX: Gpr = Gpr(2);
    pub const RBX: Gpr = Gpr(3);
    pub const RSP: Gpr = Gpr(4);
    pub const RBP: Gpr = Gpr(5);
    pub const RSI: Gpr = Gpr(6);
    pub const RDI: Gpr = Gpr(7);

    pub fn index(self) -> usize {
        usize::from(self.0 & 15)
    }

    /// Register name at a given operand size (64, 32 or 16 bits).
    pub fn name(self, size: u8) -> &'static str {
        const R64: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
            "r15",
        ];
        const R32: [&str; 16] = [
            "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r9d", "r10d", "r11d", "r12d", "r13d",
            "r14d", "r15d",
        ];
        const R16: [&str; 16] = [
            "ax", "cx", "dx", "bx", "sp", "bp", "si", "di", "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w",
            "r15w",
        ];
        match size {
            64 => R64[self.index()],
            32 => R32[self.index()],
            _ => R16[self.index()],
        }
    }

    /// Maps an iced general-purpose register (16, 32 or 64-bit) to its SDM number and size.
    fn from_iced_sized(r: Register) -> Option<(Gpr, u8)> {
        let n = r as u32;
        let (first, size) = if (Register::RAX as u32..=Register::R15 as u32).contains(&n) {
            (Register::RAX as u32, 64)
        } else if (Register::EAX as u32..=Register::R15D as u32).contains(&n) {
            (Register::EAX as u32, 32)
        } else if (Register::AX as u32..=Register::R15W as u32).contains(&n) {
            (Register::AX as u32, 16)
        } else {
            return None;
        };
        Some((Gpr((n - first) as u8), size))
    }

    pub(crate) fn from_iced(r: Register) -> Option<Gpr> {
        Self::from_iced_sized(r).map(|(g, _)| g)
    }
}

/// Segment register by its SDM number (ES=0, CS, SS, DS, FS, GS=5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl Seg {
    pub fn name(self) -> &'static str {
        ["es", "cs", "ss", "ds", "fs", "gs"][self as usize]
    }

    fn from_iced(r: Register) -> Option<Seg> {
        Some(match r {
            Register::ES => Seg::Es,
            Register::CS => Seg::Cs,
            Register::SS => Seg::Ss,
            Register::DS => Seg::Ds,
            Register::FS => Seg::Fs,
            Register::GS => Seg::Gs,
            _ => return None,
        })
    }
}

/// A memory operand. A RIP-relative operand is stored with `base: None`, `index: None` and
/// the absolute target address in `displacement`, with `rip_relative` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    pub segment: Seg,
    pub base: Option<Gpr>,
    pub index: Option<Gpr>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// Sign-extended displacement (absolute target when `rip_relative`).
    pub displacement: i64,
    /// 16, 32 or 64.
    pub address_size: u8,
    pub rip_relative: bool,
    /// The displacement field as encoded, sign-extended (for the exit qualification).
    pub disp_field: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    Reg(Gpr),
    Mem(MemOperand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxInsn {
    pub op: VmxOp,
    pub len: u8,
    /// 64 in 64-bit mode, else 32 (SDM ch. 31: VMREAD/VMWRITE/INVEPT/INVVPID ignore
    /// operand-size prefixes and REX.W).
    pub operand_size: u8,
    /// Intel order: `vmread r/m, r`; `vmwrite r, r/m`; `invept r, m`; `vmptrld m`.
    pub operands: Vec<Operand>,
    /// Address of the instruction.
    pub rip: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid or truncated instruction")]
    Invalid,
    #[error("not a VMX instruction: {0}")]
    NotVmx(String),
}

fn sign_extend(v: u64, bits: u8) -> i64 {
    match bits {
        16 => i64::from(v as u16 as i16),
        32 => i64::from(v as u32 as i32),
        _ => v as i64,
    }
}

fn address_size(ins: &Instruction, bitness: u32) -> u8 {
    let reg_size = |r: Register| match r {
        Register::RIP => Some(64),
        Register::EIP => Some(32),
        _ => Gpr::from_iced_sized(r).map(|(_, s)| s),
    };
    if let Some(s) = reg_size(ins.memory_base()).or_else(|| reg_size(ins.memory_index())) {
        return s;
    }
    match ins.memory_displ_size() {
        2 => 16,
        4 => 32,
        8 => 64,
        _ => bitness as u8,
    }
}

fn mem_operand(ins: &Instruction, bitness: u32) -> Result<MemOperand, DecodeError> {
    let address_size = address_size(ins, bitness);
    let segment = Seg::from_iced(ins.memory_segment()).ok_or(DecodeError::Invalid)?;
    let scale = ins.memory_index_scale() as u8;
    if ins.is_ip_rel_memory_operand() {
        let target = ins.ip_rel_memory_address();
        let next = ins.next_ip();
        let field = sign_extend(target.wrapping_sub(next), 32);
        return Ok(MemOperand {
            segment,
            base: None,
            index: None,
            scale: 1,
            displacement: target as i64,
            address_size,
            rip_relative: true,
            disp_field: field,
        });
    }
    let reg = |r: Register| {
        if r == Register::None {
            Ok(None)
        } else {
            Gpr::from_iced(r).map(Some).ok_or(DecodeError::Invalid)
        }
    };
    let disp = sign_extend(ins.memory_displacement64(), address_size);
    Ok(MemOperand {
        segment,
        base: reg(ins.memory_base())?,
        index: reg(ins.memory_index())?,
        scale,
        displacement: disp,
        address_size,
        rip_relative: false,
        disp_field: if ins.memory_displ_size() == 0 { 0 } else { disp },
    })
}

/// Decodes one VMX instruction. `bitness` is 16, 32 or 64 (the code segment's mode).
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Result<VmxInsn, DecodeError> {
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(DecodeError::Invalid);
    }
    let mut d = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let ins = d.decode();
    if ins.is_invalid() {
        return Err(DecodeError::Invalid);
    }
    let op = match ins.code() {
        Code::Vmxon_m64 => VmxOp::Vmxon,
        Code::Vmxoff => VmxOp::Vmxoff,
        Code::Vmclear_m64 => VmxOp::Vmclear,
        Code::Vmptrld_m64 => VmxOp::Vmptrld,
        Code::Vmptrst_m64 => VmxOp::Vmptrst,
        Code::Vmread_rm32_r32 | Code::Vmread_rm64_r64 => VmxOp::Vmread,
        Code::Vmwrite_r32_rm32 | Code::Vmwrite_r64_rm64 => VmxOp::Vmwrite,
        Code::Vmlaunch => VmxOp::Vmlaunch,
        Code::Vmresume => VmxOp::Vmresume,
        Code::Invept_r32_m128 | Code::Invept_r64_m128 => VmxOp::Invept,
        Code::Invvpid_r32_m128 | Code::Invvpid_r64_m128 => VmxOp::Invvpid,
        Code::Vmcall => VmxOp::Vmcall,
        Code::Vmfunc => VmxOp::Vmfunc,
        _ => return Err(DecodeError::NotVmx(format!("{:?}", ins.mnemonic()).to_lowercase())),
    };
    let mut operands = Vec::with_capacity(2);
    for i in 0..ins.op_count() {
        operands.push(match ins.op_kind(i) {
            OpKind::Register => Operand::Reg(Gpr::from_iced(ins.op_register(i)).ok_or(DecodeError::Invalid)?),
            OpKind::Memory => Operand::Mem(mem_operand(&ins, bitness)?),
            _ => return Err(DecodeError::Invalid),
        });
    }
    Ok(VmxInsn { op, len: ins.len() as u8, operand_size: if bitness == 64 { 64 } else { 32 }, operands, rip })
}

impl VmxInsn {
    pub fn mem(&self) -> Option<&MemOperand> {
        self.operands.iter().find_map(|o| match o {
            Operand::Mem(m) => Some(m),
            Operand::Reg(_) => None,
        })
    }

    /// The register operand that is not the r/m operand: VMREAD's source, VMWRITE's
    /// destination, INVEPT/INVVPID's type ("Reg2", SDM 28.2.5).
    pub fn reg2(&self) -> Option<Gpr> {
        let idx = match self.op {
            VmxOp::Vmread => 1,
            VmxOp::Vmwrite | VmxOp::Invept | VmxOp::Invvpid => 0,
            _ => return None,
        };
        match self.operands.get(idx) {
            Some(Operand::Reg(r)) => Some(*r),
            _ => None,
        }
    }

    /// The r/m operand: VMREAD's destination, VMWRITE's source, the memory operand of the
    /// others.
    pub fn rm(&self) -> Option<Operand> {
        let idx = match self.op {
            VmxOp::Vmread => 0,
            VmxOp::Vmwrite | VmxOp::Invept | VmxOp::Invvpid => 1,
            _ => 0,
        };
        self.operands.get(idx).copied()
    }
}

/// Effective address (offset within the segment) of a memory operand: base + index*scale +
/// displacement, wrapped to the address size. The segment base is not added.
pub fn effective_address(m: &MemOperand, gprs: &[u64; 16]) -> u64 {
    let base = m.base.map_or(0, |r| gprs[r.index()]);
    let index = m.index.map_or(0, |r| gprs[r.index()]);
    let ea = base.wrapping_add(index.wrapping_mul(u64::from(m.scale))).wrapping_add(m.displacement as u64);
    match m.address_size {
        16 => ea & 0xffff,
        32 => ea & 0xffff_ffff,
        _ => ea,
    }
}

fn address_size_code(bits: u8) -> u32 {
    match bits {
        16 => 0,
        32 => 1,
        _ => 2,
    }
}

fn scale_code(scale: u8) -> u32 {
    match scale {
        2 => 1,
        4 => 2,
        8 => 3,
        _ => 0,
    }
}

/// The VMX_INSTRUCTION_INFO field for a VM exit caused by `insn` (SDM 28.2.5, tables for
/// VMCLEAR/VMPTRLD/VMPTRST/VMXON, VMREAD/VMWRITE, INVEPT/INVVPID). Undefined bits are 0;
/// 0 for instructions without such information.
pub fn instruction_info(insn: &VmxInsn) -> u32 {
    let with_mem = |m: &MemOperand| {
        let mut v = scale_code(m.scale) | address_size_code(m.address_size) << 7 | (m.segment as u32) << 15;
        v |= match m.index {
            Some(r) => u32::from(r.0) << 18,
            None => 1 << 22,
        };
        v |= match m.base {
            Some(r) => u32::from(r.0) << 23,
            None => 1 << 27,
        };
        v
    };
    let mut info = match (insn.op, insn.rm()) {
        (
            VmxOp::Vmxon
            | VmxOp::Vmclear
            | VmxOp::Vmptrld
            | VmxOp::Vmptrst
            | VmxOp::Vmread
            | VmxOp::Vmwrite
            | VmxOp::Invept
            | VmxOp::Invvpid,
            Some(Operand::Mem(m)),
        ) => with_mem(&m),
        (VmxOp::Vmread | VmxOp::Vmwrite, Some(Operand::Reg(r))) => 1 << 10 | u32::from(r.0) << 3,
        _ => return 0,
    };
    if let Some(r) = insn.reg2() {
        info |= u32::from(r.0) << 28;
    }
    info
}

/// Exit qualification for a VM exit caused by `insn`: the displacement field of a memory
/// operand sign-extended to 64 bits, else 0 (SDM 28.2.1).
pub fn exit_qualification(insn: &VmxInsn) -> u64 {
    insn.mem().map_or(0, |m| m.disp_field as u64)
}

impl fmt::Display for MemOperand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rip_relative {
            return write!(f, "[rip:{:#x}]", self.displacement as u64);
        }
        let default_seg = if matches!(self.base, Some(Gpr::RSP) | Some(Gpr::RBP)) { Seg::Ss } else { Seg::Ds };
        if self.segment != default_seg {
            write!(f, "{}:", self.segment.name())?;
        }
        write!(f, "[")?;
        let mut first = true;
        if let Some(b) = self.base {
            write!(f, "{}", b.name(self.address_size))?;
            first = false;
        }
        if let Some(i) = self.index {
            if !first {
                write!(f, "+")?;
            }
            write!(f, "{}", i.name(self.address_size))?;
            if self.scale > 1 {
                write!(f, "*{}", self.scale)?;
            }
            first = false;
        }
        let d = self.displacement;
        if first {
            write!(f, "{:#x}", d as u64 & address_mask(self.address_size))?;
        } else if d > 0 {
            write!(f, "+{d:#x}")?;
        } else if d < 0 {
            write!(f, "-{:#x}", d.unsigned_abs())?;
        }
        write!(f, "]")
    }
}

fn address_mask(bits: u8) -> u64 {
    match bits {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

impl fmt::Display for VmxInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op.name())?;
        for (i, o) in self.operands.iter().enumerate() {
            write!(f, "{}", if i == 0 { " " } else { ", " })?;
            match o {
                Operand::Reg(r) => write!(f, "{}", r.name(self.operand_size))?,
                Operand::Mem(m) => write!(f, "{m}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d64(b: &[u8]) -> VmxInsn {
        decode(b, 64, 0x1000).unwrap()
    }

    fn mem(i: &VmxInsn) -> MemOperand {
        *i.mem().unwrap()
    }

    #[test]
    fn pointer_instructions() {
        for (bytes, op) in [
            (&[0xf3, 0x0f, 0xc7, 0x33][..], VmxOp::Vmxon),
            (&[0x0f, 0xc7, 0x33][..], VmxOp::Vmptrld),
            (&[0x66, 0x0f, 0xc7, 0x33][..], VmxOp::Vmclear),
            (&[0x0f, 0xc7, 0x3b][..], VmxOp::Vmptrst),
        ] {
            let i = d64(bytes);
            assert_eq!(i.op, op);
            assert_eq!(i.len as usize, bytes.len());
            let m = mem(&i);
            assert_eq!((m.base, m.index, m.segment, m.address_size), (Some(Gpr::RBX), None, Seg::Ds, 64));
            assert_eq!(i.to_string(), format!("{} [rbx]", op.name()));
            assert_eq!(exit_qualification(&i), 0);
            // Scale 0, address size 64 (2), DS (3), no index, base RBX.
            assert_eq!(instruction_info(&i), 2 << 7 | 3 << 15 | 1 << 22 | 3 << 23);
        }
        assert_eq!(VmxOp::Vmptrld.exit_reason(), ExitReason::VMPTRLD);
    }

    #[test]
    fn vmread_vmwrite_registers() {
        let r = d64(&[0x0f, 0x78, 0xc8]);
        assert_eq!(r.op, VmxOp::Vmread);
        assert_eq!(r.operands, vec![Operand::Reg(Gpr::RAX), Operand::Reg(Gpr::RCX)]);
        assert_eq!(r.operand_size, 64);
        assert_eq!(r.to_string(), "vmread rax, rcx");
        // Reg1 = RAX (r/m), mem/reg = 1, Reg2 = RCX.
        assert_eq!(instruction_info(&r), 1 << 10 | 1 << 28);

        let w = d64(&[0x0f, 0x79, 0xc1]);
        assert_eq!(w.op, VmxOp::Vmwrite);
        assert_eq!(w.operands, vec![Operand::Reg(Gpr::RAX), Operand::Reg(Gpr::RCX)]);
        assert_eq!(w.to_string(), "vmwrite rax, rcx");
        assert_eq!(instruction_info(&w), 1 << 10 | 1 << 3);

        // REX.W-less in 32-bit mode: 32-bit operands.
        let r32 = decode(&[0x0f, 0x78, 0xc8], 32, 0).unwrap();
        assert_eq!(r32.operand_size, 32);
        assert_eq!(r32.to_string(), "vmread eax, ecx");
        // r8..r15 via REX.
        let rx = d64(&[0x4d, 0x0f, 0x78, 0xc8]);
        assert_eq!(rx.operands, vec![Operand::Reg(Gpr(8)), Operand::Reg(Gpr(9))]);
    }

    #[test]
    fn no_operand_instructions() {
        for (b, op) in [
            ([0x0f, 0x01, 0xc2], VmxOp::Vmlaunch),
            ([0x0f, 0x01, 0xc3], VmxOp::Vmresume),
            ([0x0f, 0x01, 0xc4], VmxOp::Vmxoff),
            ([0x0f, 0x01, 0xc1], VmxOp::Vmcall),
            ([0x0f, 0x01, 0xd4], VmxOp::Vmfunc),
        ] {
            let i = d64(&b);
            assert_eq!(i.op, op);
            assert_eq!(i.len, 3);
            assert!(i.operands.is_empty());
            assert_eq!(instruction_info(&i), 0);
        }
    }

    #[test]
    fn invept_invvpid() {
        let i = d64(&[0x66, 0x0f, 0x38, 0x80, 0x03]);
        assert_eq!(i.op, VmxOp::Invept);
        assert_eq!(i.to_string(), "invept rax, [rbx]");
        assert_eq!(i.reg2(), Some(Gpr::RAX));
        assert_eq!(instruction_info(&i), 2 << 7 | 3 << 15 | 1 << 22 | 3 << 23);
        // invvpid rdx, [rsi+8]
        let v = d64(&[0x66, 0x0f, 0x38, 0x81, 0x56, 0x08]);
        assert_eq!(v.op, VmxOp::Invvpid);
        assert_eq!(v.to_string(), "invvpid rdx, [rsi+0x8]");
        assert_eq!(exit_qualification(&v), 8);
        assert_eq!(instruction_info(&v) >> 28, 2);
        let v32 = decode(&[0x66, 0x0f, 0x38, 0x81, 0x56, 0x08], 32, 0).unwrap();
        assert_eq!(v32.to_string(), "invvpid edx, [esi+0x8]");
    }

    #[test]
    fn sib_and_displacement() {
        // vmptrld [rax+rcx*4-0x10] : 0f c7 74 88 f0
        let i = d64(&[0x0f, 0xc7, 0x74, 0x88, 0xf0]);
        let m = mem(&i);
        assert_eq!((m.base, m.index, m.scale, m.displacement), (Some(Gpr::RAX), Some(Gpr::RCX), 4, -16));
        assert_eq!(i.to_string(), "vmptrld [rax+rcx*4-0x10]");
        let mut g = [0u64; 16];
        g[0] = 0x1000;
        g[1] = 2;
        assert_eq!(effective_address(&m, &g), 0x1000 + 8 - 16);
        assert_eq!(exit_qualification(&i), (-16i64) as u64);
        assert_eq!(instruction_info(&i), 2 | 2 << 7 | 3 << 15 | 1 << 18);
        // vmread [rsp+0x20], rax with a gs override: 65 0f 78 44 24 20
        let r = d64(&[0x65, 0x0f, 0x78, 0x44, 0x24, 0x20]);
        let m = mem(&r);
        assert_eq!((m.segment, m.base, m.index), (Seg::Gs, Some(Gpr::RSP), None));
        assert_eq!(r.to_string(), "vmread gs:[rsp+0x20], rax");
        assert_eq!(instruction_info(&r), 2 << 7 | 5 << 15 | 1 << 22 | 4 << 23);
        // [rbp+8] defaults to SS.
        let s = d64(&[0x0f, 0xc7, 0x75, 0x08]);
        assert_eq!(mem(&s).segment, Seg::Ss);
        // 32-bit address size in 64-bit mode wraps: vmptrld [eax-1] with eax = 0.
        let a = d64(&[0x67, 0x0f, 0xc7, 0x70, 0xff]);
        let m = mem(&a);
        assert_eq!(m.address_size, 32);
        assert_eq!(effective_address(&m, &[0; 16]), 0xffff_ffff);
        assert_eq!(instruction_info(&a) >> 7 & 7, 1);
    }

    #[test]
    fn rip_relative() {
        // vmptrld [rip+0x100] at 0x1000, length 7: target 0x1107.
        let i = d64(&[0x0f, 0xc7, 0x35, 0x00, 0x01, 0x00, 0x00]);
        let m = mem(&i);
        assert!(m.rip_relative);
        assert_eq!((m.base, m.index), (None, None));
        assert_eq!(effective_address(&m, &[0; 16]), 0x1107);
        assert_eq!(exit_qualification(&i), 0x100);
        assert_eq!(instruction_info(&i) & (1 << 27 | 1 << 22), 1 << 27 | 1 << 22);
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[0x90], 64, 0), Err(DecodeError::NotVmx("nop".into())));
        assert_eq!(decode(&[0x0f], 64, 0), Err(DecodeError::Invalid));
        assert_eq!(decode(&[], 64, 0), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x0f, 0xc7, 0x33], 8, 0), Err(DecodeError::Invalid));
        // Register form of vmptrld does not exist.
        assert!(decode(&[0x0f, 0xc7, 0xf3], 64, 0).is_err());
    }
}
