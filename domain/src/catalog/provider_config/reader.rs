//! Typed reads of a `config_json` object for one kind: each read marks its key allowed,
//! trims and checks it, and files it as public or sealed; `finish` refuses every key the
//! kind does not take.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::syntax::*;
use super::{bad, ConfigError, Resolved, SECRET_KEYS};

pub(super) struct Reader<'a> {
    pub(super) kind: &'a str,
    pub(super) cfg: &'a Map<String, Value>,
    pub(super) public: Map<String, Value>,
    pub(super) secrets: BTreeMap<String, String>,
    pub(super) allowed: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    pub(super) fn allow(&mut self, keys: &[&'static str]) {
        self.allowed.extend_from_slice(keys);
    }

    pub(super) fn present(&self, key: &str) -> bool {
        self.cfg.get(key).is_some_and(|v| !v.is_null())
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{key} must be a string"))),
        }
    }

    pub(super) fn public_string(
        &mut self,
        key: &str,
        required: bool,
    ) -> Result<Option<String>, ConfigError> {
        let v = self.string(key)?.map(|s| s.trim().to_owned());
        match v {
            Some(s) if !s.is_empty() => {
                if s.chars().any(char::is_control) {
                    return Err(bad(format!("{key} may not contain control characters")));
                }
                self.public.insert(key.to_owned(), Value::String(s.clone()));
                Ok(Some(s))
            }
            _ if required => Err(bad(format!("{key} is required for kind {}", self.kind))),
            _ => Ok(None),
        }
    }

    pub(super) fn secret(
        &mut self,
        key: &str,
        required: bool,
        multiline: bool,
    ) -> Result<Option<String>, ConfigError> {
        let v = self.string(key)?.map(|s| s.trim().to_owned());
        match v {
            Some(s) if !s.is_empty() => {
                let control = if multiline {
                    s.chars().any(|c| c.is_control() && c != '\n' && c != '\r')
                } else {
                    s.chars().any(char::is_control)
                };
                if control {
                    return Err(bad(format!("{key} may not contain control characters")));
                }
                self.secrets.insert(key.to_owned(), s.clone());
                Ok(Some(s))
            }
            _ if required => Err(bad(format!("{key} is required for kind {}", self.kind))),
            _ => Ok(None),
        }
    }

    pub(super) fn flag(&mut self, key: &str) -> Result<(), ConfigError> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Bool(b)) => {
                self.public.insert(key.to_owned(), Value::Bool(*b));
                Ok(())
            }
            Some(_) => Err(bad(format!("{key} must be a boolean"))),
        }
    }

    pub(super) fn https_url(
        &mut self,
        key: &str,
        required: bool,
    ) -> Result<Option<String>, ConfigError> {
        let v = self.public_string(key, required)?;
        if let Some(u) = &v {
            if host_of(u, true).is_none() {
                return Err(bad(format!(
                    "{key} must be an https URL without credentials or fragment"
                )));
            }
        }
        Ok(v)
    }

    pub(super) fn header(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        let v = self.public_string(key, false)?;
        if let Some(h) = &v {
            if !is_allowed_header(h) {
                return Err(bad(format!("{key} {h:?} is not an allowed header name")));
            }
        }
        Ok(v)
    }

    pub(super) fn scheme(&mut self) -> Result<Option<String>, ConfigError> {
        let v = self.public_string("auth_scheme", false)?;
        if let Some(s) = &v {
            let mut cs = s.chars();
            let ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic())
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(bad("auth_scheme must match ^[A-Za-z][A-Za-z0-9-]*$"));
            }
        }
        Ok(v)
    }

    pub(super) fn hosts(&mut self, default: Option<String>) -> Result<(), ConfigError> {
        let hosts = match self.cfg.get("allowed_token_hosts") {
            None | Some(Value::Null) => match default {
                Some(h) => vec![h],
                None => return Ok(()),
            },
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for i in items {
                    let h = i
                        .as_str()
                        .ok_or_else(|| bad("allowed_token_hosts must be strings"))?;
                    if !is_dns_name(h) {
                        return Err(bad(format!(
                            "allowed_token_hosts entry {h:?} must be a lowercase DNS name"
                        )));
                    }
                    out.push(h.to_owned());
                }
                out
            }
            Some(_) => return Err(bad("allowed_token_hosts must be an array")),
        };
        self.public.insert(
            "allowed_token_hosts".into(),
            Value::Array(hosts.into_iter().map(Value::String).collect()),
        );
        Ok(())
    }

    pub(super) fn params(&mut self, key: &str) -> Result<(), ConfigError> {
        match self.cfg.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let key_ok = !k.is_empty() && k.bytes().all(is_param_byte);
                    if !key_ok || OAUTH_RESERVED_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                        return Err(bad(format!("{key} key {k:?} is not allowed")));
                    }
                    if !v.is_string() {
                        return Err(bad(format!("{key} values must be strings")));
                    }
                }
                self.public.insert(key.to_owned(), Value::Object(m.clone()));
                Ok(())
            }
            Some(_) => Err(bad(format!("{key} must be an object of strings"))),
        }
    }

    pub(super) fn scopes(&mut self) -> Result<(), ConfigError> {
        match self.cfg.get("scopes") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items))
                if items.iter().all(|s| {
                    s.as_str()
                        .is_some_and(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                }) =>
            {
                self.public
                    .insert("scopes".into(), Value::Array(items.clone()));
                Ok(())
            }
            Some(_) => Err(bad(
                "scopes must be an array of non-empty strings without spaces",
            )),
        }
    }

    pub(super) fn pem(&mut self, key: &str, required: bool, kind: &str) -> Result<(), ConfigError> {
        let secret = SECRET_KEYS.contains(&key);
        let v = if secret {
            self.secret(key, required, true)?
        } else {
            self.public_string_multiline(key)?
        };
        if let Some(p) = v {
            if !is_pem(&p, kind) {
                return Err(bad(format!("{key} must be a PEM {kind}")));
            }
        }
        Ok(())
    }

    pub(super) fn public_string_multiline(
        &mut self,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        let v = self.string(key)?.map(|s| s.trim().to_owned());
        if let Some(s) = v.filter(|s| !s.is_empty()) {
            self.public.insert(key.to_owned(), Value::String(s.clone()));
            return Ok(Some(s));
        }
        Ok(None)
    }

    pub(super) fn finish(self) -> Result<Resolved, ConfigError> {
        for k in self.cfg.keys() {
            if !self.allowed.contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown config_json key {k:?} for kind {}",
                    self.kind
                )));
            }
        }
        Ok(Resolved {
            public: self.public,
            secrets: self.secrets,
        })
    }
}
