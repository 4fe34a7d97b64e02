//! `--exporter file`: OTLP/JSON lines, one Export…ServiceRequest per line, as the OpenTelemetry
//! Collector's file exporter writes them (hex trace and span IDs, lowerCamelCase fields).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{Payload, SendError};

pub struct FileTransport {
    out: BufWriter<File>,
}

impl FileTransport {
    pub fn create(path: &Path) -> Result<FileTransport, String> {
        let file = File::create(path)
            .map_err(|e| format!("cannot write --otlp-file {}: {e}", path.display()))?;
        Ok(FileTransport {
            out: BufWriter::new(file),
        })
    }

    pub fn send(&mut self, payload: &Payload) -> Result<u64, SendError> {
        let written = match payload {
            Payload::Traces(r) => serde_json::to_writer(&mut self.out, r),
            Payload::Metrics(r) => serde_json::to_writer(&mut self.out, r),
            Payload::Logs(r) => serde_json::to_writer(&mut self.out, r),
        }
        .map_err(std::io::Error::from)
        .and_then(|()| self.out.write_all(b"\n"))
        .and_then(|()| self.out.flush());
        written.map(|()| 0).map_err(|e| SendError {
            retryable: false,
            message: format!("writing the OTLP file: {e}"),
            retry_after: None,
        })
    }
}
