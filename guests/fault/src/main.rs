//! Takes an unhandled #GP (a non-canonical memory access): the runtime's IDT reports the
//! vector, error code and RIP on the console and exits with code 100. With `int3` on its
//! command line it executes an int3 instead: the guest's own #BP, which must reach its IDT.
#![no_std]
#![no_main]

rt::entry!(main);

fn main(info: &rt::BootInfo) -> u32 {
    if rt::next_word(info.args).0 == "int3" {
        rt::println!("about to execute int3");
        // SAFETY: deliberately traps; the runtime's #BP handler ends the machine.
        unsafe { core::arch::asm!("int3") };
        rt::println!("survived int3?");
        return 1;
    }
    rt::println!("about to touch a non-canonical address");
    // SAFETY: deliberately faults; the runtime's #GP handler ends the machine.
    unsafe { core::ptr::read_volatile(0x8000_0000_0000_0000u64 as *const u64) };
    rt::println!("survived a non-canonical access?");
    1
}
