//! Guest page walker: linear to guest-physical through the guest's own page tables (SDM Vol. 3A
//! 4.3 32-bit paging, 4.4 PAE, 4.5 4-level), used for VMX memory operands, gdb and scripts.

use super::memory::{GuestRam, MemFault};

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The paging controls of a vCPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct PagingMode {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// A #PF the guest would take, with its error code (SDM 4.7).
    #[error("page fault at {addr:#x} (error code {error_code:#x})")]
    PageFault { addr: u64, error_code: u32 },
    /// A paging structure lies outside guest RAM.
    #[error(transparent)]
    Memory(#[from] MemFault),
}

/// The access being translated, for permission checks and the #PF error code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    pub write: bool,
    pub user: bool,
}

/// Guest-physical memory a walk goes through: L1's RAM, or L2's address space as its memslots
/// map it.
pub trait PhysMem {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault>;
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<(), MemFault>;
}

impl PhysMem for GuestRam {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.read(gpa, buf)
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        self.write(gpa, buf)
    }
}

fn read_u64<M: PhysMem + ?Sized>(ram: &M, gpa: u64) -> Result<u64, MemFault> {
    let mut b = [0u8; 8];
    ram.read_phys(gpa, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32<M: PhysMem + ?Sized>(ram: &M, gpa: u64) -> Result<u32, MemFault> {
    let mut b = [0u8; 4];
    ram.read_phys(gpa, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

pub fn translate<M: PhysMem + ?Sized>(ram: &M, m: PagingMode, gva: u64, acc: Access) -> Result<u64, WalkError> {
    if m.cr0 & CR0_PG == 0 {
        return Ok(gva & 0xffff_ffff);
    }
    let fault = |present: bool| WalkError::PageFault {
        addr: gva,
        error_code: u32::from(present) | (u32::from(acc.write) << 1) | (u32::from(acc.user) << 2),
    };
    let check = |e: u64| -> Result<(), WalkError> {
        if e & P == 0 {
            return Err(fault(false));
        }
        if (acc.write && e & RW == 0) || (acc.user && e & US == 0) {
            return Err(fault(true));
        }
        Ok(())
    };
    if m.efer & EFER_LMA != 0 {
        let canonical = ((gva as i64) << 16 >> 16) as u64 == gva;
        if !canonical {
            return Err(fault(false));
        }
        let mut table = m.cr3 & ADDR;
        for level in (1..=4).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = read_u64(ram, table + ((gva >> shift) & 0x1ff) * 8)?;
            check(e)?;
            if level == 1 || (level <= 3 && e & PS != 0) {
                let size = 1u64 << shift;
                return Ok((e & ADDR & !(size - 1)) | (gva & (size - 1)));
            }
            table = e & ADDR;
        }
        unreachable!("level 1 always returns")
    } else if m.cr4 & CR4_PAE != 0 {
        let gva = gva & 0xffff_ffff;
        let pdpte = read_u64(ram, (m.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8)?;
        if pdpte & P == 0 {
            return Err(fault(false));
        }
        let pde = read_u64(ram, (pdpte & ADDR) + ((gva >> 21) & 0x1ff) * 8)?;
        check(pde)?;
        if pde & PS != 0 {
            return Ok((pde & ADDR & !0x1f_ffff) | (gva & 0x1f_ffff));
        }
        let pte = read_u64(ram, (pde & ADDR) + ((gva >> 12) & 0x1ff) * 8)?;
        check(pte)?;
        Ok((pte & ADDR) | (gva & 0xfff))
    } else {
        let gva = gva & 0xffff_ffff;
        let pde = u64::from(read_u32(ram, (m.cr3 & 0xffff_f000) + ((gva >> 22) & 0x3ff) * 4)?);
        check(pde)?;
        if pde & PS != 0 && m.cr4 & CR4_PSE != 0 {
            let high = ((pde >> 13) & 0xff) << 32;
            return Ok(high | (pde & 0xffc0_0000) | (gva & 0x3f_ffff));
        }
        let pte = u64::from(read_u32(ram, (pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4)?);
        check(pte)?;
        Ok((pte & 0xffff_f000) | (gva & 0xfff))
    }
}

/// Reads `buf.len()` bytes at a linear address, page by page.
pub fn read_virt<M: PhysMem + ?Sized>(ram: &M, m: PagingMode, gva: u64, buf: &mut [u8]) -> Result<(), WalkError> {
    let mut done = 0;
    while done < buf.len() {
        let addr = gva.wrapping_add(done as u64);
        let n = (4096 - (addr & 0xfff) as usize).min(buf.len() - done);
        let gpa = translate(ram, m, addr, Access::default())?;
        ram.read_phys(gpa, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Writes bytes at a linear address, page by page; the walk checks write permission.
pub fn write_virt<M: PhysMem + ?Sized>(ram: &M, m: PagingMode, gva: u64, buf: &[u8]) -> Result<(), WalkError> {
    let mut done = 0;
    while done < buf.len() {
        let addr = gva.wrapping_add(done as u64);
        let n = (4096 - (addr & 0xfff) as usize).min(buf.len() - done);
        let gpa = translate(ram, m, addr, Access { write: true, user: false })?;
        ram.write_phys(gpa, &buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ram: &GuestRam, gpa: u64, v: u64) {
        ram.write(gpa, &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn four_level_with_4k_2m_1g_pages() {
        let ram = GuestRam::new(8).unwrap();
        let m = PagingMode { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) };
        put(&ram, 0x1000, 0x2000 | P | RW); // PML4[0]
        put(&ram, 0x2000, 0x3000 | P | RW); // PDPT[0] -> PD
        put(&ram, 0x2008, 0x4000_0000 | P | PS); // PDPT[1]: 1 GiB page at 1 GiB
        put(&ram, 0x3000, 0x20_0000 | P | RW | PS); // PD[0]: 2 MiB page at 2 MiB
        put(&ram, 0x3008, 0x4000 | P); // PD[1] -> PT, read-only
        put(&ram, 0x4000 + 5 * 8, 0x7000 | P); // PT[5]
        assert_eq!(translate(&ram, m, 0x1234, Access::default()), Ok(0x20_1234));
        assert_eq!(translate(&ram, m, 0x4000_0000 + 0x10, Access::default()), Ok(0x4000_0010));
        assert_eq!(translate(&ram, m, 0x20_5abc, Access::default()), Ok(0x7abc));
        assert_eq!(
            translate(&ram, m, 0x20_5abc, Access { write: true, user: false }),
            Err(WalkError::PageFault { addr: 0x20_5abc, error_code: 3 })
        );
        assert_eq!(
            translate(&ram, m, 0x20_6000, Access::default()),
            Err(WalkError::PageFault { addr: 0x20_6000, error_code: 0 })
        );
        assert!(matches!(
            translate(&ram, m, 0x8000_0000_0000_0000, Access::default()),
            Err(WalkError::PageFault { .. })
        ));
    }

    #[test]
    fn legacy_32bit_and_pae() {
        let ram = GuestRam::new(8).unwrap();
        let m = PagingMode { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0 };
        ram.write(0x1000, &(0x40_0000u32 | 0x83).to_le_bytes()).unwrap(); // 4 MiB page
        ram.write(0x1004, &(0x2000u32 | 1).to_le_bytes()).unwrap();
        ram.write(0x2000 + 4, &(0x9000u32 | 1).to_le_bytes()).unwrap();
        assert_eq!(translate(&ram, m, 0x12_3456, Access::default()), Ok(0x52_3456));
        assert_eq!(translate(&ram, m, 0x40_1004, Access::default()), Ok(0x9004));
        let pae = PagingMode { cr0: CR0_PG | 1, cr3: 0x3000, cr4: CR4_PAE, efer: 0 };
        put(&ram, 0x3000, 0x4000 | P);
        put(&ram, 0x4000, 0x60_0000 | P | PS);
        assert_eq!(translate(&ram, pae, 0x1_0000, Access::default()), Ok(0x61_0000));
        let off = PagingMode::default();
        assert_eq!(translate(&ram, off, 0x1234, Access::default()), Ok(0x1234));
    }

    #[test]
    fn tables_outside_ram_are_errors_not_crashes() {
        let ram = GuestRam::new(2).unwrap();
        let m = PagingMode { cr0: CR0_PG | 1, cr3: 0xffff_f000, cr4: CR4_PAE, efer: EFER_LMA };
        assert!(matches!(translate(&ram, m, 0, Access::default()), Err(WalkError::Memory(_))));
    }
}
