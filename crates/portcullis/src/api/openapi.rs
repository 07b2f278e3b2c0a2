//! The OpenAPI 3.1 document for `/api/v1`. Written as data next to the handlers it
//! describes; a test checks that every route of the router appears here.

use axum::Json;
use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"}
    })
}

fn operation(summary: &str, body: Option<&str>, ok: &str) -> Value {
    let mut responses = error_responses();
    responses[ok] = json!({"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}});
    let mut operation = json!({"summary": summary, "responses": responses});
    if let Some(schema) = body {
        operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    operation
}

fn audit_parameters() -> Value {
    let text = ["user", "server", "method", "decision", "outcome", "target"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}));
    let numbers = ["since_ms", "until_ms", "before", "limit"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "integer"}}));
    Value::Array(text.chain(numbers).collect())
}

/// An access rule, as in `[[rules]]` of `portcullis apply`.
fn rule_schema() -> Value {
    json!({"type": "object", "required": ["name", "effect"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "description": "unique; named in decisions and audit events"},
                    "effect": {"type": "string", "enum": ["allow", "deny"]},
                    "global": {"type": "boolean", "description": "every server, tool, resource and prompt (deny only)"},
                    "servers": {"type": "array", "items": {"type": "string"}},
                    "tools": {"type": "array", "items": {"type": "string"}, "description": "names or * globs; none of tools, resources and prompts = entire server"},
                    "resources": {"type": "array", "items": {"type": "string"}},
                    "prompts": {"type": "array", "items": {"type": "string"}},
                    "everyone": {"type": "boolean"},
                    "users": {"type": "array", "items": {"type": "string"}, "description": "emails"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "roles": {"type": "array", "items": {"type": "string"}, "description": "job-function roles"},
                    "agents": {"type": "array", "items": {"type": "string"}},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}, "description": "e.g. {\"department\": \"Finance\"}"},
                    "conditions": {"type": "array", "items": {"type": "object", "required": ["field", "op"], "additionalProperties": false, "properties": {
                        "field": {"type": "string", "description": "payload.<argument> or meta.request.ip, meta.client.name, meta.subject.groups, meta.oauth.user_verified, …"},
                        "op": {"type": "string", "enum": ["eq", "ne", "in", "not_in", "starts_with", "not_starts_with", "ends_with", "not_ends_with", "contains", "not_contains", "glob", "lt", "le", "gt", "ge", "in_cidr", "not_in_cidr", "exists", "not_exists"]},
                        "value": {}}}},
                    "expires": {"type": "string", "description": "RFC 3339 time or a date"},
                    "enabled": {"type": "boolean", "default": true},
                    "notes": {"type": "string"}}})
}

pub fn build() -> Value {
    let string = json!({"type": "string"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Portcullis API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Registry, access and audit of the Portcullis MCP gateway. Authenticate with an API key: Authorization: Bearer <key>."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/servers": {"get": operation("Servers the caller may use (admins: all)", None, "200")},
            "/servers/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": string}],
                "get": operation("One server (admin); secrets are shown by name only", None, "200"),
                "put": operation("Create or update a server (admin)", Some("Server"), "200"),
                "delete": operation("Delete a server and its grants (admin)", None, "204")
            },
            "/users": {"get": {
                "summary": "People, filtered by status, role and group (any admin role)",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["active", "inactive", "suspended"]}},
                    {"name": "role", "in": "query", "description": "an admin role or a job-function role", "schema": string},
                    {"name": "group", "in": "query", "description": "a group name, case-insensitive", "schema": string}
                ],
                "responses": error_responses()
            }},
            "/users/{email}": {
                "parameters": [{"name": "email", "in": "path", "required": true, "schema": string}],
                "get": operation("One person: groups, roles, servers they can use, recent activity (any admin role)", None, "200"),
                "put": operation("Create or update a user, their groups and admin roles (IT admin; roles: super admin)", Some("User"), "200"),
                "delete": operation("Delete a user (admin)", None, "204")
            },
            "/users/{email}/suspend": {
                "parameters": [{"name": "email", "in": "path", "required": true, "schema": string}],
                "post": operation("Suspend a user: their next call is refused on every replica (admin)", None, "200")
            },
            "/users/{email}/activate": {
                "parameters": [{"name": "email", "in": "path", "required": true, "schema": string}],
                "post": operation("Lift a suspension or an identity provider's deactivation (admin)", None, "200")
            },
            "/groups": {"get": operation("All groups with members (admin)", None, "200")},
            "/grants": {
                "get": operation("All grants (admin)", None, "200"),
                "post": operation("Grant a user or a group access to a server (admin)", Some("Grant"), "200")
            },
            "/grants/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": string}],
                "delete": operation("Remove a grant (admin)", None, "204")
            },
            "/rules": {
                "get": {
                    "summary": "Access rules by name (any admin)",
                    "parameters": [
                        {"name": "server", "in": "query", "description": "only rules naming this server", "schema": string},
                        {"name": "global", "in": "query", "description": "only global (true) or server (false) rules", "schema": {"type": "boolean"}}
                    ],
                    "responses": error_responses()
                },
                "post": operation("Create an access rule, in force at once on every replica (policy admins; audited)", Some("Rule"), "201")
            },
            "/rules/simulate": {
                "post": operation("Replay the calls recorded in the last days under a draft rule change — {\"create\": rule}, {\"update\": {\"id\", \"rule\"}} or {\"delete\": id}, and \"days\" (default 30) — and list the decisions that would change, who gains and who loses; nothing is saved (policy admins)", None, "200")
            },
            "/access": {"get": {
                "summary": "Effective access: who can use which server, through which rules (admins who read audit)",
                "parameters": [
                    {"name": "server", "in": "query", "schema": string},
                    {"name": "user", "in": "query", "description": "an email", "schema": string},
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}}
                ],
                "responses": error_responses()
            }},
            "/access/stale": {"get": {
                "summary": "Allow rules with people who have not used them for the given days (admins who read audit)",
                "parameters": [{"name": "days", "in": "query", "schema": {"type": "integer", "default": 90}}],
                "responses": error_responses()
            }},
            "/catalog": {"get": {
                "summary": "The catalog of pre-vetted servers, searchable (everyone; retired entries for admins)",
                "parameters": [
                    {"name": "q", "in": "query", "description": "words that must all appear", "schema": string},
                    {"name": "retired", "in": "query", "schema": {"type": "boolean"}}
                ],
                "responses": error_responses()
            }},
            "/catalog/import": {
                "post": operation("Add an entry from an MCP Registry server.json document; ?replace=true replaces one of the same name (IT admins; audited)", None, "201")
            },
            "/catalog/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": string}],
                "get": operation("One catalog entry", None, "200"),
                "put": operation("Add or change a catalog entry (IT admins; audited)", None, "200")
            },
            "/catalog/{name}/retire": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": string}],
                "post": operation("Take a catalog entry out of offer (IT admins; audited)", None, "204")
            },
            "/rules/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": string}],
                "get": operation("One access rule (any admin)", None, "200"),
                "put": operation("Replace an access rule (policy admins; audited with before and after)", Some("Rule"), "200"),
                "delete": operation("Delete an access rule; callers relying on it lose access at once (policy admins; audited)", None, "204")
            },
            "/api-keys": {
                "get": operation("The caller's API keys (admins: all), without the keys themselves", None, "200"),
                "post": operation("Create an API key; the key is returned once", Some("ApiKey"), "201")
            },
            "/api-keys/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": string}],
                "delete": operation("Revoke an API key (its owner or an admin)", None, "204")
            },
            "/settings": {
                "get": operation("Deployment settings (super admin)", None, "200"),
                "put": operation("Change deployment settings, e.g. {\"admin_mfa_required\": true} (super admin; audited)", None, "200")
            },
            "/scim-tokens": {
                "get": operation("SCIM tokens of identity providers, without the tokens (IT admin)", None, "200"),
                "post": operation("Create a SCIM token; it is returned once (IT admin)", Some("ScimToken"), "201")
            },
            "/scim-tokens/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": string}],
                "delete": operation("Revoke a SCIM token (IT admin)", None, "204")
            },
            "/audit": {"get": {
                "summary": "Audit events, newest first (admins: all; users: their own)",
                "parameters": audit_parameters(),
                "responses": error_responses()
            }},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "the document"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {
                "type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}}}}},
            "schemas": {
                "Server": {"type": "object", "required": ["transport"], "additionalProperties": false, "properties": {
                    "description": {"type": "string"},
                    "transport": {"type": "string", "enum": ["streamable-http", "sse", "stdio"]},
                    "url": {"type": "string"}, "command": {"type": "string"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "secret; never returned"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "secret; never returned"},
                    "public": {"type": "boolean"}, "shared_process": {"type": "boolean"}}},
                "User": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string"}, "admin": {"type": "boolean", "description": "super admin"},
                    "roles": {"type": "array", "description": "admin roles; changing them needs a super admin",
                              "items": {"type": "string", "enum": ["super-admin", "security-admin", "it-admin", "analytics-admin"]}},
                    "groups": {"type": "array", "items": {"type": "string"}}}},
                "Grant": {"type": "object", "required": ["server"], "additionalProperties": false, "properties": {
                    "server": {"type": "string"}, "user": {"type": "string"}, "group": {"type": "string"}}},
                "Rule": rule_schema(),
                "ApiKey": {"type": "object", "additionalProperties": false, "properties": {
                    "user": {"type": "string"}, "name": {"type": "string"}}},
                "ScimToken": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "description": "what the token is for, e.g. okta"}}}
            }
        }
    })
}

/// The server-request workflow's paths (see `requests.rs`).
fn request_paths() -> Value {
    let string = json!({"type": "string"});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": string}]);
    let server = json!([{"name": "server", "in": "path", "required": true, "schema": string}]);
    let name = json!([{"name": "name", "in": "path", "required": true, "schema": string}]);
    let list_parameters: Vec<Value> = ["state", "kind", "tier", "requester"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "required": false, "schema": string}))
        .chain([json!({"name": "mine", "in": "query", "required": false, "schema": {"type": "boolean"}})])
        .collect();
    json!({
        "/requests": {
            "get": {
                "summary": "Server requests: the caller's own; reviewers see all, pending first and oldest first, with due_at and overdue",
                "parameters": list_parameters,
                "responses": error_responses()
            },
            "post": operation("Request a catalog server, a custom server or access to an active server (draft with submit=false); warnings name an active server that is the same", Some("Request"), "201")
        },
        "/requests/metrics": {"get": {
            "summary": "The monthly review: most requested servers, rejection reasons, time to decision against target by tier, backlog, weekly requests (admins)",
            "parameters": [{"name": "days", "in": "query", "required": false, "schema": {"type": "integer", "default": 30}}],
            "responses": error_responses()
        }},
        "/requests/{id}": {
            "parameters": id,
            "get": operation("One request; reviewers also get the requester, the automated checks and the due time", None, "200"),
            "put": operation("Replace a draft (its requester)", Some("Request"), "200")
        },
        "/requests/{id}/submit": {"parameters": id, "post": operation("Send a draft for review (its requester)", None, "200")},
        "/requests/{id}/withdraw": {"parameters": id, "post": operation("Withdraw a draft or pending request (its requester)", None, "200")},
        "/requests/{id}/resubmit": {"parameters": id, "post": operation("Resubmit a rejected request with changes, as a new linked request; secrets left out are carried over", Some("Request"), "201")},
        "/requests/{id}/test": {"parameters": id, "post": operation("Start the connection test in the background (IT admins); poll the request for test_step, then test", None, "202")},
        "/requests/{id}/approve": {"parameters": id, "post": operation("Approve: the server goes live and an access rule is created; the checklist is required (IT admins; audited); 409 if decided or withdrawn", Some("Approval"), "200")},
        "/requests/{id}/reject": {"parameters": id, "post": operation("Reject with a specific reason and next steps (IT admins; audited); 409 if decided or withdrawn", Some("Rejection"), "200")},
        "/request-targets": {
            "get": operation("Review target per tier, e.g. {\"catalog\": \"8h\", \"internal\": \"2d\"} (d = business days)", None, "200"),
            "put": operation("Change review targets (IT admins; audited)", None, "200")
        },
        "/notifications": {"get": operation("The caller's in-app notifications, newest first, and the unread count", None, "200")},
        "/notifications/read": {"post": operation("Mark one ({\"id\": …}) or all notifications read", None, "200")},
        "/notifications/preferences": {
            "get": operation("The caller's notification preferences", None, "200"),
            "put": operation("{\"email_alerts\": true}: email me new requests and held tool changes (IT admins)", None, "200")
        },
        "/settings/email": {
            "get": operation("The mail server for notifications, without its password, and the recent outbox (super admin)", None, "200"),
            "put": operation("Set the mail server: host, port, security (starttls|tls|none), username, password (write-only), from (super admin; audited)", None, "200")
        },
        "/settings/email/test": {"post": operation("Send a test message now, {\"to\": address} (super admin)", None, "200")},
        "/high-risk": {"get": operation("Servers on the high-risk list, with their quarterly review due time", None, "200")},
        "/high-risk/{server}": {
            "parameters": server,
            "put": operation("Put a server on the high-risk list, {\"note\": why} (IT admins; audited)", None, "200"),
            "delete": operation("Take a server off the high-risk list (IT admins; audited)", None, "204")
        },
        "/high-risk/{server}/review": {"parameters": server, "post": operation("Record the quarterly review of a high-risk server (IT admins; audited)", None, "200")},
        "/servers/{name}/pins": {"parameters": name, "get": operation("The server's pinned tool, prompt and resource-template definitions, and those held for review (admins)", None, "200")},
        "/servers/{name}/pins/check": {"parameters": name, "post": operation("Read the server now with fixed capabilities and compare with its pins; the first check pins everything (IT admins)", None, "200")},
        "/servers/{name}/credentials": {"parameters": name, "post": operation("Rotate credentials in place: {\"env\": {NAME: value | null}, \"headers\": {…}, \"oauth_client_secret\": value | null}; names not given stay (IT admins; audited by name only)", None, "200")},
        "/servers/{name}/pins/approve": {"parameters": name, "post": operation("Approve held definitions, {\"names\": [...]} or all (IT admins; audited)", None, "200")}
    })
}

fn request_schemas() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let checklist = json!({"type": "object", "description": "every section: source, tools, data, auth, network, need, compliance",
        "additionalProperties": {"type": "object", "required": ["mark"], "properties": {
            "mark": {"type": "string", "enum": ["checked", "not-applicable", "concern"]},
            "note": {"type": "string", "description": "required with concern"}}}});
    json!({
        "Request": {"type": "object", "required": ["kind"], "additionalProperties": false, "properties": {
            "kind": {"type": "string", "enum": ["catalog", "custom", "access"]},
            "catalog": {"type": "string", "description": "catalog: the entry"},
            "settings": map, "name": {"type": "string", "description": "catalog: the server name, if not the entry's"},
            "server": {"type": "object", "description": "custom: the server", "required": ["name", "transport"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"},
                "transport": {"type": "string", "enum": ["streamable-http", "sse", "stdio"]},
                "url": {"type": "string"}, "command": {"type": "string"}, "args": strings,
                "env": map, "headers": map,
                "auth": {"type": "string", "enum": ["none", "api-key", "oauth"]}, "oauth_scopes": strings}},
            "access_to": {"type": "string", "description": "access: the active server"},
            "justification": {"type": "object", "properties": {
                "why": {"type": "string"}, "use_case": {"type": "string"},
                "expected_value": {"type": "string"}, "alternatives": {"type": "string"}}},
            "origin": {"type": "string", "enum": ["internal", "third-party"]},
            "sensitive": {"type": "boolean"}, "urgent": {"type": "boolean"},
            "submit": {"type": "boolean", "default": true}}},
        "Approval": {"type": "object", "additionalProperties": false, "properties": {
            "checklist": checklist,
            "grant": {"type": "object", "properties": {
                "to": {"type": "string", "enum": ["requester", "group"]}, "group": {"type": "string"}, "tools": strings}},
            "high_risk": {"type": "boolean"}}},
        "Rejection": {"type": "object", "required": ["reason", "next_steps"], "additionalProperties": false, "properties": {
            "reason": {"type": "string", "description": "the specific issue, what to fix, alternatives"},
            "next_steps": {"type": "string"}, "checklist": checklist}}
    })
}

/// The whole document.
fn full() -> Value {
    let mut document = build();
    if let (Some(paths), Value::Object(more)) = (document["paths"].as_object_mut(), request_paths()) {
        paths.extend(more);
    }
    if let (Some(schemas), Value::Object(more)) = (document["components"]["schemas"].as_object_mut(), request_schemas())
    {
        schemas.extend(more);
    }
    document
}

pub async fn document() -> Json<Value> {
    Json(full())
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is in the document, and the document names no other.
    #[test]
    fn every_route_is_documented() {
        let source = [include_str!("mod.rs"), include_str!("requests.rs")].concat();
        let routes: Vec<&str> = source.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(routes.len() > 10, "{routes:?}");
        let document = super::full();
        let paths = document["paths"].as_object().unwrap();
        for route in &routes {
            assert!(paths.contains_key(*route), "{route} is served but not documented");
        }
        for path in paths.keys() {
            assert!(routes.contains(&path.as_str()), "{path} is documented but not served");
        }
    }
}
