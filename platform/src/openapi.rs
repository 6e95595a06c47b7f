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

use crate::state::AppState;

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

/// Serves `document` from now on (the first one published stays: it does not change).
pub fn publish(document: &OpenApi) {
    DOCUMENT.get_or_init(|| {
        document
            .to_pretty_json()
            .expect("the OpenAPI document serialises")
    });
}

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
