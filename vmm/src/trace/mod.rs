//! Exit events as JSON lines, and the per-reason statistics.

pub mod stats;
pub mod writer;

pub use stats::Stats;
pub use writer::TraceWriter;
