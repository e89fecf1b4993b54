//! Redaction of read views (management-api.md §14.1): values under secret-looking keys are
//! replaced by `"[redacted]"`, recursively.

use serde_json::Value;

const KEYS: [&str; 17] = [
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "set_cookie",
    "client_secret",
    "private_key",
    "session",
    "session_id",
    "assertion",
];

pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if KEYS.contains(&k.to_ascii_lowercase().as_str()) {
                    *child = Value::String("[redacted]".into());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_are_redacted() {
        let mut v = json!({"a": {"Token": "t", "b": [{"password": 1}]}, "ok": "x"});
        redact(&mut v);
        assert_eq!(
            v,
            json!({"a": {"Token": "[redacted]", "b": [{"password": "[redacted]"}]}, "ok": "x"})
        );
    }
}
