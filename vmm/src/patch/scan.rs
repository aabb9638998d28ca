//! Finds the sensitive instructions of a multiboot ELF image without running it.
//!
//! Only bytes the disassembly proves to be instructions are reported. Two proofs exist:
//!
//! * **Descent** (control flow): from the ELF entry point, decoded as 32-bit code because a
//!   multiboot loader enters in 32-bit protected mode (Multiboot 0.6.96 section 3.2), and from
//!   every `STT_FUNC` symbol of `.symtab`, decoded as 64-bit code. Fall-through and the targets
//!   of direct near jumps, conditional branches, loops and calls are followed with the bitness
//!   of the instruction that reaches them. A path stops at an invalid encoding, at a return,
//!   indirect or far transfer, at UD0/UD1/UD2, at the end of an executable segment, and where it
//!   would enter or straddle an instruction already decoded (a branch into the middle of an
//!   instruction is recorded as a conflict, and an instruction with a conflict inside is never
//!   reported: patching it would change what the other path executes).
//! * **Sweep** (anchored linear sweep): code that only indirect transfers reach (the 64-bit half
//!   of a multiboot stub entered by `retf`, functions called through pointers) is decoded
//!   linearly, as 64-bit code, from an *anchor*: an address inside an executable segment that a
//!   proven instruction computes as a code address — the effective address of `lea`, or the
//!   immediate of `mov` or `push` — or the direct branch target of an instruction of an accepted
//!   run. A run is decoded from its anchor until its first unconditional transfer (jmp, ret,
//!   iret, UD2, ...) and is accepted as a whole, or not at all, when every instruction in it
//!   decodes, it ends with that transfer or exactly at the first byte of an instruction already
//!   proven, none of its instructions overlaps a proven one, and each of its direct branches
//!   lands inside an executable segment but not inside one of its instructions. Bytes no proven
//!   instruction computes the address of (data after a `ret`, a constant merely loaded by
//!   `mov rax, [rip+x]`) are never decoded. The rule trusts that a `mov`/`push` immediate or a
//!   `lea` pointing into code is a code address; a numeric constant that happens to point into
//!   unproven bytes of a code segment could still anchor a run that then passes the checks.
//!
//! Addresses are followed as the code sees them (virtual) and reported where the loader places
//! the bytes: `p_paddr + (vaddr - p_vaddr)` of the executable `PT_LOAD` segment holding them.

use iced_x86::{
    CodeSize, Decoder, DecoderOptions, FastFormatter, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// At most this many program headers (a multiboot kernel has a handful).
pub const MAX_PROGRAM_HEADERS: usize = 256;
/// At most this many symbol-table entries are read.
pub const MAX_SYMBOLS: usize = 1 << 20;
/// At most this many bytes of executable segments are examined.
pub const MAX_CODE_BYTES: u64 = 64 << 20;
/// At most this many instructions are decoded.
pub const MAX_INSTRUCTIONS: usize = 4_000_000;
/// A sweep run longer than this is rejected.
const MAX_RUN: usize = 100_000;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const STT_NOTYPE: u8 = 0;
/// An anchor named by a label: its code may be 32- or 64-bit.
const ANY_BITNESS: u32 = 0;
const STT_FUNC: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanError {
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF: {0}")]
    BadElf(String),
    #[error("{0} program headers (nestbed reads at most {MAX_PROGRAM_HEADERS})")]
    TooManyProgramHeaders(usize),
    #[error("executable segments hold {0} bytes (nestbed scans at most {MAX_CODE_BYTES})")]
    TooMuchCode(u64),
    #[error("more than {MAX_INSTRUCTIONS} instructions")]
    TooManyInstructions,
    #[error("no executable loadable segment")]
    NoCode,
}

/// The sensitive instructions, by their SDM (Vol. 2) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Vmxon,
    Vmxoff,
    Vmclear,
    Vmptrld,
    Vmptrst,
    Vmread,
    Vmwrite,
    Vmlaunch,
    Vmresume,
    Vmcall,
    Vmfunc,
    Invept,
    Invvpid,
    MovToCr4,
    MovFromCr4,
    Cpuid,
    Rdtsc,
    Rdtscp,
    MovToCr0,
    MovFromCr0,
    MovToCr3,
    MovFromCr3,
    MovToCr8,
    MovFromCr8,
    Clts,
    Lmsw,
    Invd,
    Wbinvd,
    Invlpg,
    Rdpmc,
    Xsetbv,
    /// AMD's hypercall instruction: #UD on an Intel CPU, and a host's own hypercall (which
    /// never returns on some hosts) if it runs.
    Vmmcall,
}

impl Class {
    pub const ALL: [Class; 32] = [
        Class::Vmxon,
        Class::Vmxoff,
        Class::Vmclear,
        Class::Vmptrld,
        Class::Vmptrst,
        Class::Vmread,
        Class::Vmwrite,
        Class::Vmlaunch,
        Class::Vmresume,
        Class::Vmcall,
        Class::Vmfunc,
        Class::Invept,
        Class::Invvpid,
        Class::MovToCr4,
        Class::MovFromCr4,
        Class::Cpuid,
        Class::Rdtsc,
        Class::Rdtscp,
        Class::MovToCr0,
        Class::MovFromCr0,
        Class::MovToCr3,
        Class::MovFromCr3,
        Class::MovToCr8,
        Class::MovFromCr8,
        Class::Clts,
        Class::Lmsw,
        Class::Invd,
        Class::Wbinvd,
        Class::Invlpg,
        Class::Rdpmc,
        Class::Xsetbv,
        Class::Vmmcall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Vmxon => "VMXON",
            Class::Vmxoff => "VMXOFF",
            Class::Vmclear => "VMCLEAR",
            Class::Vmptrld => "VMPTRLD",
            Class::Vmptrst => "VMPTRST",
            Class::Vmread => "VMREAD",
            Class::Vmwrite => "VMWRITE",
            Class::Vmlaunch => "VMLAUNCH",
            Class::Vmresume => "VMRESUME",
            Class::Vmcall => "VMCALL",
            Class::Vmfunc => "VMFUNC",
            Class::Invept => "INVEPT",
            Class::Invvpid => "INVVPID",
            Class::MovToCr4 => "MOV to CR4",
            Class::MovFromCr4 => "MOV from CR4",
            Class::Cpuid => "CPUID",
            Class::Rdtsc => "RDTSC",
            Class::Rdtscp => "RDTSCP",
            Class::MovToCr0 => "MOV to CR0",
            Class::MovFromCr0 => "MOV from CR0",
            Class::MovToCr3 => "MOV to CR3",
            Class::MovFromCr3 => "MOV from CR3",
            Class::MovToCr8 => "MOV to CR8",
            Class::MovFromCr8 => "MOV from CR8",
            Class::Clts => "CLTS",
            Class::Lmsw => "LMSW",
            Class::Invd => "INVD",
            Class::Wbinvd => "WBINVD",
            Class::Invlpg => "INVLPG",
            Class::Rdpmc => "RDPMC",
            Class::Xsetbv => "XSETBV",
            Class::Vmmcall => "VMMCALL",
        }
    }

    /// The "L2 fidelity" group (RDTSC onwards): time, control registers other than CR4, caches,
    /// TLB, performance counters and XCR0, which an L2 should see as its L1's controls (SDM
    /// Vol. 3C 26.1) configure; the VMX instructions, CR4 moves and CPUID are the default set.
    pub fn is_fidelity(self) -> bool {
        self > Class::Cpuid && self != Class::Vmmcall
    }

    /// The class of `ins`, if it is sensitive.
    pub fn of(ins: &Instruction) -> Option<Class> {
        Some(match ins.mnemonic() {
            Mnemonic::Vmxon => Class::Vmxon,
            Mnemonic::Vmxoff => Class::Vmxoff,
            Mnemonic::Vmclear => Class::Vmclear,
            Mnemonic::Vmptrld => Class::Vmptrld,
            Mnemonic::Vmptrst => Class::Vmptrst,
            Mnemonic::Vmread => Class::Vmread,
            Mnemonic::Vmwrite => Class::Vmwrite,
            Mnemonic::Vmlaunch => Class::Vmlaunch,
            Mnemonic::Vmresume => Class::Vmresume,
            Mnemonic::Vmcall => Class::Vmcall,
            Mnemonic::Vmfunc => Class::Vmfunc,
            Mnemonic::Invept => Class::Invept,
            Mnemonic::Invvpid => Class::Invvpid,
            Mnemonic::Cpuid => Class::Cpuid,
            Mnemonic::Rdtsc => Class::Rdtsc,
            Mnemonic::Rdtscp => Class::Rdtscp,
            Mnemonic::Clts => Class::Clts,
            Mnemonic::Lmsw => Class::Lmsw,
            Mnemonic::Invd => Class::Invd,
            Mnemonic::Wbinvd => Class::Wbinvd,
            Mnemonic::Invlpg => Class::Invlpg,
            Mnemonic::Rdpmc => Class::Rdpmc,
            Mnemonic::Xsetbv => Class::Xsetbv,
            Mnemonic::Vmmcall => Class::Vmmcall,
            Mnemonic::Mov if ins.op_count() == 2 => {
                let reg = |i| (ins.op_kind(i) == OpKind::Register).then(|| ins.op_register(i));
                match (reg(0), reg(1)) {
                    (Some(Register::CR0), _) => Class::MovToCr0,
                    (Some(Register::CR3), _) => Class::MovToCr3,
                    (Some(Register::CR4), _) => Class::MovToCr4,
                    (Some(Register::CR8), _) => Class::MovToCr8,
                    (_, Some(Register::CR0)) => Class::MovFromCr0,
                    (_, Some(Register::CR3)) => Class::MovFromCr3,
                    (_, Some(Register::CR4)) => Class::MovFromCr4,
                    (_, Some(Register::CR8)) => Class::MovFromCr8,
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which classes to patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection(u64);

impl Selection {
    pub const NONE: Selection = Selection(0);

    /// The VMX instructions, MOV to/from CR4 and CPUID.
    pub fn default_set() -> Selection {
        Class::ALL.iter().filter(|c| !c.is_fidelity()).fold(Selection::NONE, |s, &c| s.with(c))
    }

    /// Every class, the L2-fidelity group included.
    pub fn all() -> Selection {
        Class::ALL.iter().fold(Selection::NONE, |s, &c| s.with(c))
    }

    pub const fn with(self, c: Class) -> Selection {
        Selection(self.0 | 1 << c as u64)
    }

    pub const fn union(self, other: Selection) -> Selection {
        Selection(self.0 | other.0)
    }

    pub const fn contains(self, c: Class) -> bool {
        self.0 & 1 << c as u64 != 0
    }
}

impl Default for Selection {
    fn default() -> Self {
        Selection::default_set()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    Descent,
    Sweep,
}

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FoundBy::Descent => "descent",
            FoundBy::Sweep => "sweep",
        })
    }
}

/// One sensitive instruction to patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Guest-physical address where the loader places the first byte.
    pub addr: u64,
    pub len: u8,
    pub original: Vec<u8>,
    pub class: Class,
    pub text: String,
    pub found_by: FoundBy,
}

impl Site {
    pub fn end(&self) -> u64 {
        self.addr + u64::from(self.len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Sorted by address, never overlapping.
    pub sites: Vec<Site>,
    /// Instructions proven by descent and by the sweep.
    pub descent_instructions: usize,
    pub sweep_instructions: usize,
    /// Sweep runs decoded and rejected.
    pub rejected_runs: usize,
    /// Guest-physical addresses a proven branch targets inside a proven instruction.
    pub conflicts: Vec<u64>,
}

/// The bytes that replace `site`: INT3, then INT3 padding to the original length. The trap
/// handler resumes after the whole original instruction, so the padding runs only if
/// something jumps into the middle of the site, and then it traps again.
pub fn patched_bytes(site: &Site) -> Vec<u8> {
    vec![0xCC; usize::from(site.len)]
}

/// Scans `image` and keeps the sites of the classes in `selection`.
pub fn scan(image: &[u8], selection: Selection) -> Result<Scan, ScanError> {
    let elf = Elf::parse(image)?;
    let mut st = State::new(&elf.segments);
    if let Some(v) = st.locate(elf.entry) {
        st.descend(v, 32)?;
    }
    for &s in &elf.symbols {
        st.descend(s, 64)?;
    }
    // Labels without a type (assembly entry points reached through tables) are only anchors:
    // the sweep keeps what they start only if it decodes consistently.
    // Their mode is that of the image's functions when it has 64-bit ones; else unknown.
    let label_bitness = if elf.symbols.iter().any(|&f| st.proven_at(f)) { 64 } else { ANY_BITNESS };
    for &l in &elf.labels {
        if let Some(a) = st.locate(l) {
            st.anchors.push((a, label_bitness));
        }
    }
    st.sweep()?;
    let mut fmt = FastFormatter::new();
    let o = fmt.options_mut();
    o.set_space_after_operand_separator(true);
    o.set_use_hex_prefix(true);
    o.set_uppercase_hex(false);
    o.set_rip_relative_addresses(true);
    let mut sites = Vec::new();
    let mut conflicts: Vec<u64> = Vec::new();
    for &c in &st.conflicts {
        conflicts.extend(st.physical(c));
    }
    conflicts.sort_unstable();
    conflicts.dedup();
    for (ins, found_by) in &st.sensitive {
        let Some(class) = Class::of(ins).filter(|c| selection.contains(*c)) else { continue };
        let Some(addr) = st.physical(ins.ip()) else { continue };
        let len = ins.len() as u64;
        if conflicts.iter().any(|&c| c > addr && c < addr + len) {
            continue;
        }
        let Some(original) = st.bytes(ins.ip(), ins.len()) else { continue };
        let mut text = String::new();
        fmt.format(ins, &mut text);
        sites.push(Site { addr, len: ins.len() as u8, original: original.to_vec(), class, text, found_by: *found_by });
    }
    sites.sort_by_key(|s| s.addr);
    // Two executable segments mapping to the same physical bytes could yield overlaps.
    let mut kept: Vec<Site> = Vec::with_capacity(sites.len());
    for s in sites {
        if kept.last().is_none_or(|p| p.end() <= s.addr) {
            kept.push(s);
        }
    }
    Ok(Scan {
        sites: kept,
        descent_instructions: st.count[0],
        sweep_instructions: st.count[1],
        rejected_runs: st.rejected_runs,
        conflicts,
    })
}

struct Segment<'a> {
    vaddr: u64,
    paddr: u64,
    data: &'a [u8],
}

struct Elf<'a> {
    entry: u64,
    segments: Vec<Segment<'a>>,
    /// Defined `STT_FUNC` symbols.
    symbols: Vec<u64>,
    /// Defined `STT_NOTYPE` symbols.
    labels: Vec<u64>,
}

fn bad(what: impl Into<String>) -> ScanError {
    ScanError::BadElf(what.into())
}

fn le(b: &[u8], o: u64, n: usize) -> Option<u64> {
    let o = usize::try_from(o).ok()?;
    let s = b.get(o..o.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)))
}

impl<'a> Elf<'a> {
    fn parse(e: &'a [u8]) -> Result<Elf<'a>, ScanError> {
        if !e.starts_with(b"\x7fELF") {
            return Err(ScanError::NotElf);
        }
        if e.get(5) != Some(&1) {
            return Err(bad("not little-endian"));
        }
        let is64 = match e.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(bad("unknown ELF class")),
        };
        let t = || bad("truncated header");
        // Field offsets and widths of the ELF32 and ELF64 headers (System V gABI).
        let (w, entry_o, phoff_o, shoff_o, phent_o) = if is64 { (8, 24, 32, 40, 54) } else { (4, 24, 28, 32, 42) };
        let entry = le(e, entry_o, w).ok_or_else(t)?;
        let phoff = le(e, phoff_o, w).ok_or_else(t)?;
        let shoff = le(e, shoff_o, w).ok_or_else(t)?;
        let phentsize = le(e, phent_o, 2).ok_or_else(t)?;
        let phnum = le(e, phent_o + 2, 2).ok_or_else(t)? as usize;
        let shentsize = le(e, phent_o + 4, 2).ok_or_else(t)?;
        let shnum = le(e, phent_o + 6, 2).ok_or_else(t)? as usize;
        if phnum > MAX_PROGRAM_HEADERS {
            return Err(ScanError::TooManyProgramHeaders(phnum));
        }
        let min_ph = if is64 { 56 } else { 32 };
        if phnum > 0 && phentsize < min_ph {
            return Err(bad(format!("program header size {phentsize}")));
        }
        let mut segments = Vec::new();
        let mut code = 0u64;
        for i in 0..phnum as u64 {
            let p = phoff.checked_add(i * phentsize).ok_or_else(|| bad("program header offset"))?;
            let th = || bad(format!("program header {i} is truncated"));
            let f = |o32: u64, o64: u64| if is64 { le(e, p + o64, 8) } else { le(e, p + o32, 4) };
            let kind = le(e, p, 4).ok_or_else(th)? as u32;
            let flags = if is64 { le(e, p + 4, 4) } else { le(e, p + 24, 4) }.ok_or_else(th)? as u32;
            let (offset, vaddr, paddr, filesz) = (f(4, 8), f(8, 16), f(12, 24), f(16, 32));
            let (offset, vaddr, paddr, filesz) =
                (offset.ok_or_else(th)?, vaddr.ok_or_else(th)?, paddr.ok_or_else(th)?, filesz.ok_or_else(th)?);
            if kind != PT_LOAD {
                continue;
            }
            let data = offset
                .checked_add(filesz)
                .and_then(|end| e.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
                .ok_or_else(|| bad(format!("segment {i} data lies beyond the end of the file")))?;
            if flags & PF_X == 0 || data.is_empty() {
                continue;
            }
            if vaddr.checked_add(filesz).is_none() || paddr.checked_add(filesz).is_none() {
                return Err(bad(format!("segment {i} wraps around the address space")));
            }
            code += filesz;
            if code > MAX_CODE_BYTES {
                return Err(ScanError::TooMuchCode(code));
            }
            segments.push(Segment { vaddr, paddr, data });
        }
        if segments.is_empty() {
            return Err(ScanError::NoCode);
        }
        let (symbols, labels) =
            if shoff != 0 && shnum != 0 { symbols(e, is64, shoff, shentsize, shnum)? } else { Default::default() };
        Ok(Elf { entry, segments, symbols, labels })
    }
}

/// Values of the defined `STT_FUNC` and `STT_NOTYPE` symbols of every `SHT_SYMTAB` section,
/// sorted.
#[allow(clippy::type_complexity)]
fn symbols(e: &[u8], is64: bool, shoff: u64, shentsize: u64, shnum: usize) -> Result<(Vec<u64>, Vec<u64>), ScanError> {
    if shentsize < if is64 { 64 } else { 40 } {
        return Err(bad(format!("section header size {shentsize}")));
    }
    if shnum > MAX_PROGRAM_HEADERS * 64 {
        return Err(bad(format!("{shnum} section headers")));
    }
    let (mut out, mut labels) = (Vec::new(), Vec::new());
    let mut read = 0usize;
    for i in 0..shnum as u64 {
        let s = shoff.checked_add(i * shentsize).ok_or_else(|| bad("section header offset"))?;
        let th = || bad(format!("section header {i} is truncated"));
        if le(e, s + 4, 4).ok_or_else(th)? as u32 != SHT_SYMTAB {
            continue;
        }
        let f = |o32: u64, o64: u64| if is64 { le(e, s + o64, 8) } else { le(e, s + o32, 4) };
        let (offset, size, entsize) = (f(16, 24).ok_or_else(th)?, f(20, 32).ok_or_else(th)?, f(36, 56).ok_or_else(th)?);
        let min = if is64 { 24 } else { 16 };
        if entsize < min {
            return Err(bad(format!("symbol size {entsize} in section {i}")));
        }
        if offset.checked_add(size).is_none_or(|end| end > e.len() as u64) {
            return Err(bad(format!("symbol table {i} lies beyond the end of the file")));
        }
        for k in 0..size / entsize {
            read += 1;
            if read > MAX_SYMBOLS {
                return Err(bad(format!("more than {MAX_SYMBOLS} symbols")));
            }
            let y = offset + k * entsize;
            let (info, shndx, value) = if is64 {
                (le(e, y + 4, 1), le(e, y + 6, 2), le(e, y + 8, 8))
            } else {
                (le(e, y + 12, 1), le(e, y + 14, 2), le(e, y + 4, 4))
            };
            let (Some(info), Some(shndx), Some(value)) = (info, shndx, value) else {
                return Err(bad(format!("symbol {k} of section {i} is truncated")));
            };
            match (info as u8 & 0xf, shndx) {
                (_, 0) => {}
                (STT_FUNC, _) => out.push(value),
                (STT_NOTYPE, _) => labels.push(value),
                _ => {}
            }
        }
    }
    for v in [&mut out, &mut labels] {
        v.sort_unstable();
        v.dedup();
    }
    Ok((out, labels))
}

const UNKNOWN: u8 = 0;
const START: u8 = 1;
const INTERIOR: u8 = 2;

struct State<'s, 'a> {
    segs: &'s [Segment<'a>],
    /// Per segment, per byte: UNKNOWN, START or INTERIOR of a proven instruction.
    owner: Vec<Vec<u8>>,
    sensitive: Vec<(Instruction, FoundBy)>,
    /// Anchors, with the bitness of the code that named them.
    anchors: Vec<(u64, u32)>,
    conflicts: Vec<u64>,
    count: [usize; 2],
    rejected_runs: usize,
}

/// How a decoded instruction continues.
struct Flow {
    fall_through: bool,
    target: Option<u64>,
}

fn flow(ins: &Instruction) -> Flow {
    let near = matches!(ins.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64);
    let target = near.then(|| ins.near_branch_target());
    match ins.flow_control() {
        FlowControl::UnconditionalBranch => Flow { fall_through: false, target },
        FlowControl::ConditionalBranch | FlowControl::Call => Flow { fall_through: true, target },
        FlowControl::IndirectBranch | FlowControl::Return | FlowControl::Exception => {
            Flow { fall_through: false, target: None }
        }
        FlowControl::Next | FlowControl::IndirectCall | FlowControl::Interrupt | FlowControl::XbeginXabortXend => {
            Flow { fall_through: true, target: None }
        }
    }
}

/// The code address `ins` computes, if it computes one: `lea`'s effective address (RIP-relative
/// or absolute) or the immediate of `mov`/`push`.
fn address_taken(ins: &Instruction) -> Option<u64> {
    match ins.mnemonic() {
        Mnemonic::Lea if ins.is_ip_rel_memory_operand() => Some(ins.ip_rel_memory_address()),
        Mnemonic::Lea if ins.memory_base() == Register::None && ins.memory_index() == Register::None => {
            Some(ins.memory_displacement64())
        }
        Mnemonic::Mov | Mnemonic::Push => (0..ins.op_count()).find_map(|i| match ins.op_kind(i) {
            OpKind::Immediate32 | OpKind::Immediate64 | OpKind::Immediate32to64 => Some(ins.immediate(i)),
            _ => None,
        }),
        _ => None,
    }
}

impl<'s, 'a> State<'s, 'a> {
    fn new(segs: &'s [Segment<'a>]) -> Self {
        State {
            segs,
            owner: segs.iter().map(|s| vec![UNKNOWN; s.data.len()]).collect(),
            sensitive: Vec::new(),
            anchors: Vec::new(),
            conflicts: Vec::new(),
            count: [0, 0],
            rejected_runs: 0,
        }
    }

    /// `vaddr` itself when some executable segment holds it.
    fn locate(&self, vaddr: u64) -> Option<u64> {
        self.find(vaddr).map(|_| vaddr)
    }

    fn find(&self, vaddr: u64) -> Option<(usize, usize)> {
        self.segs.iter().enumerate().find_map(|(i, s)| {
            let off = vaddr.checked_sub(s.vaddr)?;
            (off < s.data.len() as u64).then_some((i, off as usize))
        })
    }

    fn physical(&self, vaddr: u64) -> Option<u64> {
        let (i, off) = self.find(vaddr)?;
        Some(self.segs[i].paddr + off as u64)
    }

    fn bytes(&self, vaddr: u64, len: usize) -> Option<&'a [u8]> {
        let (i, off) = self.find(vaddr)?;
        self.segs[i].data.get(off..off.checked_add(len)?)
    }

    fn state(&self, vaddr: u64) -> Option<u8> {
        let (i, off) = self.find(vaddr)?;
        Some(self.owner[i][off])
    }

    fn decode(&self, vaddr: u64, bitness: u32) -> Option<Instruction> {
        let (i, off) = self.find(vaddr)?;
        let data = self.segs[i].data;
        let window = &data[off..data.len().min(off + 15)];
        let ins = Decoder::try_with_ip(bitness, window, vaddr, DecoderOptions::NONE).ok()?.decode();
        (!ins.is_invalid()).then_some(ins)
    }

    /// Whether every byte of `ins` lies in one segment and is UNKNOWN.
    fn free(&self, ins: &Instruction) -> bool {
        let Some((i, off)) = self.find(ins.ip()) else { return false };
        self.owner[i].get(off..off + ins.len()).is_some_and(|b| b.iter().all(|&x| x == UNKNOWN))
    }

    fn claim(&mut self, ins: &Instruction, by: FoundBy) -> Result<(), ScanError> {
        self.claim_as(ins, by, true)
    }

    /// Whether a proven instruction starts at virtual address `v`.
    fn proven_at(&self, v: u64) -> bool {
        self.locate(v).is_some_and(|a| self.state(a) == Some(START))
    }

    /// `claim`, keeping `ins` as a sensitive site only when `site_ok`.
    fn claim_as(&mut self, ins: &Instruction, by: FoundBy, site_ok: bool) -> Result<(), ScanError> {
        let total = self.count[0] + self.count[1];
        if total >= MAX_INSTRUCTIONS {
            return Err(ScanError::TooManyInstructions);
        }
        self.count[by as usize] += 1;
        if let Some((i, off)) = self.find(ins.ip()) {
            self.owner[i][off] = START;
            self.owner[i][off + 1..off + ins.len()].fill(INTERIOR);
        }
        if site_ok && Class::of(ins).is_some() {
            self.sensitive.push((*ins, by));
        }
        if let Some(a) = address_taken(ins).and_then(|a| self.locate(a)) {
            let bitness = if ins.code_size() == CodeSize::Code32 { 32 } else { 64 };
            self.anchors.push((a, bitness));
        }
        Ok(())
    }

    fn descend(&mut self, root: u64, bitness: u32) -> Result<(), ScanError> {
        let mut work = vec![root];
        while let Some(mut ip) = work.pop() {
            loop {
                match self.state(ip) {
                    Some(UNKNOWN) => {}
                    Some(INTERIOR) => {
                        self.conflicts.push(ip);
                        break;
                    }
                    _ => break,
                }
                let Some(ins) = self.decode(ip, bitness) else { break };
                if !self.free(&ins) {
                    break;
                }
                self.claim(&ins, FoundBy::Descent)?;
                let f = flow(&ins);
                if let Some(t) = f.target.and_then(|t| self.locate(t)) {
                    work.push(t);
                }
                if !f.fall_through {
                    break;
                }
                ip = ins.next_ip();
            }
        }
        Ok(())
    }

    /// Decodes and accepts or rejects an anchored run for every anchor, until no new anchor.
    fn sweep(&mut self) -> Result<(), ScanError> {
        while let Some((a, named_by)) = self.anchors.pop() {
            if self.state(a) != Some(UNKNOWN) {
                continue;
            }
            // 64-bit first; code that 32-bit code names may be 32-bit code (a legacy-mode
            // kernel), so that is tried next, under the same rule.
            let run = self.run(a, 64).map(|r| (r, 64)).or_else(|| {
                if named_by == 32 {
                    self.run(a, 32).map(|r| (r, 32))
                } else {
                    None
                }
            });
            // From a label whose mode is unknown, a site is kept only where the 32-bit decode
            // of the same run finds the same instruction there: patching it is then right in
            // either mode.
            let agree: Option<Vec<Instruction>> = if named_by == ANY_BITNESS { self.run(a, 32) } else { None };
            match run {
                Some((run, bitness)) => {
                    for ins in &run {
                        let site_ok = named_by != ANY_BITNESS
                            || agree.as_ref().is_some_and(|r| {
                                r.iter().any(|o| {
                                    o.ip() == ins.ip() && o.len() == ins.len() && Class::of(o) == Class::of(ins)
                                })
                            });
                        self.claim_as(ins, FoundBy::Sweep, site_ok)?;
                        if let Some(t) = flow(ins).target {
                            self.anchors.push((t, bitness));
                        }
                    }
                }
                None => self.rejected_runs += 1,
            }
        }
        Ok(())
    }

    /// The run from `start` if the sweep's rule accepts it.
    fn run(&self, start: u64, bitness: u32) -> Option<Vec<Instruction>> {
        let mut run: Vec<Instruction> = Vec::new();
        let mut ip = start;
        loop {
            match self.state(ip)? {
                UNKNOWN => {}
                START if !run.is_empty() => break,
                _ => return None,
            }
            let ins = self.decode(ip, bitness)?;
            if !self.free(&ins) || run.len() >= MAX_RUN {
                return None;
            }
            run.push(ins);
            let f = flow(&ins);
            ip = ins.next_ip();
            if !f.fall_through {
                break;
            }
        }
        let inside = |t: u64| run.iter().any(|i| t > i.ip() && t < i.next_ip());
        for ins in &run {
            if let Some(t) = flow(ins).target {
                if self.state(t).is_none_or(|s| s == INTERIOR) || inside(t) {
                    return None;
                }
            }
        }
        Some(run)
    }
}
