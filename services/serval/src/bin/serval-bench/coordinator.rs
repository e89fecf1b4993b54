//! `serval-bench coordinator`: the Coordinator's performance targets measured against a
//! running stack (run it with the rate limits off: `COORDINATOR_RATE_LIMIT_PER_MIN=0
//! STS_MINT_RATE_LIMIT_PER_MIN=0 API_V1_RATE_LIMIT_PER_MIN=0 CARACAL_COORDINATOR_TOKEN=…`).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::percentiles;
use crate::reqwest_free::Client;

pub struct Targets {
    pub api: String,
    pub coordinator: String,
    pub sts: String,
    pub token: String,
    pub operator: String,
    pub cycles: usize,
    pub concurrency: usize,
    pub samples: usize,
    pub edges: usize,
}

pub const RESOURCE: &str = "resource://bench";

pub async fn json_of(
    c: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> anyhow::Result<Value> {
    let bytes = c.expect(method, path, body, want).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&bytes)?)
}

pub fn id(v: &Value, field: &str) -> anyhow::Result<String> {
    Ok(v[field]
        .as_str()
        .with_context(|| format!("{field} in {v}"))?
        .to_owned())
}

pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What [`setup`] made.
pub struct Setup {
    pub zone: String,
    pub app: String,
    pub secret: String,
    pub lifecycle: String,
}

/// A zone whose application owns `RESOURCE` (upstream `upstream`, scope `bench:read` for
/// role `agent`) and has minted a lifecycle mandate for it.
pub async fn setup(admin: &Client, sts_url: &str, upstream: &str) -> anyhow::Result<Setup> {
    let zone = admin.create_zone("bench coordinator").await?;
    let zp = format!("/v1/zones/{zone}");
    let app = json_of(
        admin,
        "POST",
        &format!("{zp}/applications"),
        Some(json!({"name": "bench-agent", "registration_method": "managed"})),
        201,
    )
    .await?;
    let (app_id, secret) = (id(&app, "id")?, id(&app, "client_secret")?);
    let provider = json_of(
        admin,
        "POST",
        &format!("{zp}/providers"),
        Some(json!({"name": "mandate", "kind": "caracal_mandate"})),
        201,
    )
    .await?;
    json_of(admin, "POST", &format!("{zp}/resources"), Some(json!({"name": "Bench", "identifier": RESOURCE,
        "scopes": ["bench:read"], "upstream_url": upstream, "credential_provider_id": provider["id"],
        "operation_enforcement": "transport_uniform"})), 201).await?;
    let content = format!(
        "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\napp_ids := {{\"bot\": \"{app_id}\"}}\n\n\
         grants := {{\"{RESOURCE}\": {{\"application\": \"bot\", \"roles\": {{\"agent\": [\"bench:read\"]}}}}}}\n"
    );
    let policy = json_of(
        admin,
        "POST",
        &format!("{zp}/policies"),
        Some(json!({"name": "grants", "content": content})),
        201,
    )
    .await?;
    let set = json_of(
        admin,
        "POST",
        &format!("{zp}/policy-sets"),
        Some(json!({"name": "main"})),
        201,
    )
    .await?;
    let set_id = id(&set, "id")?;
    let version = json_of(
        admin,
        "POST",
        &format!("{zp}/policy-sets/{set_id}/versions"),
        Some(json!({"manifest": [{"policy_version_id": policy["version_id"]}]})),
        201,
    )
    .await?;
    let version_id = id(&version, "version_id")?;
    json_of(
        admin,
        "POST",
        &format!("{zp}/policy-sets/{set_id}/activate"),
        Some(json!({"version_id": version_id})),
        202,
    )
    .await?;
    let sts = admin.with(sts_url, "");
    let body = form(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("zone_id", &zone),
        ("application_id", &app_id),
        ("client_secret", &secret),
        ("resource", RESOURCE),
        ("scope", "agent:lifecycle"),
    ]);
    for _ in 0..200 {
        let (status, bytes) = sts
            .send_typed(
                "POST",
                "/oauth/2/token",
                Some(body.clone()),
                "application/x-www-form-urlencoded",
            )
            .await?;
        if status == 200 {
            let v: Value = serde_json::from_slice(&bytes)?;
            return Ok(Setup {
                zone,
                app: app_id,
                secret,
                lifecycle: id(&v, "access_token")?,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the STS never minted a lifecycle mandate (is the policy loaded?)")
}

pub async fn run(t: Targets) -> anyhow::Result<()> {
    let admin = Client::new(&t.api, &t.token);
    let Setup {
        zone,
        app,
        lifecycle: mandate,
        ..
    } = setup(&admin, &t.sts, "https://bench.example").await?;
    let c = admin.with(&t.coordinator, &mandate);
    let op = admin.with(&t.coordinator, &t.operator);
    let agents = format!("/zones/{zone}/agents");
    let start = |c: Client, agents: String, app: String| async move {
        let v = json_of(
            &c,
            "POST",
            &agents,
            Some(json!({"application_id": app, "parent_authority": "none"})),
            201,
        )
        .await?;
        id(&v, "agent_session_id")
    };

    // 1. Session create + close cycles.
    for _ in 0..20 {
        let s = start(c.clone(), agents.clone(), app.clone()).await?;
        c.expect("DELETE", &format!("{agents}/{s}"), None, 204)
            .await?;
    }
    let per = (t.cycles / t.concurrency).max(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..t.concurrency {
        let (c, agents, app) = (c.clone(), agents.clone(), app.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t1 = Instant::now();
                let v = json_of(
                    &c,
                    "POST",
                    &agents,
                    Some(json!({"application_id": app, "parent_authority": "none"})),
                    201,
                )
                .await?;
                let s = id(&v, "agent_session_id")?;
                c.expect("DELETE", &format!("{agents}/{s}"), None, 204)
                    .await?;
                lat.push(t1.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut cycles = Vec::new();
    for task in tasks {
        cycles.extend(task.await??);
    }
    let wall = t0.elapsed();
    println!(
        "session create+close cycles, {} clients: {:.0} cycles/s; per cycle {}",
        t.concurrency,
        cycles.len() as f64 / wall.as_secs_f64(),
        percentiles(cycles)
    );

    // 2. Delegation create (root edges between two live Sessions).
    let a = start(c.clone(), agents.clone(), app.clone()).await?;
    let b = start(c.clone(), agents.clone(), app.clone()).await?;
    let edge_body = |from: &str, to: &str, hops: u32, ttl: u32| {
        json!({"source_session_id": from, "target_session_id": to, "issuer_application_id": app,
               "receiver_application_id": app, "scopes": ["bench:read"], "resource_id": RESOURCE,
               "constraints": {"max_hops": hops}, "ttl_seconds": ttl})
    };
    let dz = format!("/zones/{zone}/delegations");
    let mut create = Vec::new();
    for i in 0..t.samples + 20 {
        let t1 = Instant::now();
        c.expect("POST", &dz, Some(edge_body(&a, &b, 1, 3600)), 201)
            .await?;
        if i >= 20 {
            create.push(t1.elapsed());
        }
    }
    println!(
        "delegation create (root edge, resource-bound, 1 client): {}",
        percentiles(create)
    );

    // 3. Effective authority at the end of a depth-10 chain.
    let mut chain = vec![start(c.clone(), agents.clone(), app.clone()).await?];
    let mut first_edge = String::new();
    for depth in 0..10u32 {
        let next = start(c.clone(), agents.clone(), app.clone()).await?;
        let v = json_of(
            &c,
            "POST",
            &dz,
            Some(edge_body(
                &chain[chain.len() - 1],
                &next,
                10 - depth,
                3600 - depth * 10,
            )),
            201,
        )
        .await?;
        if depth == 0 {
            first_edge = id(&v, "delegation_edge_id")?;
        }
        chain.push(next);
    }
    let last = chain.last().context("chain")?.clone();
    let path = format!("{agents}/{last}/effective-authority");
    let v = json_of(&c, "GET", &path, None, 200).await?;
    anyhow::ensure!(
        v["effective_max_hops"] == 1,
        "unexpected effective authority {v}"
    );
    let mut ea = Vec::new();
    for i in 0..t.samples + 50 {
        let t1 = Instant::now();
        c.expect("GET", &path, None, 200).await?;
        if i >= 50 {
            ea.push(t1.elapsed());
        }
    }
    println!(
        "effective authority, end of a depth-10 chain: {}",
        percentiles(ea)
    );

    // 4. Traverse and impact in a zone of `edges` edges: fill with root edges between
    // sources and sinks that no walk from the chain reaches.
    let mut sources = Vec::new();
    let mut sinks = Vec::new();
    for _ in 0..14 {
        sources.push(start(c.clone(), agents.clone(), app.clone()).await?);
        sinks.push(start(c.clone(), agents.clone(), app.clone()).await?);
    }
    let have = t.samples + 20 + 10;
    let fill = t.edges.saturating_sub(have);
    let t0 = Instant::now();
    let per = fill / t.concurrency + 1;
    let mut tasks = Vec::new();
    for w in 0..t.concurrency {
        let (c, dz, sources, sinks, app) = (
            c.clone(),
            dz.clone(),
            sources.clone(),
            sinks.clone(),
            app.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let n = w * per + i;
                let body = json!({"source_session_id": sources[n % sources.len()],
                    "target_session_id": sinks[(n / sources.len()) % sinks.len()],
                    "issuer_application_id": app, "receiver_application_id": app,
                    "scopes": ["bench:read"], "resource_id": RESOURCE, "ttl_seconds": 3600});
                c.expect("POST", &dz, Some(body), 201).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let active = json_of(&op, "GET", &format!("{dz}/active?limit=1"), None, 200).await?;
    anyhow::ensure!(
        active["items"].as_array().is_some_and(|a| a.len() == 1),
        "{active}"
    );
    println!(
        "filled the zone to ~{} edges in {:.1}s ({:.0} creates/s, {} clients)",
        have + per * t.concurrency,
        t0.elapsed().as_secs_f64(),
        (per * t.concurrency) as f64 / t0.elapsed().as_secs_f64(),
        t.concurrency
    );
    for (name, suffix) in [("traverse", "traverse"), ("impact", "impact")] {
        let path = format!("{dz}/{first_edge}/{suffix}");
        let v = json_of(&op, "GET", &path, None, 200).await?;
        let n = if name == "traverse" {
            v.as_array().map(Vec::len)
        } else {
            v["affected_edges"].as_array().map(Vec::len)
        };
        anyhow::ensure!(n == Some(10), "{name} of the chain walked {n:?} edges");
        let mut lat = Vec::new();
        for i in 0..t.samples + 50 {
            let t1 = Instant::now();
            op.expect("GET", &path, None, 200).await?;
            if i >= 50 {
                lat.push(t1.elapsed());
            }
        }
        println!(
            "{name} of a 10-edge chain in that zone: {}",
            percentiles(lat)
        );
    }
    Ok(())
}
