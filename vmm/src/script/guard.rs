//! What bounds a hook call besides Rhai's own limits: its wall-clock time (`--script-time`),
//! a stop request (a signal or `--timeout`) that arrives while it runs, and how deeply the
//! values a script keeps nest (Rhai drops, clones and sizes nested values recursively, so an
//! unbounded depth would overflow the stack).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, EvalAltResult, FnPtr, Map};

use crate::runner::signals;

/// Operations between two looks at the clock and the signal count (a look costs tens of ns).
const CHECK_EVERY: u64 = 64;

/// Deepest nesting of arrays, maps and closures' captured values a script may keep between
/// hook calls.
pub const MAX_DEPTH: usize = 10_000;

/// Why Rhai stopped a hook through `on_progress` (the token of `ErrorTerminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// SIGINT, SIGTERM or SIGHUP.
    Interrupt,
    /// `--timeout` expired.
    Timeout,
    /// The hook ran over `--script-time`.
    TimeLimit,
}

/// When the current hook call started, shared by the script and its engine's `on_progress`.
pub struct HookClock {
    limit: Option<Duration>,
    started: Cell<Instant>,
    stops: Cell<u32>,
}

impl HookClock {
    /// A clock for hooks that may run `limit_ms` each (0 = no limit).
    pub fn new(limit_ms: u64) -> Rc<Self> {
        let limit = (limit_ms > 0).then(|| Duration::from_millis(limit_ms));
        Rc::new(HookClock { limit, started: Cell::new(Instant::now()), stops: Cell::new(signals::stop_requests()) })
    }

    /// A hook call starts now.
    pub fn start(&self) {
        self.started.set(Instant::now());
        self.stops.set(signals::stop_requests());
    }

    /// Rhai's `on_progress`: `Some` stops the hook.
    pub fn progress(&self, ops: u64) -> Option<Dynamic> {
        if !ops.is_multiple_of(CHECK_EVERY) {
            return None;
        }
        self.halt().map(Dynamic::from)
    }

    fn halt(&self) -> Option<Halt> {
        if signals::stop_requests() != self.stops.get() {
            return Some(if signals::cause() == signals::TIMEOUT { Halt::Timeout } else { Halt::Interrupt });
        }
        match self.limit {
            Some(limit) if self.started.get().elapsed() > limit => Some(Halt::TimeLimit),
            _ => None,
        }
    }

    pub fn limit_ms(&self) -> u128 {
        self.limit.map_or(0, |l| l.as_millis())
    }
}

/// Why a hook was halted, when it was.
pub fn halted(e: &EvalAltResult) -> Option<Halt> {
    let mut cur = e;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) = cur {
        cur = inner;
    }
    match cur {
        EvalAltResult::ErrorTerminated(token, _) => token.clone().try_cast::<Halt>(),
        _ => None,
    }
}

/// The deepest nesting among `values`, counted up to `limit + 1` (enough to refuse).
pub fn depth<'a>(values: impl Iterator<Item = &'a Dynamic>, limit: usize) -> usize {
    let mut heights = HashMap::new();
    values.map(|v| height(v, 0, limit, &mut heights)).max().unwrap_or(0)
}

/// How deep `v` nests below `at`, stopping past `limit`. Shared values (closures' captured
/// variables) can form cycles and be reached twice: their height is computed once
/// (`heights`; `None` while in progress, so a cycle ends there).
fn height(v: &Dynamic, at: usize, limit: usize, heights: &mut HashMap<usize, Option<usize>>) -> usize {
    if at > limit {
        return 1;
    }
    if v.is_shared() {
        let Some(inner) = v.read_lock::<Dynamic>() else { return 1 };
        let key = &*inner as *const Dynamic as usize;
        if let Some(known) = heights.get(&key) {
            return known.unwrap_or(0);
        }
        heights.insert(key, None);
        let h = below(&inner, at, limit, heights);
        heights.insert(key, Some(h));
        return h;
    }
    below(v, at, limit, heights)
}

fn below(v: &Dynamic, at: usize, limit: usize, heights: &mut HashMap<usize, Option<usize>>) -> usize {
    let mut deepest = |items: &mut dyn Iterator<Item = &Dynamic>| {
        let mut h = 0;
        for item in items {
            h = h.max(height(item, at + 1, limit, heights));
            if at + 1 + h > limit {
                break;
            }
        }
        1 + h
    };
    if let Some(a) = v.read_lock::<Array>() {
        deepest(&mut a.iter())
    } else if let Some(m) = v.read_lock::<Map>() {
        deepest(&mut m.values())
    } else if let Some(f) = v.read_lock::<FnPtr>() {
        deepest(&mut f.iter_curry())
    } else {
        1
    }
}
