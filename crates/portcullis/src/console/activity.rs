//! The audit trail in the console (`/console/audit`). Everyone sees their own events ("My
//! activity"); administrators who may read the audit log (super, security and analytics
//! admins) see everyone's ("Audit log") and can narrow it to one person. Both filter by
//! server, request, decision and outcome, newest first, fifty to a page, and page back in time
//! by the events' sequence (so new events never shift a page).

use super::{AppState, Html, cell, csrf, failure, link, note, require, respond, rich_table, url_encode, when};
use crate::registry::Power;
use crate::store;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    person: Option<String>,
    server: Option<String>,
    method: Option<String>,
    decision: Option<String>,
    outcome: Option<String>,
    before: Option<i64>,
}

fn given(value: &Option<String>) -> Option<String> {
    value.as_deref().map(str::trim).filter(|value| !value.is_empty()).map(str::to_owned)
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<ActivityQuery>) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let auditor = signed.account.admin_roles.iter().any(|role| role.can(Power::ReadAudit));
    let person = given(&query.person).filter(|_| auditor).map(|email| email.to_lowercase());
    let decision = given(&query.decision).filter(|decision| ["allow", "deny"].contains(&decision.as_str()));
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let user_id = match (&person, auditor) {
            (_, false) => Some(signed.account.user_id.clone()),
            (None, true) => None,
            // An unknown email matches nobody's events (an empty id is no user's).
            (Some(email), true) => Some(
                store::accounts::by_email(&mut connection, email)
                    .await?
                    .map(|account| account.user_id)
                    .unwrap_or_default(),
            ),
        };
        let filter = store::audit::Filter {
            user_id,
            server: given(&query.server),
            method: given(&query.method),
            decision: decision.clone(),
            outcome: given(&query.outcome),
            before: query.before,
            limit: PAGE,
            ..Default::default()
        };
        store::audit::query(&mut connection, &filter).await
    }
    .await;
    let events = match loaded {
        Ok(events) => events,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(note(
        "hint",
        if auditor {
            "Every request and administrative action, newest first. Arguments are kept sealed; only their digest is stored in the clear."
        } else {
            "What you did through Portcullis, newest first: calls to servers, sign-ins and changes to your keys."
        },
    ));
    let mut controls = Vec::new();
    let (person_value, server, method, outcome) = (
        person.clone().unwrap_or_default(),
        given(&query.server).unwrap_or_default(),
        given(&query.method).unwrap_or_default(),
        given(&query.outcome).unwrap_or_default(),
    );
    if auditor {
        controls.push(super::html::Filter {
            name: "person",
            label: "Person (email)",
            value: &person_value,
            options: &[],
        });
    }
    let decision_value = decision.clone().unwrap_or_default();
    controls.extend([
        super::html::Filter { name: "server", label: "Server", value: &server, options: &[] },
        super::html::Filter { name: "method", label: "Request", value: &method, options: &[] },
        super::html::Filter {
            name: "decision",
            label: "Decision",
            value: &decision_value,
            options: &["allow", "deny"],
        },
        super::html::Filter { name: "outcome", label: "Outcome", value: &outcome, options: &[] },
    ]);
    content.push(super::html::filters("/console/audit", &controls));
    if events.is_empty() {
        content.push(note("hint", if query.before.is_some() { "No older events." } else { "No events match." }));
    } else {
        let admin = !signed.account.admin_roles.is_empty();
        let rows: Vec<Vec<Html>> = events
            .iter()
            .map(|event| {
                let who = if admin && event.user_id.is_some() {
                    link(&format!("/console/users/{}", url_encode(&event.principal)), &event.principal)
                } else {
                    cell(&event.principal)
                };
                let client = match (&event.client_name, &event.client_version) {
                    (Some(name), Some(version)) => format!("{name} {version}"),
                    (Some(name), None) => name.clone(),
                    _ => String::new(),
                };
                vec![
                    cell(&when(Some(event.time_ms))),
                    who,
                    cell(event.server.as_deref().unwrap_or("")),
                    cell(&event.method),
                    cell(event.target.as_deref().unwrap_or("")),
                    cell(&event.decision),
                    cell(&event.reason),
                    cell(&event.outcome),
                    cell(&client),
                    cell(event.ip.as_deref().unwrap_or("")),
                ]
            })
            .collect();
        content.push(rich_table(
            &[
                "Time (UTC)",
                "Who",
                "Server",
                "Request",
                "Tool or resource",
                "Decision",
                "Reason",
                "Outcome",
                "Client",
                "Address",
            ],
            &rows,
        ));
        if events.len() as i64 == PAGE
            && let Some(last) = events.last()
        {
            let mut next = vec![format!("before={}", last.seq)];
            for (name, value) in [
                ("person", &person_value),
                ("server", &server),
                ("method", &method),
                ("decision", &decision_value),
                ("outcome", &outcome),
            ] {
                if !value.is_empty() {
                    next.push(format!("{name}={}", url_encode(value)));
                }
            }
            content.push(link(&format!("/console/audit?{}", next.join("&")), "Older events"));
        }
    }
    let title = if auditor { "Audit log" } else { "My activity" };
    respond(signed, &csrf_token, set, title, content)
}
