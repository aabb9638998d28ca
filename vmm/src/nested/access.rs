//! The instruction behind an L2 memory access that reached userspace as an MMIO exit, so that
//! an EPT violation is reported at the faulting instruction (SDM 28.2.1, 28.3.3: GUEST_RIP
//! of a fault-like exit) with its guest-linear address (SDM 28.2.1, Table 28-7 bit 7).
//!
//! KVM reports an MMIO read before the instruction completes (RIP at it) and an MMIO write
//! after it emulated the instruction (RIP past it, registers written back), as measured on
//! our hosts. A write's instruction is therefore found by decoding backwards: the shortest
//! candidate that ends exactly at RIP, whose memory operand has the exit's access size and,
//! computed from the current registers, translates to the exit's guest-physical page (the
//! size check tells `48 89 43 08` from its suffix `89 43 08`). Instructions that change the
//! registers of their own address (PUSH, CALL, string instructions) are not recognized.

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};

/// Where the access came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessInsn {
    pub rip: u64,
    pub len: u8,
    /// The guest-linear address of the access, when the instruction was recognized.
    pub linear: Option<u64>,
}

/// What finding the instruction needs from L2's vCPU and memory.
pub trait InsnContext {
    /// Reads L2 linear memory; false when it cannot.
    fn read_linear(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// L2-physical address of a linear address, through L2's paging.
    fn linear_to_phys(&self, addr: u64) -> Option<u64>;
    /// A general register's full 64-bit value.
    fn gpr(&self, r: Register) -> u64;
    /// A segment register's base.
    fn segment_base(&self, r: Register) -> u64;
    /// Code size: 16, 32 or 64.
    fn bitness(&self) -> u32;
}

fn is_memory(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Memory
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

fn decode_at(ctx: &dyn InsnContext, rip: u64) -> Option<Instruction> {
    let mut bytes = [0u8; 15];
    // Near the end of a mapped page the tail may be unreadable: retry shorter.
    let n = (1..=15usize).rev().find(|&n| ctx.read_linear(rip, &mut bytes[..n]))?;
    let mut d = Decoder::with_ip(ctx.bitness(), &bytes[..n], rip, DecoderOptions::NONE);
    let insn = d.decode();
    (!insn.is_invalid()).then_some(insn)
}

/// The linear address of `insn`'s memory operand that lies in the guest-physical page of
/// `gpa`; `None` when no operand does.
fn operand_hitting(ctx: &dyn InsnContext, insn: &Instruction, gpa: u64) -> Option<u64> {
    operand_access(ctx, insn, gpa).map(|(la, _)| la)
}

/// [`operand_hitting`] with the operand's size in bytes.
fn operand_access(ctx: &dyn InsnContext, insn: &Instruction, gpa: u64) -> Option<(u64, u64)> {
    let long = ctx.bitness() == 64;
    let value = |r: Register, _: usize, _: usize| -> Option<u64> {
        if r.is_segment_register() {
            let flat = long && !matches!(r, Register::FS | Register::GS);
            return Some(if flat { 0 } else { ctx.segment_base(r) });
        }
        let full = ctx.gpr(r.full_register());
        Some(match r.size() {
            8 => full,
            4 => full & 0xffff_ffff,
            2 => full & 0xffff,
            _ => full & 0xff,
        })
    };
    let size = (insn.memory_size().size() as u64).max(1);
    (0..insn.op_count()).filter(|&i| is_memory(insn.op_kind(i))).find_map(|i| {
        let la = insn.try_virtual_address(i, 0, value)?;
        let hits = |a: u64| ctx.linear_to_phys(a).is_some_and(|p| p >> 12 == gpa >> 12);
        (hits(la) || hits(la.wrapping_add(size - 1))).then_some((la, size))
    })
}

/// Whether an MMIO exit of `len` bytes can be (a piece of) an access of `size` bytes at `la`:
/// KVM splits accesses at page boundaries and into pieces of at most 8 bytes.
fn size_matches(size: u64, la: u64, len: u8) -> bool {
    let len = u64::from(len);
    let crosses = la >> 12 != la.wrapping_add(size - 1) >> 12;
    len == size || (len < size && (crosses || size > 8))
}

/// Finds the instruction that accessed `gpa`, given the RIP KVM reported with the exit.
/// A read is at `rip` even when unrecognized (then `linear` is `None` and `len` 0 if it
/// cannot be decoded); a write must be recognized.
pub fn find_access(ctx: &dyn InsnContext, rip: u64, gpa: u64, len: u8, write: bool) -> Option<AccessInsn> {
    if !write {
        let Some(insn) = decode_at(ctx, rip) else {
            return Some(AccessInsn { rip, len: 0, linear: None });
        };
        let linear = operand_hitting(ctx, &insn, gpa);
        return Some(AccessInsn { rip, len: insn.len() as u8, linear });
    }
    (1..=15u64).find_map(|back| {
        let start = rip.wrapping_sub(back);
        let insn = decode_at(ctx, start)?;
        if insn.len() as u64 != back {
            return None;
        }
        let (linear, size) = operand_access(ctx, &insn, gpa)?;
        size_matches(size, linear, len).then_some(AccessInsn { rip: start, len: back as u8, linear: Some(linear) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linear = physical; `code` at `base`; every register holds its fixed test value.
    struct Ctx {
        base: u64,
        code: Vec<u8>,
        rax: u64,
        rbx: u64,
    }

    impl InsnContext for Ctx {
        fn read_linear(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(off) = addr.checked_sub(self.base) else { return false };
            let off = off as usize;
            match self.code.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn linear_to_phys(&self, addr: u64) -> Option<u64> {
            Some(addr)
        }
        fn gpr(&self, r: Register) -> u64 {
            match r {
                Register::RAX => self.rax,
                Register::RBX => self.rbx,
                _ => 0,
            }
        }
        fn segment_base(&self, _: Register) -> u64 {
            0x1000
        }
        fn bitness(&self) -> u32 {
            64
        }
    }

    const CODE: &[u8] = &[
        0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, // 0: mov rax, [0x300000]
        0x48, 0x89, 0x43, 0x08, // 8: mov [rbx+8], rax
        0x89, 0x04, 0x25, 0x00, 0x10, 0x40, 0x00, // 12: mov [0x401000], eax
        0x90, // 19: nop
    ];

    fn ctx() -> Ctx {
        Ctx { base: 0x10_0000, code: CODE.to_vec(), rax: 0, rbx: 0x20_0ff8 }
    }

    #[test]
    fn read_is_at_rip() {
        let c = ctx();
        let got = find_access(&c, 0x10_0000, 0x30_0000, 8, false);
        assert_eq!(got, Some(AccessInsn { rip: 0x10_0000, len: 8, linear: Some(0x30_0000) }));
        // Another page: still at RIP, linear address unknown.
        let got = find_access(&c, 0x10_0000, 0x50_0000, 8, false);
        assert_eq!(got, Some(AccessInsn { rip: 0x10_0000, len: 8, linear: None }));
        // Undecodable bytes.
        assert_eq!(
            find_access(&c, 0x9000, 0x30_0000, 8, false),
            Some(AccessInsn { rip: 0x9000, len: 0, linear: None })
        );
    }

    #[test]
    fn write_is_found_backwards() {
        let c = ctx();
        // `89 43 08` (mov [rbx+8], eax) also ends at RIP and hits the page, but stores 4 bytes.
        let got = find_access(&c, 0x10_000c, 0x20_1000, 8, true);
        assert_eq!(got, Some(AccessInsn { rip: 0x10_0008, len: 4, linear: Some(0x20_1000) }));
        let got = find_access(&c, 0x10_0013, 0x40_1000, 4, true);
        assert_eq!(got, Some(AccessInsn { rip: 0x10_000c, len: 7, linear: Some(0x40_1000) }));
        // The operand's last byte in the next page (the second fragment of a split access).
        let c2 = Ctx { rbx: 0x20_0ff4, ..ctx() };
        let got = find_access(&c2, 0x10_000c, 0x20_1000, 4, true);
        assert_eq!(got, Some(AccessInsn { rip: 0x10_0008, len: 4, linear: Some(0x20_0ffc) }));
        // Nothing writes there.
        assert_eq!(find_access(&c, 0x10_000c, 0x70_0000, 8, true), None);
        // Wrong size for every candidate.
        assert_eq!(find_access(&c, 0x10_000c, 0x20_1000, 2, true), None);
    }
}
