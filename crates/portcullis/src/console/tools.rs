//! A server's pinned definitions (`/console/servers/{name}/tools`): every tool, prompt and
//! resource template with its pin, and each held change as a line diff of the approved and the
//! new definition, with "Approve" per item or for all, and "Check now".

use super::html::{Html, cell, esc, facts, link, note, rich_table};
use super::{AppState, csrf, failure, redirect, require_admin, respond};
use crate::registry::Power;
use crate::store::{self, StoreError};
use crate::time::iso_time;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The lines of `old` and `new` as a diff: (' ' | '-' | '+', line), by longest common
/// subsequence (definitions are short).
pub fn line_diff(old: &str, new: &str) -> Vec<(char, String)> {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let mut common = vec![vec![0usize; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            common[i][j] =
                if old[i] == new[j] { common[i + 1][j + 1] + 1 } else { common[i + 1][j].max(common[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            out.push((' ', old[i].to_owned()));
            i += 1;
            j += 1;
        } else if j < new.len() && (i == old.len() || common[i][j + 1] > common[i + 1][j]) {
            out.push(('+', new[j].to_owned()));
            j += 1;
        } else {
            out.push(('-', old[i].to_owned()));
            i += 1;
        }
    }
    out
}

fn pretty(value: Option<&serde_json::Value>) -> String {
    value.map(|value| serde_json::to_string_pretty(value).unwrap_or_default()).unwrap_or_default()
}

/// Show invisible and other non-printing characters, so a hidden instruction is seen.
fn visible(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}') {
                format!("<U+{:04X}>", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn diff_html(old: &str, new: &str) -> Html {
    let mut out = String::from("<pre class=\"diff\">");
    for (mark, line) in line_diff(old, new) {
        let class = match mark {
            '+' => "added",
            '-' => "removed",
            _ => "same",
        };
        let _ = writeln!(out, "<span class=\"{class}\">{mark} {}</span>", esc(&visible(&line)));
    }
    out.push_str("</pre>");
    Html::trusted(out)
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, Path(server): Path<String>) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let exists = store::registry::get_server(&mut connection, &server).await?.is_some();
        let pinned =
            store::pins::pinned_servers(&mut connection).await?.into_iter().find(|(name, _, _)| *name == server);
        let pins = store::pins::list(&mut connection, Some(&server)).await?;
        Ok::<_, StoreError>((exists, pinned, pins))
    }
    .await;
    let (exists, pinned, pins) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    if !exists {
        return respond(
            signed,
            &csrf_token,
            set,
            "No such server",
            note("error", &format!("No server is named {server:?}.")),
        );
    }
    let may_change = signed.account.admin_roles.iter().any(|role| role.can(Power::ManageServers));
    let mut content = Html::new();
    content.push(facts(&[
        ("Server", server.clone()),
        (
            "Pinned",
            match &pinned {
                Some((_, at, by)) => format!("since {} by {by}", iso_time(*at)),
                None => "not yet: the first listing pins every definition".into(),
            },
        ),
    ]));
    let button = |action: &str, label: &str, name: Option<&str>| {
        let mut out = format!(
            "<form method=\"post\" action=\"/console/servers/{}/tools/{action}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(&super::url_encode(&server)),
            esc(&csrf_token)
        );
        if let Some(name) = name {
            let _ = write!(out, "<input type=\"hidden\" name=\"name\" value=\"{}\">", esc(name));
        }
        let _ = write!(out, "<button type=\"submit\">{}</button></form>", esc(label));
        out
    };
    if may_change {
        let mut actions = button("check", "Check now", None);
        if pins.iter().any(|pin| pin.pending_hash.is_some()) {
            actions.push_str(&button("approve", "Approve all held changes", None));
        }
        content.push(Html::trusted(format!("<div class=\"actions\">{actions}</div>")));
    }
    let held: Vec<_> = pins.iter().filter(|pin| pin.pending_hash.is_some()).collect();
    if !held.is_empty() {
        content.push(Html::trusted("<h2>Held for review</h2>".into()));
        content.push(note(
            "error",
            "These definitions changed (or are new) since approval. Clients do not see them and cannot call them until \
             you approve. Read the difference for instructions to the model, new parameters and widened scope.",
        ));
        for pin in held {
            let what = if pin.approved_hash.is_some() { "changed" } else { "new" };
            content.push(Html::trusted(format!(
                "<h3>{} {} — {what} since {}</h3>",
                esc(&pin.kind),
                esc(&pin.name),
                esc(&pin.pending_since.map(iso_time).unwrap_or_default())
            )));
            content
                .push(diff_html(&pretty(pin.approved_definition.as_ref()), &pretty(pin.pending_definition.as_ref())));
            if may_change {
                content.push(Html::trusted(button("approve", &format!("Approve {}", pin.name), Some(&pin.name))));
            }
        }
    }
    content.push(Html::trusted("<h2>Pinned definitions</h2>".into()));
    let rows: Vec<Vec<Html>> = pins
        .iter()
        .filter(|pin| pin.approved_hash.is_some())
        .map(|pin| {
            let description = pin
                .approved_definition
                .as_ref()
                .and_then(|definition| definition.get("description"))
                .and_then(|text| text.as_str())
                .unwrap_or("");
            vec![
                cell(&pin.kind),
                cell(&pin.name),
                cell(description),
                cell(&format!(
                    "{} by {}",
                    pin.approved_at.map(iso_time).unwrap_or_default(),
                    pin.approved_by.as_deref().unwrap_or("")
                )),
                cell(&pin.approved_hash.as_deref().unwrap_or("").chars().take(12).collect::<String>()),
            ]
        })
        .collect();
    if rows.is_empty() {
        content.push(note("hint", "Nothing pinned yet."));
    } else {
        content.push(rich_table(&["Kind", "Name", "Description", "Approved", "SHA-256"], &rows));
    }
    content.push(link(
        &format!("/console/servers/{}/permissions", super::url_encode(&server)),
        "Permissions of this server",
    ));
    respond(signed, &csrf_token, set, &format!("Definitions of {server}"), content)
}

/// `POST /console/servers/{name}/tools/{check|approve}`.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((server, action)): Path<(String, String)>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let refusal = "Only IT admins check and approve server definitions.";
    let manager = super::with_power(Power::ManageServers);
    let signed = match super::require_form_allowed(&state, &headers, &form, manager, refusal).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let back = format!("/console/servers/{}/tools", super::url_encode(&server));
    let result = match action.as_str() {
        "check" => crate::pinning::check(&state, &server, "checked by an admin").await.map(|_| ()),
        "approve" => {
            let names: Option<Vec<String>> = form.get("name").map(|name| vec![name.clone()]);
            crate::pinning::approve_held(
                &state,
                &server,
                names.as_deref(),
                &signed.account.email,
                &signed.account.user_id,
            )
            .await
            .map(|_| ())
        }
        _ => Err(StoreError::NotFound(format!("no action {action:?}"))),
    };
    match result {
        Ok(()) => redirect(&back),
        Err(StoreError::Conflict(text) | StoreError::NotFound(text)) => {
            super::not_done(&state, &headers, signed, "Not done", &text, (&back, "Back"))
        }
        Err(error) => failure(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diffs_show_what_changed() {
        let diff = line_diff("a\nb\nc", "a\nB\nc\nd");
        let text: Vec<String> = diff.iter().map(|(mark, line)| format!("{mark}{line}")).collect();
        assert_eq!(text, [" a", "-b", "+B", " c", "+d"]);
        assert!(line_diff("", "x").iter().all(|(mark, _)| *mark == '+'));
    }
}
