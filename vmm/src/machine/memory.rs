//! Guest RAM: one anonymous mapping from guest-physical 0, shared by the L1 VM and (through
//! memslots of its own) the L2 VM. Every guest-controlled address is checked against it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::Error;

/// Smallest RAM a guest may have: the loader's tables live below 1 MiB and images load at 1 MiB.
pub const MIN_MIB: u64 = 2;
/// Largest RAM accepted; beyond the 32-bit PCI hole nestbed would need a second region.
pub const MAX_MIB: u64 = 3 * 1024;

#[derive(Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    pub fn new(mib: u64) -> Result<Self, Error> {
        if !(MIN_MIB..=MAX_MIB).contains(&mib) {
            return Err(Error::Config(format!("--mem {mib}: RAM must be between {MIN_MIB} and {MAX_MIB} MiB")));
        }
        let size = mib << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| Error::Config(format!("--mem {mib}: cannot allocate guest RAM: {e}")))?;
        Ok(GuestRam { mem, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical 0 (for memslots).
    pub fn host_base(&self) -> u64 {
        self.mem.get_host_address(GuestAddress(0)).map_or(0, |p| p as u64)
    }

    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.size)
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        if !self.contains(gpa, buf.len() as u64) {
            return Err(MemFault { gpa, len: buf.len() });
        }
        self.mem.read_slice(buf, GuestAddress(gpa)).map_err(|_| MemFault { gpa, len: buf.len() })
    }

    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        if !self.contains(gpa, buf.len() as u64) {
            return Err(MemFault { gpa, len: buf.len() });
        }
        self.mem.write_slice(buf, GuestAddress(gpa)).map_err(|_| MemFault { gpa, len: buf.len() })
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemFault> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemFault> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// An access outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical {gpa:#x} (+{len}) is outside guest RAM")]
pub struct MemFault {
    pub gpa: u64,
    pub len: usize,
}
