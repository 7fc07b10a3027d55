//! The log file writer: rotation by size, a backup count, an optional age limit and
//! optional gzip compression, built on the `file-rotate` crate.
//!
//! Backups are numbered: `agent.log.1` is the newest, `agent.log.2` the one before, and so
//! on, with `.gz` once compressed. Names never depend on the clock, so a clock that steps
//! back (NTP, a restored VM, the repeated hour at a DST change) cannot make two backups
//! collide. `max_age` is measured from each backup's modification time.
//!
//! The writer runs on the worker thread of `tracing_appender::non_blocking`, never on a
//! shard, so rotating and compressing a file does not stall a relay. The checks and the
//! clean-up in [`open`] run on the thread that installs the logger, before any shard starts.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use file_rotate::compression::Compression;
use file_rotate::suffix::SuffixScheme;
use file_rotate::{ContentLimit, FileRotate};

use crate::config::logger::BackupPolicy;

/// A log file path that cannot be written to or rotated. Every message starts with the
/// log file path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogPathError {
    /// The path cannot be made absolute, for example because the working folder was removed.
    #[error("log file {}: cannot resolve the path: {source}", path.display())]
    Resolve { path: PathBuf, source: io::Error },
    /// The path has no file name, such as `/` or `log/..`.
    #[error("log file {}: the path does not end in a file name", path.display())]
    NoFileName { path: PathBuf },
    /// The path is a folder.
    #[error("log file {}: the path is a folder", path.display())]
    IsFolder { path: PathBuf },
    /// The log folder is missing and cannot be created.
    #[error("log file {}: cannot create its folder {}: {source}", path.display(), folder.display())]
    CreateFolder {
        path: PathBuf,
        folder: PathBuf,
        source: io::Error,
    },
    /// The log folder cannot be listed, which finding the backups requires.
    #[error("log file {}: cannot list its folder {}: {source}", path.display(), folder.display())]
    ReadFolder {
        path: PathBuf,
        folder: PathBuf,
        source: io::Error,
    },
    /// No file can be created in the log folder, so a rotation cannot start a new log file.
    #[error(
        "log file {}: cannot create files in its folder {}, so the file could not be rotated: {source}",
        path.display(),
        folder.display()
    )]
    FolderNotWritable {
        path: PathBuf,
        folder: PathBuf,
        source: io::Error,
    },
    /// The log file exists but cannot be opened for appending.
    #[error("log file {}: cannot open it for appending: {source}", path.display())]
    FileNotWritable { path: PathBuf, source: io::Error },
}

/// Checks that `path` can be used as the log file, and returns it made absolute.
///
/// Creates the log folder when it is missing, creates and deletes a probe file in it, and
/// opens an existing log file for appending. A missing log file is not created.
///
/// The Agent and the Server run this at start through [`open`], and `ipaas-agent check`
/// runs it through `LoggerConfig::check_file`, so the check also creates a missing folder.
pub(crate) fn check_log_path(path: &Path) -> Result<PathBuf, LogPathError> {
    // file-rotate takes the folder from `path.parent()`, which is empty for a bare file name
    // such as `server.log`. An absolute path gives it the real folder.
    let path = std::path::absolute(path).map_err(|source| LogPathError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(LogPathError::NoFileName { path });
    };
    if path.is_dir() {
        return Err(LogPathError::IsFolder { path });
    }

    // file-rotate 0.8 panics when it cannot create or list the folder.
    std::fs::create_dir_all(folder).map_err(|source| LogPathError::CreateFolder {
        path: path.clone(),
        folder: folder.to_owned(),
        source,
    })?;
    std::fs::read_dir(folder).map_err(|source| LogPathError::ReadFolder {
        path: path.clone(),
        folder: folder.to_owned(),
        source,
    })?;

    // A rotation renames the log file and creates a new one, which needs write permission on
    // the folder even when the log file itself is writable. tracing-appender drops write
    // errors, so without this check every line after the first rotation would be lost
    // without a message. The leading dot keeps the probe out of the backup names.
    let probe = folder.join(format!(
        ".{}.{}.probe",
        name.to_string_lossy(),
        std::process::id()
    ));
    let not_writable = |source| LogPathError::FolderNotWritable {
        path: path.clone(),
        folder: folder.to_owned(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)?;

    // A missing file is fine: the probe showed that the folder accepts new files.
    match OpenOptions::new().append(true).open(&path) {
        Ok(_) => Ok(path),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(path),
        Err(source) => Err(LogPathError::FileNotWritable { path, source }),
    }
}

/// An open log file with its rotation set up.
pub(super) struct LogFile {
    pub writer: FileRotate<Backups>,
    /// Changes [`open`] made to the existing backups, for the caller to log.
    pub cleanup: Cleanup,
}

/// Changes [`open`] made to the backups it found, and the ones it could not make.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    /// Compressed backups deleted because the uncompressed backup of the same name was still
    /// there, which means their compression was cut short.
    pub incomplete: Vec<PathBuf>,
    /// Number of backups with time-stamped names renamed to numbered names.
    pub renamed: usize,
    /// Backups that could not be deleted or renamed, with the error.
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Checks `path` with [`check_log_path`], cleans up its backups and opens it for
/// appending, rotated as `policy` sets.
///
/// Backups beyond `max_backups` or older than `max_age` are deleted here and after each
/// rotation, so a backup can outlive `max_age` while the log is quiet.
///
/// NOTE: file-rotate 0.8 recreates a log folder that was removed while the program runs,
/// and panics on the writer thread when it cannot. File logging then stops until a restart.
pub(super) fn open(path: &Path, policy: &BackupPolicy) -> Result<LogFile, LogPathError> {
    let path = check_log_path(path)?;

    let mut cleanup = Cleanup::default();
    delete_incomplete_gzip(&path, &mut cleanup);
    rename_timestamped(&path, &mut cleanup);
    let scheme = Backups::new(&path, policy);
    delete_expired(&scheme, &path, &mut cleanup);

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
    Ok(LogFile { writer, cleanup })
}

/// A file beside the log file whose name has a backup suffix.
struct Found {
    /// File name, such as `agent.log.3.gz`.
    file_name: String,
    /// The suffix without the log file name and without `.gz`, such as `3`.
    suffix: String,
    compressed: bool,
}

/// Lists the entries in the folder of `path` named `<file name of path>.<suffix>`.
fn find_suffixed(path: &Path) -> io::Result<Vec<Found>> {
    let (Some(folder), Some(base)) = (path.parent(), path.file_name().and_then(OsStr::to_str))
    else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");

    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let file_name = entry?.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let (suffix, compressed) = match rest.strip_suffix(".gz") {
            Some(suffix) => (suffix, true),
            None => (rest, false),
        };
        found.push(Found {
            file_name: file_name.to_owned(),
            suffix: suffix.to_owned(),
            compressed,
        });
    }
    Ok(found)
}

/// Deletes `X.gz` where backup `X` also exists. file-rotate 0.8 compresses by writing `X.gz`
/// and then deleting `X`, so both exist only when that was cut short, and then `X` is the
/// complete copy. file-rotate counts the two as one backup and could delete `X` and keep the
/// truncated `X.gz`.
///
/// NOTE: a compression that fails while the program runs (a full disk, for example) leaves
/// the same pair, which is only cleaned up here at the next start.
fn delete_incomplete_gzip(path: &Path, cleanup: &mut Cleanup) {
    let Ok(found) = find_suffixed(path) else {
        return;
    };
    let names: HashSet<&str> = found.iter().map(|file| file.file_name.as_str()).collect();
    let base = path.file_name().unwrap_or_default().to_string_lossy();

    for file in found.iter().filter(|file| file.compressed) {
        let is_backup = parse_number(&file.suffix).is_some() || is_timestamp_suffix(&file.suffix);
        let uncompressed = format!("{base}.{}", file.suffix);
        if !is_backup || !names.contains(uncompressed.as_str()) {
            continue;
        }
        let gzip = path.with_file_name(&file.file_name);
        match std::fs::remove_file(&gzip) {
            Ok(()) => cleanup.incomplete.push(gzip),
            Err(error) => cleanup.failed.push((gzip, error)),
        }
    }
}

/// Renames backups named after the local time (`agent.log.20250301T142500`, with an
/// optional `.N` and `.gz`), as earlier versions named them, to numbers after the highest
/// numbered backup, newest first by modification time. The count and age limits then apply
/// to them as to any backup, and every later rotation moves them along.
fn rename_timestamped(path: &Path, cleanup: &mut Cleanup) {
    let Ok(found) = find_suffixed(path) else {
        return;
    };
    let first = found
        .iter()
        .filter_map(|file| parse_number(&file.suffix))
        .max()
        .unwrap_or(0)
        + 1;

    let mut timestamped: Vec<(SystemTime, &Found)> = found
        .iter()
        .filter(|file| is_timestamp_suffix(&file.suffix))
        .map(|file| (modified(&path.with_file_name(&file.file_name)), file))
        .collect();
    // Newest first; the name breaks ties, and a later name is the later rotation.
    timestamped.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.suffix.cmp(&a.1.suffix)));

    for (number, (_, file)) in (first..).zip(timestamped) {
        let from = path.with_file_name(&file.file_name);
        let to = Backups::path_of(path, number, file.compressed);
        if to.exists() {
            let error =
                io::Error::new(ErrorKind::AlreadyExists, format!("{} exists", to.display()));
            cleanup.failed.push((from, error));
            continue;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => cleanup.renamed += 1,
            Err(error) => cleanup.failed.push((from, error)),
        }
    }
}

/// Deletes the backups of `path` that `scheme` no longer keeps, such as those left over a
/// lower `max_backups` or a long stop.
fn delete_expired(scheme: &Backups, path: &Path, cleanup: &mut Cleanup) {
    // `scan_suffixes` sorts the newest backup first, which is the order `too_old` counts in.
    for (index, backup) in scheme.scan_suffixes(path).iter().enumerate() {
        if !scheme.too_old(&backup.suffix, index) {
            continue;
        }
        let backup_path = backup.to_path(path);
        if let Err(error) = std::fs::remove_file(&backup_path) {
            cleanup.failed.push((backup_path, error));
        }
    }
}

/// Modification time of `path`, or the Unix epoch when it cannot be read.
fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Parses a backup number: decimal digits without a sign or a leading zero, 1 or more.
/// file-rotate builds the path back from the number, so `01` would name another file.
fn parse_number(suffix: &str) -> Option<usize> {
    if suffix.starts_with('0') || !suffix.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// Reports whether `suffix` has the form earlier versions gave backups: the local time as
/// `YYYYMMDDTHHMMSS`, with an optional `.N`.
fn is_timestamp_suffix(suffix: &str) -> bool {
    let (timestamp, number) = match suffix.split_once('.') {
        Some((timestamp, number)) => (timestamp, Some(number)),
        None => (suffix, None),
    };
    let timestamp_ok = timestamp.len() == 15
        && timestamp.char_indices().all(|(index, c)| match index {
            8 => c == 'T',
            _ => c.is_ascii_digit(),
        });
    let number_ok = number.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    timestamp_ok && number_ok
}

/// Names backups `<file>.1` (newest), `<file>.2` and so on, with `.gz` when compressed.
/// A backup is deleted when it is past the count or the age limit.
pub(super) struct Backups {
    /// The log file, whose backups' modification times `too_old` reads.
    base: PathBuf,
    max_backups: usize,
    max_age: Option<Duration>,
}

impl Backups {
    fn new(base: &Path, policy: &BackupPolicy) -> Self {
        Self {
            base: base.to_owned(),
            max_backups: policy.max_backups,
            max_age: policy.max_age,
        }
    }

    /// Path of backup `number` of the log file `base`.
    fn path_of(base: &Path, number: usize, compressed: bool) -> PathBuf {
        let mut name = base.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{number}"));
        if compressed {
            name.push(".gz");
        }
        base.with_file_name(name)
    }

    /// Reports whether backup `number` was last modified longer than `max_age` ago. A
    /// modification time in the future counts as new, so such a backup is deleted by the
    /// count only, once newer backups have pushed it past `max_backups`.
    fn expired(&self, number: usize) -> bool {
        let Some(max_age) = self.max_age else {
            return false;
        };
        // A compressed backup was written at its rotation; an uncompressed one was last
        // written with its final line. Renames keep either time.
        let metadata = std::fs::metadata(Self::path_of(&self.base, number, false))
            .or_else(|_| std::fs::metadata(Self::path_of(&self.base, number, true)));
        let Ok(modified) = metadata.and_then(|metadata| metadata.modified()) else {
            return false;
        };
        SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age > max_age)
    }
}

impl SuffixScheme for Backups {
    type Repr = usize;

    /// Moves the log file to `.1` and backup `n` to `n + 1`. file-rotate moves an
    /// existing backup out of the way first, so each rotation renames every backup.
    fn rotate_file(
        &mut self,
        _basepath: &Path,
        _newest_suffix: Option<&usize>,
        suffix: &Option<usize>,
    ) -> io::Result<usize> {
        Ok(suffix.map_or(1, |number| number + 1))
    }

    fn parse(&self, suffix: &str) -> Option<usize> {
        parse_number(suffix)
    }

    /// `file_number` is 0 for the newest backup.
    fn too_old(&self, suffix: &usize, file_number: usize) -> bool {
        file_number >= self.max_backups || self.expired(*suffix)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

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

    /// Writes `text` to `path` and sets its modification time to `modified`.
    fn write_backup(path: &Path, text: &str, modified: SystemTime) {
        std::fs::write(path, text).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }

    /// Writes `count` lines of 60 bytes, each starting with `tag` and its index, with one
    /// call each as tracing-appender makes them. `writeln!` would make several calls, and a
    /// rotation could fall between two of them.
    fn write_lines(file: &mut impl Write, tag: &str, count: usize) {
        for index in 0..count {
            let line = format!("{tag} {index:04} {}\n", "x".repeat(53 - tag.len()));
            file.write_all(line.as_bytes()).unwrap();
        }
    }

    /// Name that earlier versions gave a backup rotated `offset` seconds from now.
    fn timestamp_name(offset: i64) -> String {
        let time = chrono::Local::now() + chrono::TimeDelta::seconds(offset);
        time.format("agent.log.%Y%m%dT%H%M%S").to_string()
    }

    #[test]
    fn rotation_keeps_max_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let mut file = open(&path, &policy(100, 3, false)).unwrap().writer;
        write_lines(&mut file, "line", 20);

        let names = backups(dir.path(), "agent.log");
        assert_eq!(names, ["agent.log.1", "agent.log.2", "agent.log.3"]);
        for name in &names {
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            // Rotation happens before the first write once the file is past 100 bytes.
            assert!(size > 100, "{name} has {size} bytes");
            assert!(size <= 160, "{name} has {size} bytes");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 160);

        // Each backup contains two lines, and the newest one contains lines 16 and 17.
        let newest = std::fs::read_to_string(dir.path().join("agent.log.1")).unwrap();
        assert!(newest.starts_with("line 0016 "), "{newest}");
        let oldest = std::fs::read_to_string(dir.path().join("agent.log.3")).unwrap();
        assert!(oldest.starts_with("line 0012 "), "{oldest}");
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
        assert_eq!(names, ["agent.log.1.gz", "agent.log.2.gz"]);
        for name in &names {
            let mut text = String::new();
            flate2::read::GzDecoder::new(File::open(dir.path().join(name)).unwrap())
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
        let now = SystemTime::now();
        let cases = [
            ("agent.log.1", now),
            ("agent.log.2.gz", now - DAY / 2),
            ("agent.log.3", now - DAY / 4),
            ("agent.log.4", now - 2 * DAY),
            ("agent.log.5.gz", now - 3 * DAY),
            ("unrelated.txt", now - 3 * DAY),
        ];
        for (name, modified) in cases {
            write_backup(&dir.path().join(name), "old\n", modified);
        }

        // The backups of two and three days ago are past the age, and the third backup is
        // past the count.
        let policy = BackupPolicy {
            max_age: Some(DAY),
            ..policy(1024, 2, false)
        };
        let opened = open(&path, &policy).unwrap();
        assert!(opened.cleanup.failed.is_empty());
        assert_eq!(
            backups(dir.path(), "agent.log"),
            ["agent.log.1", "agent.log.2.gz", "unrelated.txt"]
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "current\n");
    }

    #[test]
    fn future_modification_time_is_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let next_year = SystemTime::now() + 365 * DAY;
        write_backup(&dir.path().join("agent.log.1"), "future\n", next_year);

        let policy = BackupPolicy {
            max_age: Some(DAY),
            ..policy(1024, 2, false)
        };
        open(&path, &policy).unwrap();
        assert_eq!(backups(dir.path(), "agent.log"), ["agent.log.1"]);
    }

    #[test]
    fn rotation_survives_names_of_the_current_second() {
        // Time-stamped backups named for this second and the next five, plus one from the
        // far future: the naming of earlier versions then reused an existing name and
        // file-rotate panicked on an assertion.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        for offset in 0..6 {
            std::fs::write(dir.path().join(timestamp_name(offset)), "older\n").unwrap();
        }
        std::fs::write(dir.path().join("agent.log.29990101T000000"), "older\n").unwrap();

        let mut file = open(&path, &policy(100, 20, false)).unwrap().writer;
        write_lines(&mut file, "line", 10);

        // Four rotations of two lines each, after the seven renamed backups.
        let mut expected: Vec<String> = (1..=11).map(|n| format!("agent.log.{n}")).collect();
        expected.sort();
        assert_eq!(backups(dir.path(), "agent.log"), expected);
        let newest = std::fs::read_to_string(dir.path().join("agent.log.1")).unwrap();
        assert!(newest.starts_with("line 0006 "), "{newest}");
    }

    #[test]
    fn future_name_keeps_real_backup() {
        // With one backup kept, a backup named in the future used to stay the newest, so
        // every real backup was deleted right after its rotation.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(dir.path().join("agent.log.29990101T000000"), "future\n").unwrap();

        let mut file = open(&path, &policy(100, 1, false)).unwrap().writer;
        write_lines(&mut file, "line", 3);

        assert_eq!(backups(dir.path(), "agent.log"), ["agent.log.1"]);
        let backup = std::fs::read_to_string(dir.path().join("agent.log.1")).unwrap();
        assert!(backup.starts_with("line 0000 "), "{backup}");
    }

    #[test]
    fn timestamped_backups_are_renumbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let now = SystemTime::now();
        let cases = [
            ("agent.log.1", "one", now),
            ("agent.log.2.gz", "two", now - Duration::from_secs(60)),
            ("agent.log.20250302T000000.gz", "newer", now - DAY),
            ("agent.log.20250301T000000.1", "same second", now - 2 * DAY),
            ("agent.log.20250301T000000", "oldest", now - 2 * DAY),
        ];
        for (name, text, modified) in cases {
            write_backup(&dir.path().join(name), text, modified);
        }

        let opened = open(&path, &policy(1024, 4, false)).unwrap();
        assert_eq!(opened.cleanup.renamed, 3);
        assert!(opened.cleanup.failed.is_empty());

        // The oldest, renamed to .5, is past max_backups.
        let names = backups(dir.path(), "agent.log");
        assert_eq!(
            names,
            [
                "agent.log.1",
                "agent.log.2.gz",
                "agent.log.3.gz",
                "agent.log.4"
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("agent.log.3.gz"), "newer");
        assert_eq!(read("agent.log.4"), "same second");
    }

    #[test]
    fn incomplete_gzip_is_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(dir.path().join("agent.log.1"), "complete\n").unwrap();
        std::fs::write(dir.path().join("agent.log.1.gz"), [0x1f, 0x8b, 0x08]).unwrap();
        std::fs::write(dir.path().join("agent.log.2.gz"), [0x1f, 0x8b]).unwrap();
        std::fs::write(dir.path().join("agent.log.20250301T000000"), "old\n").unwrap();
        std::fs::write(dir.path().join("agent.log.20250301T000000.gz"), [0x1f]).unwrap();

        let opened = open(&path, &policy(1024, 10, false)).unwrap();
        let mut incomplete: Vec<_> = opened
            .cleanup
            .incomplete
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        incomplete.sort();
        assert_eq!(
            incomplete,
            ["agent.log.1.gz", "agent.log.20250301T000000.gz"]
        );

        // The complete copies stay; the time-stamped one is renamed after the others.
        assert_eq!(
            backups(dir.path(), "agent.log"),
            ["agent.log.1", "agent.log.2.gz", "agent.log.3"]
        );
        let kept = std::fs::read_to_string(dir.path().join("agent.log.1")).unwrap();
        assert_eq!(kept, "complete\n");
    }

    #[test]
    fn backup_numbers_are_canonical() {
        for (text, number) in [("1", Some(1)), ("12", Some(12))] {
            assert_eq!(parse_number(text), number, "{text}");
        }
        for bad in ["", "0", "01", "+1", "-1", "1a", "20250301T142500"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
        assert!(is_timestamp_suffix("20250301T142500"));
        assert!(is_timestamp_suffix("20250301T142500.2"));
        for bad in ["1", "20250301142500", "20250301T14250", "20250301T142500."] {
            assert!(!is_timestamp_suffix(bad), "{bad}");
        }
    }

    #[test]
    fn folder_in_place_of_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_log_path(dir.path()).unwrap_err();
        assert!(matches!(error, LogPathError::IsFolder { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn file_in_place_of_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "").unwrap();
        let error = open(&blocker.join("agent.log"), &policy(1024, 1, false))
            .err()
            .expect("a file in place of the folder must fail");
        assert!(
            matches!(error, LogPathError::CreateFolder { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("not-a-folder"), "{error}");
    }

    #[test]
    fn missing_folder_is_created_without_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/agent.log");
        assert_eq!(check_log_path(&path).unwrap(), path);
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(backups(&dir.path().join("a/b"), ""), Vec::<String>::new());
    }

    /// A folder that refuses new files until dropped. Permission bits do this for a normal
    /// user but not for root, so for root the folder gets the immutable attribute
    /// (`chattr +i`), which leaves the files inside writable.
    struct ReadOnlyFolder {
        path: PathBuf,
        immutable: bool,
    }

    impl ReadOnlyFolder {
        /// Returns `None` when running as root without a working `chattr`.
        fn new(path: &Path) -> Option<Self> {
            let owner = std::fs::metadata(path).unwrap().uid();
            if owner != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
                return Some(Self {
                    path: path.to_owned(),
                    immutable: false,
                });
            }
            let status = Command::new("chattr").arg("+i").arg(path).status();
            status.is_ok_and(|status| status.success()).then(|| Self {
                path: path.to_owned(),
                immutable: true,
            })
        }
    }

    impl Drop for ReadOnlyFolder {
        fn drop(&mut self) {
            if self.immutable {
                let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
            } else {
                let _ =
                    std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
            }
        }
    }

    #[test]
    fn read_only_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("log");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("agent.log");
        std::fs::write(&path, "writable\n").unwrap();
        let Some(_read_only) = ReadOnlyFolder::new(&folder) else {
            println!(
                "skipped: running as root and `chattr +i` failed on {}",
                folder.display()
            );
            return;
        };

        // The file itself takes writes; only a rotation would fail.
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        let error = open(&path, &policy(1024, 1, false))
            .err()
            .expect("a read-only folder must fail");
        assert!(
            matches!(error, LogPathError::FolderNotWritable { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains(&folder.display().to_string()),
            "{error}"
        );
    }
}
