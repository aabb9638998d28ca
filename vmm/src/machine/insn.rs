//! Which memory an instruction is about to touch: its decoded memory operands (explicit, and
//! implicit ones such as the stack of PUSH/CALL) with their linear addresses computed from the
//! registers. Used for data watchpoints where the host's debug registers do not fire on data
//! accesses (see the gdb guide).

use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// One memory access: linear address, size in bytes, whether it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    pub addr: u64,
    pub size: u64,
    pub write: bool,
}

/// A register's value for address computations: general registers (by their full register,
/// masked to the size asked for) and segment registers (their base).
pub fn register_value(reg: Register, r: &kvm_regs, s: &kvm_sregs) -> Option<u64> {
    let full = match reg.full_register() {
        Register::RAX => r.rax,
        Register::RCX => r.rcx,
        Register::RDX => r.rdx,
        Register::RBX => r.rbx,
        Register::RSP => r.rsp,
        Register::RBP => r.rbp,
        Register::RSI => r.rsi,
        Register::RDI => r.rdi,
        Register::R8 => r.r8,
        Register::R9 => r.r9,
        Register::R10 => r.r10,
        Register::R11 => r.r11,
        Register::R12 => r.r12,
        Register::R13 => r.r13,
        Register::R14 => r.r14,
        Register::R15 => r.r15,
        Register::ES => s.es.base,
        Register::CS => s.cs.base,
        Register::SS => s.ss.base,
        Register::DS => s.ds.base,
        Register::FS => s.fs.base,
        Register::GS => s.gs.base,
        _ => return None,
    };
    let bits = reg.size() * 8;
    Some(if reg.is_segment_register() || bits >= 64 { full } else { full & ((1u64 << bits) - 1) })
}

/// The memory accesses of the instruction in `bytes` at `rip` (empty when it does not decode).
pub fn memory_accesses(bytes: &[u8], bitness: u32, rip: u64, r: &kvm_regs, s: &kvm_sregs) -> Vec<MemAccess> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Vec::new();
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&insn);
    info.used_memory()
        .iter()
        .filter_map(|m| {
            let write = matches!(
                m.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            );
            let addr = m.virtual_address(0, |reg, _, _| register_value(reg, r, s))?;
            Some(MemAccess { addr, size: m.memory_size().size().max(1) as u64, write })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_through_a_register() {
        // mov dword [rdi+8], eax
        let r = kvm_regs { rdi: 0x1000, ..Default::default() };
        let a = memory_accesses(&[0x89, 0x47, 0x08], 64, 0x100, &r, &kvm_sregs::default());
        assert_eq!(a, vec![MemAccess { addr: 0x1008, size: 4, write: true }]);
    }

    #[test]
    fn rip_relative_load_and_implicit_stack_write() {
        // mov rax, [rip+0x10]: 7 bytes, so the address is rip + 7 + 0x10.
        let r = kvm_regs { rsp: 0x8000, ..Default::default() };
        let s = kvm_sregs::default();
        let a = memory_accesses(&[0x48, 0x8b, 0x05, 0x10, 0, 0, 0], 64, 0x2000, &r, &s);
        assert_eq!(a, vec![MemAccess { addr: 0x2017, size: 8, write: false }]);
        // push rbx writes 8 bytes below RSP.
        let a = memory_accesses(&[0x53], 64, 0x2000, &r, &s);
        assert_eq!(a, vec![MemAccess { addr: 0x7ff8, size: 8, write: true }]);
    }

    #[test]
    fn no_memory_and_garbage() {
        let r = kvm_regs::default();
        let s = kvm_sregs::default();
        assert!(memory_accesses(&[0x90], 64, 0, &r, &s).is_empty());
        assert!(memory_accesses(&[0x0f, 0xff], 64, 0, &r, &s).is_empty());
    }
}
