//! `container.id` on the resource of a process in a container, from its /proc/PID/cgroup: a
//! Python process moved into a cgroup laid out as Docker lays it out (`/docker/<64 hex>`), and
//! traced by an agent exporting over OTLP. The cgroup is read when the process's first event
//! is handled: the process lives a second, as a container's would (one that exits before that
//! has no `container.id`).
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::otlp::{self, attr_str};
use common::*;

/// A cgroup made for the test, removed when dropped (once its processes have exited).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn resources_of_containerized_processes_carry_container_id() {
    if !require_bpf("resources_of_containerized_processes_carry_container_id") {
        return;
    }
    // A v1 hierarchy where this machine has one, else the v2 root.
    let Some(base) = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.join("cgroup.procs").exists()) else {
        panic!("no writable cgroup hierarchy under /sys/fs/cgroup");
    };
    let id: String = (0..64)
        .map(|i| {
            char::from_digit((std::process::id() as usize * 7 + i * 13) as u32 % 16, 16).unwrap()
        })
        .collect();
    let dir = base.join("docker").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TestCgroup(dir.clone());

    let receiver = otlp::http();
    let (mut agent, log) = start_agent(&["--quiet", "--otlp-endpoint", &receiver.endpoint]);
    wait_for_line(&log, "tracing ");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {SYSTEM_PYTHON} -c 'import gc, time; gc.collect(); time.sleep(1)'",
        dir.display()
    );
    let mut child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let pid = child.id() as i64;
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let status = stop(&mut agent.0, libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}");

    let r = receiver.received();
    let spans = otlp::spans(&r);
    let ours = spans
        .iter()
        .find(|s| s.pid == pid)
        .unwrap_or_else(|| panic!("no span of PID {pid}"));
    assert_eq!(
        attr_str(&ours.resource.attributes, "container.id").as_deref(),
        Some(id.as_str())
    );
    // Not in Kubernetes: no pod attributes.
    assert!(ours
        .resource
        .attributes
        .iter()
        .all(|kv| !kv.key.starts_with("k8s.")));
    // A process outside any container has no container.id.
    assert!(spans.iter().filter(|s| s.pid != pid).all(|s| attr_str(
        &s.resource.attributes,
        "container.id"
    )
    .is_none()));
}
