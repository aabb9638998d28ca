use super::*;

/// Where the test images' code runs (virtual) and where the loader places it (physical).
const VBASE: u64 = 0x10_0000;
const PBASE: u64 = 0x20_0000;
const CODE_OFF: usize = 64 + 56;

fn put(b: &mut [u8], o: usize, v: u64, n: usize) {
    b[o..o + n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// An ELF64 image with one R+X PT_LOAD segment holding `code` at VBASE (PBASE physical), the
/// entry at code offset `entry` (or outside the segment) and an STT_FUNC symbol per `syms`.
fn elf64(code: &[u8], entry: Option<usize>, syms: &[usize]) -> Vec<u8> {
    let mut e = vec![0u8; CODE_OFF];
    e[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    put(&mut e, 16, 2, 2);
    put(&mut e, 18, 62, 2);
    put(&mut e, 20, 1, 4);
    put(&mut e, 24, entry.map_or(0x1000, |o| VBASE + o as u64), 8);
    put(&mut e, 32, 64, 8);
    put(&mut e, 52, 64, 2);
    put(&mut e, 54, 56, 2);
    put(&mut e, 56, 1, 2);
    let p = 64;
    put(&mut e, p, 1, 4);
    put(&mut e, p + 4, 5, 4);
    put(&mut e, p + 8, CODE_OFF as u64, 8);
    put(&mut e, p + 16, VBASE, 8);
    put(&mut e, p + 24, PBASE, 8);
    put(&mut e, p + 32, code.len() as u64, 8);
    put(&mut e, p + 40, code.len() as u64, 8);
    e.extend_from_slice(code);
    if !syms.is_empty() {
        let symtab = e.len();
        e.resize(symtab + 24 * (syms.len() + 1), 0);
        for (k, &o) in syms.iter().enumerate() {
            let y = symtab + 24 * (k + 1);
            e[y + 4] = 0x12; // STB_GLOBAL, STT_FUNC
            put(&mut e, y + 6, 1, 2);
            put(&mut e, y + 8, VBASE + o as u64, 8);
        }
        let shoff = e.len();
        e.resize(shoff + 2 * 64, 0);
        let s = shoff + 64;
        put(&mut e, s + 4, 2, 4); // SHT_SYMTAB
        put(&mut e, s + 24, symtab as u64, 8);
        put(&mut e, s + 32, 24 * (syms.len() as u64 + 1), 8);
        put(&mut e, s + 56, 24, 8);
        put(&mut e, 40, shoff as u64, 8);
        put(&mut e, 58, 64, 2);
        put(&mut e, 60, 2, 2);
    }
    e
}

fn classes(s: &Scan) -> Vec<Class> {
    s.sites.iter().map(|s| s.class).collect()
}

/// One 64-bit encoding of every class, in `Class::ALL` order.
const EVERY: &[(&[u8], Class)] = &[
    (&[0xf3, 0x0f, 0xc7, 0x30], Class::Vmxon),
    (&[0x0f, 0x01, 0xc4], Class::Vmxoff),
    (&[0x66, 0x0f, 0xc7, 0x30], Class::Vmclear),
    (&[0x0f, 0xc7, 0x30], Class::Vmptrld),
    (&[0x0f, 0xc7, 0x38], Class::Vmptrst),
    (&[0x0f, 0x78, 0xc8], Class::Vmread),
    (&[0x0f, 0x79, 0xc8], Class::Vmwrite),
    (&[0x0f, 0x01, 0xc2], Class::Vmlaunch),
    (&[0x0f, 0x01, 0xc3], Class::Vmresume),
    (&[0x0f, 0x01, 0xc1], Class::Vmcall),
    (&[0x0f, 0x01, 0xd4], Class::Vmfunc),
    (&[0x66, 0x0f, 0x38, 0x80, 0x01], Class::Invept),
    (&[0x66, 0x0f, 0x38, 0x81, 0x01], Class::Invvpid),
    (&[0x0f, 0x22, 0xe0], Class::MovToCr4),
    (&[0x0f, 0x20, 0xe0], Class::MovFromCr4),
    (&[0x0f, 0xa2], Class::Cpuid),
    (&[0x0f, 0x31], Class::Rdtsc),
    (&[0x0f, 0x01, 0xf9], Class::Rdtscp),
    (&[0x0f, 0x22, 0xc0], Class::MovToCr0),
    (&[0x0f, 0x20, 0xc0], Class::MovFromCr0),
    (&[0x0f, 0x22, 0xd8], Class::MovToCr3),
    (&[0x0f, 0x20, 0xd8], Class::MovFromCr3),
    (&[0x44, 0x0f, 0x22, 0xc0], Class::MovToCr8),
    (&[0x44, 0x0f, 0x20, 0xc0], Class::MovFromCr8),
    (&[0x0f, 0x06], Class::Clts),
    (&[0x0f, 0x01, 0xf0], Class::Lmsw),
    (&[0x0f, 0x08], Class::Invd),
    (&[0x0f, 0x09], Class::Wbinvd),
    (&[0x0f, 0x01, 0x38], Class::Invlpg),
    (&[0x0f, 0x33], Class::Rdpmc),
    (&[0x0f, 0x01, 0xd1], Class::Xsetbv),
    (&[0x0f, 0x01, 0xd9], Class::Vmmcall),
];

#[test]
fn every_class_is_found_at_its_physical_address() {
    let mut code = vec![0x90]; // nop, so no site starts at offset 0
    let mut offsets = Vec::new();
    for (bytes, _) in EVERY {
        offsets.push(code.len());
        code.extend_from_slice(bytes);
    }
    code.push(0xc3);
    let img = elf64(&code, None, &[0]);
    let all = scan(&img, Selection::all()).unwrap();
    assert_eq!(classes(&all), Class::ALL.to_vec());
    for ((site, (bytes, _)), off) in all.sites.iter().zip(EVERY).zip(&offsets) {
        assert_eq!(site.addr, PBASE + *off as u64, "{}", site.text);
        assert_eq!(site.original, *bytes);
        assert_eq!(usize::from(site.len), bytes.len());
        assert_eq!(site.found_by, FoundBy::Descent);
        assert_eq!(patched_bytes(site)[0], 0xCC);
        assert_eq!(patched_bytes(site).len(), bytes.len());
    }
    assert_eq!(all.sites[0].text, "vmxon [rax]");
    assert_eq!(all.sites[13].text, "mov cr4, rax");
    let default = scan(&img, Selection::default()).unwrap();
    let expected: Vec<Class> = Class::ALL.into_iter().filter(|c| !c.is_fidelity()).collect();
    assert_eq!(classes(&default), expected);
    assert_eq!(expected.len(), 17);
}

const VMXON_DATA: [u8; 4] = [0xf3, 0x0f, 0xc7, 0x30];

#[test]
fn data_after_ret_or_jmp_is_not_reported() {
    // ret; <vmxon bytes>; ret
    let mut code = vec![0xc3];
    code.extend(VMXON_DATA);
    code.push(0xc3);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.descent_instructions, 1);
    // jmp over the bytes to a ret
    let mut code = vec![0xeb, 0x04];
    code.extend(VMXON_DATA);
    code.push(0xc3);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.descent_instructions, 2);
}

#[test]
fn a_load_from_the_bytes_does_not_anchor_the_sweep_but_lea_does() {
    // mov rax, [rip+1]; ret; <vmxon>; ret
    let mut code = vec![0x48, 0x8b, 0x05, 1, 0, 0, 0, 0xc3];
    code.extend(VMXON_DATA);
    code.push(0xc3);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.sweep_instructions, 0);
    // lea rax, [rip+1]: the address is taken as code, the run decodes and ends in ret.
    code[1] = 0x8d;
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert_eq!(classes(&s), [Class::Vmxon]);
    assert_eq!(s.sites[0].found_by, FoundBy::Sweep);
    assert_eq!(s.sites[0].addr, PBASE + 8);
    assert_eq!(s.sweep_instructions, 2);
}

#[test]
fn the_sweep_rejects_a_run_that_does_not_decode_or_end() {
    // lea rax, [rip+1]; ret; <vmxon>; ff ff (invalid)
    let mut code = vec![0x48, 0x8d, 0x05, 1, 0, 0, 0, 0xc3];
    code.extend(VMXON_DATA);
    code.extend([0xff, 0xff]);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.rejected_runs, 1);
    // The run runs off the end of the segment.
    code.truncate(12);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.rejected_runs, 1);
    // The run branches into the middle of its own instruction: vmxon; jmp -3 (into vmxon)
    code.extend([0xeb, 0xfb]);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.rejected_runs, 1);
}

#[test]
fn a_jump_into_the_middle_of_an_instruction() {
    // mov rax, imm64 whose immediate holds vmxon's bytes; jmp back into the immediate.
    let mut code = vec![0x48, 0xb8];
    code.extend(VMXON_DATA);
    code.extend([0xc3, 0x90, 0x90, 0x90, 0xeb, 0xf6]);
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.conflicts, [PBASE + 2]);
    // je +1 skips into the middle of a vmcall that the fall-through executes: overlapping code,
    // so the vmcall is not patched.
    let code = [0x74, 0x01, 0x0f, 0x01, 0xc1, 0xc3];
    let s = scan(&elf64(&code, None, &[0]), Selection::all()).unwrap();
    assert!(s.sites.is_empty());
    assert_eq!(s.conflicts, [PBASE + 3]);
}

#[test]
fn symbols_are_extra_roots() {
    // f1: ret; f2: cpuid; ret — f2 is reached by nothing but its symbol.
    let code = [0xc3, 0x0f, 0xa2, 0xc3];
    let s = scan(&elf64(&code, None, &[0]), Selection::default()).unwrap();
    assert!(s.sites.is_empty());
    let s = scan(&elf64(&code, None, &[0, 1]), Selection::default()).unwrap();
    assert_eq!(classes(&s), [Class::Cpuid]);
    assert_eq!(s.sites[0].found_by, FoundBy::Descent);
}

#[test]
fn the_entry_is_32_bit_code_and_its_code_addresses_anchor_64_bit_code() {
    // entry (32-bit): mov eax, cr4; mov eax, VBASE+9; ret | 64-bit: mov rax, cr8; ret
    let mut code = vec![0x0f, 0x20, 0xe0, 0xb8];
    code.extend(((VBASE + 9) as u32).to_le_bytes());
    code.extend([0xc3, 0x44, 0x0f, 0x20, 0xc0, 0xc3]);
    let s = scan(&elf64(&code, Some(0), &[]), Selection::all()).unwrap();
    assert_eq!(classes(&s), [Class::MovFromCr4, Class::MovFromCr8]);
    assert_eq!(s.sites[0].text, "mov eax, cr4");
    assert_eq!(s.sites[1].found_by, FoundBy::Sweep);
    assert_eq!((s.descent_instructions, s.sweep_instructions), (3, 2));
}

#[test]
fn malformed_images_are_errors() {
    let good = elf64(&[0x0f, 0xa2, 0xc3], Some(0), &[0]);
    assert!(scan(&good, Selection::all()).is_ok());
    assert_eq!(scan(b"MZ\x90\x00", Selection::all()), Err(ScanError::NotElf));
    // Segment data past the end of the file.
    let mut e = good.clone();
    put(&mut e, 64 + 32, 100 << 20, 8);
    assert!(matches!(scan(&e, Selection::all()), Err(ScanError::BadElf(m)) if m.contains("beyond the end")));
    // 65,535 program headers of 100 MiB each.
    let mut e = good.clone();
    put(&mut e, 56, 0xffff, 2);
    assert_eq!(scan(&e, Selection::all()), Err(ScanError::TooManyProgramHeaders(0xffff)));
    // Program headers past the end of the file.
    let mut e = good.clone();
    put(&mut e, 32, u64::MAX - 8, 8);
    assert!(matches!(scan(&e, Selection::all()), Err(ScanError::BadElf(_))));
    // Not executable.
    let mut e = good.clone();
    put(&mut e, 64 + 4, 4, 4);
    assert_eq!(scan(&e, Selection::all()), Err(ScanError::NoCode));
    // A symbol table past the end of the file.
    let mut e = good.clone();
    let shoff = e.len() - 128;
    put(&mut e, shoff + 64 + 32, 1 << 40, 8);
    assert!(matches!(scan(&e, Selection::all()), Err(ScanError::BadElf(m)) if m.contains("symbol table")));
    // Every truncation is an error or a scan, never a panic.
    for n in 0..good.len() {
        let _ = scan(&good[..n], Selection::all());
    }
}

#[test]
fn the_table_finds_sites_by_start_and_by_any_byte() {
    let mut code = vec![0x90];
    code.extend(VMXON_DATA);
    code.extend([0x0f, 0xa2, 0xc3]);
    let s = scan(&elf64(&code, None, &[0]), Selection::default()).unwrap();
    let t = PatchTable::new(&s);
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup(PBASE + 1).map(|s| s.class), Some(Class::Vmxon));
    assert!(t.lookup(PBASE + 2).is_none());
    assert_eq!(t.site_containing(PBASE + 4).map(|s| s.class), Some(Class::Vmxon));
    assert_eq!(t.site_containing(PBASE + 6).map(|s| s.class), Some(Class::Cpuid));
    assert!(t.site_containing(PBASE).is_none());
    assert!(t.site_containing(PBASE + 7).is_none());
    let r = report(&s);
    assert!(r.contains("0x00200001   4  VMXON"), "{r}");
    assert!(r.contains("vmxon [rax]"), "{r}");
    assert!(r.contains("  CPUID         1"), "{r}");
    assert!(r.contains("2 sites"), "{r}");
}

#[test]
fn the_embedded_vmx_basic_guest() {
    let img = crate::guests::find("vmx-basic").expect("vmx-basic is embedded");
    let s = scan(img, Selection::default()).unwrap();
    let count = |c| s.sites.iter().filter(|s| s.class == c).count();
    for c in [Class::Vmxon, Class::Vmlaunch, Class::Vmread, Class::Vmwrite, Class::MovToCr4, Class::Cpuid] {
        assert!(count(c) >= 1, "no {c} site:\n{}", report(&s));
    }
    assert!(s.sites.windows(2).all(|w| w[0].end() <= w[1].addr));
    assert!(s.sites.iter().all(|s| !s.class.is_fidelity()));
    assert!(s.conflicts.is_empty());
    // The 32-bit entry stub (descent) sets CR4 before the 64-bit code (sweep).
    assert_eq!(s.sites[0].class, Class::MovFromCr4);
    assert_eq!(s.sites[0].found_by, FoundBy::Descent);
    let all = scan(img, Selection::all()).unwrap();
    assert!(all.sites.len() > s.sites.len());
}
