//! Runtime for nestbed's guests: multiboot v1 entry and long mode (`boot`), serial console
//! (`println!`), the TSC's rate (`time`), an IDT that reports unhandled exceptions, supports fixups and dispatches
//! external interrupts to registered handlers (`idt`), the local APIC's registers (`apic`), VMX
//! instruction wrappers returning `Result` (`vmx`), and `exit(code)` through the debug-exit
//! port 0xf4. A guest crate provides `fn main(info: &BootInfo) -> u32` via [`entry!`].

#![no_std]

pub mod apic;
pub mod boot;
pub mod idt;
pub mod io;
mod mem;
pub mod multiboot;
pub mod serial;
pub mod time;
pub mod vmx;

pub use multiboot::BootInfo;

/// Debug-exit port: `out 0xf4, code` ends the machine with `code` as nestbed's exit status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Exit code after an unhandled exception.
pub const EXIT_EXCEPTION: u32 = 100;
/// Exit code after a Rust panic.
pub const EXIT_PANIC: u32 = 101;
/// Exit code of a guest whose own checks failed.
pub const EXIT_CHECK_FAILED: u32 = 1;

pub fn exit(code: u32) -> ! {
    io::outl(DEBUG_EXIT_PORT, code);
    loop {
        io::hlt();
    }
}

/// Defines the image's entry: `rt::entry!(main);` with `fn main(info: &rt::BootInfo) -> u32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        fn rt_guest_main(info: &$crate::BootInfo) -> u32 {
            $main(info)
        }
    };
}

extern "Rust" {
    fn rt_guest_main(info: &BootInfo) -> u32;
}

#[no_mangle]
extern "C" fn rt_start64(magic: u32, info: u32) -> ! {
    idt::init();
    // SAFETY: the loader's EBX, identity-mapped by the boot code.
    let boot = unsafe { BootInfo::from_loader(magic, info) };
    // SAFETY: defined by the guest crate through `entry!`.
    let code = unsafe { rt_guest_main(&boot) };
    exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => println!("nestbed-rt: panic at ", l.file(), ":", l.line()),
        None => println!("nestbed-rt: panic"),
    }
    exit(EXIT_PANIC)
}

/// Prints a check's outcome and counts failures: `check!(failures, cond, "what", ...)`.
#[macro_export]
macro_rules! check {
    ($failures:ident, $cond:expr, $($e:expr),+ $(,)?) => {{
        let ok: bool = $cond;
        $crate::print!(if ok { "ok   " } else { "FAIL " });
        $crate::println!($($e),+);
        if !ok {
            $failures += 1;
        }
    }};
}

pub use serial::Hex;

/// Parses a decimal number (what `str::parse` does, without calling into precompiled `core`).
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s.as_bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// The first space-separated word of `s` and the rest, without its leading spaces.
pub fn next_word(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    let start = i;
    while i < b.len() && b[i] != b' ' {
        i += 1;
    }
    let word_end = i;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    (&s[start..word_end], &s[i..])
}

/// The precompiled `core` of the host target refers to the unwinding personality; with
/// `panic = "abort"` it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
