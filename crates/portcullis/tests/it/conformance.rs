//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server mode) run
//! through the gateway, differentially: against server-everything alone and through the
//! gateway in front of it. The gateway may add no failure the upstream alone does not have,
//! and it must pass DNS-rebinding protection itself.

use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Run the suite against `url`; scenario name → passed (no check failed).
pub async fn conformance(url: &str, output: &Path, suite: &str) -> BTreeMap<String, bool> {
    let node = peers_dir().join("node");
    let status = tokio::process::Command::new(node.join("node_modules/.bin/conformance"))
        .args(["server", "--url", url, "--suite", suite, "-o"])
        .arg(output)
        .current_dir(&node)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("the conformance suite runs");
    // Its exit code only says "some check failed"; the per-scenario results are what count.
    let _ = status;
    let mut results = BTreeMap::new();
    for entry in std::fs::read_dir(output).expect("the suite wrote results") {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        // server-<scenario>-<YYYY>-<MM>-<DD>T<hh>-<mm>-<ss>-<ms>Z
        let scenario = name.rsplitn(7, '-').last().unwrap().trim_start_matches("server-").to_owned();
        let checks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("checks.json")).unwrap()).unwrap();
        let passed = checks.as_array().unwrap().iter().all(|check| check["status"] != "FAILURE");
        results.insert(scenario, passed);
    }
    assert!(results.len() >= 20, "the suite ran too few scenarios: {results:?}");
    results
}

#[tokio::test]
async fn conformance_through_the_gateway_adds_no_failure() {
    let output = std::env::temp_dir().join(format!("portcullis-conformance-{}", portcullis::crypto::new_id()));
    let (mut upstream, port) = crate::peers::everything_over("streamableHttp").await;
    let direct = conformance(&format!("http://127.0.0.1:{port}/mcp"), &output.join("direct"), "active").await;

    // The suite cannot send credentials, so the server is public.
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"over-stdio\"\ntransport = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\npublic = true\n\
         [[servers]]\nname = \"over-http\"\ntransport = \"streamable-http\"\nurl = \"http://127.0.0.1:{port}/mcp\"\npublic = true\n",
        crate::peers::everything_entry().display()
    ))
    .await;
    for server in ["over-stdio", "over-http"] {
        let through = conformance(&gw.url(&format!("/mcp/{server}")), &output.join(server), "active").await;
        let regressions: Vec<&String> = direct
            .iter()
            .filter(|(scenario, passed)| **passed && !through.get(*scenario).copied().unwrap_or(false))
            .map(|(scenario, _)| scenario)
            .collect();
        assert!(regressions.is_empty(), "{server}: the gateway fails scenarios the upstream passes: {regressions:?}");
        assert_eq!(through.get("dns-rebinding-protection"), Some(&true), "{server}: {through:?}");
        let passed = through.values().filter(|passed| **passed).count();
        eprintln!(
            "conformance via {server}: {passed}/{} scenarios pass (upstream alone: {}/{})",
            through.len(),
            direct.values().filter(|passed| **passed).count(),
            direct.len()
        );
    }
    assert_eq!(direct.get("dns-rebinding-protection"), Some(&false), "server-everything alone accepts a foreign Host");
    gw.stop().await;
    upstream.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&output);
}

/// Start the project's conformance fixture (`tests/peers/conformance-fixture.mjs`) over
/// Streamable HTTP on a free port.
pub async fn fixture_over_http() -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("node")
        .arg(fixture_script())
        .arg("http")
        .env("PORT", "0")
        .env("PORTCULLIS_PEERS_NODE", peers_dir().join("node"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::io::BufReader::new(stdout).lines().next_line().await.unwrap().expect("the fixture starts");
    let url = line.strip_prefix("listening on ").expect("the fixture prints its URL").to_owned();
    (child, url)
}

fn fixture_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/conformance-fixture.mjs")
}

#[tokio::test]
async fn every_conformance_scenario_passes_through_the_gateway() {
    let output = std::env::temp_dir().join(format!("portcullis-conformance-all-{}", portcullis::crypto::new_id()));
    let (mut fixture, fixture_url) = fixture_over_http().await;
    let gw = TestGateway::start().await;
    gw.apply(&format!(
        "[[servers]]\nname = \"over-stdio\"\ntransport = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n\
         env = {{ PORTCULLIS_PEERS_NODE = \"{}\" }}\npublic = true\n\
         [[servers]]\nname = \"over-http\"\ntransport = \"streamable-http\"\nurl = \"{fixture_url}\"\npublic = true\n",
        fixture_script().display(),
        peers_dir().join("node").display()
    ))
    .await;
    for server in ["over-stdio", "over-http"] {
        let results = conformance(&gw.url(&format!("/mcp/{server}")), &output.join(server), "all").await;
        let failed: Vec<&String> =
            results.iter().filter(|(_, passed)| !**passed).map(|(scenario, _)| scenario).collect();
        assert!(failed.is_empty(), "{server}: scenarios failing through the gateway: {failed:?}");
        assert!(results.len() >= 30, "{server}: {results:?}");
    }
    gw.stop().await;
    fixture.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&output);
}
