//! Kubernetes metadata of traced processes: the process's container and pod from its cgroup
//! (`cgroup`), the pods of this node from a node-scoped watch of the API server (`watch` into
//! `cache`), and the resource attributes and `service.name` they give (`metadata`).
pub mod cache;
pub mod cgroup;
pub mod metadata;
pub mod watch;
