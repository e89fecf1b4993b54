//! The Management API's route table: every route is registered here together with its
//! documentation, so the OpenAPI document (`GET /docs/openapi.json`, browsable at `/docs`)
//! is generated from the same table that builds the router and cannot miss a route.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, Paths,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required,
};
use utoipa::{IntoParams, ToSchema};

use serval_kit::state::App;

/// Named schemas collected while the document is built (`components.schemas`).
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// The schema of a Rust type, registered in `components` and answered as a reference.
pub type SchemaOf = fn(&mut Schemas) -> RefOr<Schema>;

fn params_of<Q: IntoParams>() -> Vec<Parameter> {
    Q::into_params(|| Some(ParameterIn::Query))
}

fn schema_of<T: ToSchema>(out: &mut Schemas) -> RefOr<Schema> {
    T::schemas(out);
    let name = component_name::<T>();
    out.push((name.clone(), T::schema()));
    RefOr::Ref(Ref::from_schema_name(name))
}

/// A page of `T`s; `T` is registered too (utoipa's generic `Page<T>` refers to it without
/// registering it).
fn page_of<T: ToSchema + 'static>(out: &mut Schemas) -> RefOr<Schema> {
    schema_of::<T>(out);
    schema_of::<crate::views::Page<T>>(out)
}

/// `T`'s schema name; a generic type (`Page<ZoneView>`) is named after its arguments too
/// (`Page_ZoneView`), since utoipa names every instance of it alike.
fn component_name<T: ToSchema>() -> String {
    let full = std::any::type_name::<T>();
    if !full.contains('<') {
        return T::name().into_owned();
    }
    let mut name = String::new();
    let mut word = String::new();
    for c in full.chars() {
        match c {
            ':' => word.clear(),
            '<' | ',' => {
                name.push_str(&word);
                name.push('_');
                word.clear();
            }
            '>' | ' ' => {
                name.push_str(&word);
                word.clear();
            }
            c => word.push(c),
        }
    }
    name.push_str(&word);
    name
}

/// What a mutating route reads from its body.
#[derive(Debug, Clone, Copy)]
pub enum BodyDoc {
    /// Not declared yet: [`openapi`] refuses a mutating route left like this.
    Undeclared,
    /// The route reads no body.
    Empty,
    /// The body is parsed into this type (the same type the handler deserializes).
    Typed(SchemaOf),
}

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
    pub body: BodyDoc,
    /// The success body's type (`None` for `204`).
    pub answer: Option<SchemaOf>,
    /// The query parameters, from the type the handler parses them into.
    pub query: Option<fn() -> Vec<Parameter>>,
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
            body: BodyDoc::Undeclared,
            answer: None,
            query: None,
        }
    }

    fn last(&mut self) -> &mut Op {
        // Called right after `op`/`open`: a builder method without a route is a programming
        // error caught by every test that builds the router.
        self.ops
            .last_mut()
            .expect("takes/gives follow the op they describe")
    }

    /// The last registered route parses its body into `T`.
    pub fn takes<T: ToSchema>(mut self) -> Self {
        self.last().body = BodyDoc::Typed(schema_of::<T>);
        self
    }

    /// The last registered route parses its query string into `Q`.
    pub fn query<Q: IntoParams>(mut self) -> Self {
        self.last().query = Some(params_of::<Q>);
        self
    }

    /// The last registered route reads no body.
    pub fn no_body(mut self) -> Self {
        self.last().body = BodyDoc::Empty;
        self
    }

    /// The last registered route answers a page of `T`s (`{items, next_cursor}`).
    pub fn gives_page<T: ToSchema + 'static>(mut self) -> Self {
        self.last().answer = Some(page_of::<T>);
        self
    }

    /// The last registered route answers a `T` on success.
    pub fn gives<T: ToSchema>(mut self) -> Self {
        self.last().answer = Some(schema_of::<T>);
        self
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

fn json(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The Caracal error body (management-api.md §2) every refusal answers.
#[allow(dead_code)] // documents the map `ApiError` renders; never constructed
#[derive(ToSchema)]
pub struct ErrorBody {
    /// The error code (one of those the response lists).
    error: String,
    error_description: Option<String>,
    /// Framework failures and schema-exception refusals carry the request id.
    #[schema(rename = "requestId")]
    request_id: Option<String>,
    /// Route-specific detail, e.g. `details.issues` of a schema-exception refusal.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// Refusals any route can answer before or around its handler: the body limit, the content
/// type, the write deadline and an unavailable store.
const FRAMEWORK_ERRORS: &[(&str, &str)] = &[
    ("413", "payload_too_large"),
    ("415", "internal_error"),
    ("500", "internal_error"),
    ("503", "write_deadline_exceeded"),
    ("503", "read_model_unavailable"),
];

/// The OpenAPI 3.1 document of `ops`. Panics on a mutating route whose body is undeclared
/// (the route table is static: the openapi test finds it).
pub fn openapi(ops: &[Op]) -> OpenApi {
    let mut paths = Paths::new();
    let mut schemas: Schemas = Vec::new();
    let error = schema_of::<ErrorBody>(&mut schemas);
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
        for p in op.query.map(|q| q()).unwrap_or_default() {
            b = b.parameter(p);
        }
        match op.body {
            BodyDoc::Typed(of) => {
                b = b.request_body(Some(
                    RequestBodyBuilder::new()
                        .content("application/json", json(of(&mut schemas)))
                        .build(),
                ));
            }
            BodyDoc::Empty => {}
            BodyDoc::Undeclared => {
                assert!(
                    !matches!(op.method, Method::POST | Method::PATCH | Method::PUT),
                    "{} {} does not declare its body",
                    op.method,
                    op.path
                );
            }
        }
        let ok = ResponseBuilder::new().description(match op.ok {
            204 => "No Content",
            201 => "Created",
            _ => "OK",
        });
        let ok = match op.answer {
            Some(of) => ok.content("application/json", json(of(&mut schemas))),
            None => {
                assert!(
                    op.ok == 204,
                    "{} {} does not declare its answer",
                    op.method,
                    op.path
                );
                ok
            }
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
        if op.path.contains('{') {
            by_status.entry("400").or_default().push("invalid_params");
        }
        if op.method == Method::GET {
            // `http::query::refuse_nul`, before any handler.
            let codes = by_status.entry("400").or_default();
            if !codes.contains(&"invalid_query") {
                codes.push("invalid_query");
            }
        }
        if op.auth && op.method != Method::GET {
            // `Idempotency-Key` (docs/idempotency.md): a malformed key, a key reused for
            // another request.
            by_status.entry("400").or_default().push("invalid_request");
            by_status
                .entry("409")
                .or_default()
                .push("idempotency_key_conflict");
        }
        for (status, code) in FRAMEWORK_ERRORS {
            let codes = by_status.entry(status).or_default();
            if !codes.contains(code) {
                codes.push(code);
            }
        }
        for (status, codes) in by_status {
            b = b.response(
                status,
                ResponseBuilder::new()
                    .description(format!(
                        "`{{\"error\": …}}` with `error` one of: {}",
                        codes.join(", ")
                    ))
                    .content("application/json", json(error.clone()))
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
                .schemas_from_iter(schemas)
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
