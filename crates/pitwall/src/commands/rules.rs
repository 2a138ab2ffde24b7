//! `pitwall rules check FILE`: a config file's windows and rules, validated and listed.

use std::path::Path;
use std::process::ExitCode;

/// Validates `file` and prints what it configures.
pub(crate) fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let c = pitwall_runtime::config::check_file(file)?;
    println!(
        "{}: ok ({} windows, {} rules)",
        file.display(),
        c.processor.windows.len(),
        c.processor.rules.len()
    );
    let all = |v: &[String], what: &str| {
        if v.is_empty() {
            format!("every {what}")
        } else {
            v.join(", ")
        }
    };
    for w in &c.processor.windows {
        let shape = match w.slide {
            Some(slide) if slide != w.size => {
                format!(
                    "sliding {} every {}",
                    humantime::format_duration(w.size),
                    humantime::format_duration(slide)
                )
            }
            _ => format!("tumbling {}", humantime::format_duration(w.size)),
        };
        println!(
            "  window {:<14} {shape} over {} of {}{}",
            w.name,
            all(&w.fields, "numeric field"),
            all(&w.measurements, "measurement"),
            if w.percentiles {
                ", with p50/p95/p99"
            } else {
                ""
            }
        );
    }
    for r in &c.processor.rules {
        let on = r.field().map(|f| format!("{f} of ")).unwrap_or_default();
        println!(
            "  rule   {:<16} {} on {on}{} ({})",
            r.name(),
            r.kind(),
            r.measurement(),
            r.severity().as_str()
        );
    }
    let p = &c.processor;
    for u in &p.units {
        let to = u.rename.as_deref().unwrap_or(&u.field);
        println!("  unit   {} {:?} -> {to} {:?}", u.field, u.from, u.to);
    }
    for d in &p.dimensions {
        println!(
            "  join   {:<16} {} on tag {}",
            d.name,
            d.file.display(),
            d.key
        );
    }
    for l in &p.laps {
        let what = if l.distance == pitwall_stream::DistanceKind::Total {
            "lap and sector"
        } else {
            "sector"
        };
        println!(
            "  derive {what} of {} from {} on the track named by tag {}",
            l.measurement, l.distance_field, l.track_tag
        );
    }
    for (name, t) in &p.tracks {
        println!(
            "  track  {name}: {} m, {} sectors",
            t.length_m,
            t.sectors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
