//! The Agent package behind "Download Agent", written as a tar.gz or zip archive.
//!
//! Everything sits in one `ipaas-private-cloud-agent/` folder: the Agent binaries, TLS files
//! issued for one gateway, a config prefilled with the Server address and the gateway's
//! services, the logger config and the start/stop scripts.
//!
//! [`build`] does blocking file I/O and generates a key pair, so call it from a blocking
//! thread, never from a shard's event loop.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use zip::result::ZipError;
use zip::write::{FullFileOptions, ZipWriter};
use zip::{CompressionMethod, DateTime};

use crate::config::{AgentConfig, ConfigError, Endpoint};
use crate::protocol::handshake::validate_name;
use crate::tls::pki::{self, PkiError};

/// Folder that contains every other entry of the package.
pub const TOP_FOLDER: &str = "ipaas-private-cloud-agent";

const LOGGER_CONFIG: &str = include_str!("../../configs/logger_config.yaml");

/// Start and stop scripts, as shipped in the repository's `scripts/` folder.
const SCRIPTS: [(&str, &str); 7] = [
    (
        "scripts/linux/start.sh",
        include_str!("../../scripts/linux/start.sh"),
    ),
    (
        "scripts/linux/stop.sh",
        include_str!("../../scripts/linux/stop.sh"),
    ),
    (
        "scripts/mac/start.sh",
        include_str!("../../scripts/mac/start.sh"),
    ),
    (
        "scripts/mac/stop.sh",
        include_str!("../../scripts/mac/stop.sh"),
    ),
    // A second macOS stop command, which runs scripts/mac/stop.sh.
    ("scripts/stop.sh", include_str!("../../scripts/stop.sh")),
    (
        "scripts/windows/start.bat",
        include_str!("../../scripts/windows/start.bat"),
    ),
    (
        "scripts/windows/stop.bat",
        include_str!("../../scripts/windows/stop.bat"),
    ),
];

const DIRECTORY_MODE: u32 = 0o755;
/// `configs/secret/` is meant for the Agent's private key, so only its owner may list it.
const SECRET_DIRECTORY_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o644;
const EXECUTABLE_MODE: u32 = 0o755;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Header id of the Info-ZIP extended timestamp field. It stores the modification time in
/// UTC seconds, because the DOS time of a zip entry has no time zone.
const ZIP_EXTENDED_TIMESTAMP: u16 = 0x5455;

/// A private service the Agent relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageService {
    /// Service name, as configured for the gateway on the Server.
    pub name: String,
    /// Private `host:port` the Agent dials for this service.
    pub target: String,
}

/// Inputs of one gateway's Agent package.
#[derive(Debug, Clone, Copy)]
pub struct PackageSpec<'a> {
    pub gateway_id: &'a str,
    /// `host:port` of the Server's Agent port, as the Agent dials it.
    pub server_address: &'a str,
    /// DNS name or IP address in the Server certificate (`server.tls_name` in the Agent
    /// config).
    pub server_name: &'a str,
    pub services: &'a [PackageService],
    /// PKI folder made by `ipaas-server pki init`. Its CA signs the package's client
    /// certificate.
    pub pki_dir: &'a Path,
    /// Folder with `Linux/ipaas-agent`, `Mac/ipaas-agent` and `Windows/ipaas-agent.exe`,
    /// any of which may be missing. `None` builds a package without binaries.
    pub artifacts_dir: Option<&'a Path>,
}

/// Archive format of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageFormat {
    TarGz,
    Zip,
}

impl PackageFormat {
    /// Parses a format name: `tar.gz` or `zip`.
    pub fn from_name(name: &str) -> Result<Self, PackageError> {
        match name {
            "tar.gz" => Ok(Self::TarGz),
            "zip" => Ok(Self::Zip),
            _ => Err(PackageError::Format {
                name: name.to_owned(),
            }),
        }
    }

    /// File name extension without the leading dot: `tar.gz` or `zip`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
        }
    }

    /// Media type of the archive, for a `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::TarGz => "application/gzip",
            Self::Zip => "application/zip",
        }
    }
}

/// Operating system with its own Agent binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Linux,
    Mac,
    Windows,
}

impl Platform {
    /// Every platform, in package order.
    pub const ALL: [Self; 3] = [Self::Linux, Self::Mac, Self::Windows];

    /// Folder of the binary, both under the package's `bin/` and under the artifacts folder.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Linux => "Linux",
            Self::Mac => "Mac",
            Self::Windows => "Windows",
        }
    }

    /// File name of the Agent binary.
    pub fn binary_name(self) -> &'static str {
        match self {
            Self::Windows => "ipaas-agent.exe",
            Self::Linux | Self::Mac => "ipaas-agent",
        }
    }

    /// Path of the binary relative to the package's top folder, such as `bin/Mac/ipaas-agent`.
    pub fn package_path(self) -> String {
        format!("bin/{}/{}", self.folder(), self.binary_name())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// Platforms whose Agent binary is in a built package, and those whose binary was missing
/// from the artifacts folder. The package's README.txt names the missing ones too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackageReport {
    pub included: Vec<Platform>,
    pub missing: Vec<Platform>,
}

/// Errors of the package builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The requested archive format is not supported.
    #[error("unknown package format `{name}`; use `tar.gz` or `zip`")]
    Format { name: String },
    /// The gateway's settings cannot make a working Agent config.
    #[error("cannot build the Agent package for gateway `{gateway}`: {}; fix the gateway in the Server config", problems.join("; "))]
    Spec {
        gateway: String,
        problems: Vec<String>,
    },
    /// Issuing the gateway's client certificate with the Server's CA failed.
    #[error("cannot issue the Agent certificate for gateway `{gateway}` with the PKI in {pki_dir}: {source}; create the PKI with `ipaas-server pki init --dir {pki_dir}` if it is missing")]
    Pki {
        gateway: String,
        pki_dir: PathBuf,
        source: PkiError,
    },
    /// The private temporary folder for the issued TLS files could not be used.
    #[error("cannot use the temporary folder {path}: {source}; set TMPDIR to a writable folder")]
    TempDir { path: PathBuf, source: io::Error },
    /// The artifacts folder is missing or unreadable.
    #[error("cannot read the Agent binaries folder {path}: {source}; create it with Linux/, Mac/ and Windows/ subfolders holding the ipaas-agent builds, or leave it unset")]
    ArtifactsDir { path: PathBuf, source: io::Error },
    /// An Agent binary exists but could not be read.
    #[error("cannot read the Agent binary {path}: {source}; make it a readable regular file or remove it")]
    Artifact { path: PathBuf, source: io::Error },
    /// An Agent binary changed size while it was copied into the package.
    #[error("the Agent binary {path} changed while it was packed ({expected} bytes expected, {copied} read); build the package again once the file is replaced")]
    ArtifactChanged {
        path: PathBuf,
        expected: u64,
        copied: u64,
    },
    /// The generated config.yaml did not load, so the spec checks missed a problem.
    #[error("the Agent config generated for gateway `{gateway}` does not load: {source}")]
    GeneratedConfig {
        gateway: String,
        source: ConfigError,
    },
    /// Writing the archive failed.
    #[error("cannot write the Agent package for gateway `{gateway}`: {source}")]
    Write { gateway: String, source: io::Error },
    /// The zip writer failed for a reason other than I/O.
    #[error("cannot write the zip Agent package for gateway `{gateway}`: {source}")]
    Zip { gateway: String, source: ZipError },
}

/// Builds the Agent package of `spec.gateway_id` and writes it to `out` as `format`.
///
/// Issues a new client certificate and key on every call. Missing binaries do not fail
/// the build: the report and the package's README.txt name them. The spec, the PKI and the
/// artifacts folder are checked before the first byte is written. A binary that fails to
/// read or a failed write later leaves a partial archive in `out`, which the caller must
/// discard.
pub fn build<W: Write + Seek>(
    spec: &PackageSpec<'_>,
    format: PackageFormat,
    out: W,
) -> Result<PackageReport, PackageError> {
    check_spec(spec)?;

    let config = config_yaml(spec);
    let client = issue_client_files(spec, &config)?;
    let (binaries, report) = open_binaries(spec.artifacts_dir)?;
    let entries = layout(spec, config, client, binaries, &report);

    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    match format {
        PackageFormat::TarGz => write_tar_gz(&entries, mtime, out, spec.gateway_id)?,
        PackageFormat::Zip => write_zip(&entries, mtime, out, spec.gateway_id)?,
    }
    Ok(report)
}

/// Checks every value that goes into config.yaml the way `AgentConfig::load` will, and
/// reports all problems at once.
fn check_spec(spec: &PackageSpec<'_>) -> Result<(), PackageError> {
    let mut problems = Vec::new();

    if let Err(error) = validate_name("gateway id", spec.gateway_id) {
        problems.push(error.to_string());
    }
    if Endpoint::parse(spec.server_address).is_none() {
        problems.push(format!(
            "invalid Server address `{}`; write `host:port` such as `gw.example.com:7000`",
            spec.server_address
        ));
    }
    if rustls::pki_types::ServerName::try_from(spec.server_name).is_err() {
        problems.push(format!(
            "invalid TLS name `{}`; use a DNS name or IP address in the Server certificate",
            spec.server_name
        ));
    }

    if spec.services.is_empty() {
        problems.push("the gateway has no services, so its Agent could relay nothing".into());
    }
    for (index, service) in spec.services.iter().enumerate() {
        if let Err(error) = validate_name("service name", &service.name) {
            problems.push(error.to_string());
        }
        if Endpoint::parse(&service.target).is_none() {
            problems.push(format!(
                "invalid target `{}` of service `{}`; write `host:port` such as `10.0.0.5:3306`",
                service.target, service.name
            ));
        }
        let earlier = &spec.services[..index];
        if earlier.iter().any(|other| other.name == service.name) {
            problems.push(format!("service `{}` is listed twice", service.name));
        }
    }

    if problems.is_empty() {
        return Ok(());
    }
    Err(PackageError::Spec {
        gateway: spec.gateway_id.to_owned(),
        problems,
    })
}

/// PEM files of `configs/client/`.
struct ClientFiles {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Issues the gateway's client certificate into a private temporary folder, loads `config`
/// there with `AgentConfig::load` as the Agent would, and returns the PEM files.
///
/// The folder and the client key in it are removed before this returns.
fn issue_client_files(spec: &PackageSpec<'_>, config: &str) -> Result<ClientFiles, PackageError> {
    let scratch = ScratchDir::create()?;
    let configs = scratch.path().join("configs");
    let client = configs.join("client");

    pki::issue_agent(spec.pki_dir, spec.gateway_id, &client).map_err(|source| {
        PackageError::Pki {
            gateway: spec.gateway_id.to_owned(),
            pki_dir: spec.pki_dir.to_owned(),
            source,
        }
    })?;

    let config_file = configs.join("config.yaml");
    std::fs::write(&config_file, config).map_err(|source| scratch.error(source))?;
    AgentConfig::load(&config_file).map_err(|source| PackageError::GeneratedConfig {
        gateway: spec.gateway_id.to_owned(),
        source,
    })?;

    let read =
        |name: &str| std::fs::read(client.join(name)).map_err(|source| scratch.error(source));
    Ok(ClientFiles {
        ca: read(pki::CA_CERT)?,
        cert: read(pki::CLIENT_CERT)?,
        key: read(pki::CLIENT_KEY)?,
    })
}

/// A temporary folder that only its owner can enter (on Unix), removed with its contents
/// on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<Self, PackageError> {
        // NOTE: on Windows the folder gets the default access rights of the temporary
        // folder, which is normally private to the user.
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);

        // `create` fails on an existing folder, so a leftover or concurrent build's folder is
        // never reused: the next attempt takes a new random name.
        let mut attempt = 0;
        loop {
            let path =
                std::env::temp_dir().join(format!("ipaas-package-{:016x}", rand::random::<u64>()));
            match builder.create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(source) => return Err(PackageError::TempDir { path, source }),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn error(&self, source: io::Error) -> PackageError {
        PackageError::TempDir {
            path: self.0.clone(),
            source,
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(
                path = %self.0.display(), %error,
                "cannot remove the temporary folder of an Agent package; delete it by hand, as it holds a client key"
            );
        }
    }
}

/// An Agent binary opened for packing.
struct Binary {
    platform: Platform,
    path: PathBuf,
    file: File,
    len: u64,
}

/// Opens the binary of every platform found in `artifacts_dir`. A missing file means a
/// missing platform. Any other error fails the build, so an unreadable binary is never
/// skipped.
fn open_binaries(
    artifacts_dir: Option<&Path>,
) -> Result<(Vec<Binary>, PackageReport), PackageError> {
    let mut binaries = Vec::new();
    let mut report = PackageReport::default();
    let Some(dir) = artifacts_dir else {
        report.missing = Platform::ALL.to_vec();
        return Ok((binaries, report));
    };

    let metadata = std::fs::metadata(dir).map_err(|source| PackageError::ArtifactsDir {
        path: dir.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(PackageError::ArtifactsDir {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a folder"),
        });
    }

    for platform in Platform::ALL {
        let path = dir.join(platform.folder()).join(platform.binary_name());
        let artifact_error = |source| PackageError::Artifact {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                report.missing.push(platform);
                continue;
            }
            Err(error) => return Err(artifact_error(error)),
        };
        let metadata = file.metadata().map_err(artifact_error)?;
        if !metadata.is_file() {
            return Err(artifact_error(io::Error::other("not a regular file")));
        }
        report.included.push(platform);
        binaries.push(Binary {
            platform,
            path,
            file,
            len: metadata.len(),
        });
    }
    Ok((binaries, report))
}

/// One entry of the archive, with its path relative to [`TOP_FOLDER`].
struct Entry {
    path: String,
    mode: u32,
    contents: Contents,
}

enum Contents {
    Directory,
    Data(Cow<'static, [u8]>),
    Binary(Binary),
}

impl Entry {
    fn directory(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            contents: Contents::Directory,
        }
    }

    fn data(path: &str, mode: u32, data: impl Into<Cow<'static, [u8]>>) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            contents: Contents::Data(data.into()),
        }
    }

    /// Path inside the archive; directories end with `/`.
    fn archive_path(&self) -> String {
        match (self.path.is_empty(), &self.contents) {
            (true, _) => format!("{TOP_FOLDER}/"),
            (false, Contents::Directory) => format!("{TOP_FOLDER}/{}/", self.path),
            (false, _) => format!("{TOP_FOLDER}/{}", self.path),
        }
    }
}

/// Lists the package's entries in archive order, each directory before its contents.
fn layout(
    spec: &PackageSpec<'_>,
    config: String,
    client: ClientFiles,
    binaries: Vec<Binary>,
    report: &PackageReport,
) -> Vec<Entry> {
    let mut entries = vec![
        Entry::directory("", DIRECTORY_MODE),
        Entry::data(
            "README.txt",
            FILE_MODE,
            package_readme(spec, report).into_bytes(),
        ),
        Entry::directory("bin", DIRECTORY_MODE),
    ];
    for binary in binaries {
        entries.push(Entry::directory(
            &format!("bin/{}", binary.platform.folder()),
            DIRECTORY_MODE,
        ));
        entries.push(Entry {
            path: binary.platform.package_path(),
            mode: EXECUTABLE_MODE,
            contents: Contents::Binary(binary),
        });
    }

    entries.extend([
        Entry::directory("configs", DIRECTORY_MODE),
        Entry::directory("configs/client", DIRECTORY_MODE),
        Entry::data("configs/client/ca.pem", FILE_MODE, client.ca),
        Entry::data("configs/client/client.pem", FILE_MODE, client.cert),
        Entry::data("configs/client/client.key", PRIVATE_FILE_MODE, client.key),
        Entry::data("configs/config.yaml", FILE_MODE, config.into_bytes()),
        Entry::data(
            "configs/logger_config.yaml",
            FILE_MODE,
            LOGGER_CONFIG.as_bytes(),
        ),
        Entry::directory("configs/secret", SECRET_DIRECTORY_MODE),
        Entry::data(
            "configs/secret/README.txt",
            FILE_MODE,
            secret_readme(spec.gateway_id).into_bytes(),
        ),
        Entry::directory("log", DIRECTORY_MODE),
        Entry::directory("scripts", DIRECTORY_MODE),
    ]);

    let mut folders = vec!["scripts"];
    for (path, text) in SCRIPTS {
        let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
        if !folders.contains(&parent) {
            entries.push(Entry::directory(parent, DIRECTORY_MODE));
            folders.push(parent);
        }
        let mode = if path.ends_with(".sh") {
            EXECUTABLE_MODE
        } else {
            FILE_MODE
        };
        entries.push(Entry::data(path, mode, text.as_bytes()));
    }
    entries
}

/// Writes `entries` as a gzip-compressed tar archive, owned by uid and gid 0.
fn write_tar_gz<W: Write>(
    entries: &[Entry],
    mtime: u64,
    out: W,
    gateway: &str,
) -> Result<(), PackageError> {
    let write_error = |source| PackageError::Write {
        gateway: gateway.to_owned(),
        source,
    };
    let mut archive = tar::Builder::new(GzEncoder::new(out, Compression::default()));

    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        let path = entry.archive_path();

        match &entry.contents {
            Contents::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                archive
                    .append_data(&mut header, &path, io::empty())
                    .map_err(write_error)?;
            }
            Contents::Data(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                archive
                    .append_data(&mut header, &path, &data[..])
                    .map_err(write_error)?;
            }
            Contents::Binary(binary) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(binary.len);
                let mut reader = BinaryReader::new(binary);
                let result = archive.append_data(&mut header, &path, &mut reader);
                reader.finish(result, write_error)?;
            }
        }
    }

    let encoder = archive.into_inner().map_err(write_error)?;
    encoder
        .finish()
        .map_err(write_error)?
        .flush()
        .map_err(write_error)
}

/// Writes `entries` as a deflated zip archive with Unix permissions, which `unzip` applies.
fn write_zip<W: Write + Seek>(
    entries: &[Entry],
    mtime: u64,
    out: W,
    gateway: &str,
) -> Result<(), PackageError> {
    let zip_error = |source| match source {
        ZipError::Io(source) => PackageError::Write {
            gateway: gateway.to_owned(),
            source,
        },
        source => PackageError::Zip {
            gateway: gateway.to_owned(),
            source,
        },
    };
    let write_error = |source| PackageError::Write {
        gateway: gateway.to_owned(),
        source,
    };

    let mut options = FullFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(dos_date_time(mtime));
    if let Ok(seconds) = i32::try_from(mtime) {
        let mut field = vec![0x01]; // Flags: only the modification time follows.
        field.extend_from_slice(&seconds.to_le_bytes());
        options
            .add_extra_data(ZIP_EXTENDED_TIMESTAMP, field.into_boxed_slice(), false)
            .map_err(zip_error)?;
    }
    let mut archive = ZipWriter::new(out);

    for entry in entries {
        let options = options.clone().unix_permissions(entry.mode);
        let path = entry.archive_path();

        match &entry.contents {
            Contents::Directory => archive.add_directory(path, options).map_err(zip_error)?,
            Contents::Data(data) => {
                archive.start_file(path, options).map_err(zip_error)?;
                archive.write_all(data).map_err(write_error)?;
            }
            Contents::Binary(binary) => {
                archive.start_file(path, options).map_err(zip_error)?;
                let mut reader = BinaryReader::new(binary);
                let result = io::copy(&mut reader, &mut archive).map(drop);
                reader.finish(result, write_error)?;
            }
        }
    }

    archive
        .finish()
        .map_err(zip_error)?
        .flush()
        .map_err(write_error)
}

/// Reader of an Agent binary that keeps its read errors apart from the archive's write
/// errors and counts the bytes read.
struct BinaryReader<'a> {
    binary: &'a Binary,
    source: io::Take<&'a File>,
    copied: u64,
    error: Option<io::Error>,
}

impl<'a> BinaryReader<'a> {
    fn new(binary: &'a Binary) -> Self {
        Self {
            binary,
            source: (&binary.file).take(binary.len),
            copied: 0,
            error: None,
        }
    }

    /// Turns the outcome of copying this binary into the archive into a package error.
    fn finish(
        self,
        result: io::Result<()>,
        write_error: impl Fn(io::Error) -> PackageError,
    ) -> Result<(), PackageError> {
        if let Some(source) = self.error {
            return Err(PackageError::Artifact {
                path: self.binary.path.clone(),
                source,
            });
        }
        result.map_err(write_error)?;
        if self.copied != self.binary.len {
            return Err(PackageError::ArtifactChanged {
                path: self.binary.path.clone(),
                expected: self.binary.len,
                copied: self.copied,
            });
        }
        Ok(())
    }
}

impl Read for BinaryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.source.read(buf) {
            Ok(count) => {
                self.copied += count as u64;
                Ok(count)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Err(error),
            Err(error) => {
                self.error = Some(error);
                Err(io::Error::other("reading the Agent binary failed"))
            }
        }
    }
}

/// Converts Unix seconds to a zip DOS date and time in UTC, or 1980-01-01 when the time is
/// outside the DOS range of 1980 to 2107.
fn dos_date_time(unix_seconds: u64) -> DateTime {
    let Some((year, month, day)) = civil_date(unix_seconds / 86_400) else {
        return DateTime::default();
    };
    let second_of_day = unix_seconds % 86_400;
    let hour = (second_of_day / 3600) as u8;
    let minute = (second_of_day % 3600 / 60) as u8;
    let second = (second_of_day % 60) as u8;
    DateTime::from_date_and_time(year, month, day, hour, minute, second).unwrap_or_default()
}

/// Converts days since 1970-01-01 to a Gregorian (year, month, day), or `None` after 2107.
fn civil_date(mut days: u64) -> Option<(u16, u8, u8)> {
    let is_leap = |year: u16| {
        (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
    };

    let mut year = 1970;
    loop {
        let year_days = if is_leap(year) { 366 } else { 365 };
        if days < year_days {
            break;
        }
        days -= year_days;
        year += 1;
        if year > 2107 {
            return None;
        }
    }

    let february = if is_leap(year) { 29 } else { 28 };
    let month_days = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for length in month_days {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }
    Some((year, month, days as u8 + 1))
}

/// Generates configs/config.yaml with the comments of the shipped configs/config.yaml.
///
/// `agent_name` stays commented out, so every Agent of the gateway takes its host name.
fn config_yaml(spec: &PackageSpec<'_>) -> String {
    let mut services = String::new();
    for service in spec.services {
        // Writing to a String cannot fail.
        let _ = writeln!(
            services,
            "  - name: {}\n    target: {}",
            yaml_quote(&service.name),
            yaml_quote(&service.target)
        );
    }

    format!(
        r#"# Agent settings. Relative paths are resolved against the package root, the folder that
# contains this configs/ folder, so the unpacked package can be moved as a whole.

server:
  # Address of the Server's Agent port, as host:port. A DNS name is resolved again on every
  # connection attempt.
  address: {address}
  # Name the Server's TLS certificate must carry. Defaults to the host part of `address`.
  tls_name: {tls_name}

# Gateway this Agent serves, as created on the Server.
gateway_id: {gateway_id}

# Name of this Agent in the Server's logs. Defaults to the host name.
# agent_name: "agent-1"

# RSA private key whose public half is registered for the gateway on the Server
# (openssl genrsa -out private.pem 2048).
private_key: "configs/secret/private.pem"

# TLS material issued by the Server for this gateway. Do not edit or delete these files.
tls:
  ca: "configs/client/ca.pem"
  cert: "configs/client/client.pem"
  key: "configs/client/client.key"

# Private services this Agent may reach. The Agent dials only these targets: a request for
# any other name is rejected, logged and counted.
services:
{services}
runtime:
  # auto: io_uring where the host allows it, else tokio (the log says which and why).
  # io_uring: fail to start where it is unavailable. tokio: always tokio.
  backend: "auto"
  # Worker threads (shards), each with its own session to the Server. 0 means one per core.
  shards: 0

heartbeat:
  # A ping is sent after this much idle time.
  interval: "10s"
  # The session is dropped and re-established after this much silence.
  timeout: "30s"

reconnect:
  # First delay before reconnecting; it doubles on each failure, with jitter, up to `max`.
  initial: "1s"
  max: "60s"

# Time limit for connecting to a private service or to the Server.
connect_timeout: "5s"
"#,
        address = yaml_quote(spec.server_address),
        tls_name = yaml_quote(spec.server_name),
        gateway_id = yaml_quote(spec.gateway_id),
    )
}

/// Quotes `value` as a YAML double-quoted scalar that reads back as exactly `value`.
///
/// Characters outside YAML's printable set, line and paragraph separators and the byte
/// order mark are written as `\u` escapes, so the text stays on one line.
fn yaml_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\t' => quoted.push_str("\\t"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(character));
            }
            character if character.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(character));
            }
            character => quoted.push(character),
        }
    }
    quoted.push('"');
    quoted
}

/// Generates the package's top-level README.txt, naming every platform without a binary.
fn package_readme(spec: &PackageSpec<'_>, report: &PackageReport) -> String {
    let gateway = spec.gateway_id;
    let mut text = format!(
        "Agent package for gateway {gateway}

The Agent (ipaas-agent) runs in your private network. It connects out to the Server at
{server} over mutual TLS and relays the Server's connections to these services:

",
        server = spec.server_address
    );
    for service in spec.services {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "  {} -> {}", service.name, service.target);
    }

    let _ = write!(
        text,
        "
To set it up:

1. Create the Agent's RSA key pair as configs/secret/README.txt describes, and register
   its public key for gateway {gateway} on the Server.
2. Check configs/config.yaml: every target must be reachable from this machine.
   Log settings are in configs/logger_config.yaml, and logs go to log/.
3. Start the Agent with scripts/linux/start.sh, scripts/mac/start.sh or
   scripts\\windows\\start.bat, and stop it with the stop.sh or stop.bat beside it.
   On macOS, scripts/stop.sh stops it too.

configs/client/ holds the TLS certificate and key that the Server issued for this
gateway. Do not edit or delete these files. To replace them, download the package again.
"
    );

    for platform in &report.missing {
        let _ = write!(
            text,
            "
No binary for {platform} was provided to the Server, so this package has no
{path}. To run the Agent on {platform}, ask the Server's operator to add the
{platform} build of ipaas-agent and download the package again, or build it from
source with `cargo build --release --bin ipaas-agent` and copy
target/release/{binary} to {path}.
",
            path = platform.package_path(),
            binary = platform.binary_name(),
        );
    }
    text
}

/// Generates configs/secret/README.txt: how to create the Agent's key pair.
fn secret_readme(gateway_id: &str) -> String {
    format!(
        "This folder holds the Agent's RSA private key, private.pem. The Agent proves with it
that it serves gateway {gateway_id}, so the key is created on this machine and never
leaves it: the package does not contain it, and the Server only receives the public key.

Create the key pair here with OpenSSL:

    openssl genrsa -out private.pem 2048
    openssl rsa -in private.pem -RSAPublicKey_out -out public.pem

or with the Agent, from the package folder:

    bin/Linux/ipaas-agent keygen          (bin/Mac/ipaas-agent keygen on macOS,
                                           bin\\Windows\\ipaas-agent.exe keygen on Windows)

Its --help lists where it writes the files and the key sizes it makes.

Keep private.pem in this folder, readable only by the user that runs the Agent
(chmod 600 private.pem), or set private_key in configs/config.yaml to its path.
Register public.pem for gateway {gateway_id} on the Server. Never send private.pem.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED_CONFIG: &str = include_str!("../../configs/config.yaml");

    fn spec<'a>(services: &'a [PackageService], pki_dir: &'a Path) -> PackageSpec<'a> {
        PackageSpec {
            gateway_id: "gw-1",
            server_address: "gw.example.com:7000",
            server_name: "gw.example.com",
            services,
            pki_dir,
            artifacts_dir: None,
        }
    }

    fn service(name: &str, target: &str) -> PackageService {
        PackageService {
            name: name.into(),
            target: target.into(),
        }
    }

    fn load(text: &str) -> AgentConfig {
        let dir = tempfile::tempdir().unwrap();
        let configs = dir.path().join("configs");
        std::fs::create_dir(&configs).unwrap();
        let file = configs.join("config.yaml");
        std::fs::write(&file, text).unwrap();
        AgentConfig::load(&file).unwrap_or_else(|error| panic!("{error}\n{text}"))
    }

    #[test]
    fn yaml_quote_round_trips() {
        let cases = [
            "",
            "plain",
            "gw.example.com:7000",
            "[fd00::5]:443",
            "say \"hi\"",
            "back\\slash",
            "C:\\path\\",
            "'single'",
            "a: #b",
            "- item",
            "{[,]}",
            "&anchor *alias !tag",
            "%directive",
            "null",
            "~",
            "true",
            "0x1F",
            "1e3",
            " padded ",
            "line\nbreak",
            "tab\there",
            "cr\rlf",
            "nul\0",
            "bell\u{7}",
            "del\u{7f}",
            "next line\u{85}",
            "separators\u{2028}\u{2029}",
            "\u{feff}bom",
            "noncharacters\u{fffe}\u{ffff}",
            "été",
            "emoji 🦀",
        ];
        for case in cases {
            let quoted = yaml_quote(case);
            let parsed: String = serde_yaml_ng::from_str(&quoted)
                .unwrap_or_else(|error| panic!("{case:?} as {quoted}: {error}"));
            assert_eq!(parsed, case, "quoted as {quoted}");
        }
    }

    #[test]
    fn yaml_quote_stays_on_one_line() {
        for case in ["a\nb", "a\rb", "a\u{85}b", "a\u{2028}b", "a\u{2029}b"] {
            let quoted = yaml_quote(case);
            assert_eq!(quoted.lines().count(), 1, "{quoted}");
            assert!(
                !quoted.contains(['\u{85}', '\u{2028}', '\u{2029}']),
                "{quoted}"
            );
        }
    }

    #[test]
    fn generated_config_loads_with_spec_values() {
        let services = [
            service("db", "10.0.0.5:3306"),
            service("api", "[fd00::5]:443"),
            service("cache", "redis.internal:6379"),
        ];
        let config = load(&config_yaml(&spec(&services, Path::new("pki"))));

        assert_eq!(config.server.to_string(), "gw.example.com:7000");
        assert_eq!(config.server_name, "gw.example.com");
        assert_eq!(config.gateway_id, "gw-1");
        assert_eq!(config.services.len(), 3);
        assert_eq!(config.services["db"].to_string(), "10.0.0.5:3306");
        assert_eq!(config.services["api"].to_string(), "[fd00::5]:443");
        assert_eq!(config.services["cache"].to_string(), "redis.internal:6379");
        assert_eq!(
            config.tls.key,
            config.root.join("configs/client/client.key")
        );
    }

    #[test]
    fn generated_config_quotes_odd_host() {
        let services = [service("db", "db\"#x:5432")];
        let mut spec = spec(&services, Path::new("pki"));
        spec.server_address = "gw'#1\\:7000";
        let config = load(&config_yaml(&spec));

        assert_eq!(config.server.host, "gw'#1\\");
        assert_eq!(config.services["db"].host, "db\"#x");
    }

    #[test]
    fn generated_config_keeps_shipped_comments() {
        let services = [service("db", "10.0.0.5:3306")];
        let generated = config_yaml(&spec(&services, Path::new("pki")));
        let mut generated_comments = generated
            .lines()
            .filter(|line| line.trim_start().starts_with('#'));

        // The shipped comments appear in the same order; the generated file may add some.
        for comment in SHIPPED_CONFIG
            .lines()
            .filter(|line| line.trim_start().starts_with('#'))
        {
            assert!(
                generated_comments.any(|line| line == comment),
                "shipped comment missing or out of order: {comment}"
            );
        }
    }

    #[test]
    fn generated_config_keeps_shipped_defaults() {
        let services = [service("db", "10.0.0.5:3306")];
        let generated = load(&config_yaml(&spec(&services, Path::new("pki"))));
        let shipped = load(SHIPPED_CONFIG);

        assert_eq!(
            generated.private_key,
            generated.root.join("configs/secret/private.pem")
        );
        assert_eq!(
            format!("{:?}", generated.runtime),
            format!("{:?}", shipped.runtime)
        );
        assert_eq!(
            format!("{:?}", generated.heartbeat),
            format!("{:?}", shipped.heartbeat)
        );
        assert_eq!(generated.reconnect_initial, shipped.reconnect_initial);
        assert_eq!(generated.reconnect_max, shipped.reconnect_max);
        assert_eq!(generated.connect_timeout, shipped.connect_timeout);
    }

    #[test]
    fn spec_problems_are_all_reported() {
        let services = [
            service("db", "no-port"),
            service("db", "10.0.0.5:3306"),
            service("bad name", "10.0.0.6:80"),
        ];
        let mut spec = spec(&services, Path::new("pki"));
        spec.server_address = "gw.example.com";
        spec.server_name = "not a name";
        let Err(PackageError::Spec { gateway, problems }) = check_spec(&spec) else {
            panic!("bad spec accepted");
        };

        assert_eq!(gateway, "gw-1");
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let text = problems.join("\n");
        for expected in [
            "`gw.example.com`",
            "`not a name`",
            "`no-port`",
            "`db` is listed twice",
            "bad name",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }

    #[test]
    fn spec_without_services_is_rejected() {
        let error = check_spec(&spec(&[], Path::new("pki"))).unwrap_err();
        assert!(error.to_string().contains("no services"), "{error}");
    }

    #[test]
    fn format_names() {
        assert_eq!(
            PackageFormat::from_name("tar.gz").unwrap(),
            PackageFormat::TarGz
        );
        assert_eq!(PackageFormat::from_name("zip").unwrap(), PackageFormat::Zip);
        assert_eq!(PackageFormat::TarGz.extension(), "tar.gz");
        assert_eq!(PackageFormat::Zip.extension(), "zip");
        let error = PackageFormat::from_name("rar").unwrap_err();
        assert!(error.to_string().contains("`rar`"), "{error}");
    }

    #[test]
    fn dos_date_time_conversion() {
        let cases = [
            (0, (1980, 1, 1, 0, 0, 0)),
            (315_532_800, (1980, 1, 1, 0, 0, 0)),
            (951_782_400, (2000, 2, 29, 0, 0, 0)),
            (1_700_000_000, (2023, 11, 14, 22, 13, 20)),
            (4_107_542_399, (2100, 2, 28, 23, 59, 58)),
            (u64::MAX, (1980, 1, 1, 0, 0, 0)),
        ];
        for (seconds, (year, month, day, hour, minute, second)) in cases {
            let time = dos_date_time(seconds);
            assert_eq!(
                (
                    time.year(),
                    time.month(),
                    time.day(),
                    time.hour(),
                    time.minute(),
                    time.second()
                ),
                (year, month, day, hour, minute, second),
                "{seconds}"
            );
        }
    }

    #[test]
    fn scratch_dir_is_private_and_removed() {
        let scratch = ScratchDir::create().unwrap();
        let path = scratch.path().to_owned();
        assert!(path.is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        std::fs::write(path.join("client.key"), "secret").unwrap();
        drop(scratch);
        assert!(!path.exists());
    }
}
