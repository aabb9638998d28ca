//! The multiboot v1 information structure (Multiboot Specification 0.6.96, section 3.3).

pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

#[repr(C)]
pub struct Info {
    pub flags: u32,
    pub mem_lower: u32,
    pub mem_upper: u32,
    pub boot_device: u32,
    pub cmdline: u32,
    pub mods_count: u32,
    pub mods_addr: u32,
    pub syms: [u32; 4],
    pub mmap_length: u32,
    pub mmap_addr: u32,
}

/// What the loader told us.
pub struct BootInfo {
    pub magic: u32,
    /// RAM above 1 MiB in KiB.
    pub mem_upper_kib: u32,
    /// The command line without its first word (the kernel's name, as QEMU and nestbed pass it).
    pub args: &'static str,
}

impl BootInfo {
    /// # Safety
    /// `info` must be the physical address the loader passed in EBX (identity-mapped).
    pub unsafe fn from_loader(magic: u32, info: u32) -> BootInfo {
        let mut b = BootInfo { magic, mem_upper_kib: 0, args: "" };
        if magic != BOOTLOADER_MAGIC || info == 0 {
            return b;
        }
        // SAFETY: the loader passed a valid info structure.
        let mi = unsafe { &*(info as usize as *const Info) };
        if mi.flags & 1 != 0 {
            b.mem_upper_kib = mi.mem_upper;
        }
        if mi.flags & 4 != 0 && mi.cmdline != 0 {
            // SAFETY: the command line is NUL-terminated per the spec.
            let s = unsafe { cstr(mi.cmdline as usize as *const u8) };
            b.args = crate::next_word(s).1;
        }
        b
    }
}

unsafe fn cstr(p: *const u8) -> &'static str {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL-terminated string.
    while unsafe { *p.add(n) } != 0 && n < 4096 {
        // SAFETY: as above.
        if !unsafe { *p.add(n) }.is_ascii() {
            return "";
        }
        n += 1;
    }
    // SAFETY: `n` ASCII bytes were just read, so they are valid UTF-8.
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, n)) }
}
