//! A replay report for people (a terminal table, a self-contained HTML page
//! with a chart) and for tools (JSON).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::ReplayReport;

/// Every outcome seen before or after, routed clusters first.
fn outcomes(report: &ReplayReport) -> Vec<String> {
    let all: BTreeSet<&String> = report.before.keys().chain(report.after.keys()).collect();
    let (denied, routed): (Vec<&String>, Vec<&String>) =
        all.into_iter().partition(|o| o.starts_with("denied "));
    routed.into_iter().chain(denied).cloned().collect()
}

fn share(count: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 * 100.0 / total as f64
    }
}

fn before_name(report: &ReplayReport) -> String {
    match &report.baseline {
        Some(b) => format!("{} ({})", b.file, b.version),
        None => "the logged decisions".into(),
    }
}

/// The terminal table.
pub fn text(report: &ReplayReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replayed {} of {} logged requests with {} (version {}) against {}",
        report.replayed,
        report.records,
        report.policy.file,
        report.policy.version,
        before_name(report)
    );
    if report.without_record > 0 {
        let _ = writeln!(
            out,
            "{} log lines hold no decision record (not decided by celroute)",
            report.without_record
        );
    }
    let width = outcomes(report)
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(7);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:width$}  {:>9} {:>7}  {:>9} {:>7}  {:>8}",
        "outcome", "before", "share", "after", "share", "change"
    );
    for outcome in outcomes(report) {
        let b = report.before.get(&outcome).copied().unwrap_or(0);
        let a = report.after.get(&outcome).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{outcome:width$}  {b:>9} {:>6.1}%  {a:>9} {:>6.1}%  {:>+8}",
            share(b, report.replayed),
            share(a, report.replayed),
            a as i64 - b as i64
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "changed: {} of {} requests ({:.2}%); newly denied: {}; newly allowed: {}; same outcome by another rule: {}",
        report.changed,
        report.replayed,
        report.shift_percent(),
        report.newly_denied,
        report.newly_allowed,
        report.rule_changed
    );
    let moves: Vec<String> = (report.moves.iter())
        .flat_map(|(from, to)| {
            (to.iter())
                .filter(move |(t, _)| *t != from)
                .map(move |(t, n)| format!("  {from} -> {t}: {n}"))
        })
        .collect();
    if !moves.is_empty() {
        let _ = writeln!(out, "moves:");
        for line in moves {
            let _ = writeln!(out, "{line}");
        }
    }
    if report.requests_with_usage > 0 {
        let _ = writeln!(
            out,
            "cost of {} tokens in {} requests with usage: {:.4} before, {:.4} after ({:+.4})",
            report.tokens,
            report.requests_with_usage,
            report.cost_before,
            report.cost_after,
            report.cost_after - report.cost_before
        );
    } else {
        let _ = writeln!(out, "cost: no usage was logged, so no cost is estimated");
    }
    let _ = writeln!(
        out,
        "constraints: {} violations in {} replayed requests{}",
        report.constraint_violations,
        report.replayed,
        report
            .constraints
            .iter()
            .map(|(rule, c)| format!("; {rule}: applied {}, violated {}", c.applied, c.violated))
            .collect::<String>()
    );
    if report.unknown_total > 0 {
        let _ = writeln!(
            out,
            "unknown: {} requests could not be replayed:",
            report.unknown_total
        );
        for (reason, n) in &report.unknown {
            let _ = writeln!(out, "  {n}: {reason}");
        }
    }
    if !report.changes.is_empty() {
        let _ = writeln!(out, "changes by rule:");
        for c in &report.changes {
            let _ = writeln!(
                out,
                "  {} -> {} by rule {}: {}, first at {}",
                c.before, c.after, c.rule, c.requests, c.first
            );
        }
    }
    let _ = writeln!(
        out,
        "{:.2} s, {:.0} decisions/s",
        report.seconds, report.per_second
    );
    out
}

/// The report as JSON, with the shift percentage.
pub fn json(report: &ReplayReport) -> String {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("shift_percent".into(), report.shift_percent().into());
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: no scripts, fonts or images from anywhere
/// else; the chart is inline SVG.
pub fn html(report: &ReplayReport) -> String {
    let outcomes = outcomes(report);
    let label_width = 190.0;
    let bar_width = 420.0;
    let row = 46.0;
    let height = 40.0 + row * outcomes.len() as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" role="img" aria-label="traffic share per outcome, before and after">
<rect x="{label_width}" y="6" width="12" height="12" fill="#8a8f98"/><text x="{tx}" y="17" font-size="13">before</text>
<rect x="{ax}" y="6" width="12" height="12" fill="#2b6cb0"/><text x="{atx}" y="17" font-size="13">after</text>
"##,
        w = label_width + bar_width + 90.0,
        tx = label_width + 18.0,
        ax = label_width + 90.0,
        atx = label_width + 108.0,
    );
    for (i, outcome) in outcomes.iter().enumerate() {
        let y = 32.0 + row * i as f64;
        let b = share(
            report.before.get(outcome).copied().unwrap_or(0),
            report.replayed,
        );
        let a = share(
            report.after.get(outcome).copied().unwrap_or(0),
            report.replayed,
        );
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{ly}" font-size="14" text-anchor="end">{name}</text>
<rect x="{label_width}" y="{y}" width="{bw:.1}" height="17" fill="#8a8f98"/><text x="{btx:.1}" y="{bty}" font-size="12">{b:.1}%</text>
<rect x="{label_width}" y="{y2}" width="{aw:.1}" height="17" fill="#2b6cb0"/><text x="{atx:.1}" y="{aty}" font-size="12">{a:.1}%</text>
"##,
            lx = label_width - 8.0,
            ly = y + 22.0,
            name = escape(outcome),
            bw = bar_width * b / 100.0,
            btx = label_width + bar_width * b / 100.0 + 5.0,
            bty = y + 13.0,
            y2 = y + 19.0,
            aw = bar_width * a / 100.0,
            atx = label_width + bar_width * a / 100.0 + 5.0,
            aty = y + 32.0,
        );
    }
    svg.push_str("</svg>");

    let mut matrix = String::from("<table><tr><th>before \\ after</th>");
    for to in &outcomes {
        let _ = write!(matrix, "<th>{}</th>", escape(to));
    }
    matrix.push_str("</tr>");
    for from in &outcomes {
        let _ = write!(matrix, "<tr><th>{}</th>", escape(from));
        for to in &outcomes {
            let n = (report.moves.get(from))
                .and_then(|m| m.get(to))
                .copied()
                .unwrap_or(0);
            let class = if from == to {
                "same"
            } else if n > 0 {
                "moved"
            } else {
                ""
            };
            let _ = write!(matrix, "<td class=\"{class}\">{n}</td>");
        }
        matrix.push_str("</tr>");
    }
    matrix.push_str("</table>");

    let mut unknown = String::new();
    for (reason, n) in &report.unknown {
        let _ = write!(unknown, "<li>{n}: {}</li>", escape(reason));
    }
    let mut examples = String::new();
    for c in &report.changes {
        let _ = write!(
            examples,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.before),
            escape(&c.after),
            escape(&c.rule),
            c.requests,
            escape(&c.first)
        );
    }
    let cost = if report.requests_with_usage > 0 {
        format!(
            "{:.4} before, {:.4} after ({:+.4}), for {} tokens in {} requests",
            report.cost_before,
            report.cost_after,
            report.cost_after - report.cost_before,
            report.tokens,
            report.requests_with_usage
        )
    } else {
        "not estimated: no usage was logged".into()
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>celroute replay: {title}</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #1a202c; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 24px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #cbd5e0; padding: 4px 10px; text-align: right; }}
th {{ background: #edf2f7; }} td.same {{ color: #718096; }} td.moved {{ background: #fefcbf; font-weight: bold; }}
.summary td {{ text-align: left; }}
</style></head>
<body>
<h1>Replay of {records} logged requests with {title}</h1>
<table class="summary">
<tr><th>new policy</th><td>{file} (version {version})</td></tr>
<tr><th>before</th><td>{before}</td></tr>
<tr><th>replayed</th><td>{replayed}</td></tr>
<tr><th>changed</th><td>{changed} ({shift:.2}%)</td></tr>
<tr><th>newly denied</th><td>{denied}</td></tr>
<tr><th>newly allowed</th><td>{allowed}</td></tr>
<tr><th>cost</th><td>{cost}</td></tr>
<tr><th>constraint violations</th><td>{violations}</td></tr>
<tr><th>unknown</th><td>{unknown_total}</td></tr>
</table>
<h2>Traffic share per outcome</h2>
{svg}
<h2>Moves (rows: before, columns: after)</h2>
{matrix}
<h2>Requests that could not be replayed</h2>
<ul>{unknown}</ul>
<h2>Changes by rule</h2>
<table><tr><th>before</th><th>after</th><th>rule</th><th>requests</th><th>first at</th></tr>{examples}</table>
</body></html>
"#,
        title = escape(report.policy.name.as_deref().unwrap_or(&report.policy.file)),
        records = report.records,
        file = escape(&report.policy.file),
        version = escape(&report.policy.version),
        before = escape(&before_name(report)),
        replayed = report.replayed,
        changed = report.changed,
        shift = report.shift_percent(),
        denied = report.newly_denied,
        allowed = report.newly_allowed,
        violations = report.constraint_violations,
        unknown_total = report.unknown_total,
    )
}
