//! `--report FILE.html`: one self-contained page (no script, no network,
//! charts as inline SVG) that a person would rather look at than read:
//! the pack's figures, recall per attack family, each rule's score,
//! decisions per rule over time, the sweep curve and the diff.
//!
//! Everything that came from a file (rule ids, subjects, event ids,
//! families) is escaped: a labels file or a rule id is input too.

use std::fmt::Write;

use super::diff::{Kind, RuleDiff};
use super::score::{RuleScore, Score, BINS};
use super::sweep::Sweep;
use super::Report;

/// Bars and the recall line.
pub const BLUE: &str = "#2563eb";
/// The precision line.
pub const GREEN: &str = "#16a34a";
/// Friction on legit subjects.
pub const RED: &str = "#dc2626";

/// Changes listed per rule in the diff (the JSON has all).
const CHANGES_SHOWN: usize = 25;

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0))
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let s = &report.score;
    let mut h = String::new();
    h.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>kamiguard backtest</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;margin:24px 32px;color:#111;max-width:1180px}",
        "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}",
        "table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 9px;border-bottom:1px solid #eee;text-align:right}",
        "td:first-child,th:first-child{text-align:left}th{background:#f5f5f5}",
        ".tiles{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}.tile{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}",
        ".tile b{display:block;font-size:22px}.bad{color:#dc2626}.good{color:#16a34a}.muted{color:#666}",
        "code{font-size:12px}ul{margin:4px 0}</style></head><body>\n"
    ));
    let _ = writeln!(
        h,
        "<h1>kamiguard backtest</h1><div class=\"muted\">events <code>{}</code> · labels <code>{}</code> · rules <code>{}</code>{}</div>",
        esc(&report.events_file),
        esc(&report.labels_file),
        esc(&report.rules),
        report
            .baseline
            .as_ref()
            .map(|b| format!(" · baseline <code>{}</code>", esc(&b.rules)))
            .unwrap_or_default()
    );
    tiles(&mut h, s, report.rejected_lines);
    families(&mut h, s);
    if !s.pack.missed.is_empty() {
        let _ = writeln!(
            h,
            "<p id=\"missed\">Fraud no enforced decision touched (the first, by first attempt): {}</p>",
            esc(&s.pack.missed.join(", "))
        );
    }
    h.push_str("<h2>Each rule</h2>\n");
    rule_table(&mut h, s);
    h.push_str("<h2>Decisions per rule over time</h2>\n");
    over_time(&mut h, s);
    if let Some(sweep) = &report.sweep {
        let _ = writeln!(
            h,
            "<h2>Sweep: <code>{}.{}</code></h2>",
            esc(&sweep.rule),
            esc(&sweep.field)
        );
        sweep_chart(&mut h, sweep);
        sweep_table(&mut h, sweep);
    }
    if let Some(b) = &report.baseline {
        let _ = writeln!(h, "<h2>Against the baseline <code>{}</code></h2>", esc(&b.rules));
        let _ = writeln!(
            h,
            "<p>Pack recall {} → {}, precision {} → {}; legit subjects frozen or blocked {} → {}, challenged or reviewed {} → {}.</p>",
            pct(b.score.pack.recall),
            pct(s.pack.recall),
            pct(b.score.pack.precision),
            pct(s.pack.precision),
            b.score.pack.hard_friction(),
            s.pack.hard_friction(),
            b.score.pack.soft_friction(),
            s.pack.soft_friction()
        );
        diff_section(&mut h, &b.diff);
    }
    h.push_str("</body></html>\n");
    h
}

fn tiles(h: &mut String, s: &Score, rejected: u64) {
    let p = &s.pack;
    let tile = |h: &mut String, label: &str, value: String, class: &str| {
        let _ = write!(h, "<div class=\"tile\"><b class=\"{class}\">{value}</b>{label}</div>");
    };
    h.push_str("<div class=\"tiles\" id=\"tiles\">");
    tile(h, "attempts", s.events.to_string(), "");
    tile(
        h,
        "labeled fraud / legit",
        format!("{} / {}", s.fraud_labeled, s.legit_labeled),
        "",
    );
    tile(h, "pack recall", pct(p.recall), "good");
    tile(h, "pack precision", pct(p.precision), "");
    let hard = p.hard_friction();
    tile(
        h,
        "legit frozen or blocked",
        hard.to_string(),
        if hard > 0 { "bad" } else { "good" },
    );
    tile(h, "legit challenged or reviewed", p.soft_friction().to_string(), "");
    tile(h, "enforced decisions", p.decisions.to_string(), "");
    h.push_str("</div>\n");
    let _ = writeln!(
        h,
        "<p class=\"muted\">{} enforced decisions on unlabeled subjects (reported, not scored); {} labeled subjects made no attempt in this history; {} lines of the events file refused.</p>",
        p.unlabeled, s.labeled_absent, rejected
    );
}

fn families(h: &mut String, s: &Score) {
    h.push_str("<h2>By family</h2>\n<table id=\"families\"><tr><th>family</th><th>label</th><th>subjects</th><th>touched by an enforced decision</th><th>recall</th><th>strongest action on them</th></tr>\n");
    for f in &s.families {
        let actions: Vec<String> = f.by_action.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.family),
            match f.verdict {
                super::labels::Verdict::Fraud => "fraud",
                super::labels::Verdict::Legit => "legit",
            },
            f.subjects,
            f.touched,
            pct(f.recall),
            esc(&actions.join(", "))
        );
    }
    h.push_str("</table>\n");
}

fn rule_row(h: &mut String, r: &RuleScore) {
    let soft: Vec<String> = ["challenge", "review"]
        .iter()
        .filter_map(|a| r.legit_subjects.get(*a).map(|n| format!("{a} {n}")))
        .collect();
    let _ = writeln!(
        h,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&r.rule),
        esc(&r.mode),
        r.decisions,
        r.on_fraud,
        r.on_legit,
        r.unlabeled,
        format_args!("{} / {}", r.caught, r.fraud_subjects),
        pct(r.recall),
        if r.hard_friction() > 0 { " class=\"bad\"" } else { "" },
        r.hard_friction(),
        esc(&soft.join(", ")),
        pct(r.precision),
        if r.attempts_to_catch.n > 0 {
            format!(
                "{:.0} attempts, {:.0} s (p90 {:.0}, {:.0} s)",
                r.attempts_to_catch.median, r.secs_to_catch.median, r.attempts_to_catch.p90, r.secs_to_catch.p90
            )
        } else {
            "–".into()
        }
    );
}

fn rule_table(h: &mut String, s: &Score) {
    h.push_str("<table id=\"rules\"><tr><th>rule</th><th>mode</th><th>decisions</th><th>on fraud</th><th>on legit</th><th>unlabeled</th><th>caught</th><th>recall</th><th>legit frozen/blocked</th><th>legit challenged/reviewed</th><th>precision</th><th>to the first decision (median)</th></tr>\n");
    rule_row(h, &s.pack);
    for r in &s.rules {
        rule_row(h, r);
    }
    h.push_str("</table>\n");
}

fn over_time(h: &mut String, s: &Score) {
    let rows: Vec<&RuleScore> = s.rules.iter().filter(|r| r.decisions > 0).collect();
    if rows.is_empty() {
        h.push_str("<p>No decisions.</p>\n");
        return;
    }
    let (label_w, bar_w, row_h) = (230.0, 12.0, 34.0);
    let width = label_w + bar_w * BINS as f64 + 70.0;
    let height = row_h * rows.len() as f64 + 24.0;
    let _ = writeln!(
        h,
        "<svg id=\"chart-over-time\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">"
    );
    for (i, r) in rows.iter().enumerate() {
        let top = i as f64 * row_h;
        let most = r.over_time.iter().copied().max().unwrap_or(1).max(1) as f64;
        let _ = writeln!(
            h,
            "<text x=\"0\" y=\"{}\">{}</text><line x1=\"{label_w}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#ccc\"/>",
            top + row_h * 0.6,
            esc(&r.rule),
            label_w + bar_w * BINS as f64,
            top + row_h - 4.0,
            top + row_h - 4.0
        );
        for (b, n) in r.over_time.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let bar_h = ((*n as f64 / most) * (row_h - 8.0)).max(1.5);
            let _ = writeln!(
                h,
                "<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bar_h}\" fill=\"{BLUE}\"><title>{n}</title></rect>",
                label_w + b as f64 * bar_w + 1.0,
                top + row_h - 4.0 - bar_h,
                bar_w - 2.0
            );
        }
        let _ = writeln!(
            h,
            "<text x=\"{}\" y=\"{}\" fill=\"#666\">{} max</text>",
            label_w + bar_w * BINS as f64 + 6.0,
            top + row_h * 0.6,
            most
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{label_w}\" y=\"{}\" fill=\"#666\">{}</text><text x=\"{}\" y=\"{}\" fill=\"#666\" text-anchor=\"end\">{}</text></svg>",
        height - 4.0,
        time(s.bins.0),
        label_w + bar_w * BINS as f64,
        height - 4.0,
        time(s.bins.0 + s.bins.1 * BINS as i64)
    );
}

fn sweep_chart(h: &mut String, sweep: &Sweep) {
    let points = &sweep.points;
    if points.is_empty() {
        return;
    }
    let (w, ht, left, bottom, top, right) = (760.0, 300.0, 56.0, 40.0, 14.0, 70.0);
    let (lo, hi) = (points[0].value as f64, points[points.len() - 1].value as f64);
    let x = |v: u64| left + if hi > lo { (v as f64 - lo) / (hi - lo) } else { 0.5 } * (w - left - right);
    let y = |f: f64| top + (1.0 - f) * (ht - top - bottom);
    let most_friction = points
        .iter()
        .map(|p| p.rule.hard_friction() + p.rule.soft_friction())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = writeln!(
        h,
        "<svg id=\"chart-sweep\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\">"
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            h,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}%</text>",
            w - right,
            left - 6.0,
            y(tick) + 4.0,
            tick * 100.0,
            y0 = y(tick)
        );
    }
    // Friction as bars against its own scale (right axis).
    let bar = ((w - left - right) / points.len() as f64 * 0.4).clamp(3.0, 24.0);
    for p in points {
        let f = (p.rule.hard_friction() + p.rule.soft_friction()) as f64;
        if f > 0.0 {
            let bh = f / most_friction * (ht - top - bottom);
            let _ = writeln!(
                h,
                "<rect class=\"friction\" x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{bh}\" fill=\"{RED}\" fill-opacity=\"0.35\"><title>{f} legit subjects touched</title></rect>",
                x(p.value) - bar / 2.0,
                ht - bottom - bh
            );
        }
    }
    for (name, colour, get) in [
        (
            "recall",
            BLUE,
            (|p: &super::sweep::Point| p.rule.recall) as fn(&super::sweep::Point) -> Option<f64>,
        ),
        ("precision", GREEN, |p: &super::sweep::Point| p.rule.precision),
    ] {
        let path: Vec<String> = points
            .iter()
            .filter_map(|p| get(p).map(|f| format!("{:.1},{:.1}", x(p.value), y(f))))
            .collect();
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(
            h,
            "<polyline class=\"line-{name}\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"3\"/>",
            path.join(" ")
        );
        for p in points {
            if let Some(f) = get(p) {
                let _ = writeln!(
                    h,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"><title>{name} {:.1}% at {}</title></circle>",
                    x(p.value),
                    y(f),
                    f * 100.0,
                    p.value
                );
            }
        }
    }
    for p in points {
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(p.value),
            ht - bottom + 16.0,
            p.value
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"{RED}\">{most_friction} legit</text>",
        w - 4.0,
        top + 10.0
    );
    let _ = writeln!(
        h,
        "<text x=\"{left}\" y=\"{}\"><tspan fill=\"{BLUE}\">■ recall</tspan>  <tspan fill=\"{GREEN}\">■ precision</tspan>  <tspan fill=\"{RED}\">■ legit subjects touched</tspan>  ({})</text></svg>",
        ht - 6.0,
        esc(&sweep.field)
    );
}

fn sweep_table(h: &mut String, sweep: &Sweep) {
    h.push_str("<table id=\"sweep\"><tr><th>value</th><th>decisions</th><th>caught</th><th>recall</th><th>precision</th><th>legit frozen/blocked</th><th>legit challenged/reviewed</th><th>pack recall</th></tr>\n");
    for p in &sweep.points {
        let r = &p.rule;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.value,
            r.decisions,
            r.caught,
            r.fraud_subjects,
            pct(r.recall),
            pct(r.precision),
            r.hard_friction(),
            r.soft_friction(),
            pct(p.pack.recall)
        );
    }
    h.push_str("</table>\n");
}

fn diff_section(h: &mut String, diff: &[RuleDiff]) {
    if diff.is_empty() {
        h.push_str("<p id=\"diff\">No rule would act differently on anyone.</p>\n");
        return;
    }
    h.push_str("<div id=\"diff\">\n");
    for d in diff {
        let _ = write!(h, "<h3><code>{}</code></h3><ul>", esc(&d.rule));
        for v in &d.verdicts {
            let _ = write!(h, "<li>{}</li>", esc(v));
        }
        h.push_str("</ul>\n<table><tr><th>change</th><th>subject</th><th>from</th><th>to</th><th>label</th><th>sample attempts</th></tr>\n");
        for c in d.changes.iter().take(CHANGES_SHOWN) {
            let action = |a: Option<crate::rules::Action>| a.map_or("–", |a| a.as_str());
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                match c.kind {
                    Kind::Appears => "appears",
                    Kind::Disappears => "disappears",
                    Kind::Changes => "changes",
                },
                c.scope.as_str(),
                esc(&c.subject),
                action(c.from),
                action(c.to),
                match c.class {
                    super::score::Class::Fraud => "fraud",
                    super::score::Class::Legit => "legit",
                    super::score::Class::Unlabeled => "unlabeled",
                },
                esc(&c.sample_event_ids.join(" "))
            );
        }
        if d.changes.len() > CHANGES_SHOWN {
            let _ = writeln!(
                h,
                "<tr><td colspan=\"6\" class=\"muted\">… and {} more (all in --json)</td></tr>",
                d.changes.len() - CHANGES_SHOWN
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</div>\n");
}
