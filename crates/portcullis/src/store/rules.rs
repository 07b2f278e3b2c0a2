//! Access rules. The written rule is stored whole as JSON (`spec`); `name`, `effect`,
//! `global_scope`, `expires_at` and `enabled` are projected out of it for listing. Every change
//! bumps the registry revision, so each replica's snapshot picks it up within a second.

use super::registry::bump_revision;
use super::{StoreError, now_ms};
use crate::rules::{RuleSpec, StoredRule};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

const COLUMNS: &str = "id, spec, author, created_at, updated_at";

fn rule_from_row(row: &AnyRow) -> Result<StoredRule, StoreError> {
    let spec: String = row.try_get("spec")?;
    let spec: RuleSpec = serde_json::from_str(&spec).map_err(|error| {
        StoreError::Conflict(format!("a stored rule cannot be read ({error}); fix or delete it in the database"))
    })?;
    Ok(StoredRule {
        id: row.try_get("id")?,
        spec,
        author: row.try_get("author")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind the rule's columns, in table order: name, effect, global_scope, spec, notes,
/// expires_at, enabled, author.
fn with_spec<'q>(query: AnyQuery<'q>, spec: &'q RuleSpec, author: &'q str) -> AnyQuery<'q> {
    query
        .bind(&spec.name)
        .bind(&spec.effect)
        .bind(i64::from(spec.global))
        .bind(serde_json::to_string(spec).unwrap_or_default())
        .bind(&spec.notes)
        .bind(spec.expires.as_deref().and_then(crate::time::parse_iso_time))
        .bind(i64::from(spec.enabled))
        .bind(author)
}

/// Every rule, by name.
pub async fn list_rules(connection: &mut AnyConnection) -> Result<Vec<StoredRule>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM rules ORDER BY name")).fetch_all(connection).await?;
    rows.iter().map(rule_from_row).collect()
}

pub async fn get_rule(connection: &mut AnyConnection, id: &str) -> Result<Option<StoredRule>, StoreError> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} FROM rules WHERE id = $1")).bind(id).fetch_optional(connection).await?;
    row.as_ref().map(rule_from_row).transpose()
}

pub async fn find_rule(connection: &mut AnyConnection, name: &str) -> Result<Option<StoredRule>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM rules WHERE name = $1"))
        .bind(name)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(rule_from_row).transpose()
}

/// Insert a new rule (`spec` already checked and normalized); a taken name is a conflict.
pub async fn insert_rule(
    connection: &mut AnyConnection,
    spec: &RuleSpec,
    author: &str,
) -> Result<StoredRule, StoreError> {
    if find_rule(&mut *connection, &spec.name).await?.is_some() {
        return Err(StoreError::Conflict(format!(
            "a rule named {:?} exists already; choose another name or change that rule",
            spec.name
        )));
    }
    let now = now_ms();
    let rule = StoredRule {
        id: crate::crypto::new_id(),
        spec: spec.clone(),
        author: author.to_owned(),
        created_at: now,
        updated_at: now,
    };
    let insert = sqlx::query(
        "INSERT INTO rules (id, name, effect, global_scope, spec, notes, expires_at, enabled, author, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&rule.id);
    with_spec(insert, spec, author).bind(now).bind(now).execute(&mut *connection).await?;
    bump_revision(connection).await?;
    Ok(rule)
}

/// Replace the rule `id` with `spec` (a rename must not take another rule's name).
pub async fn update_rule(
    connection: &mut AnyConnection,
    id: &str,
    spec: &RuleSpec,
    author: &str,
) -> Result<StoredRule, StoreError> {
    let Some(before) = get_rule(&mut *connection, id).await? else {
        return Err(StoreError::NotFound(format!("there is no rule with id {id:?}")));
    };
    if let Some(other) = find_rule(&mut *connection, &spec.name).await?
        && other.id != id
    {
        return Err(StoreError::Conflict(format!(
            "another rule is named {:?} already; choose another name",
            spec.name
        )));
    }
    let now = now_ms();
    let update = sqlx::query(
        "UPDATE rules SET name = $1, effect = $2, global_scope = $3, spec = $4, notes = $5, expires_at = $6, \
         enabled = $7, author = $8, updated_at = $9 WHERE id = $10",
    );
    with_spec(update, spec, author).bind(now).bind(id).execute(&mut *connection).await?;
    bump_revision(connection).await?;
    Ok(StoredRule { spec: spec.clone(), author: author.to_owned(), updated_at: now, ..before })
}

/// Delete the rule `id`; returns what was deleted.
pub async fn delete_rule(connection: &mut AnyConnection, id: &str) -> Result<StoredRule, StoreError> {
    let Some(before) = get_rule(&mut *connection, id).await? else {
        return Err(StoreError::NotFound(format!("there is no rule with id {id:?}")));
    };
    sqlx::query("DELETE FROM rules WHERE id = $1").bind(id).execute(&mut *connection).await?;
    bump_revision(connection).await?;
    Ok(before)
}
