//! Black-box tests of the Agent package builder: packages built with a real PKI, unpacked
//! with the `tar` and `unzip` commands, and checked file by file. Needs `tar`, `unzip` and
//! `openssl` on `PATH`.

#![cfg(unix)]

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use ipaas_gateway::config::AgentConfig;
use ipaas_gateway::server::package::{
    self, PackageError, PackageFormat, PackageReport, PackageService, PackageSpec, Platform,
    TOP_FOLDER,
};
use ipaas_gateway::tls::{self, TlsFiles};

const GATEWAY: &str = "gw-test";
const SERVER_ADDRESS: &str = "gw.example.com:7000";
const SERVER_NAME: &str = "gw.example.com";
const FAKE_AGENT: &str = "#!/bin/sh\necho \"fake ipaas-agent $*\"\n";

/// Every path below the top folder of a package with only the Linux binary, in archive
/// order. Folders end with `/`.
const LINUX_ONLY_LAYOUT: [&str; 25] = [
    "README.txt",
    "bin/",
    "bin/Linux/",
    "bin/Linux/ipaas-agent",
    "configs/",
    "configs/client/",
    "configs/client/ca.pem",
    "configs/client/client.pem",
    "configs/client/client.key",
    "configs/config.yaml",
    "configs/logger_config.yaml",
    "configs/secret/",
    "configs/secret/README.txt",
    "log/",
    "scripts/",
    "scripts/linux/",
    "scripts/linux/start.sh",
    "scripts/linux/stop.sh",
    "scripts/mac/",
    "scripts/mac/start.sh",
    "scripts/mac/stop.sh",
    "scripts/stop.sh",
    "scripts/windows/",
    "scripts/windows/start.bat",
    "scripts/windows/stop.bat",
];

/// Paths of the package with the mode each must have after unpacking.
const MODES: [(&str, u32); 18] = [
    ("README.txt", 0o644),
    ("bin/Linux/ipaas-agent", 0o755),
    ("configs/client/ca.pem", 0o644),
    ("configs/client/client.pem", 0o644),
    ("configs/client/client.key", 0o600),
    ("configs/config.yaml", 0o644),
    ("configs/logger_config.yaml", 0o644),
    ("configs/secret", 0o700),
    ("configs/secret/README.txt", 0o644),
    ("log", 0o755),
    ("scripts/linux/start.sh", 0o755),
    ("scripts/linux/stop.sh", 0o755),
    ("scripts/mac/start.sh", 0o755),
    ("scripts/mac/stop.sh", 0o755),
    ("scripts/stop.sh", 0o755),
    ("scripts/windows", 0o755),
    ("scripts/windows/start.bat", 0o644),
    ("scripts/windows/stop.bat", 0o644),
];

/// A PKI, an artifacts folder and the gateway's services, all under one temporary folder.
struct Fixture {
    dir: tempfile::TempDir,
    pki: PathBuf,
    artifacts: PathBuf,
    services: Vec<PackageService>,
}

impl Fixture {
    /// Creates the fixture with a fake Agent binary for each of `platforms`.
    fn new(platforms: &[Platform]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        tls::pki::init(&pki, &[SERVER_NAME.into(), "127.0.0.1".into()], false).unwrap();

        let artifacts = dir.path().join("artifacts");
        for platform in platforms {
            let folder = artifacts.join(platform.folder());
            std::fs::create_dir_all(&folder).unwrap();
            let binary = folder.join(platform.binary_name());
            std::fs::write(&binary, FAKE_AGENT).unwrap();
            // Not executable here, so the package must set the run bits itself.
            std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::create_dir_all(&artifacts).unwrap();

        let services = vec![
            PackageService {
                name: "db".into(),
                target: "10.0.0.5:3306".into(),
            },
            PackageService {
                name: "web".into(),
                target: "intranet.example:8080".into(),
            },
        ];
        Self {
            dir,
            pki,
            artifacts,
            services,
        }
    }

    fn spec(&self) -> PackageSpec<'_> {
        PackageSpec {
            gateway_id: GATEWAY,
            server_address: SERVER_ADDRESS,
            server_name: SERVER_NAME,
            services: &self.services,
            pki_dir: &self.pki,
            artifacts_dir: Some(&self.artifacts),
        }
    }

    /// Builds the package into a file and returns its path with the build report.
    fn build(&self, format: PackageFormat) -> (PathBuf, PackageReport) {
        let path = self
            .dir
            .path()
            .join(format!("{TOP_FOLDER}.{}", format.extension()));
        let mut file = std::fs::File::create(&path).unwrap();
        let report = package::build(&self.spec(), format, &mut file).unwrap();
        (path, report)
    }

    /// Unpacks `archive` with the `tar` or `unzip` command into a fresh folder and returns
    /// the package's top folder.
    fn unpack(&self, archive: &Path, format: PackageFormat) -> PathBuf {
        let destination = self
            .dir
            .path()
            .join(format!("unpacked-{}", format.extension()));
        std::fs::create_dir(&destination).unwrap();
        let mut command = match format {
            PackageFormat::TarGz => {
                let mut command = Command::new("tar");
                command.arg("-xzf").arg(archive).arg("-C").arg(&destination);
                command
            }
            PackageFormat::Zip => {
                let mut command = Command::new("unzip");
                command.arg("-q").arg(archive).arg("-d").arg(&destination);
                command
            }
        };
        run(&mut command);
        destination.join(TOP_FOLDER)
    }
}

/// Runs a command, fails the test unless it succeeds, and returns its standard output.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn repo_file(relative: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// Checks an unpacked package that has the Linux binary only.
fn check_linux_only_package(fixture: &Fixture, root: &Path, built_at: SystemTime) {
    for path in LINUX_ONLY_LAYOUT {
        let full = root.join(path);
        assert!(full.exists(), "{path} is missing");
        assert_eq!(
            full.is_dir(),
            path.ends_with('/'),
            "{path} has the wrong type"
        );
    }
    for path in ["bin/Mac", "bin/Windows"] {
        assert!(!root.join(path).exists(), "{path} exists without a binary");
    }

    for (path, expected) in MODES {
        assert_eq!(mode(&root.join(path)), expected, "mode of {path}");
    }

    // The run bits work: the fake binary runs directly.
    let output = run(Command::new(root.join("bin/Linux/ipaas-agent")).arg("--version"));
    assert_eq!(output, "fake ipaas-agent --version\n");

    let readme = std::fs::read_to_string(root.join("README.txt")).unwrap();
    assert!(readme.contains(GATEWAY), "{readme}");
    for platform in ["Mac", "Windows"] {
        assert!(
            readme.contains(&format!("No binary for {platform} was provided")),
            "README does not name the missing {platform} binary:\n{readme}"
        );
    }
    assert!(readme.contains("bin/Mac/ipaas-agent"), "{readme}");
    assert!(readme.contains("bin/Windows/ipaas-agent.exe"), "{readme}");
    assert!(!readme.contains("No binary for Linux"), "{readme}");

    check_config(root);
    check_client_files(fixture, root);
    check_secret_folder(root);

    assert_eq!(
        std::fs::read_dir(root.join("log")).unwrap().count(),
        0,
        "log/ is not empty"
    );
    assert_eq!(
        std::fs::read(root.join("configs/logger_config.yaml")).unwrap(),
        repo_file("configs/logger_config.yaml")
    );
    for script in [
        "linux/start.sh",
        "linux/stop.sh",
        "mac/start.sh",
        "mac/stop.sh",
        "stop.sh",
        "windows/start.bat",
        "windows/stop.bat",
    ] {
        assert_eq!(
            std::fs::read(root.join("scripts").join(script)).unwrap(),
            repo_file(&format!("scripts/{script}")),
            "scripts/{script} differs from the repository's copy"
        );
    }

    check_mtimes(root, built_at);
}

fn check_config(root: &Path) {
    let config = AgentConfig::load(&root.join("configs/config.yaml"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(config.root, root);
    assert_eq!(config.server.to_string(), SERVER_ADDRESS);
    assert_eq!(config.server_name, SERVER_NAME);
    assert_eq!(config.gateway_id, GATEWAY);
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.services["db"].to_string(), "10.0.0.5:3306");
    assert_eq!(config.services["web"].to_string(), "intranet.example:8080");
    assert_eq!(config.private_key, root.join("configs/secret/private.pem"));
    assert_eq!(config.tls.key, root.join("configs/client/client.key"));
}

fn check_client_files(fixture: &Fixture, root: &Path) {
    let client = root.join("configs/client");
    assert_eq!(
        std::fs::read(client.join("ca.pem")).unwrap(),
        std::fs::read(fixture.pki.join("ca.pem")).unwrap(),
        "ca.pem is not the Server's CA"
    );

    let output = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(client.join("ca.pem"))
        .arg(client.join("client.pem")));
    assert!(output.trim_end().ends_with(": OK"), "{output}");

    let subject = run(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(client.join("client.pem")));
    assert!(subject.contains(GATEWAY), "{subject}");

    // The key matches the certificate, or rustls would not build a client config.
    tls::client_config(&TlsFiles {
        ca: client.join("ca.pem"),
        cert: client.join("client.pem"),
        key: client.join("client.key"),
    })
    .unwrap();
}

fn check_secret_folder(root: &Path) {
    let secret = root.join("configs/secret");
    let names: Vec<_> = std::fs::read_dir(&secret)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["README.txt"]);

    let readme = std::fs::read_to_string(secret.join("README.txt")).unwrap();
    for expected in [
        "private.pem",
        "openssl genrsa -out private.pem 2048",
        "openssl rsa -in private.pem -RSAPublicKey_out -out public.pem",
        "ipaas-agent keygen",
        GATEWAY,
    ] {
        assert!(readme.contains(expected), "{expected} missing:\n{readme}");
    }
}

/// Checks that every file and folder is dated at the build, within the 2-second
/// granularity of zip times.
fn check_mtimes(root: &Path, built_at: SystemTime) {
    let earliest = built_at - Duration::from_secs(2);
    let latest = SystemTime::now() + Duration::from_secs(2);
    for path in LINUX_ONLY_LAYOUT {
        let modified = std::fs::metadata(root.join(path))
            .unwrap()
            .modified()
            .unwrap();
        assert!(
            modified >= earliest && modified <= latest,
            "{path} is dated {modified:?}, outside the build time {built_at:?}"
        );
    }
}

/// Lists the archive's entry names in order with `tar -tzf` or `unzip -Z1`.
fn list_entries(archive: &Path, format: PackageFormat) -> Vec<String> {
    let output = match format {
        PackageFormat::TarGz => run(Command::new("tar").arg("-tzf").arg(archive)),
        PackageFormat::Zip => run(Command::new("unzip").arg("-Z1").arg(archive)),
    };
    output.lines().map(str::to_owned).collect()
}

/// Archive names of `layout`, after the top folder's own entry.
fn expected_entries(layout: &[&str]) -> Vec<String> {
    std::iter::once(format!("{TOP_FOLDER}/"))
        .chain(layout.iter().map(|path| format!("{TOP_FOLDER}/{path}")))
        .collect()
}

#[test]
fn tar_gz_unpacks_with_tar() {
    let fixture = Fixture::new(&[Platform::Linux]);
    let built_at = SystemTime::now();
    let (archive, report) = fixture.build(PackageFormat::TarGz);

    assert_eq!(report.included, [Platform::Linux]);
    assert_eq!(report.missing, [Platform::Mac, Platform::Windows]);
    let root = fixture.unpack(&archive, PackageFormat::TarGz);
    check_linux_only_package(&fixture, &root, built_at);
}

#[test]
fn zip_unpacks_with_unzip() {
    let fixture = Fixture::new(&[Platform::Linux]);
    let built_at = SystemTime::now();
    let (archive, report) = fixture.build(PackageFormat::Zip);

    assert_eq!(report.included, [Platform::Linux]);
    assert_eq!(report.missing, [Platform::Mac, Platform::Windows]);
    let root = fixture.unpack(&archive, PackageFormat::Zip);
    check_linux_only_package(&fixture, &root, built_at);
}

#[test]
fn archive_entries_in_fixed_order() {
    let fixture = Fixture::new(&[Platform::Linux]);
    let expected = expected_entries(&LINUX_ONLY_LAYOUT);

    for format in [PackageFormat::TarGz, PackageFormat::Zip] {
        let (archive, _) = fixture.build(format);
        let listed: Vec<_> = list_entries(&archive, format)
            .into_iter()
            .map(|name| {
                // GNU tar lists a directory entry with or without its slash, as stored.
                if name.ends_with('/') || !expected.contains(&format!("{name}/")) {
                    name
                } else {
                    format!("{name}/")
                }
            })
            .collect();
        assert_eq!(listed, expected, "{format:?}");
    }
}

#[test]
fn tar_entries_owned_by_root() {
    let fixture = Fixture::new(&[Platform::Linux]);
    let (archive, _) = fixture.build(PackageFormat::TarGz);
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&archive));

    assert_eq!(
        listing.lines().count(),
        expected_entries(&LINUX_ONLY_LAYOUT).len()
    );
    for line in listing.lines() {
        let owner = line.split_whitespace().nth(1).unwrap();
        assert_eq!(owner, "0/0", "{line}");
    }
}

#[test]
fn every_platform_included() {
    let fixture = Fixture::new(&Platform::ALL);
    let mut archive = Cursor::new(Vec::new());
    let report = package::build(&fixture.spec(), PackageFormat::Zip, &mut archive).unwrap();

    assert_eq!(report.included, Platform::ALL);
    assert!(report.missing.is_empty(), "{report:?}");
    let path = fixture.dir.path().join("all.zip");
    std::fs::write(&path, archive.into_inner()).unwrap();
    let root = fixture.unpack(&path, PackageFormat::Zip);

    for platform in Platform::ALL {
        let binary = root.join(platform.package_path());
        assert_eq!(std::fs::read_to_string(&binary).unwrap(), FAKE_AGENT);
        assert_eq!(mode(&binary), 0o755, "{}", platform.package_path());
    }
    let readme = std::fs::read_to_string(root.join("README.txt")).unwrap();
    assert!(!readme.contains("No binary"), "{readme}");
}

#[test]
fn no_artifacts_dir_names_every_platform() {
    let fixture = Fixture::new(&[]);
    let mut spec = fixture.spec();
    spec.artifacts_dir = None;
    let report = package::build(&spec, PackageFormat::TarGz, Cursor::new(Vec::new())).unwrap();

    assert!(report.included.is_empty(), "{report:?}");
    assert_eq!(report.missing, Platform::ALL);
}

#[test]
fn missing_artifacts_dir_is_an_error() {
    let fixture = Fixture::new(&[]);
    let absent = fixture.dir.path().join("no-such-folder");
    let mut spec = fixture.spec();
    spec.artifacts_dir = Some(&absent);
    let error = package::build(&spec, PackageFormat::Zip, Cursor::new(Vec::new())).unwrap_err();

    assert!(
        matches!(&error, PackageError::ArtifactsDir { path, .. } if *path == absent),
        "{error:?}"
    );
    assert!(error.to_string().contains("no-such-folder"), "{error}");
}

#[test]
fn missing_pki_names_the_folder() {
    let fixture = Fixture::new(&[Platform::Linux]);
    let absent = fixture.dir.path().join("no-pki");
    let mut spec = fixture.spec();
    spec.pki_dir = &absent;
    let error = package::build(&spec, PackageFormat::TarGz, Cursor::new(Vec::new())).unwrap_err();

    assert!(matches!(error, PackageError::Pki { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("no-pki"), "{message}");
    assert!(message.contains(GATEWAY), "{message}");
    assert!(message.contains("ipaas-server pki init"), "{message}");
}

#[test]
fn invalid_target_is_rejected() {
    let mut fixture = Fixture::new(&[Platform::Linux]);
    fixture.services[1].target = "intranet.example".into();
    let mut archive = Cursor::new(Vec::new());
    let error = package::build(&fixture.spec(), PackageFormat::Zip, &mut archive).unwrap_err();

    assert!(matches!(error, PackageError::Spec { .. }), "{error:?}");
    assert!(error.to_string().contains("`intranet.example`"), "{error}");
    assert!(
        archive.into_inner().is_empty(),
        "a rejected spec wrote output"
    );
}
