//! Container ID and pod UID of a process, from the text of its `/proc/PID/cgroup`.
//!
//! Runtimes name a container's cgroup after its 64-hex ID: the cgroupfs driver as a directory of
//! that name (`/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`), the systemd driver as a scope
//! `<runtime>-<id>.scope` (docker, cri-containerd, crio, libpod). The same holds for cgroup v1
//! (one line per hierarchy) and v2 (one `0::` line). The kubelet names the pod's cgroup after the
//! pod UID: `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _ for ->.slice` (systemd).
//!
//! Paths are read as the kernel shows them to pyusdt: from the host's cgroup namespace they are
//! absolute; from another they may start with `/..`, which the segment-wise search tolerates.

/// Scope prefixes of the systemd cgroup driver (and CRI-O's cgroupfs directories). `crio-conmon-<id>.scope` and
/// `libpod-conmon-<id>.scope` (the runtime monitor, not the container) do not match, since what
/// follows the prefix must be exactly 64 hex digits.
const SCOPE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The container ID (64 lowercase hex digits) of the innermost container cgroup in the text.
pub fn container_id(cgroup_file_text: &str) -> Option<String> {
    cgroup_paths(cgroup_file_text).find_map(|path| {
        // Innermost first: a container's own sub-cgroups (e.g. podman's `/container`) come after.
        path.split('/')
            .rev()
            .find_map(container_id_of_segment)
            .map(str::to_string)
    })
}

/// The pod UID (with dashes, as the API server shows it) from a kubelet-made cgroup path.
pub fn pod_uid(cgroup_file_text: &str) -> Option<String> {
    cgroup_paths(cgroup_file_text).find_map(|path| {
        let segments: Vec<&str> = path.split('/').collect();
        // Only under the kubelet's hierarchy: `pod…` elsewhere is someone else's name.
        if !segments.iter().any(|s| s.starts_with("kubepods")) {
            return None;
        }
        segments.iter().rev().find_map(|s| pod_uid_of_segment(s))
    })
}

/// The cgroup path of each line `hierarchy-ID:controllers:path`.
fn cgroup_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .map(str::trim_end)
}

fn container_id_of_segment(segment: &str) -> Option<&str> {
    if is_container_id(segment) {
        return Some(segment);
    }
    // CRI-O with the cgroupfs driver names the directory `crio-<id>`, without `.scope`.
    let scope = segment.strip_suffix(".scope").unwrap_or(segment);
    SCOPE_PREFIXES
        .iter()
        .find_map(|prefix| scope.strip_prefix(prefix))
        .filter(|id| is_container_id(id))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of_segment(segment: &str) -> Option<String> {
    let raw = match segment.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1,
        None => segment.strip_prefix("pod")?,
    };
    // systemd escapes `-` in unit names, so the kubelet writes the UID with `_` instead.
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7f3c1b2a9d8e4f5061728394a5b6c7d8e9f00112233445566778899aabbccdd0";
    const UID: &str = "5c1f0e9a-2b7d-4c3e-8f61-9a0b1c2d3e4f";
    const UID_: &str = "5c1f0e9a_2b7d_4c3e_8f61_9a0b1c2d3e4f";

    #[test]
    fn docker_cgroup_v1_cgroupfs() {
        let text = format!(
            "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
        assert_eq!(pod_uid(&text), None);
    }

    #[test]
    fn docker_cgroup_v2_systemd() {
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&text).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_kubepods_cgroupfs_v1() {
        let text = format!(
            "11:cpuset:/kubepods/burstable/pod{UID}/{ID}\n4:memory:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
    }

    #[test]
    fn containerd_kubepods_systemd_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
    }

    #[test]
    fn guaranteed_qos_pod_has_no_qos_slice() {
        let text =
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
    }

    #[test]
    fn crio_container_and_not_conmon() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n"
        );
        assert_eq!(container_id(&text).as_deref(), Some(ID));
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
        let conmon = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(container_id(&conmon), None);
        assert_eq!(
            pod_uid(&conmon).as_deref(),
            Some(UID),
            "conmon is still in the pod"
        );
        let cgroupfs = format!("4:memory:/kubepods/besteffort/pod{UID}/crio-{ID}\n");
        assert_eq!(container_id(&cgroupfs).as_deref(), Some(ID));
        let cgroupfs_conmon = format!("4:memory:/kubepods/besteffort/pod{UID}/crio-conmon-{ID}\n");
        assert_eq!(container_id(&cgroupfs_conmon), None);
    }

    #[test]
    fn podman_rootful_and_rootless() {
        let rootful = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        assert_eq!(container_id(&rootful).as_deref(), Some(ID));
        let rootless = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"
        );
        assert_eq!(container_id(&rootless).as_deref(), Some(ID));
        let conmon = format!("0::/machine.slice/libpod-conmon-{ID}.scope\n");
        assert_eq!(container_id(&conmon), None);
    }

    #[test]
    fn relative_path_from_another_cgroup_namespace() {
        let text =
            format!("0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id(&text).as_deref(), Some(ID));
        // The parent slices are cut off, but the pod slice's own name starts with `kubepods`.
        assert_eq!(pod_uid(&text).as_deref(), Some(UID));
    }

    #[test]
    fn host_processes_have_neither() {
        for text in [
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/init.scope\n",
            "0::/\n",
            "0::/system.slice/pod1234.service\n",
            "",
        ] {
            assert_eq!(container_id(text), None, "{text}");
            assert_eq!(pod_uid(text), None, "{text}");
        }
        // Upper-case or short hex is not a container ID.
        assert_eq!(
            container_id(&format!("0::/docker/{}\n", ID.to_uppercase())),
            None
        );
        assert_eq!(container_id("0::/docker/abc123\n"), None);
    }
}
