//! Port I/O, control registers, MSRs.

use core::arch::asm;

#[inline]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}

#[inline]
pub fn outw(port: u16, v: u16) {
    // SAFETY: as for outb.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags)) }
}

#[inline]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as for outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}

#[inline]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for outb.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for outb.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

#[inline]
pub fn hlt() {
    // SAFETY: halts until the next event; no memory effects.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// Enables maskable interrupts (RFLAGS.IF = 1); one takes effect after the next instruction.
#[inline]
pub fn sti() {
    // SAFETY: only RFLAGS.IF changes; the caller has the IDT handlers it expects. Not `nomem`:
    // a handler may write memory the caller reads afterwards.
    unsafe { asm!("sti", options(nostack)) }
}

/// Disables maskable interrupts (RFLAGS.IF = 0).
#[inline]
pub fn cli() {
    // SAFETY: only RFLAGS.IF changes.
    unsafe { asm!("cli", options(nostack)) }
}

/// `sti; hlt`: enables interrupts and halts; STI's interrupt shadow keeps an interrupt pending
/// now from arriving before the HLT, so the HLT cannot miss it. Returns after a handler ran,
/// with interrupts enabled.
#[inline]
pub fn sti_hlt() {
    // SAFETY: as for `sti`; a handler may write memory the caller reads afterwards.
    unsafe { asm!("sti", "hlt", options(nostack)) }
}

/// Whether RFLAGS.IF is set.
#[inline]
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: pushes RFLAGS and pops it into a register; the stack is balanced.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) }
    flags & (1 << 9) != 0
}

#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter into EDX:EAX.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPUID of `leaf`/`subleaf`: [EAX, EBX, ECX, EDX] (RBX is LLVM's, so it is swapped out).
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: CPUID reads identification data; RBX is restored by the XCHG.
    unsafe {
        asm!(
            "mov {b}, rbx",
            "cpuid",
            "xchg {b}, rbx",
            b = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") subleaf => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        )
    }
    [a, b as u32, c, d]
}

macro_rules! read_reg {
    ($name:ident, $reg:literal) => {
        #[inline]
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control/segment register has no side effects.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) }
            v
        }
    };
}
read_reg!(cr0, "cr0");
read_reg!(cr3, "cr3");
read_reg!(cr4, "cr4");

#[inline]
pub fn read_selector(which: Sel) -> u16 {
    let v: u16;
    // SAFETY: reading a segment selector has no side effects.
    unsafe {
        match which {
            Sel::Cs => asm!("mov {0:x}, cs", out(reg) v, options(nomem, nostack, preserves_flags)),
            Sel::Ss => asm!("mov {0:x}, ss", out(reg) v, options(nomem, nostack, preserves_flags)),
            Sel::Ds => asm!("mov {0:x}, ds", out(reg) v, options(nomem, nostack, preserves_flags)),
            Sel::Tr => asm!("str {0:x}", out(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
    v
}

#[derive(Clone, Copy)]
pub enum Sel {
    Cs,
    Ss,
    Ds,
    Tr,
}

#[inline]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller names an MSR the platform implements; a fault would be reported by
    // the IDT.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

#[inline]
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: as for rdmsr.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// Descriptor-table register image for `sgdt`/`sidt`.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub struct DescPtr {
    pub limit: u16,
    pub base: u64,
}

pub fn sgdt() -> DescPtr {
    let mut p = DescPtr::default();
    // SAFETY: stores 10 bytes into `p`.
    unsafe { asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) }
    p
}

pub fn sidt() -> DescPtr {
    let mut p = DescPtr::default();
    // SAFETY: stores 10 bytes into `p`.
    unsafe { asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) }
    p
}
