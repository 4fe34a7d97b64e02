//! `--exporter file`: OTLP/JSON lines, one Export…ServiceRequest per line, as the OpenTelemetry
//! Collector's file exporter writes them (hex trace and span IDs, lowerCamelCase fields).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Payload, SendError, StartError};

pub struct FileTransport {
    out: BufWriter<File>,
}

/// Files created by `create_early`, until `create` takes them.
static EARLY: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

fn open(path: &Path) -> Result<File, StartError> {
    File::create(path).map_err(|source| StartError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the file now, for a later `create` of the same path: `agent` creates it as root,
/// before it becomes a user that may not create it there.
pub fn create_early(path: &Path) -> Result<(), StartError> {
    let file = open(path)?;
    // A poisoned lock only means a panic elsewhere while it was held: the list is still sound.
    EARLY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((path.to_path_buf(), file));
    Ok(())
}

impl FileTransport {
    pub fn create(path: &Path) -> Result<FileTransport, StartError> {
        let early = EARLY.lock().ok().and_then(|mut files| {
            let i = files.iter().position(|(p, _)| p == path)?;
            Some(files.swap_remove(i).1)
        });
        let file = match early {
            Some(f) => f,
            None => open(path)?,
        };
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
