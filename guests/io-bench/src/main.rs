//! Benchmark guest: `N` writes to port 0x80 (each a VM exit nestbed's devices ignore), then
//! exit 0. `just bench` compares its cost per exit with a raw KVM loop.
#![no_std]
#![no_main]

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    let n = rt::parse_u64(rt::next_word(info.args).0).unwrap_or(100_000);
    for i in 0..n {
        rt::io::outb(0x80, i as u8);
    }
    0
}
