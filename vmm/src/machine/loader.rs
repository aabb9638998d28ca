//! Multiboot v1 loader (Multiboot Specification 0.6.96): finds the header in the first 8 KiB,
//! places the image from its ELF32/ELF64 program headers (or the header's a.out-kludge
//! addresses, flag bit 16), places the boot modules page-aligned after it, builds the
//! information structure and describes the 32-bit protected-mode entry state (section 3.2).

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
const INFO_END: u64 = 0xa000;
const INFO_SIZE: u64 = INFO_END - INFO_ADDR;
/// Where the information goes when the image occupies INFO_ADDR.
const LOW_INFO_ADDR: u64 = 0x1000;
const PAGE: u64 = 0x1000;
/// Lower memory ends at 640 KiB; 640 KiB-1 MiB is the legacy VGA/ROM hole.
const LOWER_END: u64 = 0xa_0000;
const HIGH_START: u64 = 0x10_0000;
/// Information flags (3.3): mem_lower/mem_upper, cmdline, mods, mmap.
const INFO_MEM: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;

/// A boot module (3.3 `mods_addr`): the file's bytes and the string the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Where it came from, for messages.
    pub name: String,
    pub data: Vec<u8>,
    /// The module's string: its path and arguments, as GRUB and QEMU pass it.
    pub cmdline: String,
}

impl Module {
    /// A module read from `path` with `args`; its string is `path`, then ` args` if any.
    pub fn new(path: &str, data: Vec<u8>, args: &str) -> Self {
        let cmdline = if args.is_empty() { path.to_string() } else { format!("{path} {args}") };
        Module { name: path.to_string(), data, cmdline }
    }

    /// Reads the module at `path`.
    pub fn read(path: &str, args: &str) -> Result<Self, crate::error::Error> {
        let data = crate::error::read_limited(std::path::Path::new(path), crate::error::limit::IMAGE)?;
        Ok(Module::new(path, data, args))
    }
}

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
    #[error("the {count} loadable segments add up to {total:#x} bytes, more than guest RAM ({ram:#x})")]
    SegmentsLargerThanRam { count: usize, total: u64, ram: u64 },
    #[error("segment {index} leaves no room for the boot information (4 KiB at {INFO_ADDR:#x}, {LOW_INFO_ADDR:#x} or after the image)")]
    OverlapsInfo { index: usize },
    #[error("{0} program headers (nestbed loads at most {MAX_PROGRAM_HEADERS})")]
    TooManyProgramHeaders(usize),
    #[error("command line is longer than {CMDLINE_MAX} bytes")]
    CmdlineTooLong,
    #[error("the multiboot header asks for video mode information, which nestbed does not provide")]
    UnsupportedFlags,
    #[error("module {name} ({len} bytes at {start:#x}) does not fit in guest RAM (0..{ram:#x}); try a larger --mem")]
    ModuleOutsideRam { name: String, start: u64, len: u64, ram: u64 },
}

/// At most this many program headers (a multiboot kernel has a handful), as the patch scanner.
pub use crate::patch::scan::MAX_PROGRAM_HEADERS;

struct Segment<'a> {
    paddr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// Loads `image` into `ram` and writes the multiboot information with `cmdline`.
pub fn load(ram: &GuestRam, image: &[u8], cmdline: &str) -> Result<BootEntry, LoadError> {
    load_with_modules(ram, image, cmdline, &[])
}

/// [`load`], then each of `modules` page-aligned after the image, in order; their table and
/// strings follow the last one.
pub fn load_with_modules(
    ram: &GuestRam,
    image: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<BootEntry, LoadError> {
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
    // The boot information goes at INFO_ADDR unless the image lies there (real-mode images
    // load at 0x8000): then at 0x1000, or after the image.
    let overlaps = |base: u64| segments.iter().any(|s| s.paddr < base + INFO_SIZE && s.paddr + s.memsz > base);
    let top = segments.iter().map(|s| s.paddr.saturating_add(s.memsz)).max().unwrap_or(0);
    let info = [INFO_ADDR, LOW_INFO_ADDR, page_up(top).unwrap_or(u64::MAX)]
        .into_iter()
        .find(|&b| !overlaps(b) && ram.contains(b, INFO_SIZE))
        .ok_or(LoadError::OverlapsInfo { index: 0 })?;
    for (index, s) in segments.iter().enumerate() {
        if !ram.contains(s.paddr, s.memsz) || (s.data.len() as u64) > s.memsz {
            let end = s.paddr.saturating_add(s.memsz);
            return Err(LoadError::OutsideRam { index, start: s.paddr, end, ram: ram.size() });
        }
    }
    // Bounds the loader's work: overlapping segments could make it write RAM many times over.
    let total = segments.iter().fold(0u64, |t, s| t.saturating_add(s.memsz));
    if total > ram.size() {
        return Err(LoadError::SegmentsLargerThanRam { count: segments.len(), total, ram: ram.size() });
    }
    let mut image_end = 0;
    for (index, s) in segments.iter().enumerate() {
        let end = s.paddr + s.memsz;
        let oob = |_| LoadError::OutsideRam { index, start: s.paddr, end, ram: ram.size() };
        ram.write(s.paddr, s.data).map_err(oob)?;
        let bss = vec![0u8; (s.memsz - s.data.len() as u64) as usize];
        ram.write(s.paddr + s.data.len() as u64, &bss).map_err(oob)?;
        image_end = image_end.max(end);
    }
    let mods = load_modules(ram, image_end.max(info + INFO_SIZE), modules)?;
    write_info(ram, info, cmdline, mods)?;
    Ok(BootEntry { entry, info, image_end })
}

fn page_up(a: u64) -> Option<u64> {
    a.checked_add(PAGE - 1).map(|a| a & !(PAGE - 1))
}

/// Places the modules and their table (16-byte entries: mod_start, mod_end, string, reserved),
/// the strings after it. Returns the table's count and address.
fn load_modules(ram: &GuestRam, image_end: u64, modules: &[Module]) -> Result<Option<(u32, u64)>, LoadError> {
    if modules.is_empty() {
        return Ok(None);
    }
    let mut next = image_end;
    let mut entries = Vec::with_capacity(modules.len());
    for m in modules {
        let len = m.data.len() as u64;
        let too_big = |start| LoadError::ModuleOutsideRam { name: m.name.clone(), start, len, ram: ram.size() };
        let start = page_up(next).ok_or_else(|| too_big(next))?;
        let end = start.checked_add(len).filter(|&e| e <= u64::from(u32::MAX)).ok_or_else(|| too_big(start))?;
        if !ram.contains(start, len) {
            return Err(too_big(start));
        }
        ram.write(start, &m.data).map_err(|_| too_big(start))?;
        entries.push((start, end));
        next = end;
    }
    let table = page_up(next).unwrap_or(u64::MAX);
    let strings = table.saturating_add(16 * modules.len() as u64);
    let mut bytes = Vec::new();
    let mut text = Vec::new();
    for (m, (start, end)) in modules.iter().zip(entries) {
        for v in [start, end, strings + text.len() as u64, 0] {
            bytes.extend_from_slice(&(v as u32).to_le_bytes());
        }
        text.extend_from_slice(m.cmdline.as_bytes());
        text.push(0);
    }
    bytes.append(&mut text);
    let len = bytes.len() as u64;
    let last = modules.last().map(|m| m.name.as_str()).unwrap_or_default();
    let table_err =
        || LoadError::ModuleOutsideRam { name: format!("table after {last}"), start: table, len, ram: ram.size() };
    if table.saturating_add(len) > u64::from(u32::MAX) || !ram.contains(table, len) {
        return Err(table_err());
    }
    ram.write(table, &bytes).map_err(|_| table_err())?;
    Ok(Some((modules.len() as u32, table)))
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
    if usize::from(phnum) > MAX_PROGRAM_HEADERS {
        return Err(LoadError::TooManyProgramHeaders(phnum.into()));
    }
    // Elf32_Phdr is 32 bytes, Elf64_Phdr 56 (System V ABI).
    let min = if is64 { 56 } else { 32 };
    if phnum > 0 && phentsize < min {
        return Err(bad(&format!("program header size {phentsize}, less than {min}")));
    }
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

/// Writes the multiboot information at `base` (the structure), `base + 0x100` (the command
/// line) and `base + 0x800` (the memory map).
fn write_info(ram: &GuestRam, base: u64, cmdline: &str, mods: Option<(u32, u64)>) -> Result<(), LoadError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong);
    }
    let oob = |_| LoadError::OutsideRam { index: 0, start: base, end: base + INFO_SIZE, ram: ram.size() };
    let (cmdline_addr, mmap_addr) = (base + CMDLINE_ADDR - INFO_ADDR, base + MMAP_ADDR - INFO_ADDR);
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    ram.write(cmdline_addr, &c).map_err(oob)?;
    // Memory map (3.3): entries of size(4) base(8) length(8) type(4, 1 = available RAM); size
    // excludes itself.
    let mut mmap = Vec::new();
    let high = ram.size().saturating_sub(HIGH_START);
    for (base, len, kind) in [(0u64, LOWER_END, 1u32), (LOWER_END, HIGH_START - LOWER_END, 2), (HIGH_START, high, 1)] {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    ram.write(mmap_addr, &mmap).map_err(oob)?;
    let mut info = [0u8; 52];
    let flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | if mods.is_some() { INFO_MODS } else { 0 };
    let put = |b: &mut [u8; 52], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut info, 0, flags);
    put(&mut info, 4, (LOWER_END >> 10) as u32);
    put(&mut info, 8, u32::try_from(high >> 10).unwrap_or(u32::MAX));
    put(&mut info, 16, cmdline_addr as u32);
    if let Some((count, addr)) = mods {
        put(&mut info, 20, count);
        put(&mut info, 24, addr as u32);
    }
    put(&mut info, 44, mmap.len() as u32);
    put(&mut info, 48, mmap_addr as u32);
    ram.write(base, &info).map_err(oob)
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

    fn flat_image(load: u32, bss_end: u32) -> Vec<u8> {
        let mut img = header(FLAG_AOUT_KLUDGE);
        for v in [load, load, 0, bss_end, load + 0x20] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(&[0xf4; 4]);
        img
    }

    #[test]
    fn memory_map_and_lower_upper() {
        let ram = GuestRam::new(4).unwrap();
        load(&ram, &flat_image(0x10_0000, 0x10_2000), "k").unwrap();
        let flags = ram.read_u32(INFO_ADDR).unwrap();
        assert_eq!(flags, INFO_MEM | INFO_CMDLINE | INFO_MMAP);
        assert_eq!(ram.read_u32(INFO_ADDR + 4).unwrap(), 640);
        assert_eq!(ram.read_u32(INFO_ADDR + 8).unwrap(), 3 * 1024);
        let (len, addr) = (ram.read_u32(INFO_ADDR + 44).unwrap(), ram.read_u32(INFO_ADDR + 48).unwrap());
        assert_eq!(len, 3 * 24);
        let mut entries = Vec::new();
        let mut p = u64::from(addr);
        while p < u64::from(addr + len) {
            let size = ram.read_u32(p).unwrap();
            let mut b = [0u8; 20];
            ram.read(p + 4, &mut b).unwrap();
            let base = u64::from_le_bytes(b[0..8].try_into().unwrap());
            let length = u64::from_le_bytes(b[8..16].try_into().unwrap());
            entries.push((size, base, length, u32::from_le_bytes(b[16..20].try_into().unwrap())));
            p += u64::from(size) + 4;
        }
        assert_eq!(entries, [(20, 0, 0xa_0000, 1), (20, 0xa_0000, 0x6_0000, 2), (20, 0x10_0000, 0x30_0000, 1)]);
    }

    #[test]
    fn modules_follow_the_image_page_aligned() {
        let ram = GuestRam::new(4).unwrap();
        let mods = [Module::new("env", b"NR_CPUS=1\n".to_vec(), ""), Module::new("/m/two", vec![7; 0x1001], "a=b c")];
        let b = load_with_modules(&ram, &flat_image(0x10_0000, 0x10_1800), "k", &mods).unwrap();
        assert_eq!(b.image_end, 0x10_1800);
        assert_eq!(ram.read_u32(INFO_ADDR).unwrap() & INFO_MODS, INFO_MODS);
        assert_eq!(ram.read_u32(INFO_ADDR + 20).unwrap(), 2);
        let table = u64::from(ram.read_u32(INFO_ADDR + 24).unwrap());
        let entry = |i: u64, f: u64| ram.read_u32(table + 16 * i + 4 * f).unwrap();
        assert_eq!((entry(0, 0), entry(0, 1)), (0x10_2000, 0x10_200a));
        assert_eq!((entry(1, 0), entry(1, 1)), (0x10_3000, 0x10_4001));
        assert_eq!(table, 0x10_5000);
        let mut data = [0u8; 10];
        ram.read(0x10_2000, &mut data).unwrap();
        assert_eq!(&data, b"NR_CPUS=1\n");
        let string = |i| {
            let mut s = [0u8; 13];
            ram.read(u64::from(entry(i, 2)), &mut s).unwrap();
            s
        };
        assert_eq!(&string(0)[..4], b"env\0");
        assert_eq!(&string(1), b"/m/two a=b c\0");
    }

    #[test]
    fn modules_stay_above_the_boot_information() {
        let ram = GuestRam::new(2).unwrap();
        let mods = [Module::new("m", vec![1; 16], "")];
        load_with_modules(&ram, &flat_image(0x1000, 0x2000), "", &mods).unwrap();
        assert_eq!(ram.read_u32(u64::from(ram.read_u32(INFO_ADDR + 24).unwrap())).unwrap(), INFO_END as u32);
    }

    #[test]
    fn modules_beyond_ram_name_the_file() {
        let ram = GuestRam::new(2).unwrap();
        let mods = [Module::new("big.bin", vec![0; 0x20_0000], "")];
        let err = load_with_modules(&ram, &flat_image(0x10_0000, 0x10_1000), "", &mods).unwrap_err();
        assert!(matches!(&err, LoadError::ModuleOutsideRam { name, start: 0x10_1000, .. } if name == "big.bin"));
        assert!(err.to_string().contains("big.bin"), "{err}");
    }

    #[test]
    fn an_image_at_the_boot_information_moves_it() {
        // Real-mode images (kvm-unit-tests' realmode.flat) load from 0x8000 on.
        let ram = GuestRam::new(4).unwrap();
        let b = load(&ram, &flat_image(0x8000, 0xd000), "k x").unwrap();
        assert_eq!(b.info, LOW_INFO_ADDR);
        let cmdline = u64::from(ram.read_u32(b.info + 16).unwrap());
        let mut c = [0u8; 3];
        ram.read(cmdline, &mut c).unwrap();
        assert_eq!(&c, b"k x");
        // Filling both low places puts it after the image.
        let b = load(&ram, &flat_image(0x1000, 0xd000), "").unwrap();
        assert_eq!(b.info, 0xd000);
    }
}
