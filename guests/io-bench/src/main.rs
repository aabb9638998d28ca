//! Benchmark guest: `N` writes to port 0x80 (each a VM exit nestbed's devices ignore), then
//! exit 0. `N timer`: the same with the local APIC's timer armed (masked, one-shot, about a
//! minute away), to measure what an armed but idle timer adds to each exit. `just bench` compares its cost per exit with a raw KVM loop; both loops take three
//! instructions per exit (some hosts' KVM emulates every guest instruction).
#![no_std]
#![no_main]

use core::arch::asm;

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    let (count, rest) = rt::next_word(info.args);
    let n = rt::parse_u64(count).unwrap_or(100_000);
    if rt::next_word(rest).0 == "timer" {
        use rt::apic::*;
        write(SPIV, 0x1ff);
        write(LVT_TIMER, 1 << 16 | 0x40);
        write(DIVIDE_CONFIG, 0xa);
        write(INITIAL_COUNT, u32::MAX);
    }
    if n > 0 {
        // SAFETY: port I/O to the ignored port 0x80 only.
        unsafe {
            asm!("2: out 0x80, al", "dec {n}", "jnz 2b", n = inout(reg) n => _, in("al") 0u8, options(nomem, nostack))
        };
    }
    0
}
