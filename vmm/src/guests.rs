//! The guests embedded in the binary (built from `guests/` by build.rs).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The guest `nestbed run` boots without `--guest`.
pub const DEFAULT: &str = "nested-demo";

pub fn find(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|(n, _, _)| *n == name).map(|(_, _, img)| *img)
}

/// Why `name` is no embedded guest, with the nearest name when there is one.
pub fn unknown(name: &str) -> String {
    match crate::suggest::nearest(name, GUESTS.iter().map(|(n, _, _)| *n)) {
        Some(near) => format!("no embedded guest named {name}; nearest: {near}"),
        None => format!("no embedded guest named {name} (`nestbed guests` lists them)"),
    }
}
