//! A hand-written SVG of a trace: exits by reason stacked by level, and a timeline with one
//! row per level and a tick per exit coloured by reason.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::file::Event;

const WIDTH: f64 = 960.0;
const MARGIN: f64 = 24.0;
/// Where plots start; names are right-aligned before it.
const PLOT_X: f64 = 220.0;
const FONT: &str = "font-family=\"system-ui, -apple-system, 'Segoe UI', sans-serif\"";
const LEVELS: [(&str, &str); 2] = [("L1", "#4e79a7"), ("L2", "#f28e2b")];
/// Reason colours, none of them a level colour.
const PALETTE: [&str; 14] = [
    "#59a14f", "#e15759", "#edc948", "#b07aa1", "#76b7b2", "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#8c564b",
    "#d62728", "#9467bd", "#bab0ac", "#7f7f7f",
];

struct ReasonRow<'a> {
    name: &'a str,
    /// Exits at L1 and at L2.
    counts: [u64; 2],
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn level_index(e: &Event) -> usize {
    usize::from(e.str("level") == Some("L2"))
}

fn reason(e: &Event) -> &str {
    e.str("reason").unwrap_or("?")
}

fn colour(rank: usize) -> &'static str {
    PALETTE[rank % PALETTE.len()]
}

/// Rough width of text at 12px, for laying out the legend.
fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * 6.8
}

fn axis_label(v: f64, span: f64) -> String {
    match span {
        s if s < 10.0 => format!("{v:.2}"),
        s if s < 100.0 => format!("{v:.1}"),
        _ => format!("{v:.0}"),
    }
}

/// Renders the picture; `title` names the trace.
pub fn render(events: &[Event], title: &str) -> String {
    let mut rows: Vec<ReasonRow> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for e in events {
        let i = *index.entry(reason(e)).or_insert_with(|| {
            rows.push(ReasonRow { name: reason(e), counts: [0, 0] });
            rows.len() - 1
        });
        rows[i].counts[level_index(e)] += 1;
    }
    rows.sort_by(|a, b| b.counts.iter().sum::<u64>().cmp(&a.counts.iter().sum()).then(a.name.cmp(b.name)));
    let rank: HashMap<&str, usize> = rows.iter().enumerate().map(|(i, r)| (r.name, i)).collect();
    let per_level = [0, 1].map(|l| rows.iter().map(|r| r.counts[l]).sum::<u64>());

    let mut body = String::new();
    let mut y = MARGIN + 16.0;
    let _ = writeln!(
        body,
        r#"<text x="{MARGIN}" y="{y}" font-size="17" font-weight="600">nestbed trace: {}</text>"#,
        esc(title)
    );
    y += 20.0;
    let timed = !events.is_empty() && events.iter().all(|e| e.t.is_some());
    let mut subtitle = format!("{} exits: {} at L1, {} at L2", events.len(), per_level[0], per_level[1]);
    if timed {
        let ts = || events.iter().filter_map(|e| e.t);
        let span = ts().max().unwrap_or(0) - ts().min().unwrap_or(0);
        let _ = write!(subtitle, "; {:.3} ms from the first exit to the last", span as f64 / 1e6);
    }
    let _ = writeln!(body, r##"<text x="{MARGIN}" y="{y}" font-size="12" fill="#555">{}</text>"##, esc(&subtitle));

    // Exits by reason, stacked by level.
    y += 38.0;
    let _ = writeln!(body, r#"<text x="{MARGIN}" y="{y}" font-size="14" font-weight="600">Exits by reason</text>"#);
    let mut lx = PLOT_X;
    for (name, c) in LEVELS {
        let _ = writeln!(
            body,
            r##"<rect x="{lx}" y="{}" width="12" height="12" rx="2" fill="{c}"/><text x="{}" y="{y}" font-size="12" fill="#333">{name} exits</text>"##,
            y - 10.0,
            lx + 17.0
        );
        lx += 80.0;
    }
    y += 14.0;
    let max = rows.iter().map(|r| r.counts.iter().sum::<u64>()).max().unwrap_or(1).max(1) as f64;
    let bar_max = WIDTH - MARGIN - PLOT_X - 150.0;
    for r in &rows {
        let total: u64 = r.counts.iter().sum();
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="end" fill="#222">{}</text>"##,
            PLOT_X - 8.0,
            y + 11.0,
            esc(r.name)
        );
        let mut x = PLOT_X;
        for (l, (level, c)) in LEVELS.iter().enumerate() {
            if r.counts[l] == 0 {
                continue;
            }
            let w = (r.counts[l] as f64 / max * bar_max).max(2.0);
            let _ = writeln!(
                body,
                r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="15" fill="{c}"><title>{} at {level}: {}</title></rect>"#,
                esc(r.name),
                r.counts[l]
            );
            x += w;
        }
        let label = if r.counts[0] > 0 && r.counts[1] > 0 {
            format!("{total}  (L1 {}, L2 {})", r.counts[0], r.counts[1])
        } else {
            total.to_string()
        };
        let _ =
            writeln!(body, r##"<text x="{:.1}" y="{}" font-size="11" fill="#444">{label}</text>"##, x + 6.0, y + 11.5);
        y += 21.0;
    }
    if rows.is_empty() {
        let _ = writeln!(body, r##"<text x="{PLOT_X}" y="{}" font-size="12" fill="#777">no exits</text>"##, y + 11.0);
        return document(&body, y + 21.0 + MARGIN);
    }

    // Timeline: x is time (or the exit number when a trace has no timing), one row per level.
    y += 30.0;
    let _ = writeln!(body, r#"<text x="{MARGIN}" y="{y}" font-size="14" font-weight="600">Timeline</text>"#);
    y += 14.0;
    let plot_w = (WIDTH - MARGIN - PLOT_X).floor();
    let x_of = |i: usize, e: &Event| if timed { e.t.unwrap_or(0) as f64 } else { (i + 1) as f64 };
    let (lo, hi) = events
        .iter()
        .enumerate()
        .map(|(i, e)| x_of(i, e))
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let range = (hi - lo).max(1.0);
    let columns = plot_w as usize;
    let present: Vec<usize> = [0, 1].into_iter().filter(|&l| per_level[l] > 0).collect();
    let row_h = 28.0;
    let mut buckets: Vec<Vec<BTreeSet<usize>>> = vec![vec![BTreeSet::new(); columns]; 2];
    for (i, e) in events.iter().enumerate() {
        let col = (((x_of(i, e) - lo) / range) * (columns - 1) as f64).round() as usize;
        buckets[level_index(e)][col.min(columns - 1)].insert(rank[reason(e)]);
    }
    for &l in &present {
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="end" fill="#222">{}</text><rect x="{PLOT_X}" y="{y}" width="{plot_w}" height="{row_h}" fill="#f3f4f6"/>"##,
            PLOT_X - 8.0,
            y + row_h / 2.0 + 4.0,
            LEVELS[l].0
        );
        for (col, set) in buckets[l].iter().enumerate() {
            let seg = row_h / set.len().max(1) as f64;
            for (j, &r) in set.iter().enumerate() {
                let _ = writeln!(
                    body,
                    r#"<rect x="{}" y="{:.2}" width="1.2" height="{seg:.2}" fill="{}"/>"#,
                    PLOT_X + col as f64,
                    y + j as f64 * seg,
                    colour(r)
                );
            }
        }
        y += row_h + 6.0;
    }
    let _ = writeln!(
        body,
        r##"<line x1="{PLOT_X}" y1="{y}" x2="{}" y2="{y}" stroke="#888" stroke-width="1"/>"##,
        PLOT_X + plot_w
    );
    let (scale, unit) = if timed { (1e6, "time since the start of the run (ms)") } else { (1.0, "exit number") };
    let (lo_u, range_u) = (lo / scale, range / scale);
    for k in 0..=5 {
        let x = PLOT_X + plot_w * k as f64 / 5.0;
        let v = lo_u + range_u * k as f64 / 5.0;
        let anchor = match k {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            body,
            r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{}" stroke="#888"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="{anchor}" fill="#444">{}</text>"##,
            y + 4.0,
            y + 16.0,
            if timed { axis_label(v, range_u) } else { format!("{v:.0}") }
        );
    }
    y += 32.0;
    let _ = writeln!(
        body,
        r##"<text x="{}" y="{y}" font-size="11" text-anchor="middle" fill="#555">{unit}</text>"##,
        PLOT_X + plot_w / 2.0
    );

    // Legend of the reason colours.
    y += 24.0;
    let _ = writeln!(body, r##"<text x="{MARGIN}" y="{y}" font-size="12" fill="#333">exit reasons:</text>"##);
    let mut x = PLOT_X;
    for (i, r) in rows.iter().enumerate() {
        let w = 18.0 + text_width(r.name) + 18.0;
        if x + w > WIDTH - MARGIN && x > PLOT_X {
            x = PLOT_X;
            y += 20.0;
        }
        let _ = writeln!(
            body,
            r##"<rect x="{x:.1}" y="{}" width="12" height="12" rx="2" fill="{}"/><text x="{:.1}" y="{y}" font-size="12" fill="#333">{}</text>"##,
            y - 10.0,
            colour(i),
            x + 17.0,
            esc(r.name)
        );
        x += w;
    }
    document(&body, y + MARGIN)
}

fn document(body: &str, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" {FONT}>\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n{body}</svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::file::parse;

    #[test]
    fn names_reasons_and_levels() {
        let text = "{\"level\":\"L1\",\"reason\":\"IO_INSTRUCTION\",\"t\":10}\n\
                    {\"level\":\"L2\",\"reason\":\"HLT\",\"t\":2000000}\n\
                    {\"level\":\"L1\",\"reason\":\"A<B\",\"t\":3000000}\n";
        let svg = render(&parse(text).unwrap(), "x.jsonl");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for s in ["IO_INSTRUCTION", "HLT", "A&lt;B", ">L1<", ">L2<", "(ms)"] {
            assert!(svg.contains(s), "{s}");
        }
        assert!(render(&[], "empty").contains("no exits"));
    }
}
