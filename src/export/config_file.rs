//! The config file of `--config` (TOML): its shape, read as is; src/export/config.rs
//! resolves it against the flags and the `OTEL_*` environment.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::RedactedHeaders;

/// The config file (`--config`, TOML). Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub exporter: Option<String>,
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub otlp: FileOtlp,
    #[serde(default)]
    pub metrics: FileMetrics,
    #[serde(default)]
    pub batch: FileBatch,
    #[serde(default)]
    pub audit: FileAudit,
    #[serde(default)]
    pub resource: FileResource,
}

/// `[otlp]` of the config file. Its Debug shows header names, never their values.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_ms: Option<u64>,
    pub compression: Option<String>,
    /// PEM file of CA certificates to trust for an https:// endpoint.
    pub certificate: Option<PathBuf>,
}

impl fmt::Debug for FileOtlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self
            .headers
            .as_ref()
            .map(|h| RedactedHeaders(h.keys().map(String::as_str).collect()));
        f.debug_struct("FileOtlp")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &names)
            .field("timeout_ms", &self.timeout_ms)
            .field("compression", &self.compression)
            .field("certificate", &self.certificate)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub interval_ms: Option<u64>,
    pub temporality: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBatch {
    pub schedule_delay_ms: Option<u64>,
    pub max_queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    pub log_events: Option<Vec<String>>,
    pub args: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResource {
    pub command_line: Option<bool>,
}

pub fn read_file(path: &Path) -> Result<FileConfig, super::config::ConfigError> {
    use super::config::ConfigError;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source,
    })
}
