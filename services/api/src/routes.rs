//! The Management API's route table: every route is registered here together with its
//! documentation, so the OpenAPI document (`GET /docs/openapi.json`, browsable at `/docs`)
//! is generated from the same table that builds the router and cannot miss a route.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, Paths};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Required,
};

use serval_kit::state::App;

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub method: Method,
    pub path: String,
    pub tag: &'static str,
    pub summary: &'static str,
    /// The success status.
    pub ok: u16,
    /// `"<status> <code>"` of every documented refusal besides the §3.2 authorization ones.
    pub errors: &'static [&'static str],
    /// Needs an admin token (all but the OAuth callback).
    pub auth: bool,
}

/// Hands the admin-audit layer the documented success status of every mutating route
/// (its early record, `admin_audit::note_written`).
pub fn remember_documented(ops: &[Op]) {
    serval_kit::admin_audit::remember_documented(
        ops.iter()
            .filter(|o| o.auth && o.method != Method::GET)
            .map(|o| (o.method.clone(), o.path.as_str(), o.ok)),
    );
}

/// A router under construction with the documentation of each route it holds.
pub struct Routes {
    router: Router<App>,
    tag: &'static str,
    ops: Vec<Op>,
}

impl Routes {
    pub fn new(tag: &'static str) -> Self {
        Routes {
            router: Router::new(),
            tag,
            ops: Vec::new(),
        }
    }

    /// Registers `handler` for `method path` (an admin-token route).
    pub fn op<H, T>(
        self,
        method: Method,
        path: &str,
        handler: H,
        summary: &'static str,
        ok: u16,
        errors: &'static [&'static str],
    ) -> Self
    where
        H: Handler<T, App>,
        T: 'static,
    {
        let op = self.doc(method, path, summary, ok, errors, true);
        self.register(op, handler)
    }

    /// Registers a route reached without an admin token.
    pub fn open<H, T>(
        self,
        method: Method,
        path: &str,
        handler: H,
        summary: &'static str,
        ok: u16,
        errors: &'static [&'static str],
    ) -> Self
    where
        H: Handler<T, App>,
        T: 'static,
    {
        let op = self.doc(method, path, summary, ok, errors, false);
        self.register(op, handler)
    }

    fn doc(
        &self,
        method: Method,
        path: &str,
        summary: &'static str,
        ok: u16,
        errors: &'static [&'static str],
        auth: bool,
    ) -> Op {
        Op {
            method,
            path: path.to_owned(),
            tag: self.tag,
            summary,
            ok,
            errors,
            auth,
        }
    }

    fn register<H, T>(mut self, op: Op, handler: H) -> Self
    where
        H: Handler<T, App>,
        T: 'static,
    {
        let filter = match op.method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::PATCH => MethodFilter::PATCH,
            _ => MethodFilter::DELETE,
        };
        self.router = self.router.route(&op.path, on(filter, handler));
        self.ops.push(op);
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.ops.extend(other.ops);
        self
    }

    pub fn into_parts(self) -> (Router<App>, Vec<Op>) {
        (self.router, self.ops)
    }
}

fn http_method(m: &Method) -> HttpMethod {
    match *m {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        _ => HttpMethod::Delete,
    }
}

/// `get /v1/zones/{zone}/grants/{id}` → `get_zones_grants`.
fn operation_id(op: &Op) -> String {
    let words: Vec<&str> = op
        .path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.starts_with('{') && !s.is_empty())
        .collect();
    let one = op.path.ends_with('}');
    format!(
        "{}_{}{}",
        op.method.as_str().to_ascii_lowercase(),
        words.join("_").replace('-', "_"),
        if one { "_one" } else { "" }
    )
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn json_object() -> ContentBuilder {
    ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
}

/// The OpenAPI 3.1 document of `ops`.
pub fn openapi(ops: &[Op]) -> OpenApi {
    let mut paths = Paths::new();
    for op in ops {
        let mut b = OperationBuilder::new()
            .operation_id(Some(operation_id(op)))
            .summary(Some(op.summary))
            .tag(op.tag);
        for seg in op.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(string_schema())),
                );
            }
        }
        if matches!(op.method, Method::POST | Method::PATCH | Method::PUT) {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_object().build())
                    .build(),
            ));
        }
        let ok = ResponseBuilder::new().description(match op.ok {
            204 => "No Content",
            201 => "Created",
            _ => "OK",
        });
        let ok = if op.ok == 204 {
            ok
        } else {
            ok.content("application/json", json_object().build())
        };
        b = b.response(op.ok.to_string(), ok.build());
        // Group refusals by status: one response per status listing its codes.
        let mut by_status: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for e in op.errors {
            let (status, code) = e.split_once(' ').unwrap_or(("400", e));
            by_status.entry(status).or_default().push(code);
        }
        if op.auth {
            by_status
                .entry("401")
                .or_default()
                .push("invalid_admin_token");
            by_status
                .entry("403")
                .or_default()
                .extend(["admin_token_read_only", "admin_token_zone_mismatch"]);
            by_status.entry("429").or_default().push("rate_limited");
        }
        for (status, codes) in by_status {
            b = b.response(
                status,
                ResponseBuilder::new()
                    .description(format!(
                        "`{{\"error\": …}}` with `error` one of: {}",
                        codes.join(", ")
                    ))
                    .content("application/json", json_object().build())
                    .build(),
            );
        }
        if op.auth {
            b = b.security(SecurityRequirement::new(
                "admin_token",
                Vec::<String>::new(),
            ));
        }
        paths.add_path_operation(&op.path, vec![http_method(&op.method)], b.build());
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Serval Management API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Caracal's Management API (:3000) as Serval serves it: every write is a \
                     signed event, every read comes from a projection.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "admin_token",
                    SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
                )
                .build(),
        ))
        .build()
}

/// The browsable page at `/docs`: renders `/docs/openapi.json` in the browser, with no
/// third-party assets (it works on an air-gapped host).
pub const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Serval Management API</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d1d1f}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;text-transform:capitalize}
details{border:1px solid #e3e3e3;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer}code{font:13px ui-monospace,monospace}
.m{display:inline-block;min-width:4.2rem;font-weight:600;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.patch{color:#a60}.delete{color:#c22}.put{color:#717}
table{border-collapse:collapse;margin:.4rem 0}td{border-top:1px solid #eee;padding:.2rem .6rem;vertical-align:top}
#q{width:100%;padding:.4rem;font-size:14px}
</style></head><body>
<h1>Serval Management API</h1>
<p>Generated from the route table (<a href="/docs/openapi.json">openapi.json</a>, OpenAPI 3.1).
Every <code>/v1</code> route but the OAuth callback needs <code>Authorization: Bearer &lt;admin token&gt;</code>.</p>
<input id="q" placeholder="filter by path, summary or error code">
<div id="ops">loading…</div>
<script>
const esc=s=>String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch("/docs/openapi.json").then(r=>r.json()).then(doc=>{
  const byTag={};
  for(const [path,item] of Object.entries(doc.paths))for(const [m,op] of Object.entries(item)){
    (byTag[op.tags[0]]=byTag[op.tags[0]]||[]).push({path,m,op});}
  const render=q=>{let h="";for(const tag of Object.keys(byTag).sort()){
    const rows=byTag[tag].filter(({path,op})=>!q||(path+op.summary+JSON.stringify(op.responses)).toLowerCase().includes(q));
    if(!rows.length)continue;h+=`<h2>${esc(tag)}</h2>`;
    for(const {path,m,op} of rows){
      const resp=Object.entries(op.responses).map(([s,r])=>`<tr><td><code>${s}</code></td><td>${esc(r.description)}</td></tr>`).join("");
      h+=`<details><summary><span class="m ${m}">${m}</span><code>${esc(path)}</code> — ${esc(op.summary)}</summary>
      <p><code>${esc(op.operationId)}</code>${op.security?" · admin token":" · no token"}</p><table>${resp}</table></details>`;}}
    document.getElementById("ops").innerHTML=h||"no match";};
  render("");document.getElementById("q").oninput=e=>render(e.target.value.toLowerCase());
}).catch(e=>{document.getElementById("ops").textContent="cannot load openapi.json: "+e;});
</script></body></html>"#;
