//! QEMU's firmware configuration device over x86 I/O ports (QEMU `hw/nvram/fw_cfg.c`,
//! `docs/specs/fw_cfg.rst`), as kvm-unit-tests' `lib/x86/fwcfg.c` reads it.
//!
//! A 16-bit write to the selector 0x510 selects an item and rewinds it; each 8-bit read of the
//! data port 0x511 (or of 0x510: QEMU decodes the pair as one register) streams the item's next
//! byte, and 0 past its end or for a key that names nothing. Keys keep the arch-local bit
//! (0x8000); the write-channel bit (0x4000) is ignored on select, and keys whose index is beyond
//! the file slots select nothing. Items: signature "QEMU", ID (traditional interface, no DMA),
//! UUID (zero), RAM size (64-bit LE), boot and maximum CPU counts (16-bit LE), the file directory
//! (big-endian count, then 64-byte entries: size, select, reserved, name) and whatever the
//! builder adds.
//!
//! Not modelled: the DMA interface (0x514-0x51B are not decoded and the ID says so), writes to
//! items (QEMU ignores data-port writes too), the boot-order, kernel/initrd, ACPI and SMBIOS
//! items QEMU's PC machine fills. Accesses of a width QEMU rejects (any read but 8-bit, any
//! selector write but 16-bit) read 0 and do nothing; ports outside 0x510-0x511 read all-ones.

use std::collections::BTreeMap;

/// Selector port (16-bit writes).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data port (8-bit reads).
pub const DATA_PORT: u16 = 0x511;

pub const FW_CFG_SIGNATURE: u16 = 0x00;
pub const FW_CFG_ID: u16 = 0x01;
pub const FW_CFG_UUID: u16 = 0x02;
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
pub const FW_CFG_NB_CPUS: u16 = 0x05;
pub const FW_CFG_MAX_CPUS: u16 = 0x0F;
/// kvm-unit-tests reads this key as a 64-bit upper limit of usable memory, 0 meaning none
/// (`fwcfg.h` FW_CFG_MAX_RAM). QEMU knows it as FW_CFG_KERNEL_DATA and does not fill it for
/// the test kernels; absent here unless added.
pub const FW_CFG_MAX_RAM: u16 = 0x11;
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Key of the first file; files take consecutive keys in name order.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// File slots of QEMU's current machine types.
pub const FW_CFG_FILE_SLOTS: u16 = 0x20;
pub const FW_CFG_WRITE_CHANNEL: u16 = 0x4000;
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;

/// ID feature bit: the traditional port interface.
pub const FEATURE_TRADITIONAL: u32 = 1;
/// Longest file name, without its terminating NUL.
pub const MAX_FILE_NAME: usize = 55;

const ENTRY_MASK: u16 = !(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    #[error("fw_cfg key {0:#x} is not an item key (the file directory and file keys are built by add_file)")]
    BadKey(u16),
    #[error("fw_cfg file name {0:?} is empty or longer than 55 bytes")]
    BadName(String),
    #[error("fw_cfg file {0:?} already exists")]
    DuplicateFile(String),
    #[error("fw_cfg has no free file slot")]
    NoFileSlot,
}

/// The fw_cfg device.
#[derive(Debug, Clone)]
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    /// In name order; file `i` has key `FW_CFG_FILE_FIRST + i`.
    files: Vec<(String, Vec<u8>)>,
    selected: Option<u16>,
    offset: usize,
}

impl FwCfg {
    /// The items QEMU's PC machine provides for `ram_size` bytes and `cpus` CPUs (all present at
    /// boot: NB_CPUS and MAX_CPUS are both `cpus`).
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, FEATURE_TRADITIONAL.to_le_bytes().to_vec());
        items.insert(FW_CFG_UUID, vec![0; 16]);
        items.insert(FW_CFG_RAM_SIZE, ram_size.to_le_bytes().to_vec());
        items.insert(FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec());
        let mut fw_cfg = FwCfg { items, files: Vec::new(), selected: None, offset: 0 };
        fw_cfg.rebuild_dir();
        fw_cfg
    }

    /// Whether `port` belongs to the device.
    pub fn claims(port: u16) -> bool {
        matches!(port, SELECTOR_PORT | DATA_PORT)
    }

    /// Adds or replaces item `key` (below the file keys, arch-local or not, not the directory).
    pub fn add_item(&mut self, key: u16, bytes: impl Into<Vec<u8>>) -> Result<(), FwCfgError> {
        if key & FW_CFG_WRITE_CHANNEL != 0 || key & ENTRY_MASK >= FW_CFG_FILE_FIRST || key == FW_CFG_FILE_DIR {
            return Err(FwCfgError::BadKey(key));
        }
        self.items.insert(key, bytes.into());
        Ok(())
    }

    /// Adds a named file. As in QEMU, the directory stays sorted by name, so adding a file can
    /// renumber those after it: look keys up with [`FwCfg::file_key`].
    pub fn add_file(&mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Result<(), FwCfgError> {
        if name.is_empty() || name.len() > MAX_FILE_NAME || name.contains('\0') {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        if self.files.len() >= usize::from(FW_CFG_FILE_SLOTS) {
            return Err(FwCfgError::NoFileSlot);
        }
        match self.files.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(_) => Err(FwCfgError::DuplicateFile(name.to_string())),
            Err(at) => {
                self.files.insert(at, (name.to_string(), bytes.into()));
                self.rebuild_dir();
                Ok(())
            }
        }
    }

    /// The key file `name` is reachable at.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        let index = self.files.iter().position(|(n, _)| n == name)?;
        Some(FW_CFG_FILE_FIRST + index as u16)
    }

    /// The bytes of item `key` as a guest would read them after selecting it.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        let key = normalize(key)?;
        if key & ENTRY_MASK >= FW_CFG_FILE_FIRST {
            if key & FW_CFG_ARCH_LOCAL != 0 {
                return None;
            }
            let index = usize::from(key - FW_CFG_FILE_FIRST);
            return self.files.get(index).map(|(_, data)| data.as_slice());
        }
        self.items.get(&key).map(Vec::as_slice)
    }

    /// An `in` of `size` bytes from `port`.
    pub fn port_read(&mut self, port: u16, size: usize) -> u32 {
        if !Self::claims(port) {
            return all_ones(size);
        }
        if size != 1 {
            return 0;
        }
        let byte = self.selected.and_then(|key| self.item(key)).and_then(|data| data.get(self.offset)).copied();
        match byte {
            Some(byte) => {
                self.offset += 1;
                u32::from(byte)
            }
            None => 0,
        }
    }

    /// An `out` of `size` bytes of `value` to `port`.
    pub fn port_write(&mut self, port: u16, size: usize, value: u32) {
        if port == SELECTOR_PORT && size == 2 {
            self.selected = normalize(value as u16);
            self.offset = 0;
        }
    }

    fn rebuild_dir(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (i, (name, data)) in self.files.iter().enumerate() {
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&(FW_CFG_FILE_FIRST + i as u16).to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; MAX_FILE_NAME + 1];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }
}

/// The entry a selector value names: write-channel bit dropped, none past the file slots.
fn normalize(key: u16) -> Option<u16> {
    (key & ENTRY_MASK < FW_CFG_FILE_FIRST + FW_CFG_FILE_SLOTS).then_some(key & !FW_CFG_WRITE_CHANNEL)
}

fn all_ones(size: usize) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kvm-unit-tests' `fwcfg_get_u`: 16-bit select, then `bytes` 8-bit reads, little-endian.
    fn get(fw: &mut FwCfg, key: u16, bytes: usize) -> u64 {
        fw.port_write(SELECTOR_PORT, 2, u32::from(key));
        (0..bytes).fold(0, |acc, i| acc | u64::from(fw.port_read(DATA_PORT, 1)) << (8 * i))
    }

    fn read_n(fw: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        fw.port_write(SELECTOR_PORT, 2, u32::from(key));
        (0..n).map(|_| fw.port_read(DATA_PORT, 1) as u8).collect()
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn signature() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        assert_eq!(read_n(&mut fw, FW_CFG_SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn id_is_traditional_only() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        assert_eq!(get(&mut fw, FW_CFG_ID, 4), 1);
    }

    #[test]
    fn nb_cpus_is_16_bit() {
        let mut fw = FwCfg::new(128 * MIB, 4);
        assert_eq!(get(&mut fw, FW_CFG_NB_CPUS, 2), 4);
        assert_eq!(fw.item(FW_CFG_NB_CPUS).map(<[u8]>::len), Some(2));
        assert_eq!(get(&mut fw, FW_CFG_MAX_CPUS, 2), 4);
        let mut big = FwCfg::new(MIB, 0x1234);
        assert_eq!(get(&mut big, FW_CFG_NB_CPUS, 2), 0x1234);
    }

    #[test]
    fn ram_size_is_64_bit_le() {
        let ram = 0x1_2345_6000;
        let mut fw = FwCfg::new(ram, 1);
        assert_eq!(get(&mut fw, FW_CFG_RAM_SIZE, 8), ram);
        assert_eq!(fw.item(FW_CFG_RAM_SIZE), Some(&ram.to_le_bytes()[..]));
    }

    #[test]
    fn max_ram_absent_reads_zero_meaning_no_limit() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        assert_eq!(get(&mut fw, FW_CFG_MAX_RAM, 8), 0);
        fw.add_item(FW_CFG_MAX_RAM, (64 * MIB).to_le_bytes()).unwrap();
        assert_eq!(get(&mut fw, FW_CFG_MAX_RAM, 8), 64 * MIB);
    }

    #[test]
    fn reads_past_end_are_zero() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        assert_eq!(read_n(&mut fw, FW_CFG_SIGNATURE, 8), b"QEMU\0\0\0\0");
        assert_eq!(get(&mut fw, FW_CFG_NB_CPUS, 8), 1);
    }

    #[test]
    fn select_rewinds() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        read_n(&mut fw, FW_CFG_SIGNATURE, 2);
        assert_eq!(read_n(&mut fw, FW_CFG_SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn garbage_selector_selects_nothing() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        for key in [0x3F, 0x40, 0x1000, 0x3FFF, 0x7FFF, 0xFFFF, 0x8005, 0x8040, 0x12] {
            assert_eq!(read_n(&mut fw, key, 4), [0; 4], "key {key:#x}");
        }
    }

    #[test]
    fn write_channel_bit_ignored_on_select() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        assert_eq!(read_n(&mut fw, FW_CFG_WRITE_CHANNEL | FW_CFG_SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn arch_local_keys_are_separate() {
        let mut fw = FwCfg::new(128 * MIB, 1);
        fw.add_item(FW_CFG_ARCH_LOCAL | 2, 1u32.to_le_bytes()).unwrap();
        assert_eq!(get(&mut fw, FW_CFG_ARCH_LOCAL | 2, 4), 1);
        assert_eq!(read_n(&mut fw, FW_CFG_ARCH_LOCAL, 4), [0; 4]);
    }

    #[test]
    fn add_item_rejects_reserved_keys() {
        let mut fw = FwCfg::new(MIB, 1);
        for key in [FW_CFG_FILE_DIR, FW_CFG_FILE_FIRST, 0x1000, FW_CFG_WRITE_CHANNEL | 3, 0xFFFF] {
            assert_eq!(fw.add_item(key, vec![1]), Err(FwCfgError::BadKey(key)));
        }
        fw.add_item(FW_CFG_SIGNATURE, b"TEST".to_vec()).unwrap();
        assert_eq!(read_n(&mut fw, 0, 4), b"TEST");
    }

    #[test]
    fn empty_file_dir() {
        let mut fw = FwCfg::new(MIB, 1);
        assert_eq!(read_n(&mut fw, FW_CFG_FILE_DIR, 8), [0; 8]);
    }

    #[test]
    fn file_dir_big_endian_and_sorted() {
        let mut fw = FwCfg::new(MIB, 1);
        fw.add_file("etc/zz", vec![7; 3]).unwrap();
        fw.add_file("etc/aa", vec![9; 0x102]).unwrap();
        let dir = read_n(&mut fw, FW_CFG_FILE_DIR, 4 + 2 * 64);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        let first = &dir[4..68];
        assert_eq!(first[..4], [0, 0, 1, 2]);
        assert_eq!(first[4..6], [0, 0x20]);
        assert_eq!(first[6..8], [0, 0]);
        assert_eq!(&first[8..14], b"etc/aa");
        assert!(first[14..].iter().all(|&b| b == 0));
        let second = &dir[68..];
        assert_eq!(second[..6], [0, 0, 0, 3, 0, 0x21]);
        assert_eq!(fw.file_key("etc/zz"), Some(0x21));
        assert_eq!(read_n(&mut fw, 0x21, 4), [7, 7, 7, 0]);
        assert_eq!(fw.file_key("nope"), None);
    }

    #[test]
    fn add_file_errors() {
        let mut fw = FwCfg::new(MIB, 1);
        assert!(matches!(fw.add_file("", vec![]), Err(FwCfgError::BadName(_))));
        assert!(matches!(fw.add_file(&"x".repeat(56), vec![]), Err(FwCfgError::BadName(_))));
        fw.add_file(&"x".repeat(55), vec![]).unwrap();
        assert!(matches!(fw.add_file(&"x".repeat(55), vec![]), Err(FwCfgError::DuplicateFile(_))));
        for i in 1..FW_CFG_FILE_SLOTS {
            fw.add_file(&format!("f{i:02}"), vec![]).unwrap();
        }
        assert_eq!(fw.add_file("one-more", vec![]), Err(FwCfgError::NoFileSlot));
    }

    #[test]
    fn widths_qemu_rejects() {
        let mut fw = FwCfg::new(MIB, 1);
        fw.port_write(SELECTOR_PORT, 1, 0x05);
        fw.port_write(SELECTOR_PORT, 4, 0x05);
        fw.port_write(DATA_PORT, 2, 0x05);
        assert_eq!(fw.port_read(DATA_PORT, 1), 0, "nothing was selected");
        fw.port_write(SELECTOR_PORT, 2, u32::from(FW_CFG_SIGNATURE));
        assert_eq!(fw.port_read(DATA_PORT, 2), 0);
        assert_eq!(fw.port_read(DATA_PORT, 4), 0);
        assert_eq!(fw.port_read(SELECTOR_PORT, 1), u32::from(b'Q'), "the pair reads as one data register");
        fw.port_write(DATA_PORT, 1, 0xAA);
        assert_eq!(fw.port_read(DATA_PORT, 1), u32::from(b'E'), "data writes are ignored");
    }

    #[test]
    fn other_ports_not_decoded() {
        let mut fw = FwCfg::new(MIB, 1);
        for port in [0x50F, 0x512, 0x514, 0x518, 0xFFFF] {
            assert!(!FwCfg::claims(port));
            assert_eq!(fw.port_read(port, 1), 0xFF);
            assert_eq!(fw.port_read(port, 4), 0xFFFF_FFFF);
            fw.port_write(port, 2, 0);
        }
        assert!(FwCfg::claims(SELECTOR_PORT) && FwCfg::claims(DATA_PORT));
    }

    #[test]
    fn garbage_sequences_are_total() {
        let mut fw = FwCfg::new(u64::MAX, u16::MAX);
        let mut seed = 0xDEAD_BEEFu32;
        for _ in 0..5_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let port = 0x50E + (seed >> 28) as u16 % 8;
            let size = [0, 1, 2, 3, 4, 8][(seed >> 8) as usize % 6];
            if seed & 1 == 0 {
                fw.port_write(port, size, seed);
            } else {
                fw.port_read(port, size);
            }
        }
    }
}
