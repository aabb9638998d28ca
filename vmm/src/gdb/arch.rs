//! The x86-64 register file nestbed serves to gdb: the core and SSE sets plus fs_base,
//! gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8 and efer, described by `target.xml` (the order
//! of `Regs::gdb_serialize` is the order of that file).

use gdbstub::arch::{Arch, RegId, Registers};

pub enum NestbedX86 {}

impl Arch for NestbedX86 {
    type Usize = u64;
    type Registers = Regs;
    type RegId = NoSingleRegs;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(include_str!("target.xml"))
    }
}

/// Single-register access (`p`/`P`) is not offered; gdb uses `g`/`G`.
#[derive(Debug)]
pub struct NoSingleRegs;

impl RegId for NoSingleRegs {
    fn from_raw_id(_: usize) -> Option<(Self, Option<std::num::NonZeroUsize>)> {
        None
    }
}

/// Registers in gdb's order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Regs {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8-r15.
    pub gpr: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    /// cs, ss, ds, es, fs, gs selectors.
    pub seg: [u32; 6],
    pub st: [[u8; 10]; 8],
    /// fctrl, fstat, ftag, fiseg, fioff, foseg, fooff, fop.
    pub fpu: [u32; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
}

/// Bytes of the `g` packet.
const SIZE: usize = 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 9 * 8;

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut put = |b: &[u8]| b.iter().for_each(|&x| write_byte(Some(x)));
        self.gpr.iter().for_each(|r| put(&r.to_le_bytes()));
        put(&self.rip.to_le_bytes());
        put(&self.eflags.to_le_bytes());
        self.seg.iter().for_each(|s| put(&s.to_le_bytes()));
        self.st.iter().for_each(|s| put(s));
        self.fpu.iter().for_each(|f| put(&f.to_le_bytes()));
        self.xmm.iter().for_each(|x| put(&x.to_le_bytes()));
        put(&self.mxcsr.to_le_bytes());
        for v in self.system() {
            put(&v.to_le_bytes());
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < SIZE {
            return Err(());
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &bytes[at..at + n];
            at += n;
            s
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
        for r in self.gpr.iter_mut() {
            *r = u64_of(take(8));
        }
        self.rip = u64_of(take(8));
        self.eflags = u32_of(take(4));
        for s in self.seg.iter_mut() {
            *s = u32_of(take(4));
        }
        for s in self.st.iter_mut() {
            s.copy_from_slice(take(10));
        }
        for f in self.fpu.iter_mut() {
            *f = u32_of(take(4));
        }
        for x in self.xmm.iter_mut() {
            *x = u128::from_le_bytes(take(16).try_into().unwrap_or_default());
        }
        self.mxcsr = u32_of(take(4));
        let mut sys = [0u64; 9];
        for v in sys.iter_mut() {
            *v = u64_of(take(8));
        }
        [self.fs_base, self.gs_base, self.k_gs_base, self.cr0, self.cr2, self.cr3, self.cr4, self.cr8, self.efer] = sys;
        Ok(())
    }
}

impl Regs {
    fn system(&self) -> [u64; 9] {
        [self.fs_base, self.gs_base, self.k_gs_base, self.cr0, self.cr2, self.cr3, self.cr4, self.cr8, self.efer]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_packet_round_trips_and_matches_the_description() {
        let mut r = Regs { rip: 0x1234, eflags: 0x202, cr3: 0x5000, efer: 0x500, ..Default::default() };
        r.gpr[7] = 0x7fff_0000;
        r.xmm[3] = 0xdead_beef;
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), SIZE);
        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(Regs::default().gdb_deserialize(&bytes[..SIZE - 1]).is_err());

        // Every register of target.xml, in order, with the sizes serialized above.
        let xml = include_str!("target.xml");
        let bits: usize = xml
            .lines()
            .filter_map(|l| l.split("bitsize=\"").nth(1))
            .map(|b| b.split('"').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(bits / 8, SIZE);
    }
}
