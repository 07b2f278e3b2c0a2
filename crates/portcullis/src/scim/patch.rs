//! SCIM PATCH (RFC 7644 §3.5.2) applied to a JSON resource, with the forms identity
//! providers send: Okta's `{"op": "replace", "value": {"active": false}}`, Entra ID's
//! capitalised ops, string booleans and member lists in bulk.

use super::filter::{AttrPath, Filter, PatchPath, get_ci, key_ci};
use serde_json::{Map, Value};

/// Why an operation cannot be applied; `scim_type` is the RFC 7644 `scimType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub scim_type: &'static str,
    pub detail: String,
}

fn error(scim_type: &'static str, detail: impl Into<String>) -> PatchError {
    PatchError { scim_type, detail: detail.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Replace,
    Remove,
}

/// Attributes a client may not write.
const READ_ONLY: [&str; 3] = ["id", "meta", "groups"];

/// Apply the operations of a PatchOp request body to `resource`, in order.
pub fn apply(resource: &mut Value, body: &Value) -> Result<(), PatchError> {
    let operations = get_ci(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| error("invalidSyntax", "a PATCH body needs an \"Operations\" array"))?;
    for operation in operations {
        let op = get_ci(operation, "op").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let kind = match op.as_str() {
            "add" => Kind::Add,
            "replace" => Kind::Replace,
            "remove" => Kind::Remove,
            other => {
                return Err(error("invalidSyntax", format!("unknown PATCH op {other:?}; use add, replace or remove")));
            }
        };
        let value = get_ci(operation, "value").cloned();
        match get_ci(operation, "path").and_then(Value::as_str).filter(|path| !path.trim().is_empty()) {
            Some(path) => {
                let path = PatchPath::parse(path).map_err(|parse| error("invalidPath", parse.0))?;
                apply_at(resource, kind, &path, value)?;
            }
            None => {
                if kind == Kind::Remove {
                    return Err(error("noTarget", "remove needs a path"));
                }
                // Without a path the value is an object of attributes (each key may be a path).
                let Some(Value::Object(attributes)) = value else {
                    return Err(error("invalidValue", "an operation without a path needs an object as its value"));
                };
                for (key, value) in attributes {
                    // Okta repeats the id (and some clients the schemas) in a path-less replace.
                    let unchanged = get_ci(resource, &key) == Some(&value);
                    if ["schemas", "meta"].iter().any(|skip| skip.eq_ignore_ascii_case(&key))
                        || key.eq_ignore_ascii_case("id") && unchanged
                    {
                        continue;
                    }
                    if let Some(schema) = extension_key(&key)
                        && let Value::Object(inner) = &value
                    {
                        for (name, value) in inner {
                            let path = PatchPath {
                                attribute: AttrPath { schema: Some(schema.clone()), name: name.clone(), sub: None },
                                filter: None,
                                sub: None,
                            };
                            apply_at(resource, kind, &path, Some(value.clone()))?;
                        }
                        continue;
                    }
                    let path = PatchPath::parse(&key).map_err(|parse| error("invalidPath", parse.0))?;
                    apply_at(resource, kind, &path, Some(value))?;
                }
            }
        }
    }
    Ok(())
}

/// `key` when it names an extension schema itself (`urn:…:enterprise:2.0:User`), whose value
/// holds that extension's attributes, rather than one of its attributes (`…:User:department`).
/// Schema names end in a capitalised resource name; attribute names do not.
fn extension_key(key: &str) -> Option<String> {
    let is_extension = key.to_ascii_lowercase().starts_with("urn:")
        && key.rsplit(':').next().and_then(|last| last.chars().next()).is_some_and(char::is_uppercase);
    is_extension.then(|| key.to_owned())
}

fn container_mut<'a>(
    resource: &'a mut Value,
    attribute: &AttrPath,
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    let root = resource.as_object_mut()?;
    match &attribute.schema {
        None => Some(root),
        Some(schema) => {
            let key = key_ci(root, schema).unwrap_or_else(|| schema.clone());
            if !root.contains_key(&key) {
                if !create {
                    return None;
                }
                root.insert(key.clone(), Value::Object(Map::new()));
            }
            root.get_mut(&key)?.as_object_mut()
        }
    }
}

fn apply_at(resource: &mut Value, kind: Kind, path: &PatchPath, value: Option<Value>) -> Result<(), PatchError> {
    let name = &path.attribute.name;
    if path.attribute.schema.is_none() && READ_ONLY.iter().any(|read_only| read_only.eq_ignore_ascii_case(name)) {
        return Err(error("mutability", format!("{name} cannot be changed")));
    }
    if kind != Kind::Remove && value.is_none() {
        return Err(error("invalidValue", format!("{name}: add and replace need a value")));
    }
    let Some(container) = container_mut(resource, &path.attribute, kind != Kind::Remove) else {
        // Removing what is not there leaves the resource as asked.
        return if kind == Kind::Remove { Ok(()) } else { Err(error("noTarget", format!("{name} is not there"))) };
    };
    let key = key_ci(container, name).unwrap_or_else(|| name.clone());
    match (&path.filter, &path.attribute.sub) {
        (None, None) => set_attribute(container, &key, kind, value),
        (None, Some(sub)) => {
            // `name.givenName`: a sub-attribute of a complex attribute.
            if kind == Kind::Remove {
                if let Some(Value::Object(object)) = container.get_mut(&key)
                    && let Some(sub_key) = key_ci(object, sub)
                {
                    object.remove(&sub_key);
                }
                return Ok(());
            }
            let object = container.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !object.is_object() {
                *object = Value::Object(Map::new());
            }
            let object = object.as_object_mut().expect("just made an object");
            let sub_key = key_ci(object, sub).unwrap_or_else(|| sub.clone());
            object.insert(sub_key, value.unwrap_or(Value::Null));
            Ok(())
        }
        (Some(filter), _) => apply_filtered(container, &key, kind, filter, path.sub.as_deref(), value),
    }
}

fn set_attribute(
    container: &mut Map<String, Value>,
    key: &str,
    kind: Kind,
    value: Option<Value>,
) -> Result<(), PatchError> {
    match kind {
        Kind::Remove => {
            match (container.get_mut(key), value) {
                // Entra ID removes members by listing them: remove only those.
                (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                    items.retain(|item| !gone.iter().any(|gone| same_element(item, gone)));
                }
                _ => {
                    container.remove(key);
                }
            }
            Ok(())
        }
        Kind::Replace => {
            container.insert(key.to_owned(), value.unwrap_or(Value::Null));
            Ok(())
        }
        Kind::Add => {
            let value = value.unwrap_or(Value::Null);
            match (container.get_mut(key), value) {
                (Some(Value::Array(items)), Value::Array(new)) => {
                    for element in new {
                        if let Some(existing) = items.iter_mut().find(|item| same_element(item, &element)) {
                            *existing = element;
                        } else {
                            items.push(element);
                        }
                    }
                }
                (Some(Value::Array(items)), element @ Value::Object(_)) => {
                    if !items.iter().any(|item| same_element(item, &element)) {
                        items.push(element);
                    }
                }
                (Some(Value::Object(existing)), Value::Object(new)) => {
                    for (name, value) in new {
                        let name = key_ci(existing, &name).unwrap_or(name);
                        existing.insert(name, value);
                    }
                }
                (_, value) => {
                    container.insert(key.to_owned(), value);
                }
            }
            Ok(())
        }
    }
}

/// Two elements of a multi-valued attribute are the same when their `value`s are.
fn same_element(left: &Value, right: &Value) -> bool {
    match (get_ci(left, "value"), get_ci(right, "value")) {
        (Some(left), Some(right)) => left == right,
        _ => left == right,
    }
}

fn apply_filtered(
    container: &mut Map<String, Value>,
    key: &str,
    kind: Kind,
    filter: &Filter,
    sub: Option<&str>,
    value: Option<Value>,
) -> Result<(), PatchError> {
    let Some(Value::Array(items)) = container.get_mut(key) else {
        if kind == Kind::Remove {
            return Ok(());
        }
        return Err(error("noTarget", format!("{key} has no values to select from")));
    };
    let matching: Vec<usize> =
        items.iter().enumerate().filter(|(_, item)| filter.matches(item)).map(|(i, _)| i).collect();
    if matching.is_empty() {
        if kind == Kind::Remove {
            return Ok(());
        }
        return Err(error("noTarget", format!("no value of {key} matches the filter")));
    }
    match (kind, sub) {
        (Kind::Remove, None) => {
            let mut index = 0;
            items.retain(|_| {
                let keep = !matching.contains(&index);
                index += 1;
                keep
            });
        }
        (Kind::Remove, Some(sub)) => {
            for &index in &matching {
                if let Some(object) = items[index].as_object_mut()
                    && let Some(sub_key) = key_ci(object, sub)
                {
                    object.remove(&sub_key);
                }
            }
        }
        (_, Some(sub)) => {
            for &index in &matching {
                if let Some(object) = items[index].as_object_mut() {
                    let sub_key = key_ci(object, sub).unwrap_or_else(|| sub.to_owned());
                    object.insert(sub_key, value.clone().unwrap_or(Value::Null));
                }
            }
        }
        (_, None) => {
            let value = value.unwrap_or(Value::Null);
            for &index in &matching {
                match (&mut items[index], &value) {
                    (Value::Object(existing), Value::Object(new)) if kind == Kind::Add => {
                        for (name, value) in new {
                            existing.insert(name.clone(), value.clone());
                        }
                    }
                    (slot, value) => *slot = value.clone(),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(resource: Value, operations: Value) -> Result<Value, PatchError> {
        let mut resource = resource;
        apply(
            &mut resource,
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations}),
        )?;
        Ok(resource)
    }

    #[test]
    fn the_operations_identity_providers_send() {
        let user = json!({"userName": "ann", "active": true, "name": {"givenName": "Ann"},
            "emails": [{"value": "ann@example.com", "type": "work"}]});
        // Okta: path-less replace.
        let out = patched(user.clone(), json!([{"op": "replace", "value": {"active": false}}])).unwrap();
        assert_eq!(out["active"], false);
        // Entra ID: capitalised op, sub-attribute and extension paths.
        let out = patched(user.clone(), json!([
            {"op": "Replace", "path": "name.familyName", "value": "Lee"},
            {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Finance"},
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ann.lee@example.com"}
        ])).unwrap();
        assert_eq!(out["name"], json!({"givenName": "Ann", "familyName": "Lee"}));
        assert_eq!(out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"], "Finance");
        assert_eq!(out["emails"][0]["value"], "ann.lee@example.com");
        // Path-less with extension object and dotted keys.
        let out = patched(
            user.clone(),
            json!([{"op": "add", "value": {
            "name.familyName": "Lee",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Legal"}}}]),
        )
        .unwrap();
        assert_eq!(out["name"]["familyName"], "Lee");
        assert_eq!(out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"], "Legal");
    }

    #[test]
    fn members_in_bulk() {
        let group = json!({"displayName": "eng", "members": [{"value": "u1"}, {"value": "u2"}]});
        let out = patched(
            group.clone(),
            json!([{"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u1"}]}]),
        )
        .unwrap();
        assert_eq!(out["members"], json!([{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]));
        let out =
            patched(group.clone(), json!([{"op": "remove", "path": "members", "value": [{"value": "u1"}]}])).unwrap();
        assert_eq!(out["members"], json!([{"value": "u2"}]));
        let out = patched(group.clone(), json!([{"op": "remove", "path": "members[value eq \"u2\"]"}])).unwrap();
        assert_eq!(out["members"], json!([{"value": "u1"}]));
        let out = patched(group.clone(), json!([{"op": "replace", "path": "members", "value": []}])).unwrap();
        assert_eq!(out["members"], json!([]));
        let out = patched(group, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(out.get("members").is_none());
    }

    #[test]
    fn refusals() {
        let user = json!({"userName": "ann"});
        let scim_type = |operations: Value| patched(user.clone(), operations).unwrap_err().scim_type;
        assert_eq!(scim_type(json!([{"op": "replace", "path": "id", "value": "x"}])), "mutability");
        assert_eq!(scim_type(json!([{"op": "move", "path": "userName", "value": "x"}])), "invalidSyntax");
        assert_eq!(scim_type(json!([{"op": "replace", "path": "emails[type eq", "value": "x"}])), "invalidPath");
        assert_eq!(
            scim_type(json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "x"}])),
            "noTarget"
        );
        assert_eq!(scim_type(json!([{"op": "remove"}])), "noTarget");
        assert_eq!(scim_type(json!([{"op": "add", "value": "x"}])), "invalidValue");
    }
}
