//! The OpenAPI document, generated from the route annotations (`#[utoipa::path]`) and the wire
//! types' schemas, served at `/api/v1/openapi.json`, with a small self-contained page at
//! `/api/v1/docs` for reading it in a browser (no CDN: studios run Rally offline too).

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::rules;
use crate::state::AppState;
use serde_json::{json, Value};

/// The document's frame; the routers fill in paths and schemas.
pub fn base() -> OpenApi {
    let mut openapi = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Rally platform API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Management, accounts and player sign-in. Every error answers \
                     {\"error\":{\"code\",\"message\"}} with a stable code.",
                ))
                .build(),
        )
        .build();
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    openapi
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
}

/// The document, published by the router that serves it (the router is built from every
/// route module, this one included).
static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Serves `document` from now on (the first one published stays: it does not change), with
/// the rules the routes enforce beyond the types stated in it ([`constrain`]).
pub fn publish(document: &OpenApi, config: &Config) {
    DOCUMENT.get_or_init(|| {
        let mut document = serde_json::to_value(document).expect("the OpenAPI document serialises");
        for missing in constrain(&mut document, config) {
            tracing::error!(%missing, "a rule names a part of the OpenAPI document that is not there");
        }
        serde_json::to_string_pretty(&document).expect("the OpenAPI document serialises")
    });
}

/// States in `document` what the routes check beyond the types: lengths, patterns, ranges
/// and enums (from `crate::rules` and the checks they stand for), the fields a grant's scope
/// needs, and the body types an upload takes. Returns the JSON pointers it did not find, which
/// a test keeps empty.
pub fn constrain(document: &mut Value, config: &Config) -> Vec<String> {
    let name =
        json!({"minLength": 1, "maxLength": rules::NAME_MAX_CHARS, "pattern": rules::name()});
    // `not` must leave `null` alone: it applies to strings only.
    let alias = json!({"maxLength": 63, "pattern": rules::SLUG,
        "not": {"type": "string", "pattern": rules::ID_SHAPED}});
    let slug = json!({"maxLength": 63, "pattern": rules::SLUG});
    let username = json!({"minLength": 3, "maxLength": 64, "pattern": rules::USERNAME});
    let password = json!({"minLength": rules::PASSWORD_MIN_CHARS,
        "maxLength": rules::PASSWORD_MAX_CHARS, "pattern": rules::no_control()});
    let device_id = json!({"minLength": rules::DEVICE_ID_MIN_CHARS,
        "maxLength": rules::DEVICE_ID_MAX_CHARS, "pattern": rules::no_control()});
    let ttl = json!({"minimum": crate::registry::MIN_LOGIN_TTL_SECS,
        "maximum": config.registry_login_ttl_secs});
    let mut missing = Vec::new();
    for (schema, property, rule) in [
        ("CreateTenant", "name", &name),
        ("CreateTenant", "alias", &alias),
        ("CreateNamed", "name", &name),
        ("CreateNamed", "alias", &alias),
        ("CreateDeveloperRequest", "username", &username),
        ("CreateDeveloperRequest", "password", &password),
        ("PasswordReset", "password", &password),
        ("DeviceSignInRequest", "device_id", &device_id),
        ("CreatePool", "name", &slug),
        ("RegisterServer", "name", &slug),
        ("CreateRegistryCredential", "ttl_secs", &ttl),
    ] {
        let pointer = format!("/components/schemas/{schema}/properties/{property}");
        merge(document, pointer, rule, &mut missing);
    }
    // A grant names the project for project and stage scopes, and the stage for stage scopes.
    let named = |fields: &[&str]| {
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|field| (field.to_string(), json!({"type": "string"})))
            .collect();
        json!({"required": fields, "properties": properties})
    };
    merge(
        document,
        "/components/schemas/GrantRequest".to_owned(),
        &json!({"anyOf": [
            {"properties": {"scope": {"const": "tenant"}}},
            {"properties": {"scope": {"const": "project"}}, "allOf": [named(&["project"])]},
            {"properties": {"scope": {"const": "stage"}}, "allOf": [named(&["project", "stage"])]},
        ]}),
        &mut missing,
    );

    let idempotency_key = json!({"pattern": rules::IDEMPOTENCY_KEY});
    let limit = json!({"minimum": 1, "maximum": crate::audit::MAX_LIMIT});
    let service = json!({"enum": [crate::registry::SERVICE]});
    let note = json!({"maxLength": rules::NOTE_MAX_CHARS, "pattern": rules::note()});
    if let Some(Value::Object(paths)) = document.get_mut("paths") {
        for (path, item) in paths.iter_mut() {
            let Value::Object(operations) = item else {
                continue;
            };
            for operation in operations.values_mut() {
                let Some(Value::Array(parameters)) = operation.get_mut("parameters") else {
                    continue;
                };
                for parameter in parameters {
                    let rule = match (parameter["in"].as_str(), parameter["name"].as_str()) {
                        (Some("header"), Some("Idempotency-Key")) => &idempotency_key,
                        (Some("query"), Some("limit")) if path.ends_with("/audit") => &limit,
                        (Some("query"), Some("service")) => &service,
                        (Some("query"), Some("note")) => &note,
                        _ => continue,
                    };
                    let name = format!("{path} parameter {}", parameter["name"]);
                    if !extend(parameter.get_mut("schema"), rule) {
                        missing.push(name);
                    }
                }
            }
        }
    }
    // No text anywhere holds NUL: bodies and queries with it are refused, paths with it name
    // nothing (`error::refuse_nul`, `error::Json`).
    forbid_nul(document);
    // An upload is the archive's bytes, whatever a client calls them.
    let binary = json!({"schema": {"type": "string", "format": "binary"}});
    merge(
        document,
        "/paths/~1api~1v1~1tenants~1{tenant}~1projects~1{project}~1versions/post/requestBody/content"
            .to_owned(),
        &json!({"application/gzip": binary, "application/octet-stream": binary}),
        &mut missing,
    );
    missing
}

/// [`extend`] at `pointer`, which goes into `missing` when nothing is there.
fn merge(document: &mut Value, pointer: String, rule: &Value, missing: &mut Vec<String>) {
    if !extend(document.pointer_mut(&pointer), rule) {
        missing.push(pointer);
    }
}

/// Adds `rule`'s keywords to the schema `target`; false when there is no such schema.
fn extend(target: Option<&mut Value>, rule: &Value) -> bool {
    match (target, rule) {
        (Some(Value::Object(target)), Value::Object(rule)) => {
            target.extend(rule.clone());
            true
        }
        _ => false,
    }
}

/// Gives every string schema that says nothing narrower (pattern, enum, format) the pattern
/// "no NUL".
fn forbid_nul(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let is_string = match object.get("type") {
                Some(Value::String(kind)) => kind == "string",
                Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "string"),
                _ => false,
            };
            let narrower = ["pattern", "enum", "const", "format"]
                .iter()
                .any(|key| object.contains_key(*key));
            if is_string && !narrower {
                object.insert("pattern".to_owned(), json!(NO_NUL));
            }
            object.values_mut().for_each(forbid_nul);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_nul),
        _ => {}
    }
}

/// Any text without NUL.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// The whole document.
fn document() -> &'static str {
    DOCUMENT
        .get()
        .expect("the document is published when the router is built")
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}

/// The API reference as a web page.
#[utoipa::path(get, path = "/api/v1/docs", tag = "meta",
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rally API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem 1.5rem;color:#222}
h2{border-bottom:1px solid #ddd;margin-top:2rem}
details{border:1px solid #e3e3e3;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer}
.method{display:inline-block;width:4.2rem;font-weight:600;font-family:monospace}
.get{color:#0a6}.post{color:#06c}.delete{color:#c22}.patch,.put{color:#a60}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f6f6;padding:.5rem;overflow:auto}
</style></head><body>
<h1>Rally API</h1><p id="intro">Loading <a href="openapi.json">openapi.json</a>…</p><div id="api"></div>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("intro").innerHTML = esc(doc.info.description) +
    ' The machine-readable document is <a href="openapi.json">openapi.json</a>.';
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item)) {
      if (typeof op !== "object" || !op.responses) continue;
      (byTag[(op.tags || ["other"])[0]] ??= []).push({path, method, op});
    }
  let html = "";
  for (const [tag, ops] of Object.entries(byTag)) {
    html += `<h2>${esc(tag)}</h2>`;
    for (const {path, method, op} of ops) {
      const body = op.requestBody ? `<p>Body: <code>${esc(JSON.stringify(Object.values(op.requestBody.content)[0].schema))}</code></p>` : "";
      const params = (op.parameters || []).map(p => `<li><code>${esc(p.name)}</code> (${esc(p.in)}) ${esc(p.description)}</li>`).join("");
      const responses = Object.entries(op.responses).map(([code, r]) => {
        const schema = r.content ? Object.values(r.content)[0].schema : null;
        return `<li>${esc(code)} ${schema ? `<code>${esc(JSON.stringify(schema))}</code>` : esc(r.description)}</li>`;
      }).join("");
      html += `<details><summary><span class="method ${method}">${method.toUpperCase()}</span><code>${esc(path)}</code> — ${esc(op.summary || op.description)}</summary>
        ${op.security ? "<p>Needs a bearer token.</p>" : ""}${params ? `<ul>${params}</ul>` : ""}${body}<p>Responses:</p><ul>${responses}</ul></details>`;
    }
  }
  html += "<h2>Schemas</h2>";
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {}))
    html += `<details><summary><code>${esc(name)}</code></summary><pre>${esc(JSON.stringify(schema, null, 2))}</pre></details>`;
  document.getElementById("api").innerHTML = html;
});
</script></body></html>
"#;
