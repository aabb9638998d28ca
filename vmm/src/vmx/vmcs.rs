//! The VMCS cache and nestbed's VMCS-region layout.
//!
//! The SDM leaves the region's format implementation-specific except for its first 8 bytes
//! (SDM 25.2, Table 25-1). nestbed's layout, 4096 bytes, all little-endian:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4 | bits 30:0 VMCS revision identifier, bit 31 shadow-VMCS indicator |
//! | 4 | 4 | VMX-abort indicator (SDM 28.7) |
//! | 8 | 4 | launch state: 0 clear, 1 launched (nestbed-specific) |
//! | 12 | 4 | reserved, written as 0 |
//! | 16 + 8*slot | 8 | value of the field whose encoding gives `slot` ([`field_offset`]) |
//! | 4088 | 8 | fields-changed mask of an enlightened VMCS (EVMCS.md), written as 0 |
//! | rest | | reserved, written as 0 |
//!
//! A field's slot follows from its encoding (SDM Appendix B): its group `g = 4 * width + type`
//! (encoding bits 14:13 and 11:10), and its index (bits 9:1):
//! `slot = 24 * g + (16 if g > 4) + index`; group 4 (64-bit control fields) has 40 slots, the
//! others 24. Values are stored whole, 64 bits, whatever the field's width.
//!
//! L1 software must not touch the region directly (SDM 25.11.1) unless it is an enlightened
//! VMCS (EVMCS.md); nestbed reads it on VMPTRLD and writes it back on VMCLEAR / VMPTRLD of
//! another VMCS.

use super::fields::{self, Width, FIELDS};

pub const VMCS_SIZE: usize = 4096;
pub const OFFSET_REVISION: usize = 0;
pub const OFFSET_ABORT: usize = 4;
pub const OFFSET_LAUNCH_STATE: usize = 8;
pub const OFFSET_FIELDS: usize = 16;
/// The fields-changed mask of an enlightened VMCS (EVMCS.md).
pub const OFFSET_CHANGED: usize = 4088;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmcs {
    /// VMCS revision identifier (bits 30:0 of the first word).
    pub revision: u32,
    /// Shadow-VMCS indicator (bit 31 of the first word, SDM 25.10).
    pub shadow: bool,
    pub abort: u32,
    pub launched: bool,
    values: Vec<u64>,
}

impl Vmcs {
    pub fn new(revision: u32) -> Self {
        Vmcs {
            revision: revision & 0x7fff_ffff,
            shadow: false,
            abort: 0,
            launched: false,
            values: vec![0; FIELDS.len()],
        }
    }

    /// VMREAD semantics: `None` for an unsupported component. A high-access encoding
    /// yields bits 63:32 of the 64-bit field (SDM 25.11.2).
    pub fn read(&self, enc: u32) -> Option<u64> {
        let (i, _) = fields::by_encoding(enc)?;
        Some(read_value(self.values[i], enc))
    }

    /// VMWRITE semantics without the read-only check: stores `v` truncated to the field's
    /// width; a high-access encoding replaces bits 63:32. `false` for an unsupported
    /// component.
    pub fn write(&mut self, enc: u32, v: u64) -> bool {
        let Some((i, _)) = fields::by_encoding(enc) else {
            return false;
        };
        self.values[i] = written_value(self.values[i], enc, v);
        true
    }

    /// Value of a known field; 0 for an unknown encoding.
    pub fn get(&self, enc: u32) -> u64 {
        self.read(enc).unwrap_or(0)
    }

    /// Sets a known field; an unknown encoding is ignored.
    pub fn set(&mut self, enc: u32, v: u64) {
        self.write(enc, v);
    }

    /// Low 32 bits of a field, for 32-bit control fields.
    pub fn get32(&self, enc: u32) -> u32 {
        self.get(enc) as u32
    }

    /// First word of the region: revision and shadow indicator.
    pub fn header(&self) -> u32 {
        (self.revision & 0x7fff_ffff) | (u32::from(self.shadow) << 31)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; VMCS_SIZE];
        b[OFFSET_REVISION..4].copy_from_slice(&self.header().to_le_bytes());
        b[OFFSET_ABORT..8].copy_from_slice(&self.abort.to_le_bytes());
        b[OFFSET_LAUNCH_STATE..12].copy_from_slice(&u32::from(self.launched).to_le_bytes());
        for (f, v) in FIELDS.iter().zip(&self.values) {
            let o = slot_offset(f.encoding);
            b[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Parses a region; a short slice reads as zero-padded. Values are truncated to
    /// their field's width, so garbage in memory cannot produce out-of-range fields.
    pub fn from_bytes(bytes: &[u8]) -> Vmcs {
        let u32_at = |o: usize| {
            let mut w = [0u8; 4];
            for (k, x) in w.iter_mut().enumerate() {
                *x = bytes.get(o + k).copied().unwrap_or(0);
            }
            u32::from_le_bytes(w)
        };
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let head = u32_at(OFFSET_REVISION);
        let values = FIELDS.iter().map(|f| u64_at(slot_offset(f.encoding)) & f.width().mask()).collect();
        Vmcs {
            revision: head & 0x7fff_ffff,
            shadow: head >> 31 == 1,
            abort: u32_at(OFFSET_ABORT),
            launched: u32_at(OFFSET_LAUNCH_STATE) == 1,
            values,
        }
    }

    /// Iterates `(field, value)` over all fields, e.g. for dumps.
    pub fn iter(&self) -> impl Iterator<Item = (&'static fields::Field, u64)> + '_ {
        FIELDS.iter().zip(self.values.iter().copied())
    }

    pub fn width_of(enc: u32) -> Option<Width> {
        fields::by_encoding(enc).map(|(_, f)| f.width())
    }
}

/// Offset in a VMCS region of the 8 bytes holding the field `enc` (or the 64-bit field a
/// high-access encoding names); `None` for an unsupported component. How a VMREAD or VMWRITE
/// that VMCS shadowing serves (SDM 25.10) reaches a region that is not cached.
pub fn field_offset(enc: u32) -> Option<usize> {
    fields::by_encoding(enc).map(|(_, f)| slot_offset(f.encoding))
}

/// The field group of an encoding: `4 * width + type` (SDM Appendix B: bits 14:13, 11:10).
pub fn group(enc: u32) -> u32 {
    4 * (enc >> 13 & 3) + (enc >> 10 & 3)
}

/// Slots of a group: 40 for the 64-bit control fields, 24 for the others.
pub fn group_slots(g: u32) -> u32 {
    if g == 4 {
        40
    } else {
        24
    }
}

/// Offset of the slot an encoding names, supported or not (EVMCS.md's table).
pub fn field_offset_of_slot(enc: u32) -> usize {
    slot_offset(enc)
}

/// Offset of an encoding's slot, by the layout above; every supported field's index is within
/// its group's slots (a test checks).
fn slot_offset(enc: u32) -> usize {
    let g = group(enc);
    let slot = 24 * g + if g > 4 { 16 } else { 0 } + (enc >> 1 & 0x1ff);
    OFFSET_FIELDS + 8 * slot as usize
}

/// What a VMREAD of `enc` returns when its field holds `stored`.
pub fn read_value(stored: u64, enc: u32) -> u64 {
    if fields::is_high_access(enc) {
        stored >> 32
    } else {
        stored
    }
}

/// What the field `enc` holds after a VMWRITE of `v` when it held `stored`: truncated to the
/// field's width, or bits 63:32 replaced for a high-access encoding.
pub fn written_value(stored: u64, enc: u32, v: u64) -> u64 {
    match fields::by_encoding(enc) {
        Some(_) if fields::is_high_access(enc) => (stored & 0xffff_ffff) | (v << 32),
        Some((_, f)) => v & f.width().mask(),
        None => stored,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields::*;
    use super::*;

    #[test]
    fn round_trip() {
        let mut v = Vmcs::new(0x4e42);
        v.shadow = true;
        v.abort = 7;
        v.launched = true;
        v.set(GUEST_RIP, 0xffff_8000_0000_1234);
        v.set(HOST_CS_SELECTOR, 0x10);
        v.set(EPT_POINTER, 0x1234_501e);
        let b = v.to_bytes();
        assert_eq!(b.len(), VMCS_SIZE);
        assert_eq!(&b[0..4], &(0x8000_4e42u32).to_le_bytes());
        assert_eq!(b[8], 1);
        let w = Vmcs::from_bytes(&b);
        assert_eq!(v, w);
        let o = field_offset(GUEST_RIP).unwrap();
        assert_eq!(o, OFFSET_FIELDS + 8 * (24 * 14 + 16 + 0xf));
        assert_eq!(&b[o..o + 8], &0xffff_8000_0000_1234u64.to_le_bytes());
        // A short slice parses as zero-padded.
        let short = Vmcs::from_bytes(&b[..12]);
        assert_eq!(short.revision, 0x4e42);
        assert_eq!(short.get(GUEST_RIP), 0);
    }

    /// Every field has a slot of its own inside its group, below the fields-changed mask.
    #[test]
    fn layout_slots_are_distinct_and_in_their_group() {
        let mut seen = std::collections::BTreeSet::new();
        for f in FIELDS {
            let e = f.encoding;
            assert!(e >> 1 & 0x1ff < group_slots(group(e)), "{e:#x}");
            let o = field_offset(e).unwrap();
            assert!(o + 8 <= OFFSET_CHANGED, "{e:#x}");
            assert!(seen.insert(o), "{e:#x} shares offset {o}");
            if e >> 13 & 3 == 1 {
                assert_eq!(field_offset(e | 1), Some(o));
            }
        }
        let last = (0..16).map(|g| 24 * g + if g > 4 { 16 } else { 0 } + group_slots(g)).max().unwrap();
        assert!(OFFSET_FIELDS + 8 * last as usize <= OFFSET_CHANGED);
    }

    #[test]
    fn width_truncation() {
        let mut v = Vmcs::new(1);
        assert!(v.write(GUEST_CS_SELECTOR, 0x1_2345));
        assert_eq!(v.read(GUEST_CS_SELECTOR), Some(0x2345));
        assert!(v.write(VM_EXIT_CONTROLS, 0x1_0000_0001));
        assert_eq!(v.get(VM_EXIT_CONTROLS), 1);
        assert!(v.write(GUEST_RIP, u64::MAX));
        assert_eq!(v.get(GUEST_RIP), u64::MAX);
        assert!(!v.write(0x7fff, 1));
        assert_eq!(v.read(0x7fff), None);
        v.set(0x7fff, 1);
        assert_eq!(v.get(0x7fff), 0);
    }

    #[test]
    fn high_access() {
        let mut v = Vmcs::new(1);
        v.set(TSC_OFFSET, 0x1111_2222_3333_4444);
        assert_eq!(v.read(TSC_OFFSET | 1), Some(0x1111_2222));
        assert!(v.write(TSC_OFFSET | 1, 0xaaaa_bbbb));
        assert_eq!(v.get(TSC_OFFSET), 0xaaaa_bbbb_3333_4444);
        // The full (low) access writes all 64 bits.
        v.set(TSC_OFFSET, 5);
        assert_eq!(v.get(TSC_OFFSET | 1), 0);
        assert_eq!(v.read(GUEST_RIP | 1), None);
    }
}
