//! Exit events as JSON lines, the per-reason statistics, and reading traces back (diff,
//! report, SVG).

pub mod clock;
pub mod diff;
pub mod file;
pub mod histogram;
pub mod phases;
pub mod report;
pub mod stats;
pub mod svg;
pub mod writer;

pub use clock::Clock;
pub use phases::{Phase, Phases};
pub use stats::Stats;
pub use writer::TraceWriter;
