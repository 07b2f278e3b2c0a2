//! SCIM discovery: ServiceProviderConfig, ResourceTypes and Schemas (RFC 7643 §5–7).

use super::{ENTERPRISE_SCHEMA, GROUP_SCHEMA, MAX_RESULTS, ScimError, USER_SCHEMA, scim_response};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::app::AppState;

const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// One attribute definition. `kind` is the SCIM type (`string`, `boolean`, `complex`, …).
fn attribute(name: &str, kind: &str, multi: bool, description: &str) -> Value {
    json!({"name": name, "type": kind, "multiValued": multi, "description": description, "required": false,
           "caseExact": false, "mutability": "readWrite", "returned": "default", "uniqueness": "none"})
}

fn with(mut attribute: Value, changes: Value) -> Value {
    if let (Some(object), Value::Object(changes)) = (attribute.as_object_mut(), changes) {
        object.extend(changes);
    }
    attribute
}

fn complex(name: &str, multi: bool, description: &str, subs: Vec<Value>) -> Value {
    with(attribute(name, "complex", multi, description), json!({"subAttributes": subs}))
}

/// `value`, `type`, `primary`, `display` of a multi-valued attribute such as emails.
fn multi_valued(name: &str, description: &str, types: &[&str]) -> Value {
    complex(
        name,
        true,
        description,
        vec![
            attribute("value", "string", false, "The value."),
            with(attribute("type", "string", false, "The kind of value."), json!({"canonicalValues": types})),
            attribute("primary", "boolean", false, "The preferred value."),
            attribute("display", "string", false, "A human-readable name."),
        ],
    )
}

fn user_schema() -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA], "id": USER_SCHEMA, "name": "User", "description": "A person",
        "attributes": [
            with(attribute("userName", "string", false, "The identity provider's unique login name."),
                 json!({"required": true, "uniqueness": "server"})),
            complex("name", false, "The person's name.", vec![
                attribute("formatted", "string", false, "The full name."),
                attribute("familyName", "string", false, "Family name."),
                attribute("givenName", "string", false, "Given name."),
                attribute("middleName", "string", false, "Middle name."),
                attribute("honorificPrefix", "string", false, "Prefix, such as Ms."),
                attribute("honorificSuffix", "string", false, "Suffix, such as III."),
            ]),
            attribute("displayName", "string", false, "The name shown in Portcullis."),
            attribute("nickName", "string", false, "A casual name."),
            with(attribute("profileUrl", "reference", false, "A profile page."), json!({"referenceTypes": ["external"]})),
            attribute("title", "string", false, "Job title."),
            attribute("userType", "string", false, "Relationship to the organization, such as Employee or Contractor."),
            attribute("preferredLanguage", "string", false, "Preferred written or spoken language."),
            attribute("locale", "string", false, "Locale for formatting."),
            attribute("timezone", "string", false, "Time zone, such as America/Los_Angeles."),
            attribute("active", "boolean", false, "Whether the person may use Portcullis."),
            multi_valued("emails", "Email addresses; the primary one is the person's email in Portcullis.", &["work", "home", "other"]),
            multi_valued("phoneNumbers", "Phone numbers.", &["work", "home", "mobile", "fax", "pager", "other"]),
            multi_valued("ims", "Instant messaging addresses.", &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"]),
            multi_valued("photos", "Photo URLs.", &["photo", "thumbnail"]),
            complex("addresses", true, "Physical mailing addresses.", vec![
                attribute("formatted", "string", false, "The full address."),
                attribute("streetAddress", "string", false, "Street."),
                attribute("locality", "string", false, "City or locality."),
                attribute("region", "string", false, "State or region."),
                attribute("postalCode", "string", false, "Postal code."),
                attribute("country", "string", false, "Country (ISO 3166-1 alpha-2)."),
                with(attribute("type", "string", false, "The kind of address."), json!({"canonicalValues": ["work", "home", "other"]})),
                attribute("primary", "boolean", false, "The preferred address."),
            ]),
            multi_valued("entitlements", "Entitlements.", &[]),
            multi_valued("x509Certificates", "Certificates.", &[]),
            with(complex("groups", true, "Groups the person belongs to (read-only: change Group members).", vec![
                with(attribute("value", "string", false, "The group's id."), json!({"mutability": "readOnly"})),
                with(attribute("$ref", "reference", false, "The group's URI."),
                     json!({"mutability": "readOnly", "referenceTypes": ["Group"]})),
                with(attribute("display", "string", false, "The group's name."), json!({"mutability": "readOnly"})),
                with(attribute("type", "string", false, "direct"), json!({"mutability": "readOnly"})),
            ]), json!({"mutability": "readOnly"})),
            complex("roles", true, "Job-function roles, usable in access rules.", vec![
                attribute("value", "string", false, "The role."),
                attribute("display", "string", false, "A human-readable name."),
                attribute("type", "string", false, "The kind of role."),
                attribute("primary", "boolean", false, "The main role."),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{USER_SCHEMA}")}
    })
}

fn enterprise_schema() -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA], "id": ENTERPRISE_SCHEMA, "name": "EnterpriseUser",
        "description": "Enterprise attributes of a person",
        "attributes": [
            attribute("employeeNumber", "string", false, "Employee number."),
            attribute("costCenter", "string", false, "Cost center."),
            attribute("organization", "string", false, "Organization."),
            attribute("division", "string", false, "Division."),
            attribute("department", "string", false, "Department, usable in access rules."),
            complex("manager", false, "The person's manager.", vec![
                attribute("value", "string", false, "The manager's id."),
                with(attribute("$ref", "reference", false, "The manager's URI."), json!({"referenceTypes": ["User"]})),
                with(attribute("displayName", "string", false, "The manager's name."), json!({"mutability": "readOnly"})),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{ENTERPRISE_SCHEMA}")}
    })
}

fn group_schema() -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA], "id": GROUP_SCHEMA, "name": "Group", "description": "A group of people",
        "attributes": [
            with(attribute("displayName", "string", false, "The group's name (unique, case-insensitive)."),
                 json!({"required": true, "uniqueness": "server"})),
            complex("members", true, "The group's members.", vec![
                with(attribute("value", "string", false, "The member's id."), json!({"mutability": "immutable"})),
                with(attribute("$ref", "reference", false, "The member's URI."),
                     json!({"mutability": "immutable", "referenceTypes": ["User"]})),
                with(attribute("display", "string", false, "The member's email."), json!({"mutability": "readOnly"})),
                with(attribute("type", "string", false, "User"), json!({"mutability": "immutable", "canonicalValues": ["User"]})),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{GROUP_SCHEMA}")}
    })
}

fn all_schemas() -> Vec<Value> {
    vec![user_schema(), enterprise_schema(), group_schema()]
}

fn resource_type_list() -> Vec<Value> {
    vec![
        json!({"schemas": [RESOURCE_TYPE_SCHEMA], "id": "User", "name": "User", "endpoint": "/Users",
               "description": "People", "schema": USER_SCHEMA,
               "schemaExtensions": [{"schema": ENTERPRISE_SCHEMA, "required": false}],
               "meta": {"resourceType": "ResourceType", "location": "/scim/v2/ResourceTypes/User"}}),
        json!({"schemas": [RESOURCE_TYPE_SCHEMA], "id": "Group", "name": "Group", "endpoint": "/Groups",
               "description": "Groups", "schema": GROUP_SCHEMA,
               "meta": {"resourceType": "ResourceType", "location": "/scim/v2/ResourceTypes/Group"}}),
    ]
}

fn list(resources: Vec<Value>) -> Response {
    let body = json!({"schemas": [LIST_SCHEMA], "totalResults": resources.len(), "startIndex": 1,
                      "itemsPerPage": resources.len(), "Resources": resources});
    scim_response(StatusCode::OK, &body)
}

pub async fn service_provider_config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = super::base_url(&state, &headers);
    let body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer token",
            "description": "A SCIM token created with `portcullis scim-token create`", "primary": true}],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")}
    });
    scim_response(StatusCode::OK, &body)
}

pub async fn resource_types() -> Response {
    list(resource_type_list())
}

pub async fn resource_type(Path(id): Path<String>) -> Result<Response, ScimError> {
    resource_type_list()
        .into_iter()
        .find(|resource| resource["id"].as_str().is_some_and(|known| known.eq_ignore_ascii_case(&id)))
        .map(|resource| scim_response(StatusCode::OK, &resource))
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, format!("no resource type {id:?}")))
}

pub async fn schemas() -> Response {
    list(all_schemas())
}

pub async fn schema(Path(id): Path<String>) -> Result<Response, ScimError> {
    all_schemas()
        .into_iter()
        .find(|schema| schema["id"].as_str().is_some_and(|known| known.eq_ignore_ascii_case(&id)))
        .map(|schema| scim_response(StatusCode::OK, &schema))
        .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, format!("no schema {id:?}")))
}
