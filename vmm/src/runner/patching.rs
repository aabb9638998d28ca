//! Sensitive instructions patched at load (`--patch-sensitive`): the sites `crate::patch::scan`
//! finds become int3 traps of the same length. When one traps, nestbed hands the original
//! instruction to the same decoders and model as an instruction the host trapped by itself, so
//! the path is the same on hosts whose KVM reports VMX instructions to userspace and on those
//! where they would raise #UD (stock Intel and AMD hosts). gdb's breakpoints and the guest's
//! own int3 are told apart by address: patched sites first, then gdb's breakpoints, else the
//! guest's #BP.
//!
//! Which classes are patched: `on` patches every class at load. `auto` patches at load the VMX
//! instructions the host does not report by itself (`machine::probe`), VMCALL (the host takes
//! it as its own hypercall, as it does VMMCALL), MOV to and from CR4 (VMXE is virtual), MOV to CR0 (hosts drop its
//! reserved high bits instead of #GP) and CPUID (the host never shows it); the L2-fidelity classes follow at the first VM entry whose controls ask for
//! their exits (or, for INVD and XSETBV, which always exit in VMX non-root operation, at the
//! first VM entry).

use super::Runner;
use crate::error::Error;
use crate::machine::probe::VmxTrap;
use crate::machine::GuestRam;
use iced_x86::{Decoder, DecoderOptions, Instruction};

use crate::exit::Level;
use crate::patch::{patched_bytes, scan, Class, FoundBy, PatchTable, Selection, Site};
use crate::vmx::caps::{proc, proc2};
use crate::vmx::fields::{CPU_BASED_VM_EXEC_CONTROL, CR0_GUEST_HOST_MASK, SECONDARY_VM_EXEC_CONTROL};
use crate::vmx::vmcs::Vmcs;

/// `--patch-sensitive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchMode {
    /// Nothing is patched: only what the host traps by itself reaches nestbed.
    #[default]
    Off,
    /// What this host needs, and the L2-fidelity classes once L1's controls ask for them.
    Auto,
    /// Every sensitive instruction the scan finds.
    On,
}

/// How many exits pass between two checks that the patched sites still hold their traps.
pub const VERIFY_EVERY: u64 = 1024;

fn selection(classes: impl IntoIterator<Item = Class>) -> Selection {
    classes.into_iter().fold(Selection::NONE, Selection::with)
}

/// The VMX instructions but VMCALL.
fn vmx_but_vmcall() -> Selection {
    selection(Class::ALL.iter().copied().filter(|&c| c <= Class::Invvpid && c != Class::Vmcall))
}

/// The image's sensitive sites, which classes have their traps written, and what happened to
/// them.
#[derive(Debug)]
pub struct Patches {
    table: PatchTable,
    applied: Selection,
    /// Traps taken at patched sites.
    pub traps: u64,
    /// Sites the guest wrote over: restored to their original bytes (patched again), or
    /// replaced by other code (dropped).
    pub repatched: u64,
    pub dropped: u64,
    /// Instructions of a patched class the host trapped by itself at unpatched addresses
    /// (code written at run time, or missed by the scan), each address noted once.
    pub unpatched: std::collections::BTreeSet<u64>,
    /// Sites patched at run time, after the instruction took #UD (`runner::lazy_patch`).
    pub at_run_time: std::collections::BTreeSet<u64>,
}

/// What an int3 at a patched site stands for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PatchedTrap {
    /// The original instruction, to decode and handle.
    Original(Vec<u8>),
    /// The site's bytes mean another instruction in the mode the CPU runs them in (a scan that
    /// took 32-bit code for 64-bit, or the reverse): its original bytes are back in place for
    /// the CPU to execute, and the site is dropped.
    Restored(String),
}

impl Patches {
    /// No sites (for sites found at run time only).
    pub fn empty() -> Self {
        Patches {
            table: PatchTable::default(),
            applied: Selection::NONE,
            traps: 0,
            repatched: 0,
            dropped: 0,
            unpatched: Default::default(),
            at_run_time: Default::default(),
        }
    }

    /// Scans `image` for every sensitive instruction; `name` is the image's name for messages.
    pub fn scan(name: &str, image: &[u8]) -> Result<Self, Error> {
        let found =
            scan(image, Selection::all()).map_err(|e| Error::Config(format!("{name}: --patch-sensitive: {e}")))?;
        Ok(Patches { table: PatchTable::new(&found), ..Patches::empty() })
    }

    /// What `mode` patches at load on a host that treats VMX instructions as `host` says.
    pub fn at_load(mode: PatchMode, host: VmxTrap) -> Selection {
        // MOV to CR0 too: this host drops CR0's reserved bits 63:32 instead of raising #GP.
        let always = selection([
            Class::Vmcall,
            Class::Vmmcall,
            Class::MovToCr0,
            Class::MovToCr4,
            Class::MovFromCr4,
            Class::Cpuid,
        ]);
        match (mode, host) {
            (PatchMode::Off, _) => Selection::NONE,
            (PatchMode::On, _) => Selection::all(),
            (PatchMode::Auto, VmxTrap::Reported) => always,
            (PatchMode::Auto, VmxTrap::NotReported) => always.union(vmx_but_vmcall()),
        }
    }

    /// What L1's controls in `vmcs` need patched for L2's exits to reach L1 (SDM 26.1.3).
    pub fn for_controls(vmcs: &Vmcs) -> Selection {
        let p = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
        let p2 = if p & proc::ACTIVATE_SECONDARY_CONTROLS != 0 { vmcs.get32(SECONDARY_VM_EXEC_CONTROL) } else { 0 };
        let mut s = selection([Class::Invd, Class::Xsetbv]);
        let mut add = |on: bool, classes: &[Class]| {
            if on {
                s = s.union(selection(classes.iter().copied()));
            }
        };
        let tsc = proc::RDTSC_EXITING | proc::USE_TSC_OFFSETTING;
        add(p & tsc != 0, &[Class::Rdtsc, Class::Rdtscp]);
        add(p & proc::CR3_LOAD_EXITING != 0, &[Class::MovToCr3]);
        add(p & proc::CR3_STORE_EXITING != 0, &[Class::MovFromCr3]);
        add(p & proc::CR8_LOAD_EXITING != 0, &[Class::MovToCr8]);
        add(p & proc::CR8_STORE_EXITING != 0, &[Class::MovFromCr8]);
        add(p & proc::INVLPG_EXITING != 0, &[Class::Invlpg]);
        add(p & proc::RDPMC_EXITING != 0, &[Class::Rdpmc]);
        add(p2 & proc2::WBINVD_EXITING != 0, &[Class::Wbinvd]);
        add(vmcs.get(CR0_GUEST_HOST_MASK) != 0, &[Class::MovToCr0, Class::MovFromCr0, Class::Clts, Class::Lmsw]);
        s
    }

    /// Writes the traps of every site of `want` not written yet; returns how many.
    pub fn apply(&mut self, want: Selection, ram: &GuestRam) -> usize {
        if self.applied.union(want) == self.applied {
            return 0;
        }
        self.applied = self.applied.union(want);
        let todo: Vec<Site> = self
            .table
            .iter()
            .filter(|s| want.contains(s.class) && self.table.trapped(s.addr).is_none())
            .cloned()
            .collect();
        todo.iter().filter(|s| self.trap(s, ram)).count()
    }

    /// Adds and patches a site found at run time; false when it overlaps one already there or
    /// the bytes cannot be written.
    pub fn add(&mut self, site: Site, ram: &GuestRam) -> bool {
        self.table.insert(site.clone()) && self.trap(&site, ram)
    }

    /// Patches the instruction `site` describes, found at run time: a site the table knows
    /// with the same bytes (the guest wrote them back over its trap) gets its trap back,
    /// another is added. False when it overlaps another site or cannot be written.
    pub fn patch_at_run_time(&mut self, site: Site, ram: &GuestRam) -> bool {
        let known = self.table.site_containing(site.addr).cloned();
        let written = match known {
            Some(k) if k.addr == site.addr && k.original == site.original => self.trap(&k, ram),
            Some(_) => false,
            None => self.add(site.clone(), ram),
        };
        if written {
            self.at_run_time.insert(site.addr);
        }
        written
    }

    fn trap(&mut self, site: &Site, ram: &GuestRam) -> bool {
        let written = ram.write(site.addr, &patched_bytes(site)).is_ok();
        self.table.set_trapped(site.addr, written);
        written
    }

    /// Whether the sites of `class` are patched.
    pub fn patches(&self, class: Class) -> bool {
        self.applied.contains(class)
    }

    /// Patched sites.
    pub fn len(&self) -> usize {
        self.table.iter_trapped().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The original byte at guest-physical `gpa` when it lies in a patched site.
    pub fn original_byte(&self, gpa: u64) -> Option<u8> {
        let site = self.table.site_containing(gpa)?;
        self.table.trapped(site.addr)?;
        site.original.get((gpa - site.addr) as usize).copied()
    }

    /// Puts the original bytes of the site at `gpa` back and drops it.
    pub fn restore(&mut self, gpa: u64, ram: &GuestRam) -> bool {
        let Some(site) = self.table.trapped(gpa).cloned() else { return false };
        let written = ram.write(site.addr, &site.original).is_ok();
        if written {
            self.table.set_trapped(site.addr, false);
            self.dropped += 1;
        }
        written
    }

    /// Finds patched sites the guest wrote over since the last check: a site holding its
    /// original instruction again gets its trap back, a site holding other code is dropped.
    /// Returns one line per site for the trace.
    pub fn verify(&mut self, ram: &GuestRam) -> Vec<String> {
        let mut notes = Vec::new();
        let sites: Vec<Site> = self.table.iter_trapped().cloned().collect();
        for site in sites {
            let mut now = vec![0u8; site.original.len()];
            if ram.read(site.addr, &mut now).is_err() || now == patched_bytes(&site) {
                continue;
            }
            let what = if now == site.original {
                self.trap(&site, ram);
                self.repatched += 1;
                "with itself: patched again"
            } else {
                self.table.set_trapped(site.addr, false);
                self.dropped += 1;
                "with other code: dropped"
            };
            let note = format!("patched site {:#x} ({}) written over {what}", site.addr, site.text);
            tracing::warn!("{note}");
            notes.push(note);
        }
        notes
    }
}

impl Runner {
    /// The original bytes of the patched instruction at `pc` of the active level, when an int3
    /// there is a patched site. gdb's breakpoint on a patched instruction stops there first;
    /// an int3 that is neither is the guest's own.
    pub(super) fn patched_original(&mut self, pc: u64) -> Result<Option<PatchedTrap>, Error> {
        if self.patches.as_ref().is_none_or(Patches::is_empty) {
            return Ok(None);
        }
        let Some(gpa) = self.debug_translate(self.level, pc) else { return Ok(None) };
        if self.debug.attached && self.debug.has_sw_breakpoint(gpa) {
            return Ok(None);
        }
        let Some(site) = self.patches.as_ref().and_then(|p| p.table.trapped(gpa)).cloned() else { return Ok(None) };
        self.active().refresh()?;
        let bitness = crate::nested::trap::bitness(self.active().peek_sregs());
        let Some(patches) = self.patches.as_mut() else { return Ok(None) };
        let mut d = Decoder::with_ip(bitness, &site.original, pc, DecoderOptions::NONE);
        let now = d.decode();
        if now.is_invalid() || now.len() != site.original.len() || Class::of(&now) != Some(site.class) {
            let what = if now.is_invalid() { "no valid instruction".to_string() } else { format!("`{now}`") };
            let restored = patches.restore(gpa, &self.l1_vm.ram);
            let note = format!(
                "patched site {:#x} ({}) is {what} in the CPU's {bitness}-bit mode: {}",
                site.addr,
                site.text,
                if restored { "original bytes restored, site dropped" } else { "could not restore it" }
            );
            tracing::warn!("{note}");
            return Ok(restored.then_some(PatchedTrap::Restored(note)));
        }
        patches.traps += 1;
        Ok(Some(PatchedTrap::Original(site.original)))
    }

    /// A sensitive instruction the host trapped by itself (an emulation failure) at `rip` of
    /// `level`: if its class is one nestbed patches, the site was not patched (code written at
    /// run time, or missed by the scan), and a host that does not report VMX instructions
    /// would have raised #UD there. Said once per address, in the trace and as a warning.
    pub(super) fn note_host_trapped(&mut self, level: Level, rip: u64, bytes: &[u8]) {
        if self.patches.is_none() {
            return;
        }
        let bitness = crate::nested::trap::bitness(self.active().peek_sregs());
        let ins = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE).decode();
        let Some(p) = self.patches.as_mut() else { return };
        let Some(class) = Class::of(&ins).filter(|&c| p.applied.contains(c)) else { return };
        if !p.unpatched.insert(rip) {
            return;
        }
        let note = format!(
            "{level:?} {class} at {rip:#x} was not patched (code written at run time, or not found by the scan): \
             this host trapped it by itself; one that does not report VMX instructions raises #UD there \
             (a script can patch it: e.patch_range)"
        );
        tracing::warn!("{note}");
        self.notes.push(note);
    }

    /// A script's `patch_range`: decodes `len` bytes at virtual `addr` of `level` as code
    /// (the script vouches for it) and patches every sensitive instruction in it. Returns a
    /// line for the trace.
    pub(super) fn patch_range(&mut self, level: Level, addr: u64, len: u64) -> String {
        let mut bytes = vec![0u8; len as usize];
        let n = self.debug_read(level, addr, &mut bytes);
        bytes.truncate(n);
        let bitness = match level {
            Level::L1 => crate::nested::trap::bitness(self.l1.sregs()),
            Level::L2 => self.nested.l2.as_mut().map_or(64, |l2| crate::nested::trap::bitness(l2.vcpu.sregs())),
        };
        let mut found = Vec::new();
        let mut d = Decoder::with_ip(bitness, &bytes, addr, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        while d.can_decode() {
            d.decode_out(&mut ins);
            if ins.is_invalid() {
                break;
            }
            if let Some(class) = Class::of(&ins) {
                let off = (ins.ip() - addr) as usize;
                found.push((ins.ip(), class, bytes[off..off + ins.len()].to_vec(), ins.to_string()));
            }
        }
        let mut patched = 0;
        for (va, class, original, text) in found {
            let Some(gpa) = self.debug_translate(level, va) else { continue };
            let len = original.len() as u8;
            let site = Site { addr: gpa, len, original, class, text, found_by: FoundBy::Sweep };
            let ram = self.l1_vm.ram.clone();
            let p = self.patches.get_or_insert_with(Patches::empty);
            if p.add(site, &ram) {
                patched += 1;
            }
        }
        format!("patch_range {addr:#x}+{len:#x}: {patched} sensitive instructions patched")
    }

    /// At a VM entry in `auto` mode: patches what L1's controls now need.
    pub(super) fn patch_for_controls(&mut self) {
        let (Some(p), Some(vmcs)) = (self.patches.as_mut(), self.nested.vmx.current_vmcs()) else { return };
        if self.patch_mode != PatchMode::Auto {
            return;
        }
        let n = p.apply(Patches::for_controls(vmcs), &self.l1_vm.ram);
        if n > 0 {
            self.notes.push(format!("patched {n} more sensitive instructions for L1's exit controls"));
        }
    }

    /// Every `VERIFY_EVERY` exits: patched sites the guest wrote over.
    pub(super) fn verify_patches(&mut self) {
        if !self.seq.is_multiple_of(VERIFY_EVERY) {
            return;
        }
        if let Some(p) = self.patches.as_mut() {
            let mut notes = p.verify(&self.l1_vm.ram);
            self.notes.append(&mut notes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(addr: u64, original: &[u8], class: Class) -> Site {
        let len = original.len() as u8;
        Site { addr, len, original: original.to_vec(), class, text: String::new(), found_by: FoundBy::Sweep }
    }

    #[test]
    fn sites_written_over_are_patched_again_or_dropped() {
        let ram = GuestRam::new(2).unwrap();
        let mut p = Patches::empty();
        let vmcall = [0x0f, 0x01, 0xc1];
        assert!(p.add(site(0x1000, &vmcall, Class::Vmcall), &ram));
        assert!(p.add(site(0x2000, &[0x0f, 0xa2], Class::Cpuid), &ram));
        assert!(!p.add(site(0x1001, &[0x0f, 0xa2], Class::Cpuid), &ram), "overlaps a site");
        let mut b = [0u8; 3];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0xcc; 3]);
        assert_eq!(p.table.trapped(0x1000).map(|s| s.original.as_slice()), Some(&vmcall[..]));
        assert!(p.verify(&ram).is_empty(), "nothing written yet");

        // The guest copies the original instruction back: patched again.
        ram.write(0x1000, &vmcall).unwrap();
        // The guest writes other code over the CPUID: dropped.
        ram.write(0x2000, &[0x90, 0x90]).unwrap();
        let notes = p.verify(&ram);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!((p.repatched, p.dropped), (1, 1));
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0xcc; 3]);
        assert!(p.table.trapped(0x2000).is_none());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_restored_site_holds_its_original_bytes_and_is_dropped() {
        let ram = GuestRam::new(2).unwrap();
        let mut p = Patches::empty();
        // `mov rax, cr4` with REX.W: in 32-bit code these bytes are `dec eax; mov eax, cr4`.
        let rex_mov = [0x48, 0x0f, 0x20, 0xe0];
        assert!(p.add(site(0x1000, &rex_mov, Class::MovFromCr4), &ram));
        assert!(p.restore(0x1000, &ram));
        let mut b = [0u8; 4];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, rex_mov);
        assert!(p.table.trapped(0x1000).is_none() && p.dropped == 1);
        assert!(!p.restore(0x1000, &ram), "already restored");
        assert!(!p.restore(0x3000, &ram), "no site there");
    }

    #[test]
    fn sites_patched_at_run_time_are_new_or_known_ones_written_back() {
        let ram = GuestRam::new(2).unwrap();
        let mut p = Patches::empty();
        let vmread = [0x0f, 0x78, 0xc8];
        assert!(p.add(site(0x1000, &vmread, Class::Vmread), &ram));
        // The guest writes the original bytes back over the trap: the known site is patched again.
        ram.write(0x1000, &vmread).unwrap();
        assert!(p.patch_at_run_time(site(0x1000, &vmread, Class::Vmread), &ram));
        let mut b = [0u8; 3];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0xcc; 3]);
        // Code that was never scanned: a new site.
        assert!(p.patch_at_run_time(site(0x2000, &vmread, Class::Vmread), &ram));
        // Other bytes over part of a known site: left alone.
        assert!(!p.patch_at_run_time(site(0x1001, &[0x0f, 0xa2], Class::Cpuid), &ram));
        assert_eq!(p.at_run_time.iter().copied().collect::<Vec<_>>(), [0x1000, 0x2000]);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn what_each_mode_patches_at_load() {
        let off = Patches::at_load(PatchMode::Off, VmxTrap::NotReported);
        assert!(!off.contains(Class::Vmcall));
        let auto_here = Patches::at_load(PatchMode::Auto, VmxTrap::Reported);
        for c in [Class::Vmcall, Class::MovToCr4, Class::MovFromCr4, Class::Cpuid] {
            assert!(auto_here.contains(c), "{c}");
        }
        assert!(!auto_here.contains(Class::Vmxon) && !auto_here.contains(Class::Rdtsc));
        let auto_stock = Patches::at_load(PatchMode::Auto, VmxTrap::NotReported);
        assert!(auto_stock.contains(Class::Vmxon) && auto_stock.contains(Class::Invvpid));
        assert!(!auto_stock.contains(Class::MovToCr3));
        assert_eq!(Patches::at_load(PatchMode::On, VmxTrap::Reported), Selection::all());
    }

    #[test]
    fn l1s_controls_decide_the_l2_fidelity_classes() {
        let mut v = Vmcs::new(1);
        let s = Patches::for_controls(&v);
        assert!(s.contains(Class::Invd) && s.contains(Class::Xsetbv), "they always exit");
        assert!(!s.contains(Class::Rdtsc) && !s.contains(Class::MovToCr3));
        v.set(CPU_BASED_VM_EXEC_CONTROL, u64::from(proc::RDTSC_EXITING | proc::CR3_LOAD_EXITING));
        v.set(CR0_GUEST_HOST_MASK, 8);
        let s = Patches::for_controls(&v);
        for c in [Class::Rdtsc, Class::Rdtscp, Class::MovToCr3, Class::MovToCr0, Class::Clts, Class::Lmsw] {
            assert!(s.contains(c), "{c}");
        }
        assert!(!s.contains(Class::MovFromCr3) && !s.contains(Class::Wbinvd));
    }
}
