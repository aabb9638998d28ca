//! Where two traces part: the first exit that differs, ignoring timing.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::file::Event;

/// What a comparison looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Compare only the level, reason and handler of each exit (guests with timers).
    pub coarse: bool,
    /// Leave out the console I/O exits nestbed handled (see [`Event::is_console_io`]).
    pub skip_console: bool,
}

const COARSE_FIELDS: [&str; 3] = ["level", "reason", "handler"];

/// The first exit at which two traces differ.
#[derive(Debug)]
pub struct Difference {
    /// Position among the compared exits, from 1.
    pub index: usize,
    /// The exits just before it, the same in both.
    pub context: Vec<Event>,
    pub a: Option<Event>,
    pub b: Option<Event>,
    pub fields: Vec<FieldDiff>,
}

/// A differing field: name, value in A, value in B (`None`: absent).
pub type FieldDiff = (String, Option<Value>, Option<Value>);

/// The events a comparison with these options looks at.
pub fn selected(events: &[Event], opts: DiffOptions) -> Vec<&Event> {
    events.iter().filter(|e| !(opts.skip_console && e.is_console_io())).collect()
}

/// Differences between two JSON objects, by key in A's order then B's; nested objects are
/// compared key by key (`detail.port`).
fn object_diffs(prefix: &str, a: &Map<String, Value>, b: &Map<String, Value>, out: &mut Vec<FieldDiff>) {
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => object_diffs(&format!("{name}."), x, y, out),
            (x, y) if x != y => out.push((name, x.cloned(), y.cloned())),
            _ => {}
        }
    }
}

fn field_diffs(a: &Event, b: &Event, opts: DiffOptions) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    object_diffs("", &a.fields, &b.fields, &mut out);
    if opts.coarse {
        out.retain(|(k, _, _)| COARSE_FIELDS.contains(&k.as_str()));
    }
    out
}

/// The first difference between two traces, or `None` when they match.
pub fn first_difference(a: &[Event], b: &[Event], opts: DiffOptions) -> Option<Difference> {
    let (a, b) = (selected(a, opts), selected(b, opts));
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (ea, eb) = (a.get(i).copied(), b.get(i).copied());
        let fields = match (ea, eb) {
            (Some(x), Some(y)) => field_diffs(x, y, opts),
            _ => Vec::new(),
        };
        if ea.is_some() && eb.is_some() && fields.is_empty() {
            return None;
        }
        Some(Difference {
            index: i + 1,
            context: a[i.saturating_sub(2)..i].iter().map(|e| (*e).clone()).collect(),
            a: ea.cloned(),
            b: eb.cloned(),
            fields,
        })
    })
}

fn show(v: &Option<Value>) -> String {
    v.as_ref().map_or_else(|| "(absent)".to_string(), Value::to_string)
}

impl Difference {
    /// A few lines: the exits before, the differing exit from each side, then each field.
    pub fn render(&self, label_a: &str, label_b: &str, total_a: usize, total_b: usize) -> String {
        let mut s = format!("first difference at exit {} of the compared exits:\n", self.index);
        for e in &self.context {
            let _ = writeln!(s, "    {}", e.summary());
        }
        let side = |e: &Option<Event>, total: usize| match e {
            Some(e) => e.summary(),
            None => format!("<end of trace after {total} exits>"),
        };
        let _ = writeln!(s, "  - {}   [{label_a}]", side(&self.a, total_a));
        let _ = writeln!(s, "  + {}   [{label_b}]", side(&self.b, total_b));
        let width = self.fields.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        for (k, va, vb) in &self.fields {
            let _ = writeln!(s, "    {k:<width$}  {label_a}: {}  {label_b}: {}", show(va), show(vb));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::file::parse;

    fn trace(rips: &[&str]) -> Vec<Event> {
        let text: String = rips
            .iter()
            .enumerate()
            .map(|(i, rip)| {
                format!("{{\"seq\":{},\"level\":\"L1\",\"reason\":\"HLT\",\"rip\":\"{rip}\",\"handler\":\"L0\",\"t\":{i}}}\n", i + 1)
            })
            .collect();
        parse(&text).unwrap()
    }

    #[test]
    fn timing_is_ignored() {
        let (a, mut b) = (trace(&["0x1", "0x2"]), trace(&["0x1", "0x2"]));
        b[1].t = Some(999);
        assert!(first_difference(&a, &b, DiffOptions::default()).is_none());
    }

    #[test]
    fn names_the_exit_and_field() {
        let d =
            first_difference(&trace(&["0x1", "0x2", "0x3"]), &trace(&["0x1", "0x2", "0x4"]), DiffOptions::default())
                .unwrap();
        assert_eq!(d.index, 3);
        assert_eq!(d.context.len(), 2);
        let r = d.render("expected", "got", 3, 3);
        assert!(r.contains("rip  expected: \"0x3\"  got: \"0x4\""), "{r}");
        let coarse = DiffOptions { coarse: true, ..Default::default() };
        assert!(first_difference(&trace(&["0x1"]), &trace(&["0x2"]), coarse).is_none());
    }

    #[test]
    fn nested_fields_are_named_with_a_dot() {
        let a = parse("{\"seq\":1,\"detail\":{\"kind\":\"io\",\"port\":1}}").unwrap();
        let b = parse("{\"seq\":1,\"detail\":{\"kind\":\"io\",\"port\":2,\"x\":0}}").unwrap();
        let d = first_difference(&a, &b, DiffOptions::default()).unwrap();
        let names: Vec<&str> = d.fields.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["detail.port", "detail.x"]);
    }

    #[test]
    fn a_shorter_trace_differs_where_it_ends() {
        let d = first_difference(&trace(&["0x1", "0x2"]), &trace(&["0x1"]), DiffOptions::default()).unwrap();
        assert_eq!(d.index, 2);
        assert!(d.render("A", "B", 2, 1).contains("<end of trace after 1 exits>"));
    }
}
