//! Nothing is lost silently: a ring buffer too small for an event storm reports its drops, and
//! received + dropped equals what a roomy buffer receives, per marker. GC start and done are
//! paired in the kernel, so an overflow cannot pair halves of different collections: no
//! phantom GC pause comes out of a storm.
mod common;

use common::*;

/// 100,000 `builtins.id` audit events (plus start-up's), a deterministic storm, with a full
/// collection every 1,000 of them, then a 50 ms sleep: a start paired with the done of another
/// collection would make a pause of at least that.
const STORM: &str = "import gc, time\nfor i in range(100000):\n    id(i)\n    if i % 1000 == 0:\n        gc.collect()\n        time.sleep(0.05)";

/// (received, dropped) of the audit and the gc markers.
fn traced_counts(ring: &str) -> [(u64, u64); 2] {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("storm.jsonl");
    let out = pyusdt()
        .args([
            "run",
            "--probes",
            "gc,audit",
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
    let counts = ["audit", "gc"].map(|marker| {
        let received = s["received"][marker].as_u64().unwrap();
        let dropped = s["dropped"][marker].as_u64().unwrap();
        // The JSON stream holds exactly what the summary counts as received.
        let lines = records.iter().filter(|r| r["type"] == marker).count() as u64;
        assert_eq!(lines, received, "{marker}");
        if dropped > 0 {
            assert!(
                stderr.contains("dropped (ring buffer full"),
                "drops not reported: {stderr}"
            );
        }
        (received, dropped)
    });
    // A collection of this small heap takes a few milliseconds; collections are 50 ms apart,
    // so a pause of 40 ms or more pairs a start with the done of another collection.
    for gc in records.iter().filter(|r| r["type"] == "gc") {
        let ns = gc["duration_ns"].as_u64().unwrap();
        assert!(
            ns < 40_000_000,
            "phantom GC pause of {ns} ns with a {ring} ring"
        );
    }
    counts
}

#[test]
fn drops_are_counted_not_lost() {
    if !require_bpf("drops_are_counted_not_lost") {
        return;
    }
    let [(roomy_received, roomy_dropped), (roomy_gc, roomy_gc_dropped)] = traced_counts("64M");
    assert_eq!((roomy_dropped, roomy_gc_dropped), (0, 0));
    assert!(roomy_received >= 100_000);
    assert!(roomy_gc >= 100, "one collection per 1,000 events");
    let [(tiny_received, tiny_dropped), (tiny_gc, tiny_gc_dropped)] = traced_counts("4K");
    assert!(
        tiny_dropped > 0,
        "a 4 KiB ring buffer must overflow under 100,000 events"
    );
    assert_eq!(
        tiny_received + tiny_dropped,
        roomy_received,
        "audit events unaccounted for"
    );
    assert_eq!(
        tiny_gc + tiny_gc_dropped,
        roomy_gc,
        "collections unaccounted for"
    );
    eprintln!(
        "4 KiB ring: audit {tiny_received} received + {tiny_dropped} dropped; \
         gc {tiny_gc} received + {tiny_gc_dropped} dropped"
    );
}
