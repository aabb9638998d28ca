//! Multiboot v1 loader (Multiboot Specification 0.6.96): finds the header in the first 8 KiB,
//! places the image from its ELF32/ELF64 program headers (or the header's a.out-kludge
//! addresses, flag bit 16), builds the information structure and describes the 32-bit
//! protected-mode entry state (section 3.2).

use super::memory::GuestRam;

pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
const SEARCH: usize = 8192;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Where the information structure, command line and memory map go (below the image, above
/// the real-mode IVT/BDA).
const INFO_ADDR: u64 = 0x9000;
const CMDLINE_ADDR: u64 = 0x9100;
const MMAP_ADDR: u64 = 0x9800;
const CMDLINE_MAX: usize = 0x700;

/// What the loader placed and where the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub entry: u64,
    pub info: u64,
    /// End of the highest loaded byte.
    pub image_end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("not an ELF file and no multiboot a.out-kludge header")]
    NotElf,
    #[error("no multiboot v1 header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")]
    NoMultibootHeader,
    #[error("malformed ELF: {0}")]
    BadElf(String),
    #[error("segment {index} at {start:#x}..{end:#x} lies outside guest RAM (0..{ram:#x}); try a larger --mem")]
    OutsideRam { index: usize, start: u64, end: u64, ram: u64 },
    #[error("segment {index} overlaps the boot information at {INFO_ADDR:#x}..0xa000")]
    OverlapsInfo { index: usize },
    #[error("command line is longer than {CMDLINE_MAX} bytes")]
    CmdlineTooLong,
    #[error("the multiboot header asks for video mode information, which nestbed does not provide")]
    UnsupportedFlags,
}

struct Segment<'a> {
    paddr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// Loads `image` into `ram` and writes the multiboot information with `cmdline`.
pub fn load(ram: &GuestRam, image: &[u8], cmdline: &str) -> Result<BootEntry, LoadError> {
    let (hdr_off, flags) = find_header(image)?;
    if flags & 0x4 != 0 && flags & 0xffff & !0x7 != 0 {
        return Err(LoadError::UnsupportedFlags);
    }
    let (entry, segments) = if image.starts_with(b"\x7fELF") && flags & FLAG_AOUT_KLUDGE == 0 {
        elf_segments(image)?
    } else if flags & FLAG_AOUT_KLUDGE != 0 {
        aout_segments(image, hdr_off)?
    } else {
        return Err(LoadError::NotElf);
    };
    let mut image_end = 0;
    for (index, s) in segments.iter().enumerate() {
        let end = s.paddr.checked_add(s.memsz).ok_or(LoadError::OutsideRam {
            index,
            start: s.paddr,
            end: u64::MAX,
            ram: ram.size(),
        })?;
        if !ram.contains(s.paddr, s.memsz) || (s.data.len() as u64) > s.memsz {
            return Err(LoadError::OutsideRam { index, start: s.paddr, end, ram: ram.size() });
        }
        if s.paddr < 0xa000 && end > INFO_ADDR {
            return Err(LoadError::OverlapsInfo { index });
        }
        let oob = |_| LoadError::OutsideRam { index, start: s.paddr, end, ram: ram.size() };
        ram.write(s.paddr, s.data).map_err(oob)?;
        let bss = vec![0u8; (s.memsz - s.data.len() as u64) as usize];
        ram.write(s.paddr + s.data.len() as u64, &bss).map_err(oob)?;
        image_end = image_end.max(end);
    }
    write_info(ram, cmdline)?;
    Ok(BootEntry { entry, info: INFO_ADDR, image_end })
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Offset and flags of the multiboot header (32-bit aligned, in the first 8192 bytes).
pub fn find_header(image: &[u8]) -> Result<(usize, u32), LoadError> {
    let limit = image.len().min(SEARCH);
    (0..limit.saturating_sub(11))
        .step_by(4)
        .find_map(|o| {
            let magic = u32_at(image, o)?;
            let flags = u32_at(image, o + 4)?;
            let sum = u32_at(image, o + 8)?;
            (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0).then_some((o, flags))
        })
        .ok_or(LoadError::NoMultibootHeader)
}

fn bad(what: &str) -> LoadError {
    LoadError::BadElf(what.to_string())
}

fn elf_segments(e: &[u8]) -> Result<(u64, Vec<Segment<'_>>), LoadError> {
    let class = *e.get(4).ok_or_else(|| bad("truncated header"))?;
    if e.get(5) != Some(&1) {
        return Err(bad("not little-endian"));
    }
    let is64 = match class {
        1 => false,
        2 => true,
        _ => return Err(bad("unknown ELF class")),
    };
    let t = || bad("truncated header");
    let (entry, phoff, phentsize, phnum) = if is64 {
        (
            u64_at(e, 24).ok_or_else(t)?,
            u64_at(e, 32).ok_or_else(t)?,
            u16_at(e, 54).ok_or_else(t)?,
            u16_at(e, 56).ok_or_else(t)?,
        )
    } else {
        (
            u64::from(u32_at(e, 24).ok_or_else(t)?),
            u64::from(u32_at(e, 28).ok_or_else(t)?),
            u16_at(e, 42).ok_or_else(t)?,
            u16_at(e, 44).ok_or_else(t)?,
        )
    };
    let mut segs = Vec::new();
    for i in 0..usize::from(phnum) {
        let p = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * usize::from(phentsize)))
            .ok_or_else(|| bad("program header offset"))?;
        let th = || bad(&format!("program header {i} is truncated"));
        if u32_at(e, p).ok_or_else(th)? != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = if is64 {
            (u64_at(e, p + 8), u64_at(e, p + 24), u64_at(e, p + 32), u64_at(e, p + 40))
        } else {
            let f = |o| u32_at(e, p + o).map(u64::from);
            (f(4), f(12), f(16), f(20))
        };
        let (offset, paddr, filesz, memsz) =
            (offset.ok_or_else(th)?, paddr.ok_or_else(th)?, filesz.ok_or_else(th)?, memsz.ok_or_else(th)?);
        let data = offset
            .checked_add(filesz)
            .and_then(|end| e.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
            .ok_or_else(|| bad(&format!("segment {i} data lies beyond the end of the file")))?;
        segs.push(Segment { paddr, data, memsz });
    }
    if segs.is_empty() {
        return Err(bad("no loadable segment"));
    }
    Ok((entry, segs))
}

/// Loads by the header's address fields (Multiboot 3.1.3, flag 16).
fn aout_segments(image: &[u8], h: usize) -> Result<(u64, Vec<Segment<'_>>), LoadError> {
    let f = |o| u32_at(image, h + o).map(u64::from).ok_or_else(|| bad("truncated a.out-kludge header"));
    let (header_addr, load_addr, load_end, bss_end, entry) = (f(12)?, f(16)?, f(20)?, f(24)?, f(28)?);
    let start = (h as u64).checked_sub(header_addr.wrapping_sub(load_addr)).ok_or_else(|| bad("load_addr"))?;
    let len = if load_end == 0 { image.len() as u64 - start } else { load_end.saturating_sub(load_addr) };
    let data = image.get(start as usize..(start + len) as usize).ok_or_else(|| bad("load_end_addr beyond the file"))?;
    let memsz = if bss_end == 0 { len } else { bss_end.saturating_sub(load_addr).max(len) };
    Ok((entry, vec![Segment { paddr: load_addr, data, memsz }]))
}

fn write_info(ram: &GuestRam, cmdline: &str) -> Result<(), LoadError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong);
    }
    let oob = |_| LoadError::OutsideRam { index: 0, start: INFO_ADDR, end: 0xa000, ram: ram.size() };
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    ram.write(CMDLINE_ADDR, &c).map_err(oob)?;
    // Memory map (3.3): entries of size(4) base(8) length(8) type(4); size excludes itself.
    let mut mmap = Vec::new();
    for (base, len, kind) in [(0u64, 0x9f000u64, 1u32), (0x9f000, 0x61000, 2), (0x10_0000, ram.size() - 0x10_0000, 1)] {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    ram.write(MMAP_ADDR, &mmap).map_err(oob)?;
    let mut info = [0u8; 52];
    let flags: u32 = 1 | 4 | 0x40; // mem_*, cmdline, mmap
    let put = |b: &mut [u8; 52], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut info, 0, flags);
    put(&mut info, 4, 639);
    put(&mut info, 8, ((ram.size() - 0x10_0000) >> 10) as u32);
    put(&mut info, 16, CMDLINE_ADDR as u32);
    put(&mut info, 44, mmap.len() as u32);
    put(&mut info, 48, MMAP_ADDR as u32);
    ram.write(INFO_ADDR, &info).map_err(oob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags))] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    #[test]
    fn rejects_what_is_not_multiboot() {
        let ram = GuestRam::new(4).unwrap();
        assert_eq!(load(&ram, b"hello", ""), Err(LoadError::NoMultibootHeader));
        let mut elf = b"\x7fELF\x02\x01".to_vec();
        elf.resize(100, 0);
        assert_eq!(load(&ram, &elf, ""), Err(LoadError::NoMultibootHeader));
        let mut img = vec![0u8; 16];
        img.extend(header(3));
        assert_eq!(load(&ram, &img, ""), Err(LoadError::NotElf));
    }

    #[test]
    fn aout_kludge_loads_flat_images() {
        let ram = GuestRam::new(4).unwrap();
        let mut img = header(FLAG_AOUT_KLUDGE);
        for v in [0x10_0000u32, 0x10_0000, 0, 0x10_2000, 0x10_0020] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(&[0xf4; 4]);
        let b = load(&ram, &img, "k hello").unwrap();
        assert_eq!(b.entry, 0x10_0020);
        assert_eq!(b.image_end, 0x10_2000);
        let mut got = [0u8; 4];
        ram.read(0x10_0020, &mut got).unwrap();
        assert_eq!(got, [0xf4; 4]);
        let mut c = [0u8; 8];
        ram.read(CMDLINE_ADDR, &mut c).unwrap();
        assert_eq!(&c, b"k hello\0");
        assert_eq!(ram.read_u32(INFO_ADDR + 8).unwrap(), 3 * 1024);
    }

    #[test]
    fn segments_outside_ram_are_refused() {
        let ram = GuestRam::new(2).unwrap();
        let mut img = header(FLAG_AOUT_KLUDGE);
        for v in [0x10_0000u32, 0x10_0000, 0, 0x40_0000, 0x10_0020] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        assert!(matches!(load(&ram, &img, ""), Err(LoadError::OutsideRam { .. })));
    }
}
