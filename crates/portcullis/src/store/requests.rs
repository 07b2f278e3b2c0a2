//! Server requests (see [`crate::requests`]). State changes are guarded updates
//! (`… WHERE state = 'pending'`), so of two admins deciding the same request at once exactly
//! one wins and the other learns who did.

use super::{StoreError, now_ms};
use crate::conntest::TestResult;
use crate::requests::{Justification, Kind, Origin, Proposal, State, Tier};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// What an admin decided, stored with the request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Decision {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_steps: String,
    #[serde(default)]
    pub checklist: crate::requests::Checklist,
    /// The access rule created on approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<crate::requests::Grant>,
    /// The automated checks as they stood at the decision (id → level).
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, String>,
}

/// A stored request.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub kind: Kind,
    pub state: State,
    pub requester_id: String,
    pub requester_email: String,
    /// The server proposed (or, for access, the server asked for).
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_entry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
    #[serde(skip)]
    pub sealed_secrets: Option<String>,
    pub justification: Justification,
    pub origin: Origin,
    pub sensitive: bool,
    pub urgent: bool,
    pub tier: Tier,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_id: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<i64>,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// A connection test in progress: since when, and its current step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_running_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<TestResult>,
}

fn json<T: for<'de> Deserialize<'de>>(row: &AnyRow, column: &str) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| StoreError::Conflict(format!("a stored request's {column} cannot be read: {error}")))
    })
    .transpose()
}

fn parse<T>(value: Option<T>, what: &str, text: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Conflict(format!("a stored request has an unknown {what} {text:?}")))
}

fn from_row(row: &AnyRow) -> Result<Request, StoreError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let tier: String = row.try_get("tier")?;
    let origin: String = row.try_get("origin")?;
    Ok(Request {
        id: row.try_get("id")?,
        kind: parse(Kind::parse(&kind), "kind", &kind)?,
        state: parse(State::parse(&state), "state", &state)?,
        requester_id: row.try_get("requester_id")?,
        requester_email: row.try_get("requester_email")?,
        server: row.try_get("server")?,
        catalog_entry: row.try_get("catalog_entry")?,
        proposal: json(row, "proposal")?,
        sealed_secrets: row.try_get("sealed_secrets")?,
        justification: json(row, "justification")?.unwrap_or_default(),
        origin: if origin == "internal" { Origin::Internal } else { Origin::ThirdParty },
        sensitive: row.try_get::<i64, _>("sensitive")? != 0,
        urgent: row.try_get::<i64, _>("urgent")? != 0,
        tier: parse(Tier::parse(&tier), "tier", &tier)?,
        duplicate_of: row.try_get("duplicate_of")?,
        previous_id: row.try_get("previous_id")?,
        next_id: row.try_get("next_id")?,
        created_at: row.try_get("created_at")?,
        submitted_at: row.try_get("submitted_at")?,
        updated_at: row.try_get("updated_at")?,
        decided_at: row.try_get("decided_at")?,
        decided_by: row.try_get("decided_by")?,
        decision: json(row, "decision")?,
        test_running_since: row.try_get("test_running_since")?,
        test_step: row.try_get("test_step")?,
        test: json(row, "test_result")?,
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Store a new request.
pub async fn insert(connection: &mut AnyConnection, request: &Request) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO server_requests (id, kind, state, requester_id, requester_email, server, catalog_entry, \
         proposal, sealed_secrets, justification, origin, sensitive, urgent, tier, duplicate_of, previous_id, \
         next_id, created_at, submitted_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, $17, $18, $19)",
    )
    .bind(&request.id)
    .bind(request.kind.as_str())
    .bind(request.state.as_str())
    .bind(&request.requester_id)
    .bind(&request.requester_email)
    .bind(&request.server)
    .bind(&request.catalog_entry)
    .bind(request.proposal.as_ref().map(to_json))
    .bind(&request.sealed_secrets)
    .bind(to_json(&request.justification))
    .bind(match request.origin {
        Origin::Internal => "internal",
        Origin::ThirdParty => "third-party",
    })
    .bind(i64::from(request.sensitive))
    .bind(i64::from(request.urgent))
    .bind(request.tier.as_str())
    .bind(&request.duplicate_of)
    .bind(&request.previous_id)
    .bind(request.created_at)
    .bind(request.submitted_at)
    .bind(request.updated_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Replace a draft's content (only while it is a draft).
pub async fn update_draft(connection: &mut AnyConnection, request: &Request) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE server_requests SET server = $1, catalog_entry = $2, proposal = $3, sealed_secrets = $4, \
         justification = $5, origin = $6, sensitive = $7, urgent = $8, tier = $9, duplicate_of = $10, \
         updated_at = $11, test_result = NULL WHERE id = $12 AND state = 'draft'",
    )
    .bind(&request.server)
    .bind(&request.catalog_entry)
    .bind(request.proposal.as_ref().map(to_json))
    .bind(&request.sealed_secrets)
    .bind(to_json(&request.justification))
    .bind(match request.origin {
        Origin::Internal => "internal",
        Origin::ThirdParty => "third-party",
    })
    .bind(i64::from(request.sensitive))
    .bind(i64::from(request.urgent))
    .bind(request.tier.as_str())
    .bind(&request.duplicate_of)
    .bind(now_ms())
    .bind(&request.id)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn get(connection: &mut AnyConnection, id: &str) -> Result<Option<Request>, StoreError> {
    let row = sqlx::query("SELECT * FROM server_requests WHERE id = $1").bind(id).fetch_optional(connection).await?;
    row.as_ref().map(from_row).transpose()
}

/// Filters of the request list; `None` means any.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub state: Option<State>,
    pub kind: Option<Kind>,
    pub tier: Option<Tier>,
    pub requester_id: Option<String>,
    pub server: Option<String>,
}

/// Requests matching `filter`, pending ones oldest first (the inbox order), others newest first.
pub async fn list(connection: &mut AnyConnection, filter: &Filter, limit: i64) -> Result<Vec<Request>, StoreError> {
    let mut sql = String::from("SELECT * FROM server_requests WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    let mut add = |column: &str, value: String, binds: &mut Vec<String>| {
        binds.push(value);
        sql.push_str(&format!(" AND {column} = ${}", binds.len()));
    };
    if let Some(state) = filter.state {
        add("state", state.as_str().to_owned(), &mut binds);
    }
    if let Some(kind) = filter.kind {
        add("kind", kind.as_str().to_owned(), &mut binds);
    }
    if let Some(tier) = filter.tier {
        add("tier", tier.as_str().to_owned(), &mut binds);
    }
    if let Some(requester) = &filter.requester_id {
        add("requester_id", requester.clone(), &mut binds);
    }
    if let Some(server) = &filter.server {
        add("server", server.clone(), &mut binds);
    }
    sql.push_str(&format!(
        " ORDER BY CASE WHEN state = 'pending' THEN 0 ELSE 1 END, \
         CASE WHEN state = 'pending' THEN submitted_at ELSE -created_at END LIMIT {}",
        limit.clamp(1, 5000)
    ));
    let mut query = sqlx::query(&sql);
    for value in &binds {
        query = query.bind(value);
    }
    let rows = query.fetch_all(connection).await?;
    rows.iter().map(from_row).collect()
}

/// Move a request from `from` to `to` (a submit or a withdrawal). False when it is no longer in
/// `from`.
pub async fn transition(
    connection: &mut AnyConnection,
    id: &str,
    from: &[State],
    to: State,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let states: Vec<String> = from.iter().map(|state| format!("'{}'", state.as_str())).collect();
    let submitted = if to == State::Pending { ", submitted_at = $2" } else { "" };
    let sql = format!(
        "UPDATE server_requests SET state = $1, updated_at = $2{submitted} WHERE id = $3 AND state IN ({})",
        states.join(", ")
    );
    let updated = sqlx::query(&sql).bind(to.as_str()).bind(now).bind(id).execute(connection).await?;
    Ok(updated.rows_affected() == 1)
}

/// Record a decision on a pending request. False when it is no longer pending.
pub async fn decide(
    connection: &mut AnyConnection,
    id: &str,
    to: State,
    by: &str,
    decision: &Decision,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE server_requests SET state = $1, decided_at = $2, decided_by = $3, decision = $4, updated_at = $5 \
         WHERE id = $6 AND state = 'pending'",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(by)
    .bind(to_json(decision))
    .bind(now)
    .bind(id)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Link a rejected request to its resubmission.
pub async fn link_next(connection: &mut AnyConnection, id: &str, next: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE server_requests SET next_id = $1, updated_at = $2 WHERE id = $3 AND state = 'rejected' AND next_id IS NULL",
    )
    .bind(next)
    .bind(now_ms())
    .bind(id)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Claim the right to run a connection test: false when one runs already (one started more
/// than `stale_after_ms` ago is considered dead: its replica stopped).
pub async fn start_test(connection: &mut AnyConnection, id: &str, stale_after_ms: i64) -> Result<bool, StoreError> {
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE server_requests SET test_running_since = $1, test_step = 'starting' \
         WHERE id = $2 AND (test_running_since IS NULL OR test_running_since < $3)",
    )
    .bind(now)
    .bind(id)
    .bind(now - stale_after_ms)
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn test_step(connection: &mut AnyConnection, id: &str, step: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE server_requests SET test_step = $1 WHERE id = $2 AND test_running_since IS NOT NULL")
        .bind(step)
        .bind(id)
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn finish_test(connection: &mut AnyConnection, id: &str, result: &TestResult) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE server_requests SET test_running_since = NULL, test_step = NULL, test_result = $1 WHERE id = $2",
    )
    .bind(to_json(result))
    .bind(id)
    .execute(connection)
    .await?;
    Ok(())
}

/// Replace the stored decision of a request decided in this transaction.
pub async fn set_decision(connection: &mut AnyConnection, id: &str, decision: &Decision) -> Result<(), StoreError> {
    sqlx::query("UPDATE server_requests SET decision = $1 WHERE id = $2")
        .bind(to_json(decision))
        .bind(id)
        .execute(connection)
        .await?;
    Ok(())
}

/// A server on the high-risk list.
#[derive(Debug, Clone, Serialize)]
pub struct HighRisk {
    pub server: String,
    pub note: String,
    pub marked_by: String,
    pub marked_at: i64,
    /// The last quarterly review (the marking counts as one).
    pub reviewed_at: i64,
}

/// Put `server` on the high-risk list (or change its note).
pub async fn mark_high_risk(
    connection: &mut AnyConnection,
    server: &str,
    note: &str,
    by: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let updated = sqlx::query("UPDATE high_risk_servers SET note = $1 WHERE server = $2")
        .bind(note)
        .bind(server)
        .execute(&mut *connection)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO high_risk_servers (server, note, marked_by, marked_at, reviewed_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(server)
        .bind(note)
        .bind(by)
        .bind(now)
        .bind(now)
        .execute(connection)
        .await?;
    }
    Ok(())
}

/// Record a quarterly review; false when the server is not on the list.
pub async fn review_high_risk(connection: &mut AnyConnection, server: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query("UPDATE high_risk_servers SET reviewed_at = $1 WHERE server = $2")
        .bind(now_ms())
        .bind(server)
        .execute(connection)
        .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn unmark_high_risk(connection: &mut AnyConnection, server: &str) -> Result<bool, StoreError> {
    let deleted =
        sqlx::query("DELETE FROM high_risk_servers WHERE server = $1").bind(server).execute(connection).await?;
    Ok(deleted.rows_affected() == 1)
}

pub async fn high_risk(connection: &mut AnyConnection) -> Result<Vec<HighRisk>, StoreError> {
    let rows = sqlx::query("SELECT * FROM high_risk_servers ORDER BY server").fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            Ok(HighRisk {
                server: row.try_get("server")?,
                note: row.try_get("note")?,
                marked_by: row.try_get("marked_by")?,
                marked_at: row.try_get("marked_at")?,
                reviewed_at: row.try_get("reviewed_at")?,
            })
        })
        .collect()
}
