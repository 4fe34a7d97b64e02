//! Nothing is lost silently: a ring buffer too small for an event storm reports its drops, and
//! received + dropped equals what a roomy buffer receives.
mod common;

use common::*;

/// 100,000 `builtins.id` audit events (plus start-up's), a deterministic storm.
const STORM: &str = "for i in range(100000): id(i)";

fn traced_counts(ring: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("storm.jsonl");
    let out = pyusdt()
        .args([
            "run",
            "--probes",
            "audit",
            "--quiet",
            "--ring-buffer-size",
            ring,
            "--output",
        ])
        .arg(&out_path)
        .args(["--", SYSTEM_PYTHON, "-c", STORM])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let records = read_jsonl(&out_path);
    let s = summary(&records);
    let received = s["received"]["audit"].as_u64().unwrap();
    let dropped = s["dropped"]["audit"].as_u64().unwrap();
    // The JSON stream holds exactly what the summary counts as received.
    let lines = records.iter().filter(|r| r["type"] == "audit").count() as u64;
    assert_eq!(lines, received);
    if dropped > 0 {
        assert!(
            stderr.contains("dropped (ring buffer full"),
            "drops not reported: {stderr}"
        );
    }
    (received, dropped)
}

#[test]
fn drops_are_counted_not_lost() {
    if !require_bpf("drops_are_counted_not_lost") {
        return;
    }
    let (roomy_received, roomy_dropped) = traced_counts("64M");
    assert_eq!(roomy_dropped, 0);
    assert!(roomy_received >= 100_000);
    let (tiny_received, tiny_dropped) = traced_counts("4K");
    assert!(
        tiny_dropped > 0,
        "a 4 KiB ring buffer must overflow under 100,000 events"
    );
    assert_eq!(
        tiny_received + tiny_dropped,
        roomy_received,
        "events unaccounted for"
    );
}
