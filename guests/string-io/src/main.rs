//! String I/O (SDM Vol. 2 OUTS/INS): `rep outsb` writes a line to the UART, `rep insb` reads
//! eight bytes from port 0x80, which reads as all ones. Checks the data and that RSI, RDI and
//! RCX end where the SDM says; exits 0 when all hold.
#![no_std]
#![no_main]

use core::arch::asm;

rt::entry!(main);

const LINE: &[u8] = b"written by rep outsb\n";

fn main(_: &rt::BootInfo) -> u32 {
    let mut failures = 0;
    let (mut rsi, mut rcx) = (LINE.as_ptr() as u64, LINE.len() as u64);
    // SAFETY: reads LINE only; DF is clear (SysV ABI).
    unsafe { asm!("rep outsb", inout("rsi") rsi, inout("rcx") rcx, in("dx") 0x3f8u16, options(nostack)) };
    rt::check!(failures, rcx == 0, "rep outsb: RCX ", rcx, " at the end");
    rt::check!(failures, rsi == LINE.as_ptr() as u64 + LINE.len() as u64, "rep outsb: RSI past the line");

    let mut buf = [0u8; 9];
    let (mut rdi, mut rcx) = (buf.as_mut_ptr() as u64, 8u64);
    // SAFETY: writes the first eight bytes of `buf`; DF is clear.
    unsafe { asm!("rep insb", inout("rdi") rdi, inout("rcx") rcx, in("dx") 0x80u16, options(nostack)) };
    rt::check!(failures, rcx == 0, "rep insb: RCX ", rcx, " at the end");
    rt::check!(failures, rdi == buf.as_ptr() as u64 + 8, "rep insb: RDI past eight bytes");
    rt::check!(failures, buf[..8].iter().all(|&b| b == 0xff) && buf[8] == 0, "rep insb: eight 0xff bytes, no more");
    if failures == 0 {
        rt::println!("string-io: all checks passed");
    }
    failures
}
