//! Helpers shared by the MariaDB benchmarks: running commands, and reading a server's
//! binlog state (`SHOW BINARY LOGS`, `SHOW MASTER STATUS`) and table checksums.
//! Background processes and their CPU and memory come from
//! [`pitr_integration::procstat`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
pub use pitr_integration::procstat::{cpu_seconds, log_tail, Bg};
use pitr_integration::MySqlServer;

/// Runs a command; its stdout, or an error with its output.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !o.status.success() {
        bail!(
            "{:?} {:?} failed: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `SHOW BINARY LOGS`: (file name, size in bytes) in log order.
pub fn binary_logs(s: &MySqlServer) -> Result<Vec<(String, u64)>> {
    s.sql("SHOW BINARY LOGS")?
        .lines()
        .map(|l| {
            let mut cols = l.split('\t');
            let name = cols.next().context("SHOW BINARY LOGS: no name")?;
            let size = cols
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("SHOW BINARY LOGS: bad line {l:?}"))?;
            Ok((name.to_string(), size))
        })
        .collect()
}

/// Total binlog bytes the server has written.
pub fn binlog_total(s: &MySqlServer) -> Result<u64> {
    Ok(binary_logs(s)?.iter().map(|(_, n)| n).sum())
}

/// `SHOW MASTER STATUS`: (file, position).
pub fn master_status(s: &MySqlServer) -> Result<(String, u64)> {
    let st = s.sql("SHOW MASTER STATUS")?;
    let mut cols = st.split('\t');
    let file = cols
        .next()
        .context("SHOW MASTER STATUS: empty")?
        .to_string();
    let pos = cols
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("SHOW MASTER STATUS: {st:?}"))?;
    Ok((file, pos))
}

/// Binlog bytes from (file, pos) to the end of the log.
pub fn bytes_since(logs: &[(String, u64)], file: &str, pos: u64) -> u64 {
    logs.iter()
        .skip_while(|(n, _)| n != file)
        .map(|(n, size)| {
            if n == file {
                size.saturating_sub(pos)
            } else {
                *size
            }
        })
        .sum()
}

/// `CHECKSUM TABLE` of every base table in `db`, as "table=checksum" lines.
pub fn checksums(s: &MySqlServer, db: &str) -> Result<String> {
    let tables = s.sql(&format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' \
         AND TABLE_TYPE='BASE TABLE' ORDER BY TABLE_NAME"
    ))?;
    let mut out = Vec::new();
    for t in tables.lines() {
        let row = s.sql(&format!("CHECKSUM TABLE `{db}`.`{t}`"))?;
        let sum = row.split('\t').nth(1).unwrap_or("?");
        out.push(format!("{t}={sum}"));
    }
    Ok(out.join(" "))
}

/// Polls `f` every 100 ms until it is true; fails after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// A `pitr` command with the local repository and source name set.
pub fn pitr(repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(pitr_integration::pitr_bin());
    c.args(args)
        .arg("--repo")
        .arg(repo)
        .args(["--name", crate::replay::SOURCE]);
    c
}

/// Archived bytes per binlog file (`pitr binlog-fetch --list`): file name -> end offset.
pub fn archived(repo: &Path) -> Result<Vec<(String, u64)>> {
    let out = run_ok(&mut pitr(repo, &["binlog-fetch", "--list"]))?;
    out.lines()
        .map(|l| {
            let mut cols = l.split('\t');
            let name = cols.next().context("binlog-fetch --list: no name")?;
            let end = cols
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("binlog-fetch --list: bad line {l:?}"))?;
            Ok((name.to_string(), end))
        })
        .collect()
}

/// Runs a script (may use `DELIMITER`) with the batch client as root over the socket.
pub fn sql_script(s: &MySqlServer, script: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(s.bin("mariadb"))
        .arg("--no-defaults")
        .arg(format!("--socket={}", s.socket().display()))
        .args(["-u", "root", "-N", "-B"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the client")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("script failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// The value of `"key":` in a flat JSON object printed by `pitr ... --json` (strings
/// unquoted; no escapes expected in the values read here).
pub fn json_field(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next().map(str::to_string);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_since_counts_the_rest_of_the_first_file_and_all_later_ones() {
        let logs = vec![
            ("binlog.000001".to_string(), 1000),
            ("binlog.000002".to_string(), 500),
            ("binlog.000003".to_string(), 300),
        ];
        assert_eq!(bytes_since(&logs, "binlog.000002", 100), 400 + 300);
        assert_eq!(bytes_since(&logs, "binlog.000001", 4), 996 + 800);
        assert_eq!(bytes_since(&logs, "binlog.000009", 4), 0);
    }

    #[test]
    fn json_fields_are_found_nested_or_not() {
        let j = r#"{"backup":"b/1","binlog_file":"binlog.000002","binlog_pos":1234,"apply":{"transactions_applied":77,"stopped":"x"}}"#;
        assert_eq!(
            json_field(j, "binlog_file").as_deref(),
            Some("binlog.000002")
        );
        assert_eq!(json_field(j, "binlog_pos").as_deref(), Some("1234"));
        assert_eq!(json_field(j, "transactions_applied").as_deref(), Some("77"));
        assert_eq!(json_field(j, "missing"), None);
    }
}
