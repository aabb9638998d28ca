//! Takes an unhandled #GP (a non-canonical memory access): the runtime's IDT reports the
//! vector, error code and RIP on the console and exits with code 100.
#![no_std]
#![no_main]

rt::entry!(main);

fn main(_: &rt::BootInfo) -> u32 {
    rt::println!("about to touch a non-canonical address");
    // SAFETY: deliberately faults; the runtime's #GP handler ends the machine.
    unsafe { core::ptr::read_volatile(0x8000_0000_0000_0000u64 as *const u64) };
    rt::println!("survived a non-canonical access?");
    1
}
