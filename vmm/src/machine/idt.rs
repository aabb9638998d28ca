//! Event delivery through the IDT, as far as nestbed follows it: where a vector's handler
//! starts, and the return frame the delivery of an exception without error code pushed
//! (SDM 6.12.1, 6.14.2; real mode 20.1.4).

use kvm_bindings::kvm_sregs;

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
/// EFLAGS.VM: virtual-8086 mode, whose frames also hold the data segments (SDM 20.3.1.1).
const RFLAGS_VM: u64 = 1 << 17;

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x))
}

/// The linear address at which delivering `vector` starts: a 64-bit gate's offset (SDM
/// 6.14.1), a 32-bit gate's segment base plus offset (6.11), or the real-mode IVT's
/// segment:offset (20.1.4). `read` reads linear memory. `None` when the entry lies outside
/// the IDT, is not present, or cannot be read.
pub fn idt_target(read: impl Fn(u64, &mut [u8]) -> bool, sregs: &kvm_sregs, vector: u8) -> Option<u64> {
    let (idt, v) = (sregs.idt, u64::from(vector));
    let read = |addr: u64, buf: &mut [u8]| read(addr, buf).then_some(());
    if sregs.cr0 & CR0_PE == 0 {
        let mut b = [0u8; 4];
        read(idt.base + v * 4, &mut b)?;
        return Some(le(&b[2..4]) * 16 + le(&b[0..2]));
    }
    let size = if sregs.efer & EFER_LMA != 0 { 16 } else { 8 };
    if u64::from(idt.limit) < v * size + size - 1 {
        return None;
    }
    let mut g = [0u8; 16];
    read(idt.base + v * size, &mut g[..size as usize])?;
    if g[5] & 0x80 == 0 {
        return None;
    }
    let offset = le(&g[0..2]) | le(&g[6..8]) << 16;
    if size == 16 {
        return Some(offset | le(&g[8..12]) << 32);
    }
    let selector = le(&g[2..4]);
    let mut d = [0u8; 8];
    read(sregs.gdt.base + (selector & !7), &mut d)?;
    let base = le(&d[2..5]) | le(&d[7..8]) << 24;
    Some(base.wrapping_add(offset) & 0xffff_ffff)
}

/// How the delivery saved the interrupted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// FLAGS, CS, IP as words (SDM 20.1.4).
    Real,
    /// EFLAGS, CS, EIP as doublewords, preceded by SS, ESP on a privilege change (6.12.1).
    Protected,
    /// SS, RSP, RFLAGS, CS, RIP as quadwords, always (6.14.2).
    Ia32e,
}

impl FrameKind {
    pub fn of(sregs: &kvm_sregs) -> Self {
        if sregs.cr0 & CR0_PE == 0 {
            FrameKind::Real
        } else if sregs.efer & EFER_LMA != 0 {
            FrameKind::Ia32e
        } else {
            FrameKind::Protected
        }
    }

    /// Bytes to read at the handler's stack pointer to parse any frame of this kind.
    pub const fn max_len(self) -> usize {
        match self {
            FrameKind::Real => 6,
            FrameKind::Protected => 20,
            FrameKind::Ia32e => 40,
        }
    }
}

/// The handler's state at its first instruction, where the frame lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerState {
    pub rsp: u64,
    pub ss: u16,
    pub rflags: u64,
    pub cpl: u8,
}

/// The interrupted state an exception's delivery saved: restoring it undoes the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnFrame {
    pub rip: u64,
    pub cs: u16,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
}

/// Parses the frame of an exception without error code (such as #UD) from `stack`, read at
/// the handler's SS:RSP. `None` when `stack` is short or the frame is a virtual-8086 one.
pub fn return_frame(kind: FrameKind, stack: &[u8], now: HandlerState) -> Option<ReturnFrame> {
    let word = match kind {
        FrameKind::Real => 2,
        FrameKind::Protected => 4,
        FrameKind::Ia32e => 8,
    };
    let item = |i: usize| stack.get(i * word..(i + 1) * word).map(le);
    let (rip, cs, flags) = (item(0)?, item(1)? as u16, item(2)?);
    let frame = match kind {
        FrameKind::Real => ReturnFrame {
            rip,
            cs,
            rflags: now.rflags & !0xffff | flags,
            rsp: now.rsp & !0xffff | (now.rsp + 6) & 0xffff,
            ss: now.ss,
        },
        FrameKind::Ia32e => ReturnFrame { rip, cs, rflags: flags, rsp: item(3)?, ss: item(4)? as u16 },
        FrameKind::Protected if flags & RFLAGS_VM != 0 => return None,
        FrameKind::Protected if cs & 3 != u16::from(now.cpl) => {
            ReturnFrame { rip, cs, rflags: flags, rsp: item(3)?, ss: item(4)? as u16 }
        }
        FrameKind::Protected => ReturnFrame { rip, cs, rflags: flags, rsp: (now.rsp + 12) & 0xffff_ffff, ss: now.ss },
    };
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sregs(cr0: u64, efer: u64, idt_base: u64, idt_limit: u16) -> kvm_sregs {
        let mut s = kvm_sregs { cr0, efer, ..Default::default() };
        s.idt.base = idt_base;
        s.idt.limit = idt_limit;
        s.gdt.base = 0x3000;
        s
    }

    fn reader(mem: &[u8]) -> impl Fn(u64, &mut [u8]) -> bool + '_ {
        move |addr, buf| {
            let a = addr as usize;
            mem.get(a..a + buf.len()).map(|src| buf.copy_from_slice(src)).is_some()
        }
    }

    #[test]
    fn a_64_bit_gate_gives_its_offset() {
        let mut mem = vec![0u8; 0x4000];
        // Vector 6 at 0x1000 + 6 * 16: offset 0x1234_5678_9abc_def0, present.
        let g = 0x1000 + 6 * 16;
        mem[g..g + 2].copy_from_slice(&0xdef0u16.to_le_bytes());
        mem[g + 5] = 0x8e;
        mem[g + 6..g + 8].copy_from_slice(&0x9abcu16.to_le_bytes());
        mem[g + 8..g + 12].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        let s = sregs(CR0_PE, EFER_LMA, 0x1000, 0xfff);
        assert_eq!(idt_target(reader(&mem), &s, 6), Some(0x1234_5678_9abc_def0));
        assert_eq!(idt_target(reader(&mem), &s, 7), None, "not present");
        assert_eq!(idt_target(reader(&mem), &sregs(CR0_PE, EFER_LMA, 0x1000, 6 * 16 + 14), 6), None, "past the limit");
    }

    #[test]
    fn a_32_bit_gate_adds_its_code_segment_base() {
        let mut mem = vec![0u8; 0x4000];
        let g = 0x1000 + 6 * 8;
        mem[g..g + 2].copy_from_slice(&0x0100u16.to_le_bytes());
        mem[g + 2..g + 4].copy_from_slice(&0x08u16.to_le_bytes());
        mem[g + 5] = 0x8e;
        // GDT entry 1: base 0x0001_0000.
        mem[0x3008 + 4] = 0x01;
        let s = sregs(CR0_PE, 0, 0x1000, 0x7ff);
        assert_eq!(idt_target(reader(&mem), &s, 6), Some(0x0001_0100));
    }

    #[test]
    fn the_real_mode_ivt_gives_segment_and_offset() {
        let mut mem = vec![0u8; 0x100];
        mem[24..28].copy_from_slice(&[0x00, 0x11, 0x00, 0x02]);
        assert_eq!(idt_target(reader(&mem), &sregs(0, 0, 0, 0x3ff), 6), Some(0x2000 + 0x1100));
    }

    fn quads(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn frames_of_each_mode_give_the_interrupted_state() {
        let now = HandlerState { rsp: 0x8000, ss: 0x10, rflags: 0x2, cpl: 0 };
        let f = return_frame(FrameKind::Ia32e, &quads(&[0x40_1000, 0x08, 0x10246, 0x9ff8, 0x10]), now).unwrap();
        assert_eq!(f, ReturnFrame { rip: 0x40_1000, cs: 0x08, rflags: 0x10246, rsp: 0x9ff8, ss: 0x10 });

        let dwords = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let same = return_frame(FrameKind::Protected, &dwords(&[0x1000, 0x08, 0x246]), now).unwrap();
        assert_eq!((same.rip, same.rsp, same.ss), (0x1000, 0x800c, 0x10), "no privilege change: no SS:ESP");
        let outer = return_frame(FrameKind::Protected, &dwords(&[0x1000, 0x1b, 0x246, 0x7000, 0x23]), now).unwrap();
        assert_eq!((outer.rsp, outer.ss), (0x7000, 0x23));
        let v86 = dwords(&[0x1000, 0x1b, 0x2_0246, 0x7000, 0x23]);
        assert_eq!(return_frame(FrameKind::Protected, &v86, now), None);

        let real = return_frame(FrameKind::Real, &[0x34, 0x12, 0x00, 0x20, 0x02, 0x02], now).unwrap();
        assert_eq!(real, ReturnFrame { rip: 0x1234, cs: 0x2000, rflags: 0x202, rsp: 0x8006, ss: 0x10 });
        assert_eq!(return_frame(FrameKind::Ia32e, &[0; 16], now), None, "short");
    }
}
