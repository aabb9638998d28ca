//! Who handles an L2 exit, split as KVM splits it: what nestbed, as the L0, must keep whatever
//! L1's controls say ([`L0Keeps`]), then whether L1 asked for the exit
//! (`vmx::route::l1_wants_exit`, the pure model's one decision), else nestbed handles it.

/// Why nestbed keeps an L2 exit whatever L1's controls say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L0Keeps {
    /// L1's EPT allows the access, but L2's memslots (nestbed's TLB of L1's EPT, SDM 29.4)
    /// were stale: nestbed performs it on L1's memory and refreshes the memslots.
    StaleEptTranslation,
    /// Without EPT, L2-physical memory is L1-physical memory, and nothing is there: on
    /// hardware the access reaches no device and causes no VM exit (reads return all ones).
    OutsideL1Memory,
}

/// The routing of one L2 exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A VM exit to L1.
    L1,
    /// L1 did not ask for it: nestbed handles it (devices, memory).
    L0,
    /// nestbed keeps it, for this reason.
    L0Keeps(L0Keeps),
}

/// Routes an L2 exit: L0's reasons first, then L1's controls (asked only when L0 has none).
pub fn route(keeps: Option<L0Keeps>, l1_wants: impl FnOnce() -> bool) -> Route {
    match keeps {
        Some(k) => Route::L0Keeps(k),
        None if l1_wants() => Route::L1,
        None => Route::L0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l0_reasons_come_before_l1s_controls() {
        let asked = std::cell::Cell::new(false);
        let r = route(Some(L0Keeps::StaleEptTranslation), || {
            asked.set(true);
            true
        });
        assert_eq!(r, Route::L0Keeps(L0Keeps::StaleEptTranslation));
        assert!(!asked.get(), "L1's controls are not read for an exit L0 keeps");
        assert_eq!(route(None, || true), Route::L1);
        assert_eq!(route(None, || false), Route::L0);
    }
}
