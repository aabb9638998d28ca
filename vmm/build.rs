//! Builds the guests in `../guests` (their own cargo workspace, target dir under OUT_DIR) with
//! the flags a freestanding kernel needs on the host target, converts each to an ELF32
//! container (as QEMU's multiboot loader wants) and generates the table of embedded guests.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guests = manifest.parent().expect("vmm has a parent").join("guests");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("guests-target");
    println!("cargo:rerun-if-changed={}", guests.display());

    let link_ld = guests.join("rt").join("link.ld");
    let flags = [
        "-Crelocation-model=static".to_string(),
        "-Cno-redzone=yes".to_string(),
        "-Ctarget-cpu=x86-64".to_string(),
        "-Ctarget-feature=-sse,-sse2".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static".to_string(),
        "-Clink-arg=-no-pie".to_string(),
        format!("-Clink-arg=-Wl,-T,{}", link_ld.display()),
        "-Clink-arg=-Wl,-z,max-page-size=0x1000".to_string(),
        "-Clink-arg=-Wl,--build-id=none".to_string(),
    ];
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--workspace", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    for var in
        ["RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_PRIMARY_PACKAGE"]
    {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars() {
        if k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_") || k.starts_with("CARGO_PROFILE_") {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("running cargo for the guests");
    assert!(status.success(), "building the guests in {} failed", guests.display());

    let mut table = String::from("/// Embedded guests: (name, description, multiboot ELF32 image).\npub static GUESTS: &[(&str, &str, &[u8])] = &[\n");
    let mut names: Vec<(String, String)> = guest_crates(&guests);
    names.sort();
    for (name, description) in &names {
        let bin = target_dir.join("release").join(name);
        let elf64 = fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
        let elf32 = to_elf32(&elf64).unwrap_or_else(|e| panic!("converting {}: {e}", bin.display()));
        let dst = out.join(format!("{name}.elf32"));
        fs::write(&dst, elf32).expect("writing the ELF32 image");
        table.push_str(&format!("    ({name:?}, {description:?}, include_bytes!({:?})),\n", dst.display().to_string()));
    }
    table.push_str("];\n");
    table.push_str(&format!(
        "/// Where the ELF64 images with symbols (for gdb) were built.\npub const SYMBOLS_DIR: &str = {:?};\n",
        target_dir.join("release").display().to_string()
    ));
    fs::write(out.join("guests.rs"), table).expect("writing guests.rs");
}

/// Every guest crate (a folder of `guests/` with a Cargo.toml, except the runtime) and its
/// description.
fn guest_crates(guests: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for entry in fs::read_dir(guests).expect("listing guests/") {
        let path = entry.expect("dir entry").path();
        let manifest = path.join("Cargo.toml");
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name == "rt" || !manifest.is_file() {
            continue;
        }
        let text = fs::read_to_string(&manifest).expect("reading a guest manifest");
        let description = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("description = \""))
            .map(|d| d.trim_end_matches('"').to_string())
            .unwrap_or_default();
        v.push((name.to_string(), description));
    }
    v
}

/// Repackages an ELF64 executable's PT_LOAD segments as an ELF32 executable (the 64-bit code
/// is unchanged; the multiboot entry is 32-bit code below 4 GiB).
fn to_elf32(e: &[u8]) -> Result<Vec<u8>, String> {
    let u16_at = |o: usize| u16::from_le_bytes([e[o], e[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
    if e.len() < 64 || &e[..4] != b"\x7fELF" || e[4] != 2 {
        return Err("not an ELF64 file".into());
    }
    let entry = u64_at(24);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        if u32_at(p) != 1 {
            continue;
        }
        let (flags, offset, vaddr, paddr) = (u32_at(p + 4), u64_at(p + 8), u64_at(p + 16), u64_at(p + 24));
        let (filesz, memsz, align) = (u64_at(p + 32), u64_at(p + 40), u64_at(p + 48));
        if paddr + memsz > u64::from(u32::MAX) {
            return Err("segment above 4 GiB".into());
        }
        loads.push((flags, offset, vaddr, paddr, filesz, memsz, align));
    }
    let header = 52 + 32 * loads.len();
    let mut out = vec![0u8; header];
    let mut phdrs = Vec::new();
    for &(flags, offset, vaddr, paddr, filesz, memsz, align) in &loads {
        // Keep each segment's file offset congruent to its address modulo 4 KiB.
        while out.len() % 4096 != (vaddr as usize) % 4096 {
            out.push(0);
        }
        let off = out.len();
        out.extend_from_slice(&e[offset as usize..(offset + filesz) as usize]);
        phdrs.push((flags, off as u32, vaddr as u32, paddr as u32, filesz as u32, memsz as u32, align as u32));
    }
    // The function and label symbols, so that load-time patching finds code reached only
    // through pointers (a section table of: null, .symtab, .strtab).
    let (symtab, strtab) = symbols32(e);
    let mut shoff = 0u32;
    if !symtab.is_empty() {
        while out.len() % 4 != 0 {
            out.push(0);
        }
        let sym_off = out.len() as u32;
        out.extend_from_slice(&symtab);
        let str_off = out.len() as u32;
        out.extend_from_slice(&strtab);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        shoff = out.len() as u32;
        let section = |kind: u32, off: u32, size: u32, link: u32, entsize: u32| {
            let mut b = Vec::with_capacity(40);
            for v in [0, kind, 0, 0, off, size, link, u32::from(kind == 2), 4, entsize] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b
        };
        out.extend_from_slice(&[0u8; 40]);
        out.extend_from_slice(&section(2, sym_off, symtab.len() as u32, 2, 16));
        out.extend_from_slice(&section(3, str_off, strtab.len() as u32, 0, 0));
    }
    let mut h = Vec::with_capacity(header);
    h.extend_from_slice(b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(entry as u32).to_le_bytes());
    h.extend_from_slice(&52u32.to_le_bytes()); // e_phoff
    h.extend_from_slice(&shoff.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&52u16.to_le_bytes());
    h.extend_from_slice(&32u16.to_le_bytes());
    h.extend_from_slice(&(phdrs.len() as u16).to_le_bytes());
    h.extend_from_slice(&40u16.to_le_bytes());
    h.extend_from_slice(&(if shoff == 0 { 0u16 } else { 3 }).to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes());
    for (flags, off, vaddr, paddr, filesz, memsz, align) in phdrs {
        for v in [1, off, vaddr, paddr, filesz, memsz, flags, align] {
            h.extend_from_slice(&v.to_le_bytes());
        }
    }
    out[..header].copy_from_slice(&h);
    Ok(out)
}

/// The ELF64 image's defined function (STT_FUNC) and label (STT_NOTYPE) symbols below 4 GiB as
/// an ELF32 symbol table (entries of 16 bytes, section index SHN_ABS) and its string table.
fn symbols32(e: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let get = |o: usize, n: usize| e.get(o..o + n).map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)));
    let (Some(shoff), Some(shentsize), Some(shnum)) = (get(40, 8), get(58, 2), get(60, 2)) else {
        return (Vec::new(), Vec::new());
    };
    let (mut symtab, mut strtab) = (vec![0u8; 16], vec![0u8]);
    for i in 0..shnum {
        let s = (shoff + i * shentsize) as usize;
        if get(s + 4, 4) != Some(2) {
            continue;
        }
        let (Some(off), Some(size), Some(link), Some(entsize)) =
            (get(s + 24, 8), get(s + 32, 8), get(s + 40, 4), get(s + 56, 8))
        else {
            continue;
        };
        let strs = (shoff + link * shentsize) as usize;
        let Some(str_off) = get(strs + 24, 8) else { continue };
        for k in 0..size / entsize.max(1) {
            let y = (off + k * entsize) as usize;
            let (Some(name), Some(info), Some(shndx), Some(value)) =
                (get(y, 4), get(y + 4, 1), get(y + 6, 2), get(y + 8, 8))
            else {
                continue;
            };
            let kind = info & 0xf;
            if shndx == 0 || (kind != 0 && kind != 2) || value > u64::from(u32::MAX) || value == 0 {
                continue;
            }
            let start = (str_off + name) as usize;
            let Some(len) = e.get(start..).and_then(|t| t.iter().position(|&c| c == 0)) else { continue };
            let name32 = strtab.len() as u32;
            strtab.extend_from_slice(&e[start..start + len + 1]);
            symtab.extend_from_slice(&name32.to_le_bytes());
            symtab.extend_from_slice(&(value as u32).to_le_bytes());
            symtab.extend_from_slice(&0u32.to_le_bytes());
            symtab.push(info as u8);
            symtab.push(0);
            symtab.extend_from_slice(&0xfff1u16.to_le_bytes());
        }
    }
    if symtab.len() == 16 {
        return (Vec::new(), Vec::new());
    }
    (symtab, strtab)
}
