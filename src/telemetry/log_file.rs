//! The log file writer: rotation by size, a backup count, an optional age limit and
//! optional gzip compression, built on the `file-rotate` crate.
//!
//! The writer runs on the worker thread of `tracing_appender::non_blocking`, never on a
//! shard, so rotating and compressing a file does not stall a relay.

use std::io;
use std::path::{Path, PathBuf};

use file_rotate::compression::Compression;
use file_rotate::suffix::{AppendTimestamp, FileLimit, SuffixScheme, TimestampSuffix};
use file_rotate::{ContentLimit, FileRotate};

use crate::config::logger::BackupPolicy;

/// An open log file with its rotation set up.
pub(super) struct LogFile {
    pub writer: FileRotate<Backups>,
    /// Backups past the count or the age limit that could not be deleted at start, each
    /// with the error.
    pub stale: Vec<(PathBuf, io::Error)>,
}

/// Opens `path` for appending and rotates it as `policy` sets.
///
/// Backups beyond `max_backups` or older than `max_age` are deleted here and after each
/// rotation, so a backup can outlive `max_age` while the log is quiet.
///
/// NOTE: file-rotate 0.8 recreates a log folder that was removed while the program runs,
/// and panics on the writer thread when it cannot. File logging then stops until a restart.
pub(super) fn open(path: &Path, policy: &BackupPolicy) -> anyhow::Result<LogFile> {
    // file-rotate takes the folder from `path.parent()`, which is empty for a bare file name
    // such as `server.log`. An absolute path gives it the real folder.
    let path = std::path::absolute(path).map_err(|error| {
        anyhow::anyhow!("cannot resolve log file path {}: {error}", path.display())
    })?;
    check_access(&path)?;

    let scheme = Backups::new(policy)?;
    let stale = delete_expired(&scheme, &path);

    // ContentLimit::Bytes would cut a line across two files. BytesSurpassed rotates before
    // the first write after the file has passed `max_size`, and tracing_appender writes each
    // event with one call, so every file ends with a whole event.
    let max_size = usize::try_from(policy.max_size).unwrap_or(usize::MAX);
    let compression = if policy.compress {
        // The argument is how many of the newest backups stay uncompressed.
        Compression::OnRotate(0)
    } else {
        Compression::None
    };
    let writer = FileRotate::new(
        &path,
        scheme,
        ContentLimit::BytesSurpassed(max_size),
        compression,
        None,
    );
    Ok(LogFile { writer, stale })
}

/// Creates the log folder and opens the file once, so that a missing permission is
/// reported here with the path. file-rotate 0.8 panics when the folder cannot be created or
/// read, and drops every write when the file cannot be opened.
fn check_access(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| {
            anyhow::anyhow!("cannot create log folder {}: {error}", dir.display())
        })?;
        std::fs::read_dir(dir).map_err(|error| {
            anyhow::anyhow!("cannot list log folder {}: {error}", dir.display())
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| anyhow::anyhow!("cannot open log file {}: {error}", path.display()))?;
    Ok(())
}

/// Deletes the backups of `path` that `scheme` no longer keeps, such as those left over a
/// lower `max_backups` or a long stop. Returns the ones that could not be deleted.
fn delete_expired(scheme: &Backups, path: &Path) -> Vec<(PathBuf, io::Error)> {
    let mut failed = Vec::new();

    // `scan_suffixes` sorts the newest backup first, which is the order `too_old` counts in.
    for (index, backup) in scheme.scan_suffixes(path).iter().enumerate() {
        if !scheme.too_old(&backup.suffix, index) {
            continue;
        }
        let backup_path = backup.to_path(path);
        if let Err(error) = std::fs::remove_file(&backup_path) {
            failed.push((backup_path, error));
        }
    }
    failed
}

/// Names backups `<file>.<local time>`, such as `agent.log.20250301T142500`, with `.1`,
/// `.2` and so on added for more rotations within the same second, and `.gz` when
/// compressed. A backup is deleted when it is past the count or the age limit.
pub(super) struct Backups {
    /// Naming, parsing and the age check; its `FileLimit` carries only the age.
    names: AppendTimestamp,
    max_backups: usize,
}

impl Backups {
    fn new(policy: &BackupPolicy) -> anyhow::Result<Self> {
        let limit = match policy.max_age {
            None => FileLimit::Unlimited,
            Some(age) => {
                let age = chrono::TimeDelta::from_std(age).map_err(|_| {
                    anyhow::anyhow!("log max_age {age:?} is out of range; use 100 years or less")
                })?;
                FileLimit::Age(age)
            }
        };
        Ok(Self {
            names: AppendTimestamp::default(limit),
            max_backups: policy.max_backups,
        })
    }
}

impl SuffixScheme for Backups {
    type Repr = TimestampSuffix;

    fn rotate_file(
        &mut self,
        basepath: &Path,
        newest_suffix: Option<&TimestampSuffix>,
        suffix: &Option<TimestampSuffix>,
    ) -> io::Result<TimestampSuffix> {
        self.names.rotate_file(basepath, newest_suffix, suffix)
    }

    fn parse(&self, suffix: &str) -> Option<TimestampSuffix> {
        self.names.parse(suffix)
    }

    /// `file_number` is 0 for the newest backup.
    fn too_old(&self, suffix: &TimestampSuffix, file_number: usize) -> bool {
        file_number >= self.max_backups || self.names.too_old(suffix, file_number)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    fn policy(max_size: u64, max_backups: usize, compress: bool) -> BackupPolicy {
        BackupPolicy {
            max_size,
            max_backups,
            max_age: None,
            compress,
        }
    }

    /// Names of the files in `dir` other than `main`, sorted.
    fn backups(dir: &Path, main: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != main)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotation_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut file = open(&path, &policy(100, 3, false)).unwrap().writer;
        let mut line = [b'x'; 60];
        line[59] = b'\n';
        for _ in 0..20 {
            file.write_all(&line).unwrap();
        }

        let names = backups(dir.path(), "agent.log");
        assert_eq!(names.len(), 3, "{names:?}");
        for name in &names {
            assert!(name.starts_with("agent.log.2"), "{name}");
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            // Rotation happens before the first write once the file is past 100 bytes.
            assert!(size > 100, "{name} has {size} bytes");
            assert!(size <= 160, "{name} has {size} bytes");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 160);
    }

    #[test]
    fn compressed_backups_decompress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut file = open(&path, &policy(1000, 2, true)).unwrap().writer;
        for index in 0..100 {
            writeln!(file, "line {index:04} of the compression test").unwrap();
        }

        let names = backups(dir.path(), "agent.log");
        assert_eq!(names.len(), 2, "{names:?}");
        for name in &names {
            assert!(name.ends_with(".gz"), "{name}");
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(dir.path().join(name)).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.len() > 1000, "{name} holds {} bytes", text.len());
            assert!(text.ends_with('\n'), "{name} ends inside a line");
            assert!(text.starts_with("line "), "{name} starts inside a line");
        }
    }

    #[test]
    fn expired_backups_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "current\n").unwrap();
        for name in [
            "agent.log.20000101T000000",
            "agent.log.20000102T000000.gz",
            "agent.log.29990101T000000",
            "agent.log.29990102T000000",
            "agent.log.29990103T000000",
            "unrelated.txt",
        ] {
            std::fs::write(dir.path().join(name), "old\n").unwrap();
        }

        // The two backups from 2000 are past the age; of the rest, the oldest is past the
        // count.
        let policy = BackupPolicy {
            max_age: Some(Duration::from_secs(24 * 60 * 60)),
            ..policy(1024, 2, false)
        };
        let opened = open(&path, &policy).unwrap();
        assert!(opened.stale.is_empty());
        assert_eq!(
            backups(dir.path(), "agent.log"),
            [
                "agent.log.29990102T000000",
                "agent.log.29990103T000000",
                "unrelated.txt"
            ]
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "current\n");
    }

    #[test]
    fn unwritable_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "").unwrap();
        let error = open(&blocker.join("agent.log"), &policy(1024, 1, false))
            .err()
            .expect("a file in place of the folder must fail");
        assert!(error.to_string().contains("not-a-folder"), "{error}");
    }
}
