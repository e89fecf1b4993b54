//! Every Redis key Serval uses, in one place.
//!
//! Layout (`<p>` = the deployment's key prefix, default `serval`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>:{sys}:log` | stream | zone-less events (zones, admin tokens), total order |
//! | `<p>:{z:<zone>}:log` | stream | the zone's own events, total order |
//! | `<p>:{tag}:versions` | hash | aggregate id → current version (optimistic concurrency) |
//! | `<p>:{tag}:uniq:<kind>:<value>` | string | uniqueness reservation → owning aggregate id |
//! | `<p>:{tag}:idem:<digest>` | hash | idempotency record of a request (24 h) |
//! | `<p>:{z:<zone>}:dek` | string | the zone's data key, wrapped by `SECRET_STORE_KEK` |
//! | `<p>:oauth:<sha256(state)>` | string | a pending OAuth authorize (JSON; expires after 1 h, valid 600 s) |
//! | `<p>:{z:<zone>}:jti:<jti>` | string | an issued mandate id (`<client>\|<unix>`, TTL = its lifetime) |
//! | `<p>:{z:<zone>}:seen:<jti>` | string | a mandate the Gateway consumed (request id, TTL = its remaining life) |
//! | `<p>:{z:<zone>}:provider-refresh-failures:<provider>` | string | failed token fetches of a provider in the current 5-min window |
//! | `<p>:{z:<zone>}:provider-refresh-circuit:<provider>` | string | present while the provider's token-endpoint circuit is open (30 s) |
//! | `<p>:gw-nonce:<sha256(nonce)>` | string | a consumed Gateway→STS HMAC nonce (120 s) |
//! | `<p>:activity` | stream | hints: a zone stream got its first entries (trimmed ~10,000) |
//! | `<p>:deadletters` | stream | entries a projection refused (bad signature, undecodable) |
//! | `<t>caracal.*` | streams | Caracal's public topics (`<t>` = topic prefix, default empty) |
//!
//! **Invariant:** the keys one atomic append touches all carry the same hash tag (`{sys}` or
//! `{z:<zone>}`), so every script call lands in one slot on Redis Cluster.

/// Which log stream an aggregate's events go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogStream {
    System,
    Zone(String),
}

#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
    topic_prefix: String,
}

impl Default for KeySpace {
    fn default() -> Self {
        KeySpace::new("serval", "")
    }
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KeySpace {
            prefix: prefix.into(),
            topic_prefix: topic_prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn tag(stream: &LogStream) -> String {
        let mut tag = String::new();
        Self::push_tag(&mut tag, stream);
        tag
    }

    /// Appends the stream's hash tag (`{sys}` or `{z:<zone>}`): its keys share one slot.
    fn push_tag(out: &mut String, stream: &LogStream) {
        match stream {
            LogStream::System => out.push_str("{sys}"),
            LogStream::Zone(z) => {
                out.push_str("{z:");
                out.push_str(z);
                out.push('}');
            }
        }
    }

    pub fn log(&self, stream: &LogStream) -> String {
        // Built without `format!`: every read request derives a few of these.
        let mut key = String::with_capacity(self.prefix.len() + 48);
        key.push_str(&self.prefix);
        key.push(':');
        Self::push_tag(&mut key, stream);
        key.push_str(":log");
        key
    }

    /// Recovers the log stream from a log key (the inverse of [`KeySpace::log`]).
    pub fn parse_log(&self, key: &str) -> Option<LogStream> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        let tag = rest.strip_suffix(":log")?;
        if tag == "{sys}" {
            return Some(LogStream::System);
        }
        let zone = tag.strip_prefix("{z:")?.strip_suffix('}')?;
        Some(LogStream::Zone(zone.to_owned()))
    }

    pub fn versions(&self, stream: &LogStream) -> String {
        format!("{}:{}:versions", self.prefix, Self::tag(stream))
    }

    pub fn reservation(&self, stream: &LogStream, kind: &str, value: &str) -> String {
        format!("{}:{}:uniq:{kind}:{value}", self.prefix, Self::tag(stream))
    }

    pub fn idempotency(&self, stream: &LogStream, digest: &str) -> String {
        format!("{}:{}:idem:{digest}", self.prefix, Self::tag(stream))
    }

    /// A zone's data key, wrapped by `SECRET_STORE_KEK` (custody of sealed secrets). The one
    /// key that is *not* derived from the log, on purpose: deleting it shreds every secret
    /// sealed under it without touching a signed event.
    pub fn data_key(&self, zone_id: &str) -> String {
        format!("{}:{{z:{zone_id}}}:dek", self.prefix)
    }

    /// A pending OAuth authorize state (its PKCE verifier and target), by SHA-256 of the
    /// state; zone-less so a callback on the wrong zone is told apart from an unknown state.
    pub fn oauth_state(&self, state_digest: &str) -> String {
        format!("{}:oauth:{state_digest}", self.prefix)
    }

    /// Hints that a zone stream received its first entries: `stream` = the log key. A
    /// projector adds the named stream to its blocking reads at once instead of finding it
    /// at its next sweep. Not the source of truth (the sweep still finds every stream).
    pub fn activity(&self) -> String {
        format!("{}:activity", self.prefix)
    }

    /// The projection workers' leases (a sorted set: worker id → lease end, ms), in the
    /// system slot (`projector::share`).
    pub fn workers(&self) -> String {
        format!("{}:{{sys}}:workers", self.prefix)
    }

    /// An issued mandate's `jti` (STS), in its zone's slot; lives as long as the mandate.
    pub fn jti(&self, zone_id: &str, jti: &str) -> String {
        format!("{}:{{z:{zone_id}}}:jti:{jti}", self.prefix)
    }

    /// A Gateway→STS HMAC nonce, consumed once (sts.md §11.2).
    pub fn gateway_nonce(&self, nonce_digest: &str) -> String {
        format!("{}:gw-nonce:{nonce_digest}", self.prefix)
    }

    /// A client assertion's `jti` (digest with its application), consumed once until the
    /// assertion expires.
    pub fn client_assertion_jti(&self, zone_id: &str, digest: &str) -> String {
        format!("{}:{{z:{zone_id}}}:assertion:{digest}", self.prefix)
    }

    /// The live approval hold of one request binding (sts.md §7.2): its id, for as long as
    /// the hold's window, so a repeated gated request gets the same hold.
    pub fn approval_binding(&self, zone_id: &str, digest: &str) -> String {
        format!("{}:{{z:{zone_id}}}:approval:{digest}", self.prefix)
    }

    /// The answer a consumed approval hold released, sealed, kept 120 s so a client that
    /// lost it gets the same mandate again (sts.md §7.4).
    pub fn approval_answer(&self, zone_id: &str, hold_id: &str) -> String {
        format!("{}:{{z:{zone_id}}}:approval-answer:{hold_id}", self.prefix)
    }

    /// The zone of an approval hold, by the hold's id (hashed): a status or decision call
    /// names only the id, and must wait for the right zone's read model when the hold is
    /// not projected yet. Outside any zone's slot; lives as long as the hold's window.
    pub fn approval_zone(&self, hold_digest: &str) -> String {
        format!("{}:approval-zone:{hold_digest}", self.prefix)
    }

    /// The lease of one provider connection's refresh (gateway.md §6.3): one process
    /// refreshes, the others wait for its write-back.
    pub fn connection_refresh_lease(&self, zone_id: &str, connection_id: &str) -> String {
        format!(
            "{}:{{z:{zone_id}}}:provider-refresh:{connection_id}:lock",
            self.prefix
        )
    }

    /// Failed token fetches of one provider within the current 5-minute window
    /// (gateway.md §6.3); beside [`Self::provider_circuit`] in the zone's slot.
    pub fn provider_fetch_failures(&self, zone_id: &str, provider_id: &str) -> String {
        format!(
            "{}:{{z:{zone_id}}}:provider-refresh-failures:{provider_id}",
            self.prefix
        )
    }

    /// Present while a provider's token-endpoint circuit is open (gateway.md §6.3).
    pub fn provider_circuit(&self, zone_id: &str, provider_id: &str) -> String {
        format!(
            "{}:{{z:{zone_id}}}:provider-refresh-circuit:{provider_id}",
            self.prefix
        )
    }

    /// A mandate the Gateway has seen (gateway.md §5): single use.
    pub fn gateway_seen(&self, zone_id: &str, jti: &str) -> String {
        format!("{}:{{z:{zone_id}}}:seen:{jti}", self.prefix)
    }

    /// The STS's failed-authentication counter and lock-out flag of one application id
    /// (`digest` of the id), in one slot so one script touches both.
    pub fn sts_auth_failures(&self, digest: &str) -> (String, String) {
        let tag = format!("{}:{{sts-authfail:{digest}}}", self.prefix);
        (format!("{tag}:count"), format!("{tag}:blocked"))
    }

    /// The STS's mint budget of one (resource, application) pair (`digest`) in a zone.
    pub fn mint_budget(&self, zone_id: &str, digest: &str) -> String {
        format!("{}:{{z:{zone_id}}}:rl:mint:{digest}", self.prefix)
    }

    pub fn dead_letters(&self) -> String {
        format!("{}:deadletters", self.prefix)
    }

    /// A public topic key (`caracal.policy.invalidate`, …) under the topic prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_one_append_shares_a_hash_tag() {
        let k = KeySpace::default();
        let s = LogStream::Zone("0198-abc".into());
        let log = k.log(&s);
        let tag = slot_tag(&log);
        assert_eq!(tag, "z:0198-abc");
        assert_eq!(slot_tag(&k.versions(&s)), tag);
        assert_eq!(slot_tag(&k.reservation(&s, "zone_slug", "x")), tag);
        assert_eq!(slot_tag(&k.idempotency(&s, "ff")), tag);
    }

    #[test]
    fn log_keys_round_trip() {
        let k = KeySpace::new("t1", "");
        for s in [LogStream::System, LogStream::Zone("z-9".into())] {
            assert_eq!(k.parse_log(&k.log(&s)), Some(s));
        }
        assert_eq!(k.parse_log("other:{sys}:log"), None);
    }
}
