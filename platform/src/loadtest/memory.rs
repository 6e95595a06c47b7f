//! The platform's resident memory, read from its `GET /metrics`, so that a run can say what
//! each connected player costs the platform process. (The lobby runtimes are processes of their
//! own and are not included.)

use anyhow::Context;

/// The gauge the platform's process collector exports (Linux only).
const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

/// The platform's resident memory in bytes, now.
pub(super) async fn resident_bytes(http: &reqwest::Client, base_url: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET /metrics")?
        .text()
        .await
        .context("GET /metrics")?;
    parse_resident_bytes(&text).with_context(|| {
        format!("/metrics has no {RESIDENT_MEMORY} (the platform exports it on Linux only)")
    })
}

/// The value of `process_resident_memory_bytes` in a Prometheus text exposition.
fn parse_resident_bytes(text: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(RESIDENT_MEMORY)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// How much the platform grew per connected player, in KiB; `None` without players or figures.
pub(super) fn per_player_kib(before: Option<f64>, after: Option<f64>, players: u64) -> Option<f64> {
    let grown = after? - before?;
    (players > 0).then(|| grown / players as f64 / 1024.0)
}

pub(super) fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes_total 1
process_resident_memory_bytes 2.1032960e7
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1234567890
rally_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"} 3
";

    #[test]
    fn finds_resident_memory_among_other_metrics() {
        assert_eq!(parse_resident_bytes(SAMPLE), Some(21_032_960.0));
        assert_eq!(
            parse_resident_bytes("process_resident_memory_bytes 19922944\n"),
            Some(19_922_944.0)
        );
    }

    #[test]
    fn a_missing_or_garbled_gauge_is_none() {
        assert_eq!(
            parse_resident_bytes("process_virtual_memory_bytes 1\n"),
            None
        );
        assert_eq!(
            parse_resident_bytes("process_resident_memory_bytes x\n"),
            None
        );
        assert_eq!(parse_resident_bytes(""), None);
    }

    #[test]
    fn memory_per_player_is_the_growth_divided_among_players() {
        let (before, after) = (20.0 * 1024.0 * 1024.0, 30.0 * 1024.0 * 1024.0);
        assert_eq!(per_player_kib(Some(before), Some(after), 1024), Some(10.0));
        assert_eq!(per_player_kib(Some(before), Some(after), 0), None);
        assert_eq!(per_player_kib(None, Some(after), 1024), None);
        assert_eq!(mib(after), 30.0);
    }
}
