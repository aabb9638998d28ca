//! Bit tests shared by the VMX instruction semantics (`cpu`) and the VM-entry checks
//! (`checks`).

/// True when `addr` is canonical for a linear-address width of `bits`.
pub fn is_canonical(addr: u64, bits: u8) -> bool {
    let shift = 64 - u32::from(bits);
    (((addr << shift) as i64) >> shift) as u64 == addr
}

pub fn beyond_width(addr: u64, width: u8) -> bool {
    width < 64 && addr >> width != 0
}

pub fn bad_page_addr(addr: u64, width: u8) -> bool {
    addr & 0xfff != 0 || beyond_width(addr, width)
}

/// True when `v` has every bit of `fixed0` set and no bit outside `fixed1` (SDM A.7, A.8).
pub fn fixed_ok(v: u64, fixed0: u64, fixed1: u64) -> bool {
    v & fixed0 == fixed0 && v & !fixed1 == 0
}

/// A PAT value is valid when each byte is a valid memory type: 0, 1, 4, 5, 6 or 7.
pub fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes().iter().all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical() {
        assert!(is_canonical(0x7fff_ffff_ffff, 48));
        assert!(!is_canonical(0x8000_0000_0000, 48));
        assert!(is_canonical(0xffff_8000_0000_0000, 48));
        assert!(is_canonical(0, 48));
    }
}
