//! The pods of this node, indexed by pod UID and container ID, shared between the watch thread
//! (the only writer) and pyusdt's synchronous code (readers).
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::cgroup;
use super::metadata::PodMetadata;

#[derive(Debug, Default)]
struct PodCache {
    /// Pod UID → metadata. `Arc`: a lookup hands out a pointer, not a copy of labels and annotations.
    pods: HashMap<String, Arc<PodMetadata>>,
    /// Container ID → pod UID.
    containers: HashMap<String, String>,
    /// The first complete list has been received: a miss now means "not a pod of this node".
    synced: bool,
}

impl PodCache {
    fn upsert(&mut self, pod: PodMetadata) {
        // Containers of the old version that are gone (restarted: new ID) must not keep pointing here.
        self.remove(&pod.pod_uid);
        for (_, id) in &pod.containers {
            self.containers.insert(id.clone(), pod.pod_uid.clone());
        }
        self.pods.insert(pod.pod_uid.clone(), Arc::new(pod));
    }

    fn remove(&mut self, pod_uid: &str) {
        if let Some(old) = self.pods.remove(pod_uid) {
            for (_, id) in &old.containers {
                self.containers.remove(id);
            }
        }
    }
}

/// A cheap, cloneable handle on the cache. Lookups take a read lock for a hash lookup.
#[derive(Debug, Clone, Default)]
pub struct PodCacheHandle {
    inner: Arc<RwLock<PodCache>>,
}

impl PodCacheHandle {
    /// The pod that runs the container with this ID (64 hex, no `containerd://` prefix), and the
    /// container's name.
    pub fn lookup_by_container_id(&self, container_id: &str) -> Option<(Arc<PodMetadata>, String)> {
        let cache = self.read();
        let pod = cache.pods.get(cache.containers.get(container_id)?)?;
        let name = pod.container_name(container_id)?.to_string();
        Some((Arc::clone(pod), name))
    }

    pub fn lookup_by_pod_uid(&self, pod_uid: &str) -> Option<Arc<PodMetadata>> {
        self.read().pods.get(pod_uid).cloned()
    }

    /// The pod of a process from the text of its `/proc/PID/cgroup`: by container ID, else by
    /// pod UID (the kubelet may not have reported a just-started container's ID yet; then the
    /// container name is unknown). Returns (pod, container name, container ID).
    pub fn lookup_cgroup(
        &self,
        cgroup_text: &str,
    ) -> Option<(Arc<PodMetadata>, Option<String>, Option<String>)> {
        let container_id = cgroup::container_id(cgroup_text);
        if let Some(id) = &container_id {
            if let Some((pod, name)) = self.lookup_by_container_id(id) {
                return Some((pod, Some(name), container_id));
            }
        }
        let pod = self.lookup_by_pod_uid(&cgroup::pod_uid(cgroup_text)?)?;
        Some((pod, None, container_id))
    }

    /// Whether the first complete list of the node's pods has arrived.
    #[allow(dead_code)] // tests/k8s_metadata.rs waits for it
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    #[allow(dead_code)] // tests/k8s_metadata.rs counts the cached pods
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub(super) fn upsert(&self, pod: PodMetadata) {
        self.write().upsert(pod);
    }

    pub(super) fn remove(&self, pod_uid: &str) {
        self.write().remove(pod_uid);
    }

    /// Replaces everything with a complete list (after the first list, or a re-list once the
    /// watch could not resume: pods deleted meanwhile must go).
    pub(super) fn replace_all(&self, pods: Vec<PodMetadata>) {
        let mut fresh = PodCache::default();
        for pod in pods {
            fresh.upsert(pod);
        }
        fresh.synced = true;
        *self.write() = fresh;
    }

    // A panic while the lock was held cannot leave the maps half-updated in a way that matters
    // more than losing metadata, so a poisoned lock is used as is rather than propagated.
    fn read(&self) -> RwLockReadGuard<'_, PodCache> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, PodCache> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, containers: &[(&str, &str)]) -> PodMetadata {
        PodMetadata {
            pod_name: format!("pod-{uid}"),
            pod_uid: uid.into(),
            containers: containers
                .iter()
                .map(|(n, i)| (n.to_string(), i.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn restarted_container_replaces_old_id() {
        let cache = PodCacheHandle::default();
        cache.upsert(pod("u1", &[("app", "old")]));
        assert_eq!(
            cache.lookup_by_container_id("old").map(|(_, n)| n),
            Some("app".into())
        );
        cache.upsert(pod("u1", &[("app", "new")]));
        assert!(cache.lookup_by_container_id("old").is_none());
        assert_eq!(
            cache.lookup_by_container_id("new").map(|(_, n)| n),
            Some("app".into())
        );
        cache.remove("u1");
        assert!(cache.lookup_by_container_id("new").is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn relist_drops_pods_deleted_meanwhile() {
        let cache = PodCacheHandle::default();
        cache.upsert(pod("gone", &[("a", "c1")]));
        assert!(!cache.is_synced());
        cache.replace_all(vec![pod("kept", &[("b", "c2")])]);
        assert!(cache.is_synced());
        assert!(cache.lookup_by_pod_uid("gone").is_none());
        assert!(cache.lookup_by_container_id("c1").is_none());
        assert!(cache.lookup_by_pod_uid("kept").is_some());
    }
}
