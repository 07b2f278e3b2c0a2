//! Servers, users, groups, grants and API keys. Every write bumps the registry revision in
//! the same transaction, which is how running replicas notice that they must reload.

use super::{StoreError, now_ms};
use crate::crypto::new_id;
use crate::registry::{AdminRole, ApiKey, Grant, Grantee, Group, Server, Status, Transport, User};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap};

/// The current registry revision.
pub async fn revision(connection: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT value FROM revision WHERE id = 1").fetch_one(connection).await?.get::<i64, _>(0))
}

/// Mark the registry as changed.
pub async fn bump_revision(connection: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1").execute(&mut *connection).await?;
    if connection.backend_name() == "PostgreSQL" {
        // Delivered when the transaction commits, to every replica listening.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::snapshot::CHANGES_CHANNEL)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

pub(crate) fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn server_from_row(row: &AnyRow) -> Result<Server, StoreError> {
    let transport: String = row.try_get("transport")?;
    Ok(Server {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        transport: Transport::parse(&transport).map_err(|error| StoreError::Conflict(error.0))?,
        url: row.try_get("url")?,
        command: row.try_get("command")?,
        args: json_list(&row.try_get::<String, _>("args")?),
        env_names: json_list(&row.try_get::<String, _>("env_names")?),
        header_names: json_list(&row.try_get::<String, _>("header_names")?),
        public: row.try_get::<i64, _>("public")? != 0,
        shared_process: row.try_get::<i64, _>("shared_process")? != 0,
        oauth: row.try_get::<Option<String>, _>("oauth")?.and_then(|text| serde_json::from_str(&text).ok()),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        sealed_secrets: row.try_get("sealed_secrets")?,
    })
}

pub async fn list_servers(connection: &mut AnyConnection) -> Result<Vec<Server>, StoreError> {
    let rows = sqlx::query("SELECT * FROM servers ORDER BY name").fetch_all(connection).await?;
    rows.iter().map(server_from_row).collect()
}

pub async fn get_server(connection: &mut AnyConnection, name: &str) -> Result<Option<Server>, StoreError> {
    let row = sqlx::query("SELECT * FROM servers WHERE name = $1").bind(name).fetch_optional(connection).await?;
    row.as_ref().map(server_from_row).transpose()
}

/// Insert or update a server by name. `server.id` is ignored for updates.
pub async fn upsert_server(connection: &mut AnyConnection, server: &Server) -> Result<String, StoreError> {
    let now = now_ms();
    let existing = get_server(connection, &server.name).await?;
    let args = serde_json::to_string(&server.args).unwrap_or_default();
    let env_names = serde_json::to_string(&server.env_names).unwrap_or_default();
    let header_names = serde_json::to_string(&server.header_names).unwrap_or_default();
    let id = match &existing {
        Some(existing) => {
            sqlx::query(
                "UPDATE servers SET description = $1, transport = $2, url = $3, command = $4, args = $5, env_names = $6, \
                 header_names = $7, sealed_secrets = $8, public = $9, shared_process = $10, updated_at = $11, \
                 oauth = $12 WHERE id = $13",
            )
            .bind(&server.description)
            .bind(server.transport.as_str())
            .bind(&server.url)
            .bind(&server.command)
            .bind(args)
            .bind(env_names)
            .bind(header_names)
            .bind(&server.sealed_secrets)
            .bind(i64::from(server.public))
            .bind(i64::from(server.shared_process))
            .bind(now)
            .bind(server.oauth.as_ref().map(|oauth| serde_json::to_string(oauth).unwrap_or_default()))
            .bind(&existing.id)
            .execute(&mut *connection)
            .await?;
            existing.id.clone()
        }
        None => {
            let id = if server.id.is_empty() { new_id() } else { server.id.clone() };
            sqlx::query(
                "INSERT INTO servers (id, name, description, transport, url, command, args, env_names, header_names, \
                 sealed_secrets, public, shared_process, created_at, updated_at, oauth) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(&id)
            .bind(&server.name)
            .bind(&server.description)
            .bind(server.transport.as_str())
            .bind(&server.url)
            .bind(&server.command)
            .bind(args)
            .bind(env_names)
            .bind(header_names)
            .bind(&server.sealed_secrets)
            .bind(i64::from(server.public))
            .bind(i64::from(server.shared_process))
            .bind(now)
            .bind(now)
            .bind(server.oauth.as_ref().map(|oauth| serde_json::to_string(oauth).unwrap_or_default()))
            .execute(&mut *connection)
            .await?;
            id
        }
    };
    bump_revision(connection).await?;
    Ok(id)
}

pub async fn delete_server(connection: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM servers WHERE name = $1").bind(name).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no server named {name:?}")));
    }
    sqlx::query("DELETE FROM server_tools WHERE server = $1").bind(name).execute(&mut *connection).await?;
    super::pins::forget(&mut *connection, name).await?;
    bump_revision(connection).await
}

pub async fn list_users(connection: &mut AnyConnection) -> Result<Vec<User>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, email, name, admin, admin_roles, status, roles, department, title, team, attributes, created_at \
         FROM users ORDER BY email",
    )
    .fetch_all(&mut *connection)
    .await?;
    let memberships =
        sqlx::query("SELECT m.user_id, g.name FROM group_members m JOIN groups g ON g.id = m.group_id ORDER BY g.name")
            .fetch_all(&mut *connection)
            .await?;
    let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
    for membership in &memberships {
        groups_of.entry(membership.try_get(0)?).or_default().push(membership.try_get(1)?);
    }
    let mut users = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let mut attributes = BTreeMap::new();
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&row.try_get::<String, _>("attributes")?).unwrap_or_default();
        for (key, value) in extra {
            if let Some(text) = value.as_str() {
                attributes.insert(key, text.to_owned());
            }
        }
        for column in ["department", "title", "team"] {
            let value: String = row.try_get(column)?;
            if !value.is_empty() {
                attributes.insert(column.to_owned(), value);
            }
        }
        users.push(User {
            groups: groups_of.remove(&id).unwrap_or_default(),
            id,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            admin: row.try_get::<i64, _>("admin")? != 0,
            admin_roles: AdminRole::held(
                row.try_get::<i64, _>("admin")? != 0,
                &json_list(&row.try_get::<String, _>("admin_roles")?),
            ),
            status: Status::parse(&row.try_get::<String, _>("status")?).unwrap_or(Status::Inactive),
            roles: json_list(&row.try_get::<String, _>("roles")?),
            attributes,
            created_at: row.try_get("created_at")?,
        });
    }
    Ok(users)
}

pub async fn find_user(connection: &mut AnyConnection, email: &str) -> Result<Option<User>, StoreError> {
    Ok(list_users(connection).await?.into_iter().find(|user| user.email == email))
}

/// Insert or update a user by email; returns the id.
pub async fn upsert_user(
    connection: &mut AnyConnection,
    email: &str,
    name: &str,
    admin: bool,
) -> Result<String, StoreError> {
    let now = now_ms();
    let existing =
        sqlx::query("SELECT id FROM users WHERE email = $1").bind(email).fetch_optional(&mut *connection).await?;
    let id = match existing {
        Some(row) => {
            let id: String = row.get(0);
            sqlx::query("UPDATE users SET name = $1, admin = $2, updated_at = $3 WHERE id = $4")
                .bind(name)
                .bind(i64::from(admin))
                .bind(now)
                .bind(&id)
                .execute(&mut *connection)
                .await?;
            id
        }
        None => {
            let id = new_id();
            sqlx::query(
                "INSERT INTO users (id, email, user_name, name, admin, created_at, updated_at) \
                 VALUES ($1, $2, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(email)
            .bind(name)
            .bind(i64::from(admin))
            .bind(now)
            .bind(now)
            .execute(&mut *connection)
            .await?;
            id
        }
    };
    bump_revision(connection).await?;
    Ok(id)
}

pub async fn delete_user(connection: &mut AnyConnection, email: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM users WHERE email = $1").bind(email).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no user with email {email:?}")));
    }
    bump_revision(connection).await
}

pub async fn list_groups(connection: &mut AnyConnection) -> Result<Vec<Group>, StoreError> {
    let rows = sqlx::query("SELECT id, name FROM groups ORDER BY name").fetch_all(&mut *connection).await?;
    let members = sqlx::query(
        "SELECT m.group_id, u.email FROM group_members m JOIN users u ON u.id = m.user_id ORDER BY u.email",
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let id: String = row.get(0);
            let members = members
                .iter()
                .filter(|member| member.get::<String, _>(0) == id)
                .map(|member| member.get::<String, _>(1))
                .collect();
            Group { id, name: row.get(1), members }
        })
        .collect())
}

/// The id of the group with this name, creating it when missing.
pub async fn ensure_group(connection: &mut AnyConnection, name: &str) -> Result<String, StoreError> {
    if let Some(row) = sqlx::query("SELECT id FROM groups WHERE lower(name) = $1")
        .bind(name.to_lowercase())
        .fetch_optional(&mut *connection)
        .await?
    {
        return Ok(row.get(0));
    }
    let id = new_id();
    sqlx::query("INSERT INTO groups (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)")
        .bind(&id)
        .bind(name)
        .bind(now_ms())
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await?;
    Ok(id)
}

pub async fn delete_group(connection: &mut AnyConnection, name: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM groups WHERE name = $1").bind(name).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no group named {name:?}")));
    }
    // Grants that named the group go with it.
    sqlx::query("DELETE FROM grants WHERE grantee = 'group' AND principal_id NOT IN (SELECT id FROM groups)")
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await
}

/// Make the user's group memberships exactly `group_ids`.
pub async fn set_memberships(
    connection: &mut AnyConnection,
    user_id: &str,
    group_ids: &[String],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM group_members WHERE user_id = $1").bind(user_id).execute(&mut *connection).await?;
    for group_id in group_ids {
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
            .bind(group_id)
            .bind(user_id)
            .execute(&mut *connection)
            .await?;
    }
    bump_revision(connection).await
}

pub async fn list_grants(connection: &mut AnyConnection) -> Result<Vec<Grant>, StoreError> {
    let rows = sqlx::query(
        "SELECT gr.id, s.name AS server, gr.grantee, gr.principal_id, \
         COALESCE(u.email, g.name, '') AS principal \
         FROM grants gr JOIN servers s ON s.id = gr.server_id \
         LEFT JOIN users u ON gr.grantee = 'user' AND u.id = gr.principal_id \
         LEFT JOIN groups g ON gr.grantee = 'group' AND g.id = gr.principal_id \
         ORDER BY s.name, gr.grantee, principal",
    )
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            let grantee = match row.try_get::<String, _>("grantee")?.as_str() {
                "user" => Grantee::User,
                _ => Grantee::Group,
            };
            Ok(Grant {
                id: row.try_get("id")?,
                server: row.try_get("server")?,
                grantee,
                principal: row.try_get("principal")?,
                principal_id: row.try_get("principal_id")?,
            })
        })
        .collect()
}

/// Add a grant unless the same one exists; returns its id.
pub async fn add_grant(
    connection: &mut AnyConnection,
    server_id: &str,
    grantee: Grantee,
    principal_id: &str,
) -> Result<String, StoreError> {
    let existing = sqlx::query("SELECT id FROM grants WHERE server_id = $1 AND grantee = $2 AND principal_id = $3")
        .bind(server_id)
        .bind(grantee.as_str())
        .bind(principal_id)
        .fetch_optional(&mut *connection)
        .await?;
    if let Some(row) = existing {
        return Ok(row.get(0));
    }
    let id = new_id();
    sqlx::query("INSERT INTO grants (id, server_id, grantee, principal_id, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(server_id)
        .bind(grantee.as_str())
        .bind(principal_id)
        .bind(now_ms())
        .execute(&mut *connection)
        .await?;
    bump_revision(connection).await?;
    Ok(id)
}

pub async fn delete_grant(connection: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    let result = sqlx::query("DELETE FROM grants WHERE id = $1").bind(id).execute(&mut *connection).await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no grant with id {id:?}")));
    }
    bump_revision(connection).await
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        user_email: row.try_get("email")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        key_hash: row.try_get("key_hash")?,
    })
}

pub async fn list_api_keys(connection: &mut AnyConnection) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT k.id, k.user_id, u.email, k.name, k.prefix, k.created_at, k.revoked_at, k.last_used_at, k.key_hash \
         FROM api_keys k JOIN users u ON u.id = k.user_id ORDER BY k.created_at",
    )
    .fetch_all(connection)
    .await?;
    rows.iter().map(api_key_from_row).collect()
}

/// Record when keys were last used: (key hash, time in ms), in one transaction.
pub async fn record_key_use(connection: &mut AnyConnection, uses: &[(String, i64)]) -> Result<(), StoreError> {
    for (hash, at) in uses {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE key_hash = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(at)
        .bind(hash)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Store a new key by its hash.
pub async fn insert_api_key(
    connection: &mut AnyConnection,
    user_id: &str,
    name: &str,
    prefix: &str,
    key_hash: &str,
) -> Result<String, StoreError> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(user_id)
    .bind(name)
    .bind(prefix)
    .bind(key_hash)
    .bind(now_ms())
    .execute(&mut *connection)
    .await?;
    bump_revision(connection).await?;
    Ok(id)
}

pub async fn revoke_api_key(connection: &mut AnyConnection, id: &str) -> Result<(), StoreError> {
    let result = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(id)
        .execute(&mut *connection)
        .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no active API key with id {id:?}")));
    }
    bump_revision(connection).await
}
