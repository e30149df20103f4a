//! Writing one benchmark's section of BENCHMARKS.md.
//!
//! Each benchmark program owns one `## ` section. Rerunning it replaces that
//! section (up to the next `## ` heading) or appends it, leaves every other
//! section alone, and keeps a hand-written `### Analysis` subsection of the
//! old section at the end of the new one.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

const ANALYSIS: &str = "### Analysis";

/// Writes `section` (starting with the line `heading`) into `path`.
pub fn write_section(path: &Path, heading: &str, section: &str) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    fs::write(path, replace_section(&old, heading, section))
        .with_context(|| format!("writing {}", path.display()))
}

/// `old` with the section under `heading` replaced by (or appended as) `section`.
pub fn replace_section(old: &str, heading: &str, section: &str) -> String {
    let lines: Vec<&str> = old.split_inclusive('\n').collect();
    let mut out = String::new();
    match lines.iter().position(|l| l.trim_end() == heading) {
        None => {
            out.push_str(old);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
            out.push_str(section.trim_end());
            out.push('\n');
        }
        Some(s) => {
            let end = lines[s + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map(|e| s + 1 + e)
                .unwrap_or(lines.len());
            let old_section: String = lines[s..end].concat();
            let analysis = old_section
                .find(&format!("\n{ANALYSIS}"))
                .map(|i| old_section[i + 1..].trim_end().to_string());
            out.extend(lines[..s].iter().copied());
            out.push_str(section.trim_end());
            out.push('\n');
            if let Some(a) = analysis {
                out.push('\n');
                out.push_str(&a);
                out.push('\n');
            }
            if end < lines.len() {
                out.push('\n');
                out.extend(lines[end..].iter().copied());
            }
        }
    }
    out
}
