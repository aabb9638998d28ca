//! The local APIC's xAPIC registers at their reset base (Intel SDM Vol. 3, 11.4.1), for guests
//! that take external interrupts.

/// The xAPIC MMIO base after reset (IA32_APIC_BASE unchanged).
pub const BASE: u64 = 0xFEE0_0000;

/// Register offsets (SDM Table 11-1).
pub const ID: u32 = 0x20;
pub const VERSION: u32 = 0x30;
pub const TPR: u32 = 0x80;
pub const EOI: u32 = 0xB0;
pub const SPIV: u32 = 0xF0;
pub const ISR: u32 = 0x100;
pub const IRR: u32 = 0x200;
pub const LVT_TIMER: u32 = 0x320;
pub const LVT_LINT0: u32 = 0x350;
pub const INITIAL_COUNT: u32 = 0x380;
pub const CURRENT_COUNT: u32 = 0x390;
pub const DIVIDE_CONFIG: u32 = 0x3E0;

/// Reads the 32-bit register at `offset`.
pub fn read(offset: u32) -> u32 {
    // SAFETY: the APIC page is identity-mapped by the boot code; an aligned 32-bit read of an
    // APIC register has no effect on Rust-visible memory.
    unsafe { core::ptr::read_volatile((BASE + u64::from(offset)) as *const u32) }
}

/// Writes the 32-bit register at `offset`.
pub fn write(offset: u32, value: u32) {
    // SAFETY: as for `read`; the write reaches the APIC, not RAM.
    unsafe { core::ptr::write_volatile((BASE + u64::from(offset)) as *mut u32, value) }
}

/// Ends the in-service interrupt of highest priority (SDM 11.8.5).
pub fn eoi() {
    write(EOI, 0);
}

/// Whether `vector`'s bit is set in the 256-bit register array at `base` (ISR, TMR, IRR).
pub fn vector_bit(base: u32, vector: u8) -> bool {
    read(base + u32::from(vector >> 5) * 0x10) & (1 << (vector & 31)) != 0
}
