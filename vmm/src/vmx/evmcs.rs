//! nestbed's enlightened VMCS (EVMCS.md): an L1 that finds the CPUID leaf registers a VMCS
//! region through an MSR and from then on reads and writes its fields as plain memory, in the
//! region layout of [`super::vmcs`], telling nestbed which groups of fields it changed in a
//! mask at [`OFFSET_CHANGED`]. VMLAUNCH and VMRESUME still trap; nestbed takes the changed
//! groups from the page at every VMX instruction of L1 and writes the whole VMCS back after
//! it and at every VM exit ([`super::cpu::VmxCpu`]).

use super::cpu::GuestMemory;
use super::fields::FIELDS;
use super::vmcs::{field_offset, group, Vmcs, OFFSET_CHANGED};

/// The CPUID leaf that advertises the protocol: EAX = [`VERSION`], EBX, ECX, EDX =
/// [`SIGNATURE`].
pub const CPUID_LEAF: u32 = 0x4000_00e0;
pub const SIGNATURE: [u8; 12] = *b"nestbedEVMCS";
pub const VERSION: u32 = 1;
/// The MSR that registers a page: its physical address with bit 0 set makes it the current,
/// enlightened VMCS; 0 ends enlightened use of the current VMCS.
pub const MSR_EVMCS: u32 = 0x4e42_4500;
pub const MSR_ENABLE: u64 = 1;

/// The answer of [`CPUID_LEAF`].
pub fn cpuid_regs() -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([SIGNATURE[i], SIGNATURE[i + 1], SIGNATURE[i + 2], SIGNATURE[i + 3]]);
    [VERSION, w(0), w(4), w(8)]
}

/// The fields-changed mask of a page.
pub fn changed_mask(page: &[u8]) -> u64 {
    page.get(OFFSET_CHANGED..OFFSET_CHANGED + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Takes into `cache` every field of the groups `mask` names from `page` (bit g: group g,
/// [`group`]); a field is truncated to its width as VMWRITE would. The read-only fields (VM-exit
/// information) are nestbed's to write and never taken.
pub fn absorb(cache: &mut Vmcs, page: &[u8], mask: u64) {
    for f in FIELDS.iter().filter(|f| mask >> group(f.encoding) & 1 != 0 && !f.read_only()) {
        let Some(o) = field_offset(f.encoding) else { continue };
        if let Some(b) = page.get(o..o + 8) {
            cache.set(f.encoding, u64::from_le_bytes(b.try_into().unwrap_or_default()));
        }
    }
}

/// [`absorb`] from guest memory, reading only the marked groups' fields (a page outside RAM
/// gives nothing).
pub fn absorb_from(cache: &mut Vmcs, mem: &dyn GuestMemory, page: u64, mask: u64) {
    // Each marked group's slots are one read: they are contiguous in the page.
    let mut slots: [Option<(usize, Vec<u8>)>; 16] = Default::default();
    for (g, buf) in slots.iter_mut().enumerate().filter(|(g, _)| mask >> g & 1 != 0) {
        let g = g as u32;
        let start = super::vmcs::field_offset_of_slot((g / 4) << 13 | (g % 4) << 10);
        let mut bytes = vec![0u8; 8 * super::vmcs::group_slots(g) as usize];
        if mem.read_phys(page + start as u64, &mut bytes).is_ok() {
            *buf = Some((start, bytes));
        }
    }
    for f in FIELDS.iter().filter(|f| mask >> group(f.encoding) & 1 != 0 && !f.read_only()) {
        let (Some(o), Some((start, bytes))) = (field_offset(f.encoding), &slots[group(f.encoding) as usize]) else {
            continue;
        };
        if let Some(b) = o.checked_sub(*start).and_then(|r| bytes.get(r..r + 8)) {
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            cache.set(f.encoding, u64::from_le_bytes(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields::*;
    use super::*;

    /// EVMCS.md's group table and examples are the layout nestbed uses.
    #[test]
    fn evmcs_md_matches_the_layout() {
        use super::super::vmcs::group_slots;
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../EVMCS.md")).unwrap();
        let mut rows = 0;
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            let [g, _, _, first, slots] = cells[..] else { continue };
            let (Ok(g), Ok(first), Ok(slots)) = (g.parse::<u32>(), first.parse::<u32>(), slots.parse::<u32>()) else {
                continue;
            };
            let enc = (g / 4) << 13 | (g % 4) << 10;
            assert_eq!(group(enc), g);
            assert_eq!(super::super::vmcs::field_offset_of_slot(enc), 16 + 8 * first as usize, "group {g}");
            assert_eq!(group_slots(g), slots, "group {g}");
            rows += 1;
        }
        assert_eq!(rows, 16);
        for (enc, off) in [(GUEST_RIP, 2952), (HOST_RSP, 3104), (EPT_POINTER, 888)] {
            assert_eq!(field_offset(enc), Some(off), "{enc:#x}");
            assert!(doc.contains(&format!("{off}")), "{enc:#x}");
        }
        assert!(doc.contains(&format!("{:#X}", CPUID_LEAF).replace("0X", "0x")), "the CPUID leaf");
        assert!(doc.contains(&format!("MSR {:X}", MSR_EVMCS).replace("MSR ", "MSR 0x")), "the MSR");
        assert!(doc.contains(&format!("at {OFFSET_CHANGED}")) || doc.contains(&format!("offset {OFFSET_CHANGED}")));
    }

    #[test]
    fn cpuid_signature() {
        let [eax, ebx, ecx, edx] = cpuid_regs();
        assert_eq!(eax, 1);
        let mut s = Vec::new();
        for r in [ebx, ecx, edx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"nestbedEVMCS");
    }

    /// Only the groups the mask names are taken; the others keep the cache's values.
    #[test]
    fn absorb_takes_the_changed_groups() {
        let mut cache = Vmcs::new(1);
        cache.set(GUEST_RIP, 1);
        cache.set(HOST_RIP, 2);
        cache.set(GUEST_CS_SELECTOR, 3);
        let mut page = cache.clone();
        page.set(GUEST_RIP, 0x10);
        page.set(HOST_RIP, 0x20);
        page.set(GUEST_CS_SELECTOR, 0x30);
        let mut bytes = page.to_bytes();
        // A 16-bit field holding more than 16 bits in memory is truncated.
        let o = field_offset(GUEST_CS_SELECTOR).unwrap();
        bytes[o..o + 8].copy_from_slice(&0x1_0030u64.to_le_bytes());
        bytes[OFFSET_CHANGED..]
            .copy_from_slice(&(1u64 << group(GUEST_RIP) | 1 << group(GUEST_CS_SELECTOR)).to_le_bytes());
        let mask = changed_mask(&bytes);
        assert_eq!(mask, 1 << 14 | 1 << 2);
        absorb(&mut cache, &bytes, mask);
        assert_eq!(cache.get(GUEST_RIP), 0x10);
        assert_eq!(cache.get(GUEST_CS_SELECTOR), 0x30);
        assert_eq!(cache.get(HOST_RIP), 2, "host fields were not marked changed");
        absorb(&mut cache, &bytes, u64::MAX);
        assert_eq!(cache.get(HOST_RIP), 0x20);
        // Read-only fields are not taken, whatever the mask says.
        let mut page = cache.clone();
        page.set(VM_EXIT_REASON, 30);
        absorb(&mut cache, &page.to_bytes(), u64::MAX);
        assert_eq!(cache.get(VM_EXIT_REASON), 0);
        assert_eq!(changed_mask(&cache.to_bytes()), 0);
    }
}
