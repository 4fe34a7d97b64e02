//! The node-scoped pod watch: kube-rs's `watcher` on `/api/v1/pods` with the field selector
//! `spec.nodeName=<this node>`, run on its own thread with a current-thread tokio runtime (the
//! rest of pyusdt is synchronous), feeding a [`PodCacheHandle`].
use std::env;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use tracing::{debug, info, warn};

use super::cache::PodCacheHandle;
use super::metadata::PodMetadata;

/// The node this agent runs on, set in the DaemonSet from the downward API
/// (`valueFrom.fieldRef.fieldPath: spec.nodeName`).
pub const NODE_NAME_ENV: &str = "K8S_NODE_NAME";
/// Set by the kubelet in every container: we run in a pod.
const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// An explicit kubeconfig (outside a cluster, e.g. a developer's machine pointed at one).
const KUBECONFIG_ENV: &str = "KUBECONFIG";

/// Why the pod watch could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The in-cluster configuration (service account token, CA) could not be read.
    #[error("cannot read the in-cluster Kubernetes configuration (is the service account token mounted?): {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The file named by KUBECONFIG could not be used.
    #[error("cannot use the kubeconfig named by {KUBECONFIG_ENV}: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The HTTP client for the API server could not be built (TLS settings, proxy).
    #[error("cannot build the Kubernetes API client: {0}")]
    Client(#[from] kube::Error),
    /// The runtime or thread of the watch could not be created (out of threads or file descriptors).
    #[error("cannot start the pod watch thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts the pod watch from the environment. `None` when not in Kubernetes (no
/// KUBERNETES_SERVICE_HOST and no KUBECONFIG: pod metadata is simply absent, logged at debug),
/// and when it cannot start (logged as a warning). Never blocks on the API server.
pub fn start() -> Option<PodCacheHandle> {
    let in_cluster = env::var_os(SERVICE_HOST_ENV).is_some_and(|v| !v.is_empty());
    let kubeconfig = env::var_os(KUBECONFIG_ENV).is_some_and(|v| !v.is_empty());
    if !in_cluster && !kubeconfig {
        debug!("k8s: not in a Kubernetes pod and no {KUBECONFIG_ENV}: no pod metadata");
        return None;
    }
    let Some(node) = env::var(NODE_NAME_ENV).ok().filter(|n| !n.is_empty()) else {
        // Watching every pod of the cluster from every node would load the API server and
        // attribute nothing better: refuse instead.
        warn!(
            "k8s: {NODE_NAME_ENV} is not set, so pod metadata is off; set it from the downward \
             API (env valueFrom.fieldRef.fieldPath: spec.nodeName)"
        );
        return None;
    };
    match start_from_env(in_cluster, &node) {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!("k8s: pod metadata is off: {e}");
            None
        }
    }
}

fn start_from_env(in_cluster: bool, node: &str) -> Result<PodCacheHandle, WatchError> {
    let runtime = new_runtime()?;
    let config = if in_cluster {
        Config::incluster()?
    } else {
        runtime.block_on(Config::from_kubeconfig(&Default::default()))?
    };
    start_on(runtime, config, node)
}

/// Starts the pod watch of `node` with an explicit configuration (tests point it at a local
/// server). Returns once the client is built; the cache fills as the API server answers.
#[allow(dead_code)] // the entry point of tests/k8s_metadata.rs
pub fn start_with(config: Config, node: &str) -> Result<PodCacheHandle, WatchError> {
    start_on(new_runtime()?, config, node)
}

fn new_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn start_on(
    runtime: tokio::runtime::Runtime,
    config: Config,
    node: &str,
) -> Result<PodCacheHandle, WatchError> {
    // kube's rustls client needs a process-wide crypto provider; ring is the one pyusdt uses
    // (src/export/http.rs installs the same). A second install is a harmless no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = config.cluster_url.to_string();
    // hyper's connector registers with the runtime it is built in.
    let client = runtime.block_on(async { Client::try_from(config) })?;
    let cache = PodCacheHandle::default();
    let writer = cache.clone();
    let node = node.to_string();
    std::thread::Builder::new()
        .name("pyusdt-k8s".into())
        .spawn(move || runtime.block_on(watch_pods(client, node, server, writer)))?;
    Ok(cache)
}

/// Runs for the life of the process: kube's watcher re-lists and re-watches by itself, and its
/// default backoff (0.8 s doubling to 30 s, with jitter) spaces the retries after errors.
async fn watch_pods(client: Client, node: String, server: String, cache: PodCacheHandle) {
    let api: Api<Pod> = Api::all(client);
    // `any_semantic` without paging: the first list (and each re-list) is served from the API
    // server's watch cache (resourceVersion=0) rather than etcd, as client-go informers do, so
    // that every node's agent restarting at once stays cheap. kube drops resourceVersion=0 when
    // a page size is set (the cache ignores `limit`), and a node's pods (110 by default, the
    // kubelet's maxPods) need no paging.
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    config.page_size = None;
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    info!("k8s: watching the pods of node {node} at {server}");
    // Pods of a list in progress; swapped in whole at its end.
    let mut listing: Vec<PodMetadata> = Vec::new();
    // The failure being retried, so that it is logged once and its end too.
    let mut failing: Option<String> = None;
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(e) => {
                report_error(&e, &server, &mut failing);
                continue;
            }
        };
        // `Init` comes before the list request, so it says nothing about the API server.
        if !matches!(event, Event::Init) {
            if let Some(what) = failing.take() {
                info!("k8s: pod watch works again (after: {what})");
            }
        }
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(pod) => listing.push(PodMetadata::from_pod(&pod)),
            Event::InitDone => {
                debug!("k8s: {} pods listed on node {node}", listing.len());
                cache.replace_all(std::mem::take(&mut listing));
            }
            Event::Apply(pod) => cache.upsert(PodMetadata::from_pod(&pod)),
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    cache.remove(uid);
                }
            }
        }
    }
    // The watcher stream does not end; if it ever does, metadata stops being updated.
    warn!("k8s: the pod watch ended; pod metadata will not be updated any more");
}

/// Logs a watch error: at warning level the first time it occurs in a row, at debug while it is
/// retried. Routine ends of a watch are only logged at debug: a `410 Gone` (too old to resume;
/// kube re-lists) and a stream cut mid-watch (API server restart, idle timeout of a load
/// balancer; kube re-watches, and a server that is really gone fails the next request).
fn report_error(error: &watcher::Error, server: &str, failing: &mut Option<String>) {
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => {
            debug!("k8s: watch expired, re-listing: {}", status.message);
            return;
        }
        watcher::Error::WatchFailed(e) => {
            debug!("k8s: watch stream interrupted, resuming: {}", chain(e));
            return;
        }
        _ => {}
    }
    let message = describe(error, server);
    if failing.as_deref() == Some(message.as_str()) {
        debug!("k8s: still failing, retrying: {message}");
    } else {
        warn!("k8s: {message}; retrying with backoff, pod metadata may be missing meanwhile");
        *failing = Some(message);
    }
}

/// What went wrong, and what to do about it.
fn describe(error: &watcher::Error, server: &str) -> String {
    let client_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => {
            return format!(
                "the API server ended the pod watch: {} {} ({})",
                status.code, status.reason, status.message
            )
        }
        watcher::Error::NoResourceVersion => {
            return "the API server's pod list has no resourceVersion".to_string()
        }
    };
    match client_error {
        kube::Error::Api(status) if status.code == 401 => format!(
            "the API server at {server} rejected pyusdt's credentials (401 Unauthorized): \
             is the service account token mounted and valid?"
        ),
        kube::Error::Api(status) if status.code == 403 => format!(
            "the API server refused to list/watch pods (403 Forbidden: {}); pyusdt's \
             ServiceAccount needs get, list and watch on pods (the ClusterRole in deploy/)",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        // Connection refused, DNS, TLS: the useful part is deep in the source chain.
        other => format!("cannot reach the API server at {server}: {}", chain(other)),
    }
}

/// An error and its sources, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // hyper and tower repeat the inner message in the outer one.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
