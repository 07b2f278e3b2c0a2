//! The directory: people and groups with everything an identity provider pushes (SCIM) or an
//! admin sets, account status, roles, and the bearer tokens of SCIM clients.

use super::registry::bump_revision;
use super::{StoreError, now_ms};
use crate::registry::{AdminRole, DirectoryGroup, Person, Status};
use serde_json::{Map, Value};
use sqlx::{AnyConnection, Row};

const PERSON_COLUMNS: &str = "id, email, user_name, name, external_id, status, department, title, team, admin, \
                              admin_roles, roles, attributes, scim, source, created_at, updated_at, last_login_at";

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn person_from_row(row: &sqlx::any::AnyRow, groups: Vec<(String, String)>) -> Result<Person, StoreError> {
    let status: String = row.try_get("status")?;
    let email: String = row.try_get("email")?;
    Ok(Person {
        id: row.try_get("id")?,
        user_name: row.try_get::<Option<String>, _>("user_name")?.unwrap_or_else(|| email.clone()),
        email,
        name: row.try_get("name")?,
        external_id: row.try_get("external_id")?,
        status: Status::parse(&status).unwrap_or(Status::Inactive),
        department: row.try_get("department")?,
        title: row.try_get("title")?,
        team: row.try_get("team")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        admin_roles: json_list(&row.try_get::<String, _>("admin_roles")?),
        roles: json_list(&row.try_get::<String, _>("roles")?),
        attributes: json_object(&row.try_get::<String, _>("attributes")?),
        scim: json_object(&row.try_get::<String, _>("scim")?),
        source: row.try_get("source")?,
        groups,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_login_at: row.try_get("last_login_at")?,
    })
}

/// Every person, ordered by email, with their groups (id, name).
pub async fn list_people(connection: &mut AnyConnection) -> Result<Vec<Person>, StoreError> {
    let rows =
        sqlx::query(&format!("SELECT {PERSON_COLUMNS} FROM users ORDER BY email")).fetch_all(&mut *connection).await?;
    let memberships = memberships(connection).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let groups = memberships
                .iter()
                .filter(|(_, user_id, _)| *user_id == id)
                .map(|(group_id, _, name)| (group_id.clone(), name.clone()))
                .collect();
            person_from_row(row, groups)
        })
        .collect()
}

/// (group id, user id, group name) for every membership.
async fn memberships(connection: &mut AnyConnection) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows =
        sqlx::query("SELECT m.group_id, m.user_id, g.name FROM group_members m JOIN groups g ON g.id = m.group_id")
            .fetch_all(&mut *connection)
            .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

pub async fn get_person(connection: &mut AnyConnection, id: &str) -> Result<Option<Person>, StoreError> {
    let Some(row) = sqlx::query(&format!("SELECT {PERSON_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?
    else {
        return Ok(None);
    };
    let groups = memberships(connection)
        .await?
        .into_iter()
        .filter(|(_, user_id, _)| user_id == id)
        .map(|(group_id, _, name)| (group_id, name))
        .collect();
    person_from_row(&row, groups).map(Some)
}

/// The person linked to an identity at the OpenID Connect provider (`"{issuer} {subject}"`).
pub async fn person_by_oidc_link(connection: &mut AnyConnection, link: &str) -> Result<Option<Person>, StoreError> {
    let id = sqlx::query("SELECT id FROM users WHERE oidc_identity = $1")
        .bind(link)
        .fetch_optional(&mut *connection)
        .await?;
    match id {
        Some(row) => get_person(connection, &row.get::<String, _>(0)).await,
        None => Ok(None),
    }
}

/// The person with this email (case-insensitively).
pub async fn person_by_email(connection: &mut AnyConnection, email: &str) -> Result<Option<Person>, StoreError> {
    let id = sqlx::query("SELECT id FROM users WHERE lower(email) = $1")
        .bind(email.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?;
    match id {
        Some(row) => get_person(connection, &row.get::<String, _>(0)).await,
        None => Ok(None),
    }
}

/// The provider identity a person is linked to, if any.
pub async fn oidc_link(connection: &mut AnyConnection, id: &str) -> Result<Option<String>, StoreError> {
    let row =
        sqlx::query("SELECT oidc_identity FROM users WHERE id = $1").bind(id).fetch_optional(&mut *connection).await?;
    Ok(row.and_then(|row| row.get::<Option<String>, _>(0)))
}

/// Link a person to an identity at the provider.
pub async fn set_oidc_link(connection: &mut AnyConnection, id: &str, link: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET oidc_identity = $1 WHERE id = $2")
        .bind(link)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Make a person's memberships follow the groups their identity provider claims at sign-in,
/// among the groups sign-in manages (source `oidc`): join every claimed one (matched by name
/// case-insensitively; created when missing) and leave those no longer claimed. A claimed name
/// that belongs to a group SCIM or an admin manages changes nothing: a claim must not put
/// anyone into a group whose members someone else decides (and could never take them out).
pub async fn follow_claimed_groups(
    connection: &mut AnyConnection,
    user_id: &str,
    claimed: &[String],
) -> Result<(), StoreError> {
    let groups = sqlx::query("SELECT id, name, source FROM groups").fetch_all(&mut *connection).await?;
    let current: Vec<String> = sqlx::query("SELECT group_id FROM group_members WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut changed = false;
    for name in claimed {
        let existing = groups.iter().find(|row| row.get::<String, _>(1).eq_ignore_ascii_case(name));
        let group_id = match existing {
            Some(row) if row.get::<String, _>(2) != "oidc" => continue,
            Some(row) => row.get::<String, _>(0),
            None => {
                let id = crate::crypto::new_id();
                let now = now_ms();
                sqlx::query(
                    "INSERT INTO groups (id, name, external_id, source, created_at, updated_at)                      VALUES ($1, $2, NULL, 'oidc', $3, $4)",
                )
                .bind(&id)
                .bind(name)
                .bind(now)
                .bind(now)
                .execute(&mut *connection)
                .await?;
                id
            }
        };
        if !current.contains(&group_id) {
            sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
                .bind(&group_id)
                .bind(user_id)
                .execute(&mut *connection)
                .await?;
            changed = true;
        }
    }
    for row in &groups {
        let (id, name, source): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let still_claimed = claimed.iter().any(|claimed| claimed.eq_ignore_ascii_case(&name));
        if source == "oidc" && current.contains(&id) && !still_claimed {
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
                .bind(&id)
                .bind(user_id)
                .execute(&mut *connection)
                .await?;
            changed = true;
        }
    }
    if changed {
        bump_revision(connection).await?;
    }
    Ok(())
}

/// Refuse a person whose email or user name (case-insensitively) belongs to someone else.
async fn check_unique(connection: &mut AnyConnection, person: &Person) -> Result<(), StoreError> {
    let clash = sqlx::query("SELECT email FROM users WHERE id <> $1 AND (lower(email) = $2 OR lower(user_name) = $3)")
        .bind(&person.id)
        .bind(person.email.to_lowercase())
        .bind(person.user_name.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?;
    match clash {
        Some(row) => Err(StoreError::Conflict(format!(
            "the user name {:?} or email {:?} already belongs to {}",
            person.user_name,
            person.email,
            row.get::<String, _>(0)
        ))),
        None => Ok(()),
    }
}

/// Insert a new person (`person.id` set by the caller).
pub async fn insert_person(connection: &mut AnyConnection, person: &Person) -> Result<(), StoreError> {
    check_unique(connection, person).await?;
    sqlx::query(&format!(
        "INSERT INTO users ({PERSON_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    ))
    .bind(&person.id)
    .bind(&person.email)
    .bind(&person.user_name)
    .bind(&person.name)
    .bind(&person.external_id)
    .bind(person.status.as_str())
    .bind(&person.department)
    .bind(&person.title)
    .bind(&person.team)
    .bind(i64::from(person.admin))
    .bind(serde_json::to_string(&person.admin_roles).unwrap_or_default())
    .bind(serde_json::to_string(&person.roles).unwrap_or_default())
    .bind(Value::Object(person.attributes.clone()).to_string())
    .bind(Value::Object(person.scim.clone()).to_string())
    .bind(&person.source)
    .bind(person.created_at)
    .bind(person.updated_at)
    .bind(person.last_login_at)
    .execute(&mut *connection)
    .await?;
    bump_revision(connection).await
}

/// Write every field of an existing person (not their groups).
pub async fn update_person(connection: &mut AnyConnection, person: &Person) -> Result<(), StoreError> {
    check_unique(connection, person).await?;
    let result = sqlx::query(
        "UPDATE users SET email = $1, user_name = $2, name = $3, external_id = $4, status = $5, department = $6, \
         title = $7, team = $8, admin = $9, admin_roles = $10, roles = $11, attributes = $12, scim = $13, \
         source = $14, updated_at = $15 WHERE id = $16",
    )
    .bind(&person.email)
    .bind(&person.user_name)
    .bind(&person.name)
    .bind(&person.external_id)
    .bind(person.status.as_str())
    .bind(&person.department)
    .bind(&person.title)
    .bind(&person.team)
    .bind(i64::from(person.admin))
    .bind(serde_json::to_string(&person.admin_roles).unwrap_or_default())
    .bind(serde_json::to_string(&person.roles).unwrap_or_default())
    .bind(Value::Object(person.attributes.clone()).to_string())
    .bind(Value::Object(person.scim.clone()).to_string())
    .bind(&person.source)
    .bind(now_ms())
    .bind(&person.id)
    .execute(&mut *connection)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user with id {:?}", person.id)));
    }
    bump_revision(connection).await
}

pub async fn delete_person(connection: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user with id {id:?}")));
    }
    bump_revision(connection).await
}

/// Set a person's account status by email; returns the status it had.
pub async fn set_status(connection: &mut AnyConnection, email: &str, status: Status) -> Result<Status, StoreError> {
    let Some(row) = sqlx::query("SELECT status FROM users WHERE lower(email) = $1")
        .bind(email.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?
    else {
        return Err(StoreError::NotFound(format!("no user with email {email:?}")));
    };
    let before = Status::parse(&row.get::<String, _>(0)).unwrap_or(Status::Inactive);
    sqlx::query("UPDATE users SET status = $1, updated_at = $2 WHERE lower(email) = $3")
        .bind(status.as_str())
        .bind(now_ms())
        .bind(email.to_lowercase())
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await?;
    Ok(before)
}

fn group_from_row(row: &sqlx::any::AnyRow, members: Vec<(String, String)>) -> Result<DirectoryGroup, StoreError> {
    Ok(DirectoryGroup {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        external_id: row.try_get("external_id")?,
        source: row.try_get("source")?,
        members,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// (group id, user id, user email) for every membership.
async fn members(connection: &mut AnyConnection) -> Result<Vec<(String, String, String)>, StoreError> {
    let rows =
        sqlx::query("SELECT m.group_id, m.user_id, u.email FROM group_members m JOIN users u ON u.id = m.user_id")
            .fetch_all(&mut *connection)
            .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect())
}

/// Every group, ordered by name, with its members (user id, email).
pub async fn list_groups(connection: &mut AnyConnection) -> Result<Vec<DirectoryGroup>, StoreError> {
    let rows = sqlx::query("SELECT id, name, external_id, source, created_at, updated_at FROM groups ORDER BY name")
        .fetch_all(&mut *connection)
        .await?;
    let members = members(connection).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let mine = members
                .iter()
                .filter(|(group_id, _, _)| *group_id == id)
                .map(|(_, user_id, email)| (user_id.clone(), email.clone()))
                .collect();
            group_from_row(row, mine)
        })
        .collect()
}

pub async fn get_group(connection: &mut AnyConnection, id: &str) -> Result<Option<DirectoryGroup>, StoreError> {
    Ok(list_groups(connection).await?.into_iter().find(|group| group.id == id))
}

async fn check_group_name(connection: &mut AnyConnection, group: &DirectoryGroup) -> Result<(), StoreError> {
    let clash = sqlx::query("SELECT name FROM groups WHERE id <> $1 AND lower(name) = $2")
        .bind(&group.id)
        .bind(group.name.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?;
    match clash {
        Some(row) => Err(StoreError::Conflict(format!("a group named {:?} exists already", row.get::<String, _>(0)))),
        None => Ok(()),
    }
}

/// Users among `user_ids` that do not exist.
async fn unknown_users(connection: &mut AnyConnection, user_ids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut unknown = Vec::new();
    for user_id in user_ids {
        if sqlx::query("SELECT 1 FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *connection)
            .await?
            .is_none()
        {
            unknown.push(user_id.clone());
        }
    }
    Ok(unknown)
}

async fn write_members(connection: &mut AnyConnection, group: &DirectoryGroup) -> Result<(), StoreError> {
    let ids: Vec<String> = group.members.iter().map(|(id, _)| id.clone()).collect();
    let unknown = unknown_users(connection, &ids).await?;
    if !unknown.is_empty() {
        return Err(StoreError::NotFound(format!("no user with id {}", unknown.join(", "))));
    }
    sqlx::query("DELETE FROM group_members WHERE group_id = $1").bind(&group.id).execute(&mut *connection).await?;
    let mut seen = std::collections::BTreeSet::new();
    for id in ids.into_iter().filter(|id| seen.insert(id.clone())) {
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
            .bind(&group.id)
            .bind(id)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

pub async fn insert_group(connection: &mut AnyConnection, group: &DirectoryGroup) -> Result<(), StoreError> {
    check_group_name(connection, group).await?;
    sqlx::query(
        "INSERT INTO groups (id, name, external_id, source, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&group.id)
    .bind(&group.name)
    .bind(&group.external_id)
    .bind(&group.source)
    .bind(group.created_at)
    .bind(group.updated_at)
    .execute(&mut *connection)
    .await?;
    write_members(connection, group).await?;
    bump_revision(connection).await
}

/// Write the group's name, external id and exact membership.
pub async fn update_group(connection: &mut AnyConnection, group: &DirectoryGroup) -> Result<(), StoreError> {
    check_group_name(connection, group).await?;
    let result =
        sqlx::query("UPDATE groups SET name = $1, external_id = $2, source = $3, updated_at = $4 WHERE id = $5")
            .bind(&group.name)
            .bind(&group.external_id)
            .bind(&group.source)
            .bind(now_ms())
            .bind(&group.id)
            .execute(&mut *connection)
            .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no group with id {:?}", group.id)));
    }
    write_members(connection, group).await?;
    bump_revision(connection).await
}

pub async fn delete_group(connection: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM groups WHERE id = $1").bind(id).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no group with id {id:?}")));
    }
    sqlx::query("DELETE FROM grants WHERE grantee = 'group' AND principal_id NOT IN (SELECT id FROM groups)")
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await
}

/// A SCIM client's token as listed (never the token itself).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScimToken {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub async fn insert_scim_token(
    connection: &mut AnyConnection,
    id: &str,
    name: &str,
    prefix: &str,
    token_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO scim_tokens (id, name, prefix, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(name)
        .bind(prefix)
        .bind(token_hash)
        .bind(now_ms())
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// The name of the live token with this hash, noting that it was used.
pub async fn use_scim_token(connection: &mut AnyConnection, token_hash: &str) -> Result<Option<String>, StoreError> {
    let Some(row) = sqlx::query("SELECT id, name FROM scim_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(token_hash)
        .fetch_optional(&mut *connection)
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.get(0);
    sqlx::query("UPDATE scim_tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(&id)
        .execute(&mut *connection)
        .await?;
    Ok(Some(row.get(1)))
}

pub async fn list_scim_tokens(connection: &mut AnyConnection) -> Result<Vec<ScimToken>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM scim_tokens ORDER BY created_at",
    )
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ScimToken {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                prefix: row.try_get("prefix")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        })
        .collect()
}

pub async fn revoke_scim_token(connection: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    let result = sqlx::query("UPDATE scim_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(id)
        .execute(&mut *connection)
        .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no live SCIM token with id {id:?}")));
    }
    Ok(())
}

/// Make `roles` (super-admin included) exactly the admin roles of the user; returns the roles
/// added and removed, for the audit log.
pub async fn set_admin_roles(
    connection: &mut AnyConnection,
    user_id: &str,
    roles: &[AdminRole],
) -> Result<(Vec<AdminRole>, Vec<AdminRole>), StoreError> {
    let Some(row) = sqlx::query("SELECT admin, admin_roles FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *connection)
        .await?
    else {
        return Err(StoreError::NotFound(format!("no user with id {user_id:?}")));
    };
    let before = AdminRole::held(row.get::<i64, _>(0) != 0, &json_list(&row.get::<String, _>(1)));
    let mut after = roles.to_vec();
    after.sort();
    after.dedup();
    if before == after {
        return Ok((Vec::new(), Vec::new()));
    }
    let admin = after.contains(&AdminRole::SuperAdmin);
    let others: Vec<&str> =
        after.iter().filter(|role| **role != AdminRole::SuperAdmin).map(|role| role.as_str()).collect();
    sqlx::query("UPDATE users SET admin = $1, admin_roles = $2, updated_at = $3 WHERE id = $4")
        .bind(i64::from(admin))
        .bind(serde_json::to_string(&others).unwrap_or_default())
        .bind(now_ms())
        .bind(user_id)
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await?;
    let added = after.iter().filter(|role| !before.contains(role)).copied().collect();
    let removed = before.iter().filter(|role| !after.contains(role)).copied().collect();
    Ok((added, removed))
}
