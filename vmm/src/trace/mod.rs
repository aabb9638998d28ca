//! Exit events as JSON lines, and the per-reason statistics.

pub mod clock;
pub mod stats;
pub mod writer;

pub use clock::Clock;
pub use stats::Stats;
pub use writer::TraceWriter;
