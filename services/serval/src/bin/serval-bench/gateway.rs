//! `serval-bench gateway`: governed requests against a running stack — a delegated mint at
//! the STS, then the call through the Gateway to an echo upstream this tool serves — and the
//! same echo called directly, for the Gateway's overhead. Run the stack with the rate limits
//! off (`STS_MINT_RATE_LIMIT_PER_MIN=0 COORDINATOR_RATE_LIMIT_PER_MIN=0
//! API_V1_RATE_LIMIT_PER_MIN=0`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::coordinator::{form, id, json_of, setup, Setup, RESOURCE};
use crate::percentiles;
use crate::reqwest_free::Client;

pub struct Targets {
    pub api: String,
    pub coordinator: String,
    pub sts: String,
    pub gateway: String,
    pub token: String,
    pub requests: usize,
    pub concurrency: usize,
    pub revocations: usize,
}

/// One revocation measured: a fresh edge and mandate, the edge revoked at the Coordinator,
/// then the mandate presented until the Gateway refuses it.
struct Revocation {
    coordinator: Client,
    sts: Client,
    gateway: Client,
    zone: String,
    app: String,
    secret: String,
}

impl Revocation {
    async fn once(&self) -> anyhow::Result<Duration> {
        // Revoking an edge ends its target Session: every round starts its own pair.
        let Delegated {
            sessions,
            edge,
            mint_body: body,
        } = delegated(
            &self.coordinator,
            (&self.zone, &self.app, &self.secret),
            600,
        )
        .await?;
        // Mandates minted before the revocation (single use: one per attempt).
        let mut mandates = Vec::new();
        for _ in 0..20 {
            mandates.push(mint(&self.sts, body.clone()).await?);
        }
        self.coordinator
            .expect(
                "PATCH",
                &format!("/zones/{}/delegations/{edge}/revoke", self.zone),
                None,
                200,
            )
            .await?;
        let accepted = Instant::now();
        let mut felt = None;
        for m in mandates {
            let (s, _) = self
                .gateway
                .with_token(&m)
                .send_with(
                    "GET",
                    "/v1/items",
                    &[("x-caracal-resource", RESOURCE)],
                    None,
                )
                .await?;
            if s != 200 {
                felt = Some(accepted.elapsed());
                break;
            }
        }
        // The source Session too, so the rounds stay under the zone's live-Session cap.
        self.coordinator
            .expect(
                "DELETE",
                &format!("/zones/{}/agents/{}", self.zone, sessions[0]),
                None,
                204,
            )
            .await?;
        felt.ok_or_else(|| anyhow::anyhow!("20 calls after the revocation all passed"))
    }
}

/// Two Sessions labelled `agent`, a root Delegation of `bench:read` on `RESOURCE` between
/// them, and the form of a delegated mint over it.
struct Delegated {
    sessions: Vec<String>,
    edge: String,
    mint_body: String,
}

async fn delegated(
    coordinator: &Client,
    (zone, app, secret): (&str, &str, &str),
    ttl: u32,
) -> anyhow::Result<Delegated> {
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let v = json_of(
            coordinator,
            "POST",
            &format!("/zones/{zone}/agents"),
            Some(json!({"application_id": app, "labels": ["agent"], "ttl_seconds": ttl})),
            201,
        )
        .await?;
        sessions.push(id(&v, "agent_session_id")?);
    }
    let edge = json_of(
        coordinator,
        "POST",
        &format!("/zones/{zone}/delegations"),
        Some(
            json!({"source_session_id": sessions[0], "target_session_id": sessions[1],
                    "issuer_application_id": app, "receiver_application_id": app,
                    "scopes": ["bench:read"], "constraints": {"resources": [RESOURCE]},
                    "ttl_seconds": ttl}),
        ),
        201,
    )
    .await?;
    let edge = id(&edge, "delegation_edge_id")?;
    let mint_body = form(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("zone_id", zone),
        ("application_id", app),
        ("client_secret", secret),
        ("resource", RESOURCE),
        ("scope", "bench:read"),
        ("agent_session_id", &sessions[1]),
        ("delegation_edge_id", &edge),
    ]);
    Ok(Delegated {
        sessions,
        edge,
        mint_body,
    })
}

/// A delegated mint (the form `body`); the mandate.
async fn mint(sts: &Client, body: String) -> anyhow::Result<String> {
    let (s, bytes) = sts
        .send_typed(
            "POST",
            "/oauth/2/token",
            Some(body),
            "application/x-www-form-urlencoded",
        )
        .await?;
    anyhow::ensure!(
        s == 200,
        "mint answered {s}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    id(&v, "access_token")
}

/// An upstream that answers every request with a small JSON body.
async fn echo() -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Runs `per` iterations of `one` on each of `clients` tasks; latencies and wall time.
async fn load<F, Fut>(
    clients: usize,
    per: usize,
    one: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t1 = Instant::now();
                one().await?;
                lat.push(t1.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t0.elapsed()))
}

pub async fn run(t: Targets) -> anyhow::Result<()> {
    let upstream = echo().await?;
    let admin = Client::new(&t.api, &t.token);
    let Setup {
        zone,
        app,
        secret,
        lifecycle,
    } = setup(&admin, &t.sts, &format!("{upstream}/")).await?;
    let c = admin.with(&t.coordinator, &lifecycle);
    let Delegated { mint_body, .. } = delegated(&c, (&zone, &app, &secret), 3600).await?;
    let sts = admin.with(&t.sts, "");
    let mint_only = {
        let (sts, body) = (sts.clone(), mint_body.clone());
        move || {
            let (sts, body) = (sts.clone(), body.clone());
            async move {
                mint(&sts, body).await?;
                anyhow::Ok(())
            }
        }
    };
    for _ in 0..50 {
        mint_only().await?;
    }
    let (lat, _) = load(1, (t.requests / 4).max(50), mint_only.clone()).await?;
    println!("delegated mint alone, 1 client: {}", percentiles(lat));
    let (lat, wall) = load(
        t.concurrency,
        (t.requests / t.concurrency).max(1),
        mint_only,
    )
    .await?;
    println!(
        "delegated mint alone, {} clients: {:.0} mints/s; {}",
        t.concurrency,
        lat.len() as f64 / wall.as_secs_f64(),
        percentiles(lat)
    );
    let revocation = Revocation {
        coordinator: c.clone(),
        sts: sts.clone(),
        gateway: admin.with(&t.gateway, ""),
        zone: zone.clone(),
        app: app.clone(),
        secret: secret.clone(),
    };
    let gateway_base = t.gateway.clone();
    let governed = move || {
        let (sts, body, gw, base) = (
            sts.clone(),
            mint_body.clone(),
            admin.clone(),
            gateway_base.clone(),
        );
        async move {
            let token = mint(&sts, body).await?;
            let gw = gw.with(&base, &token);
            let (s, bytes) = gw
                .send_with(
                    "GET",
                    "/v1/items",
                    &[("x-caracal-resource", RESOURCE)],
                    None,
                )
                .await?;
            anyhow::ensure!(
                s == 200,
                "gateway answered {s}: {}",
                String::from_utf8_lossy(&bytes)
            );
            anyhow::Ok(())
        }
    };
    // Warm-up: caches, connection pools, the policy binding.
    for _ in 0..50 {
        governed().await?;
    }
    let (one, _) = load(1, (t.requests / 4).max(50), governed.clone()).await?;
    println!(
        "governed request (mint + Gateway + echo), 1 client: {}",
        percentiles(one)
    );
    let per = (t.requests / t.concurrency).max(1);
    let (lat, wall) = load(t.concurrency, per, governed).await?;
    println!(
        "governed request, {} clients: {:.0} req/s; {}",
        t.concurrency,
        lat.len() as f64 / wall.as_secs_f64(),
        percentiles(lat)
    );
    let mut felt = Vec::new();
    for _ in 0..t.revocations {
        felt.push(revocation.once().await?);
    }
    println!(
        "revocation accepted by the Coordinator -> first refused call at the Gateway: {}",
        percentiles(felt)
    );
    let direct = Client::new(&upstream, "");
    let call = move || {
        let d = direct.clone();
        async move {
            let (s, _) = d.send_with("GET", "/v1/items", &[], None).await?;
            anyhow::ensure!(s == 200, "echo answered {s}");
            anyhow::Ok(())
        }
    };
    let (lat, _) = load(1, (t.requests / 4).max(50), call).await?;
    println!(
        "echo upstream called directly, 1 client: {}",
        percentiles(lat)
    );
    Ok(())
}
