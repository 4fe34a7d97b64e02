//! What pyusdt keeps of a Pod, and the resource attributes and `service.name` derived from it.
//!
//! Pods are read as k8s-openapi's `Pod`: kube-rs's own types (kube-core) depend on k8s-openapi,
//! so the crate is compiled in any case, and a hand-written serde twin would only drift from
//! the real schema.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use opentelemetry_semantic_conventions::attribute as attrs;

/// Annotation that names the service explicitly (semconv: `resource.opentelemetry.io/<attr>`).
pub const SERVICE_NAME_ANNOTATION: &str = "resource.opentelemetry.io/service.name";
/// Well-known labels, see <https://kubernetes.io/docs/reference/labels-annotations-taints/>.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label the Deployment controller puts on its pods; the ReplicaSet is `<deployment>-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The workload kinds that have a semantic-convention attribute (`k8s.<kind>.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
}

impl WorkloadKind {
    /// The `kind` of an ownerReference. Other kinds (a mirror pod's `Node`, custom controllers)
    /// have no semconv attribute and are not kept.
    fn from_owner_kind(kind: &str) -> Option<WorkloadKind> {
        match kind {
            "Deployment" => Some(WorkloadKind::Deployment),
            "ReplicaSet" => Some(WorkloadKind::ReplicaSet),
            "StatefulSet" => Some(WorkloadKind::StatefulSet),
            "DaemonSet" => Some(WorkloadKind::DaemonSet),
            "CronJob" => Some(WorkloadKind::CronJob),
            "Job" => Some(WorkloadKind::Job),
            _ => None,
        }
    }

    /// The resource attribute that carries a workload of this kind's name.
    pub fn attribute(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => attrs::K8S_DEPLOYMENT_NAME,
            WorkloadKind::ReplicaSet => attrs::K8S_REPLICASET_NAME,
            WorkloadKind::StatefulSet => attrs::K8S_STATEFULSET_NAME,
            WorkloadKind::DaemonSet => attrs::K8S_DAEMONSET_NAME,
            WorkloadKind::CronJob => attrs::K8S_CRONJOB_NAME,
            WorkloadKind::Job => attrs::K8S_JOB_NAME,
        }
    }
}

/// The part of a Pod that pyusdt needs, small enough to keep for every pod of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    pub pod_name: String,
    pub pod_uid: String,
    pub namespace: String,
    pub node_name: String,
    /// (container name, container ID without its `containerd://` style prefix), for the regular,
    /// init and ephemeral containers that have been started (only those have an ID).
    pub containers: Vec<(String, String)>,
    /// The pod's controller (its ownerReference with `controller: true`) as (kind, name).
    pub controller: Option<(WorkloadKind, String)>,
    /// The top-level owner: the Deployment of a ReplicaSet, the CronJob of a Job, resolved from
    /// names as the Collector's k8sattributes processor does; else the controller itself.
    pub owner: Option<(WorkloadKind, String)>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadata {
    /// Extracts the metadata of a Pod as the API server returns it.
    pub fn from_pod(pod: &Pod) -> PodMetadata {
        let meta = &pod.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .and_then(|r| Some((WorkloadKind::from_owner_kind(&r.kind)?, r.name.clone())));
        let owner = controller
            .as_ref()
            .map(|(kind, name)| resolve_owner(*kind, name, &labels));
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                let regular = s.container_statuses.iter().flatten();
                let init = s.init_container_statuses.iter().flatten();
                let ephemeral = s.ephemeral_container_statuses.iter().flatten();
                regular.chain(init).chain(ephemeral)
            })
            .filter_map(|c| {
                let id = strip_runtime_prefix(c.container_id.as_deref()?);
                (!id.is_empty()).then(|| (c.name.clone(), id.to_string()))
            })
            .collect();
        PodMetadata {
            pod_name: meta.name.clone().unwrap_or_default(),
            pod_uid: meta.uid.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            containers,
            controller,
            owner,
            labels,
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }

    /// The name of the container with this ID (without runtime prefix), if it is in this pod.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(_, id)| id == container_id)
            .map(|(name, _)| name.as_str())
    }

    /// The name of the workload of this kind in the pod's owner chain.
    fn workload(&self, kind: WorkloadKind) -> Option<&str> {
        [&self.owner, &self.controller]
            .into_iter()
            .flatten()
            .find(|(k, _)| *k == kind)
            .map(|(_, name)| name.as_str())
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn strip_runtime_prefix(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

/// The top-level owner of a pod whose controller is (kind, name). Only names are used: a
/// DaemonSet agent should not need to watch ReplicaSets and Jobs cluster-wide for this.
fn resolve_owner(
    kind: WorkloadKind,
    name: &str,
    pod_labels: &BTreeMap<String, String>,
) -> (WorkloadKind, String) {
    let parent = match kind {
        WorkloadKind::ReplicaSet => deployment_of_replicaset(name, pod_labels)
            .map(|d| (WorkloadKind::Deployment, d.to_string())),
        WorkloadKind::Job => cronjob_of_job(name).map(|c| (WorkloadKind::CronJob, c.to_string())),
        _ => None,
    };
    parent.unwrap_or((kind, name.to_string()))
}

/// A Deployment names its ReplicaSets `<deployment>-<pod-template-hash>` and labels their pods
/// with that hash. The label makes the split exact; without it, the Collector's rule applies
/// (k8sattributesprocessor `extractDeploymentNameFromReplicaSet`: the last dash-separated part
/// is 10 lowercase alphanumerics).
fn deployment_of_replicaset<'a>(
    replicaset: &'a str,
    pod_labels: &BTreeMap<String, String>,
) -> Option<&'a str> {
    if let Some(hash) = pod_labels.get(POD_TEMPLATE_HASH_LABEL) {
        return replicaset
            .strip_suffix(hash.as_str())
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|d| !d.is_empty());
    }
    let (deployment, hash) = replicaset.rsplit_once('-')?;
    let looks_like_hash = hash.len() == 10
        && hash
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (looks_like_hash && !deployment.is_empty()).then_some(deployment)
}

/// A CronJob names its Jobs `<cronjob>-<scheduled time in minutes>`. Like the Collector
/// (k8sattributesprocessor `cronJobRegex = ^(.*)-\d+$`), any Job whose name ends in `-<digits>`
/// is taken to be a CronJob's.
fn cronjob_of_job(job: &str) -> Option<&str> {
    let (cronjob, suffix) = job.rsplit_once('-')?;
    let numeric = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
    (numeric && !cronjob.is_empty()).then_some(cronjob)
}

/// `service.name` of a container of this pod, in the order of the semantic conventions
/// ("How `service.name` should be calculated", docs/non-normative/k8s-attributes.md of
/// open-telemetry/semantic-conventions, <https://opentelemetry.io/docs/specs/semconv/non-normative/k8s-attributes/>):
/// the `resource.opentelemetry.io/service.name` annotation, the labels
/// `app.kubernetes.io/instance` then `app.kubernetes.io/name`, then `k8s.deployment.name`,
/// `k8s.replicaset.name`, `k8s.statefulset.name`, `k8s.daemonset.name`, `k8s.cronjob.name`,
/// `k8s.job.name`, `k8s.pod.name`, `k8s.container.name` — from the ancestor to the descendant.
/// A process's own `OTEL_SERVICE_NAME` takes precedence over all of this (the caller's job).
pub fn service_name(pod: &PodMetadata, container_name: &str) -> String {
    let non_empty = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
    non_empty(pod.annotations.get(SERVICE_NAME_ANNOTATION))
        .or_else(|| non_empty(pod.labels.get(INSTANCE_LABEL)))
        .or_else(|| non_empty(pod.labels.get(NAME_LABEL)))
        .or_else(|| {
            SERVICE_NAME_OWNER_ORDER
                .iter()
                .find_map(|kind| pod.workload(*kind))
                .map(str::to_string)
        })
        .or_else(|| (!pod.pod_name.is_empty()).then(|| pod.pod_name.clone()))
        .unwrap_or_else(|| container_name.to_string())
}

/// The owner part of the semconv order for `service.name`.
const SERVICE_NAME_OWNER_ORDER: [WorkloadKind; 6] = [
    WorkloadKind::Deployment,
    WorkloadKind::ReplicaSet,
    WorkloadKind::StatefulSet,
    WorkloadKind::DaemonSet,
    WorkloadKind::CronJob,
    WorkloadKind::Job,
];

/// Resource attributes of the container with this ID (without runtime prefix) in this pod:
/// `k8s.pod.name`, `k8s.pod.uid`, `k8s.namespace.name`, `k8s.node.name`, `k8s.container.name`
/// (when the ID is one of the pod's), the workload names of the owner chain, and `container.id`.
pub fn attributes(pod: &PodMetadata, container_id: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |key: &str, value: &str| {
        if !value.is_empty() {
            out.push((key.to_string(), value.to_string()));
        }
    };
    push(attrs::K8S_POD_NAME, &pod.pod_name);
    push(attrs::K8S_POD_UID, &pod.pod_uid);
    push(attrs::K8S_NAMESPACE_NAME, &pod.namespace);
    push(attrs::K8S_NODE_NAME, &pod.node_name);
    if let Some(name) = pod.container_name(container_id) {
        push(attrs::K8S_CONTAINER_NAME, name);
    }
    // Controller first, then the resolved owner when it is another object (ReplicaSet then
    // Deployment, Job then CronJob).
    if let Some((kind, name)) = &pod.controller {
        push(kind.attribute(), name);
    }
    if let Some((kind, name)) = &pod.owner {
        if pod.controller.as_ref().map(|(k, _)| k) != Some(kind) {
            push(kind.attribute(), name);
        }
    }
    push(attrs::CONTAINER_ID, container_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replicaset_resolves_to_deployment_by_pod_template_hash() {
        // A 9-character hash, which the Collector's 10-character fallback would miss.
        let l = labels(&[("pod-template-hash", "86f5789c6")]);
        assert_eq!(
            deployment_of_replicaset("web-api-86f5789c6", &l),
            Some("web-api")
        );
        // A hash label that is not the suffix: not a Deployment's ReplicaSet.
        assert_eq!(deployment_of_replicaset("web-api-x", &l), None);
    }

    #[test]
    fn replicaset_without_hash_label_uses_collector_rule() {
        let none = BTreeMap::new();
        assert_eq!(
            deployment_of_replicaset("web-api-7c5ddbdf54", &none),
            Some("web-api")
        );
        assert_eq!(deployment_of_replicaset("standalone-rs", &none), None);
        assert_eq!(deployment_of_replicaset("web-7C5DDBDF54", &none), None);
    }

    #[test]
    fn job_resolves_to_cronjob_by_numeric_suffix() {
        assert_eq!(
            cronjob_of_job("nightly-report-29034720"),
            Some("nightly-report")
        );
        assert_eq!(cronjob_of_job("db-migrate"), None);
        assert_eq!(cronjob_of_job("-29034720"), None);
        assert_eq!(cronjob_of_job("backup-"), None);
    }

    #[test]
    fn runtime_prefix_is_stripped() {
        assert_eq!(strip_runtime_prefix("containerd://abc"), "abc");
        assert_eq!(strip_runtime_prefix("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_prefix("abc"), "abc");
    }

    #[test]
    fn service_name_order() {
        let mut pod = PodMetadata {
            pod_name: "web-api-86f5789c6-x2x9q".into(),
            controller: Some((WorkloadKind::ReplicaSet, "web-api-86f5789c6".into())),
            owner: Some((WorkloadKind::Deployment, "web-api".into())),
            ..Default::default()
        };
        assert_eq!(service_name(&pod, "app"), "web-api");
        pod.owner = pod.controller.clone();
        assert_eq!(service_name(&pod, "app"), "web-api-86f5789c6");
        pod.labels = labels(&[(NAME_LABEL, "api"), (INSTANCE_LABEL, "")]);
        assert_eq!(service_name(&pod, "app"), "api", "empty values are skipped");
        pod.labels.insert(INSTANCE_LABEL.into(), "api-prod".into());
        assert_eq!(service_name(&pod, "app"), "api-prod");
        pod.annotations = labels(&[(SERVICE_NAME_ANNOTATION, "checkout")]);
        assert_eq!(service_name(&pod, "app"), "checkout");

        let bare = PodMetadata {
            pod_name: "debug".into(),
            ..Default::default()
        };
        assert_eq!(service_name(&bare, "python"), "debug");
        assert_eq!(service_name(&PodMetadata::default(), "python"), "python");
    }

    #[test]
    fn attributes_of_a_cronjob_pod() {
        let pod = PodMetadata {
            pod_name: "report-29034720-7kq5d".into(),
            pod_uid: "0b8f7c1e-3c1e-4f8e-9a51-2b7d5f0c9e11".into(),
            namespace: "batch".into(),
            node_name: "node-a".into(),
            containers: vec![("report".into(), "ab".repeat(32))],
            controller: Some((WorkloadKind::Job, "report-29034720".into())),
            owner: Some((WorkloadKind::CronJob, "report".into())),
            ..Default::default()
        };
        let attrs = attributes(&pod, &"ab".repeat(32));
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("k8s.container.name"), Some("report"));
        assert_eq!(get("k8s.job.name"), Some("report-29034720"));
        assert_eq!(get("k8s.cronjob.name"), Some("report"));
        assert_eq!(get("k8s.deployment.name"), None);
        assert_eq!(get("container.id"), Some("ab".repeat(32).as_str()));
        assert_eq!(attrs.len(), 8);
    }
}
