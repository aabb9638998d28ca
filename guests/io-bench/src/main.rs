//! Benchmark guest: `N` writes to port 0x80 (each a VM exit nestbed's devices ignore), then
//! exit 0. `just bench` compares its cost per exit with a raw KVM loop; both loops take three
//! instructions per exit (some hosts' KVM emulates every guest instruction).
#![no_std]
#![no_main]

use core::arch::asm;

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    let n = rt::parse_u64(rt::next_word(info.args).0).unwrap_or(100_000);
    if n > 0 {
        // SAFETY: port I/O to the ignored port 0x80 only.
        unsafe {
            asm!("2: out 0x80, al", "dec {n}", "jnz 2b", n = inout(reg) n => _, in("al") 0u8, options(nomem, nostack))
        };
    }
    0
}
