//! The ACPI tables a PC BIOS leaves for the kernel it boots (`--firmware bios`; ACPI 6.x
//! sections 5.2, for what the fields mean): RSDP (found by the scan of 0xE0000-0xFFFFF), RSDT,
//! FADT (revision 1: the PM1a event and control blocks, the PM timer, the FACS and DSDT), FACS
//! (whose waking vector S3 resume jumps to), a DSDT that declares the \_S3 and \_S5 sleep types
//! nestbed's PM1a control block takes, and a MADT (one local APIC, the IOAPIC, ISA IRQ 0 on
//! GSI 2).

use crate::platform::acpi_pm::{PM1A_CNT, PM1A_EVT, PM_TMR, SLP_TYP_S3, SLP_TYP_S5};
use crate::platform::ioapic::IOAPIC_BASE;

/// Where the tables go: the BIOS area above the interrupt handlers (`bios::HANDLERS`).
pub const BASE: u64 = 0xF_1000;
/// The RSDP, on a 16-byte boundary the scan looks at.
pub const RSDP_ADDR: u64 = BASE;
const RSDT_ADDR: u64 = BASE + 0x40;
const FADT_ADDR: u64 = BASE + 0x80;
/// FACS: 64-byte aligned (5.2.10).
pub const FACS_ADDR: u64 = BASE + 0x140;
const DSDT_ADDR: u64 = BASE + 0x180;
const MADT_ADDR: u64 = BASE + 0x200;
/// FACS offset of the 32-bit firmware waking vector.
pub const FACS_WAKING_VECTOR: u64 = 12;
/// FACS offset of the 64-bit X_Firmware_Waking_Vector (ACPI 2.0+).
pub const FACS_X_WAKING_VECTOR: u64 = 24;
const OEM_ID: &[u8; 6] = b"NESTBD";
const LOCAL_APIC_BASE: u32 = 0xFEE0_0000;
/// The SCI's ISA IRQ (as on QEMU's PIIX4).
const SCI_IRQ: u16 = 9;

/// Every table and where it goes in guest-physical memory.
pub fn tables() -> Vec<(u64, Vec<u8>)> {
    vec![
        (RSDP_ADDR, rsdp()),
        (RSDT_ADDR, rsdt()),
        (FADT_ADDR, fadt()),
        (FACS_ADDR, facs()),
        (DSDT_ADDR, dsdt()),
        (MADT_ADDR, madt()),
    ]
}

/// Sets `bytes[at]` so that the bytes sum to 0 mod 256.
fn checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    bytes[at] = sum.wrapping_neg();
}

/// A system description table: the 36-byte header (5.2.6) then `body`.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(b"NESTBED ");
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"NSTB"); // creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    checksum(&mut t, 9);
    t
}

/// RSDP revision 0 (ACPI 1.0, 20 bytes; 5.2.5.3): the RSDT's address.
fn rsdp() -> Vec<u8> {
    let mut r = Vec::with_capacity(20);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(OEM_ID);
    r.push(0);
    r.extend_from_slice(&(RSDT_ADDR as u32).to_le_bytes());
    checksum(&mut r, 8);
    r
}

fn rsdt() -> Vec<u8> {
    let body: Vec<u8> = [FADT_ADDR, MADT_ADDR].iter().flat_map(|&a| (a as u32).to_le_bytes()).collect();
    table(b"RSDT", 1, &body)
}

/// FADT revision 1 (116 bytes; 5.2.9). SMI_CMD 0: ACPI mode is always on.
fn fadt() -> Vec<u8> {
    let mut b = vec![0u8; 116 - 36];
    let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at - 36..at - 32].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 36, FACS_ADDR as u32);
    put32(&mut b, 40, DSDT_ADDR as u32);
    b[46 - 36..48 - 36].copy_from_slice(&SCI_IRQ.to_le_bytes());
    put32(&mut b, 56, u32::from(PM1A_EVT));
    put32(&mut b, 64, u32::from(PM1A_CNT));
    put32(&mut b, 76, u32::from(PM_TMR));
    b[88 - 36] = 4; // PM1_EVT_LEN
    b[89 - 36] = 2; // PM1_CNT_LEN
    b[91 - 36] = 4; // PM_TMR_LEN
                    // P_LVL2_LAT and P_LVL3_LAT above 100 and 1000: C2 and C3 not supported.
    b[96 - 36..98 - 36].copy_from_slice(&101u16.to_le_bytes());
    b[98 - 36..100 - 36].copy_from_slice(&1001u16.to_le_bytes());
    b[108 - 36] = 0x32; // CENTURY: the RTC's CMOS index of the century
                        // Flags: WBINVD (bit 0), PROC_C1 (bit 2), SLP_BUTTON (bit 5: no sleep button).
    put32(&mut b, 112, (1 << 0) | (1 << 2) | (1 << 5));
    table(b"FACP", 1, &b)
}

/// FACS (64 bytes, no checksum; 5.2.10): version 1, waking vectors 0 until the OS sets them.
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 1;
    f
}

/// AML (19.2): `Name (_S3_, Package () { S3, S3, 0, 0 })` and the same for \_S5, the
/// SLP_TYP values of `acpi_pm`.
fn dsdt() -> Vec<u8> {
    let mut aml = Vec::new();
    for (name, typ) in [(b"_S3_", SLP_TYP_S3), (b"_S5_", SLP_TYP_S5)] {
        aml.push(0x08); // NameOp
        aml.extend_from_slice(name);
        // PackageOp, PkgLength 6, NumElements 4, then four ByteConst/ZeroOp/OneOp elements.
        aml.extend_from_slice(&[0x12, 0x06, 0x04]);
        for v in [typ, typ, 0, 0] {
            aml.push(match v {
                0 => 0x00,
                1 => 0x01,
                _ => unreachable!("SLP_TYP values are 0 or 1"),
            });
        }
    }
    table(b"DSDT", 1, &aml)
}

/// MADT (5.2.12): the local APIC's address, PCAT_COMPAT (8259s present), processor 0's local
/// APIC, the IOAPIC at GSI 0, and ISA IRQ 0 on GSI 2 (the PC's wiring, `isa_irq_to_pin`).
fn madt() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LOCAL_APIC_BASE.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    // Processor local APIC: UID 0, APIC ID 0, enabled.
    b.extend_from_slice(&[0, 8, 0, 0]);
    b.extend_from_slice(&1u32.to_le_bytes());
    // I/O APIC: ID 0, address, GSI base 0.
    b.extend_from_slice(&[1, 12, 0, 0]);
    b.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: bus 0 (ISA), source IRQ 0, GSI 2, flags 0 (bus conformant).
    b.extend_from_slice(&[2, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    table(b"APIC", 1, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn at(tables: &[(u64, Vec<u8>)], addr: u64) -> &[u8] {
        &tables.iter().find(|(a, _)| *a == addr).unwrap().1
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero_and_fits_before_the_next() {
        let t = tables();
        for w in t.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0, "table at {:#x} overlaps the next", w[0].0);
        }
        for (addr, bytes) in &t {
            if *addr != FACS_ADDR {
                assert_eq!(sum(bytes), 0, "checksum of the table at {addr:#x}");
            }
        }
        assert_eq!(RSDP_ADDR % 16, 0);
        assert_eq!(FACS_ADDR % 64, 0);
        assert!((0xE_0000..0x10_0000).contains(&RSDP_ADDR));
    }

    #[test]
    fn the_rsdp_leads_through_the_rsdt_to_the_fadt_facs_and_madt() {
        let t = tables();
        let rsdp = at(&t, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        let rsdt = at(&t, u64::from(u32_at(rsdp, 16)));
        assert_eq!(&rsdt[..4], b"RSDT");
        let entries: Vec<u64> = (36..rsdt.len()).step_by(4).map(|o| u64::from(u32_at(rsdt, o))).collect();
        let sigs: Vec<&[u8]> = entries.iter().map(|&a| &at(&t, a)[..4]).collect();
        assert_eq!(sigs, [b"FACP".as_slice(), b"APIC".as_slice()]);
        let fadt = at(&t, entries[0]);
        assert_eq!(fadt.len(), 116);
        assert_eq!(&at(&t, u64::from(u32_at(fadt, 36)))[..4], b"FACS");
        assert_eq!(&at(&t, u64::from(u32_at(fadt, 40)))[..4], b"DSDT");
        assert_eq!(u32_at(fadt, 56), u32::from(PM1A_EVT));
        assert_eq!(u32_at(fadt, 64), u32::from(PM1A_CNT));
        assert_eq!(u32_at(fadt, 76), u32::from(PM_TMR));
    }

    #[test]
    fn the_dsdt_names_the_sleep_types() {
        let d = dsdt();
        let aml = &d[36..];
        assert_eq!(&aml[..12], &[0x08, b'_', b'S', b'3', b'_', 0x12, 0x06, 0x04, 1, 1, 0, 0]);
        assert_eq!(&aml[12..], &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0]);
    }
}
