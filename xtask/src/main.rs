//! Developer automation. `cargo xtask ci` runs exactly what CI runs: it installs what the
//! tests need (PostgreSQL if none answers, the npm and PyPI test peers), then checks
//! formatting and lints and runs every test.

#![allow(clippy::disallowed_methods)] // xtask is a script: reading the environment is its job.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Pinned third-party test peers. Changing a version here reinstalls them.
const NPM_PEERS: &[&str] = &[
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/sdk@1",
    "@modelcontextprotocol/conformance@0.1.13",
    "oidc-provider@9.13.3",
];
const PYPI_PEERS: &[&str] = &["mcp>=2.3,<3", "aiosmtpd==1.4.6"];
/// The SCIM compliance tester, in a virtualenv of its own (`venv-scim`).
const SCIM_PEERS: &[&str] = &["scim2-tester==0.5.2", "scim2-cli==0.6.0"];

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        "peers" => peers().map(|_| ()),
        "bench" => bench(),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|peers|bench>\n  ci     install test dependencies, then fmt, clippy and every test\n  peers  install the npm/PyPI test peers only\n  bench  release build, then gateway vs direct latency and throughput (extra args go to `portcullis bench`)"
            );
            std::process::exit(2)
        }
    }
}

fn step(name: &str) -> Instant {
    eprintln!("\n==> {name}");
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn succeeds(command: &mut Command) -> bool {
    command.output().map(|output| output.status.success()).unwrap_or(false)
}

fn ci() -> anyhow::Result<()> {
    let root = workspace_root();
    let started = step("PostgreSQL");
    ensure_postgres()?;
    done(started);
    let peers_dir = peers()?;
    let started = step("Chromium and ChromeDriver (console tests in a real browser)");
    ensure_browser()?;
    done(started);

    let started = step("cargo fmt --check");
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(&root))?;
    done(started);
    let started = step("cargo clippy");
    run(Command::new("cargo")
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
        .current_dir(&root))?;
    done(started);
    let started = step("cargo test");
    let (passed, failed) = run_tests(
        Command::new("cargo").args(["test", "--workspace"]).env("PORTCULLIS_TEST_PEERS", &peers_dir).current_dir(&root),
    )?;
    done(started);
    // One closing line for the whole run (cargo prints one per test binary, the last of
    // which may well be an empty doc-test run).
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Run `cargo test`, echoing its output, and add up its "test result" lines.
fn run_tests(command: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = command.stdout(std::process::Stdio::piped()).spawn().context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
                    })
                    .and_then(|number| number.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed with {status}");
    }
    Ok((passed, failed))
}

/// Build in release mode and run `portcullis bench` with the remaining arguments.
fn bench() -> anyhow::Result<()> {
    let extra: Vec<String> = std::env::args().skip(2).collect();
    run(Command::new("cargo")
        .args(["run", "--release", "--quiet", "-p", "portcullis", "--", "bench"])
        .args(extra)
        .current_dir(workspace_root()))
}

/// The checkout `cargo xtask` was run in. `cargo run` sets `CARGO_MANIFEST_DIR` at run time;
/// the compile-time value is only a fallback, because checkouts sharing one target directory
/// share one xtask binary, which must not send every checkout's CI to the first one.
fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("xtask lives in the workspace").to_path_buf()
}

fn database_url() -> String {
    std::env::var("PORTCULLIS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Install Debian's Chromium and ChromeDriver when they are missing.
fn ensure_browser() -> anyhow::Result<()> {
    if Path::new("/usr/bin/chromedriver").exists() && Path::new("/usr/bin/chromium").exists() {
        eprintln!("    already installed");
        return Ok(());
    }
    let install = || {
        succeeds(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium", "chromium-driver"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if !install() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        if !install() {
            bail!("cannot install chromium and chromium-driver with apt-get");
        }
    }
    Ok(())
}

/// Make sure a PostgreSQL answers at the test URL: start the machine's cluster if it is
/// stopped, or install one from Debian packages (trusting loopback) if there is none.
fn ensure_postgres() -> anyhow::Result<()> {
    let url = database_url();
    let answers = || succeeds(Command::new("psql").args([url.as_str(), "-c", "SELECT 1"]));
    if answers() {
        eprintln!("    {url} answers");
        return Ok(());
    }
    if !Path::new("/etc/postgresql").exists() {
        eprintln!("    no PostgreSQL here: installing it from Debian packages");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get").args(["install", "-y", "-q", "postgresql", "postgresql-client"]))?;
    }
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .max()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let hba = format!("/etc/postgresql/{version}/main/pg_hba.conf");
    let current = std::fs::read_to_string(&hba).unwrap_or_default();
    if !current.contains("portcullis-tests") {
        // Tests connect as postgres over loopback without a password, as on CI machines.
        let trust = "# portcullis-tests\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
        std::fs::write(&hba, format!("{trust}{current}"))?;
    }
    let _ = Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "restart"]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if succeeds(Command::new("psql").args(["postgres://postgres@127.0.0.1:5432/postgres", "-c", "SELECT 1"])) {
            let _ = Command::new("psql")
                .args(["postgres://postgres@127.0.0.1:5432/postgres", "-c", "CREATE DATABASE test"])
                .output();
            if answers() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("PostgreSQL does not answer at {url}; start one or set PORTCULLIS_TEST_DATABASE_URL")
}

/// Install the npm and PyPI peers once into a cache directory outside the clone.
fn peers() -> anyhow::Result<PathBuf> {
    let dir = std::env::var("PORTCULLIS_TEST_PEERS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/portcullis-peers")
    });
    let wanted =
        format!("npm: {}\npypi: {}\nscim: {}\n", NPM_PEERS.join(" "), PYPI_PEERS.join(" "), SCIM_PEERS.join(" "));
    let marker = dir.join("installed.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        eprintln!("\n==> test peers: already installed in {}", dir.display());
        return Ok(dir);
    }
    let started = step(&format!("test peers into {}", dir.display()));
    let node = dir.join("node");
    std::fs::create_dir_all(&node)?;
    if !node.join("package.json").exists() {
        run(Command::new("npm").args(["init", "-y"]).current_dir(&node).stdout(std::process::Stdio::null()))?;
    }
    run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).args(NPM_PEERS).current_dir(&node))?;
    let venv = dir.join("venv");
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip")).args(["install", "-q"]).args(PYPI_PEERS))?;
    let scim = dir.join("venv-scim");
    if !scim.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&scim))?;
    }
    run(Command::new(scim.join("bin/pip")).args(["install", "-q"]).args(SCIM_PEERS))?;
    std::fs::write(&marker, wanted)?;
    done(started);
    Ok(dir)
}
