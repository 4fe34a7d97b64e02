//! `pyusdt agent`: processes started after it attach get traced (kernel-set semaphores) and
//! events are attributed to the right PID.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn agent_traces_processes_started_later_with_the_right_pids() {
    if !require_bpf("agent_traces_processes_started_later_with_the_right_pids") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("agent.jsonl");
    let mut agent = Reaped(
        pyusdt()
            .args(["agent", "--quiet", "--rescan-interval", "1", "--output"])
            .arg(&out_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for "tracing …" on stderr: probes are attached from then on.
    let stderr = agent.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("agent never said it was tracing: {log:#?}"));
        let ready = line.contains("tracing ");
        log.push(line);
        if ready {
            break;
        }
    }

    // Two processes at once, each importing a module named after its own PID.
    let code = "import os, gc, time\n\
                try:\n    __import__(f'pyusdt_probe_{os.getpid()}')\nexcept ImportError:\n    pass\n\
                gc.collect()\ntime.sleep(0.3)\n";
    let kids: Vec<Reaped> = (0..2)
        .map(|_| {
            Reaped(
                Command::new(SYSTEM_PYTHON)
                    .args(["-c", code])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let pids: Vec<u32> = kids.iter().map(|k| k.0.id()).collect();
    for mut k in kids {
        assert!(k.0.wait().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(300)); // a drain interval or two
    let status = stop(&mut agent.0, libc::SIGINT, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    let records = read_jsonl(&out_path);
    for &pid in &pids {
        let probes: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == "import")
            .filter(|r| {
                r["module"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pyusdt_probe_"))
            })
            .filter(|r| r["module"] == format!("pyusdt_probe_{pid}"))
            .collect();
        assert_eq!(probes.len(), 1, "probe import of {pid}");
        assert_eq!(
            probes[0]["pid"], pid,
            "import attributed to the wrong process"
        );
        assert_eq!(probes[0]["found"], false);
        assert!(
            records
                .iter()
                .any(|r| r["type"] == "gc" && r["pid"] == pid && r["generation"] == 2),
            "gc.collect() of {pid} not traced"
        );
    }
    // No probe import carries another process's PID.
    for r in records.iter().filter(|r| {
        r["module"]
            .as_str()
            .is_some_and(|m| m.starts_with("pyusdt_probe_"))
    }) {
        assert_eq!(r["module"], format!("pyusdt_probe_{}", r["pid"]));
    }
    let s = summary(&records);
    assert_eq!(
        s["dropped"],
        serde_json::json!({"gc": 0, "import": 0, "audit": 0})
    );
}
