//! `portcullis apply` through the real binary: idempotent, reports changes, dry-run, prune,
//! secrets from env/file, clear errors.

use crate::support::*;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary()).args(args).env("DEMO_TOKEN", "from-the-environment").output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn apply_cli_is_idempotent_and_reports_changes() {
    let dir = std::env::temp_dir().join(format!("portcullis-apply-{}", portcullis::crypto::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let secret_file = dir.join("token");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[servers]]
name = "everything"
transport = "stdio"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-everything"]
env = {{ SOME_TOKEN = "env:DEMO_TOKEN", OTHER = "file:{}" }}

[[groups]]
name = "engineering"

[[users]]
email = "Ann@Example.com"
name = "Ann"
groups = ["engineering"]

[[grants]]
server = "everything"
groups = ["engineering"]
"#,
            secret_file.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (ok, stdout, stderr) = run(&["apply", "--data-dir", data, "-f", file, "--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("would change 4 items"), "{stdout}");
    let (ok, stdout, stderr) = run(&["apply", "--data-dir", data, "-f", file]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "+ server everything (stdio)\n+ group engineering\n+ user ann@example.com\n+ grant everything → group engineering\nchanged 4 items\n"
    );
    let (ok, stdout, _) = run(&["apply", "--data-dir", data, "-f", file]);
    assert!(ok);
    assert_eq!(stdout, "nothing to change\n", "a second apply changes nothing");

    let (ok, stdout, stderr) = run(&["api-key", "create", "--data-dir", data, "--user", "ann@example.com"]);
    assert!(ok, "{stderr}");
    let key = stdout.lines().last().unwrap();
    assert!(key.starts_with("pcs_") && key.len() > 40, "{stdout}");

    let (ok, _, stderr) = run(&["api-key", "create", "--data-dir", data, "--user", "nobody@example.com"]);
    assert!(!ok);
    assert!(stderr.contains("no user with email nobody@example.com"), "{stderr}");

    // Errors name the problem and the fix; nothing is written.
    std::fs::write(dir.join("bad.toml"), "[[servers]]\nname = \"Bad_Name\"\ntransport = \"stdio\"\ncommand = \"x\"\n")
        .unwrap();
    let (ok, _, stderr) = run(&["apply", "--data-dir", data, "-f", dir.join("bad.toml").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("server name \"Bad_Name\" is not valid: use 1-32 characters of a-z"), "{stderr}");
    std::fs::write(dir.join("typo.toml"), "[[servers]]\nname = \"x\"\ntransprot = \"stdio\"\n").unwrap();
    let (ok, _, stderr) = run(&["apply", "--data-dir", data, "-f", dir.join("typo.toml").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("unknown field `transprot`"), "{stderr}");
    std::fs::write(
        dir.join("missing.toml"),
        "[[servers]]\nname = \"x\"\ntransport = \"stdio\"\ncommand = \"c\"\nenv = { T = \"env:NOT_SET_ANYWHERE\" }\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["apply", "--data-dir", data, "-f", dir.join("missing.toml").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("environment variable NOT_SET_ANYWHERE, which is not set"), "{stderr}");

    // Prune removes what the file no longer lists.
    std::fs::write(dir.join("empty.toml"), "").unwrap();
    let (ok, stdout, _) = run(&["apply", "--data-dir", data, "-f", dir.join("empty.toml").to_str().unwrap()]);
    assert!(ok);
    assert_eq!(stdout, "nothing to change\n", "without --prune nothing is deleted");
    let (ok, stdout, _) =
        run(&["apply", "--data-dir", data, "-f", dir.join("empty.toml").to_str().unwrap(), "--prune"]);
    assert!(ok);
    assert!(stdout.contains("- server everything") && stdout.contains("- user ann@example.com"), "{stdout}");

    // Unknown settings fail at start with the nearest valid name.
    let output = Command::new(binary())
        .args(["apply", "--data-dir", data, "-f", file])
        .env("PORTCULLIS_LISTNE", "x")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("did you mean \"PORTCULLIS_LISTEN\"?"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_reach_only_the_upstream() {
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"s\"\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"demo-server\"]\nenv = {{ TOKEN = \"very-secret-value\" }}\n",
        binary()
    ))
    .await;
    let raw = std::fs::read(gw.dir.join("portcullis.db")).unwrap();
    let wal = std::fs::read(gw.dir.join("portcullis.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!String::from_utf8_lossy(bytes).contains("very-secret-value"), "secret stored in plain text");
    }
    let snapshot = gw.state.snapshot.current().unwrap();
    assert_eq!(snapshot.servers["s"].secrets.env["TOKEN"], "very-secret-value");
    gw.stop().await;
}
