//! The dashboard's pages as HTML text: pure functions of what the handlers gathered, every
//! name from the cluster escaped ([`esc`]), one inline style sheet, no script and no external
//! asset (clusters without a way out still render it whole).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::controller::perimeter::{EntryStatus, PodRef};
use crate::fleet::{self, COLUMNS, Detail, Row};

/// `s` with the five characters HTML gives a meaning escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a URL query value.
pub fn url_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}\
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;font-size:13px}\
header form{display:inline}header button{font-size:12px}\
main{padding:16px 24px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px}\
table{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:8px}\
th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eceff4}tr.drift td{background:#fde8e8}td.flag{color:#b00020;font-weight:bold}\
td.ok{color:#17663a}.muted{color:#6b7280}.error{color:#b00020}\
form.login{background:#fff;padding:16px;border:1px solid #d5d9e0;max-width:520px}\
form.login textarea{width:100%;height:90px;font-family:monospace}";

/// A whole page: `title`, the navigation (with who is signed in and a logout button when
/// `who` is known) and `body` (already HTML).
pub fn page(title: &str, who: Option<&str>, body: &str) -> String {
    let who = match who {
        Some(w) => format!(
            "<span class=\"who\">signed in as <b id=\"who\">{}</b> \
             <form method=\"post\" action=\"/dashboard/logout\"><button>log out</button></form></span>",
            esc(w)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · mcp-guard</title><style>{STYLE}</style></head><body>\
         <header><b>mcp-guard</b><a href=\"/dashboard/\">Fleet</a>\
         <a href=\"/dashboard/governance\">Governance</a>{who}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = esc(title),
    )
}

/// The login form (POST `/dashboard/login`), with why it is shown.
pub fn login(message: &str, next: &str) -> String {
    let refused = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" id=\"refused\">{}</p>", esc(message))
    };
    format!(
        "{refused}<form class=\"login\" method=\"post\" action=\"/dashboard/login\">\
         <p>Paste a Kubernetes token (<code>kubectl create token NAME</code>). The API server \
         reviews it once; the browser keeps only a session cookie. You see the namespaces \
         where you may list pods.</p>\
         <textarea name=\"token\" autocomplete=\"off\" required></textarea>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><p><button>Sign in</button></p></form>",
        esc(next)
    )
}

/// The page a server's rows link to: the `ApprovedServer`, or for a pod that runs none its
/// namespace and owner (or its name).
pub fn server_key(r: &Row) -> String {
    r.server.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            r.namespace,
            r.workload.as_deref().unwrap_or(&r.pod)
        )
    })
}

fn server_link(key: &str) -> String {
    format!(
        "<a href=\"/dashboard/server?name={}\">{}</a>",
        url_value(key),
        esc(key)
    )
}

/// The fleet table: [`COLUMNS`] (the CLI's), rows with drift marked, each server linked.
pub fn fleet_table(id: &str, rows: &[Row]) -> String {
    if rows.is_empty() {
        return format!("<p class=\"muted\" id=\"{id}\">No injected pod you may list.</p>");
    }
    let mut out = format!("<table id=\"{id}\"><tr>");
    for c in &COLUMNS {
        out.push_str(&format!("<th>{}</th>", c.header));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str(&format!(
            "<tr data-pod=\"{}/{}\"{}>",
            esc(&r.namespace),
            esc(&r.pod),
            if r.drift { " class=\"drift\"" } else { "" }
        ));
        for c in &COLUMNS {
            let text = (c.cell)(r);
            let cell = match c.header {
                fleet::SERVER => server_link(&server_key(r)),
                fleet::DRIFT if r.drift => format!(
                    "<span title=\"enforces another bundle than the one distributed ({})\">{}</span>",
                    esc(r
                        .distributed_hash
                        .as_deref()
                        .map(fleet::short)
                        .as_deref()
                        .unwrap_or("-")),
                    esc(&text)
                ),
                _ => esc(&text),
            };
            let class = match c.header {
                fleet::DRIFT if r.drift => " class=\"flag\"",
                fleet::DRIFT => " class=\"ok\"",
                _ => "",
            };
            out.push_str(&format!("<td data-col=\"{}\"{class}>{cell}</td>", c.header));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// A role set as the tools table names it.
fn roles_label(roles: &Value) -> String {
    match roles.as_array() {
        None => "anonymous".into(),
        Some(r) if r.is_empty() => "(no roles)".into(),
        Some(r) => r
            .iter()
            .map(|v| v.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn access_label(a: &Value) -> &'static str {
    match (a["visible"].as_bool(), a["callable"].as_bool()) {
        (None, _) | (_, None) => "no policy",
        (Some(true), Some(true)) => "see, call",
        (Some(true), Some(false)) => "see",
        (Some(false), Some(true)) => "call (hidden in lists)",
        (Some(false), Some(false)) => "hidden",
    }
}

/// One tool across the pods of a server: its definitions' hashes, whether one is not the pinned
/// one, and per
/// role set what the pods' policies let it do.
#[derive(Default)]
struct ToolAcross {
    hashes: BTreeSet<String>,
    /// A pod's sidecar holds a definition that is not the pinned one.
    changed: bool,
    access: BTreeMap<String, BTreeSet<&'static str>>,
}

/// A server's page: its pods (the fleet table), its tools and who may see and call each, its
/// sidecars' recent refusals, and the policy bundles they put in force.
pub fn server_page(rows: &[Row], details: &[Detail]) -> String {
    let mut out = String::from("<h2>Pods</h2>");
    out.push_str(&fleet_table("pods", rows));

    let mut tools: BTreeMap<String, ToolAcross> = BTreeMap::new();
    let mut role_sets: BTreeSet<String> = BTreeSet::new();
    for d in details {
        for t in d.access["tools"].as_array().into_iter().flatten() {
            let Some(name) = t["name"].as_str() else {
                continue;
            };
            let e = tools.entry(name.to_string()).or_default();
            e.changed |= t["changed"].as_bool() == Some(true);
            if let Some(h) = t["hash"].as_str() {
                e.hashes.insert(h.to_string());
            }
            for a in t["access"].as_array().into_iter().flatten() {
                let label = roles_label(&a["roles"]);
                role_sets.insert(label.clone());
                e.access.entry(label).or_default().insert(access_label(a));
            }
        }
    }
    out.push_str("<h2>Tools</h2>");
    if tools.is_empty() {
        out.push_str(
            "<p class=\"muted\" id=\"tools\">No sidecar knows the server's tools yet.</p>",
        );
    } else {
        out.push_str(
            "<p class=\"muted\">Per role set seen by the sidecars: what the policy in force \
             decides for a list (see) and for a call without arguments (call).</p>\
             <table id=\"tools\"><tr><th>TOOL</th>",
        );
        for r in &role_sets {
            out.push_str(&format!("<th>{}</th>", esc(r)));
        }
        out.push_str("<th>DEFINITION</th></tr>");
        for (name, t) in &tools {
            out.push_str(&format!("<tr data-tool=\"{0}\"><td>{0}</td>", esc(name)));
            for r in &role_sets {
                let cell = match t.access.get(r) {
                    None => "-".to_string(),
                    Some(s) if s.len() == 1 => s.iter().copied().collect::<String>(),
                    Some(s) => format!(
                        "{} (differs between pods)",
                        s.iter().copied().collect::<Vec<_>>().join(" / ")
                    ),
                };
                let class = if cell == "hidden" {
                    " class=\"muted\""
                } else {
                    ""
                };
                out.push_str(&format!(
                    "<td data-roles=\"{}\"{class}>{}</td>",
                    esc(r),
                    esc(&cell)
                ));
            }
            let mut def = match t.hashes.len() {
                0 => "-".to_string(),
                1 => t.hashes.iter().map(|h| fleet::short(h)).collect(),
                n => format!("{n} definitions across pods"),
            };
            if t.changed {
                def.push_str(" (changed since pinned)");
            }
            let class = if t.hashes.len() > 1 || t.changed {
                " class=\"flag\""
            } else {
                ""
            };
            out.push_str(&format!("<td{class}>{}</td></tr>", esc(&def)));
        }
        out.push_str("</table>");
    }

    let mut denies: Vec<(&str, &Value)> = details
        .iter()
        .flat_map(|d| {
            d.denies["denies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |v| (d.pod.as_str(), v))
        })
        .collect();
    denies.sort_by(|a, b| b.1["time"].as_str().cmp(&a.1["time"].as_str()));
    denies.truncate(50);
    out.push_str("<h2>Recent denies</h2>");
    if denies.is_empty() {
        out.push_str("<p class=\"muted\" id=\"denies\">No refusal since the sidecars started.</p>");
    } else {
        out.push_str(
            "<table id=\"denies\"><tr><th>TIME</th><th>POD</th><th>CALLER</th><th>ROLES</th>\
             <th>METHOD</th><th>TARGET</th><th>REASONS</th><th>BY</th><th>POLICY</th></tr>",
        );
        for (pod, d) in denies {
            let text = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            let list = |k: &str| {
                d[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let mut by = text("source");
            if d["shadow"].as_bool() == Some(true) {
                by.push_str(" (shadow: forwarded)");
            }
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td class=\"reasons\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text("time")),
                esc(pod),
                esc(&text("subject")),
                esc(&list("roles")),
                esc(&text("method")),
                esc(&text("target")),
                esc(&list("reasons")),
                esc(&by),
                esc(&fleet::short(&text("policyHash"))),
            ));
        }
        out.push_str("</table>");
    }

    let distributed: BTreeMap<&str, &str> = rows
        .iter()
        .filter_map(|r| Some((r.pod.as_str(), r.distributed_hash.as_deref()?)))
        .collect();
    let mut history: Vec<(&str, &str, &str)> = details
        .iter()
        .flat_map(|d| {
            d.policy["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |h| {
                    Some((
                        h["loaded_at"].as_str()?,
                        d.pod.as_str(),
                        h["hash"].as_str()?,
                    ))
                })
        })
        .collect();
    history.sort_by(|a, b| b.cmp(a));
    out.push_str("<h2>Policy hash history</h2>");
    if history.is_empty() {
        out.push_str("<p class=\"muted\" id=\"history\">No sidecar reported a bundle.</p>");
    } else {
        out.push_str("<table id=\"history\"><tr><th>LOADED</th><th>POD</th><th>HASH</th><th>DISTRIBUTED NOW</th></tr>");
        for (at, pod, hash) in history {
            let now = distributed.get(pod).is_some_and(|d| *d == hash);
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(at),
                esc(pod),
                esc(&fleet::short(hash)),
                if now { "yes" } else { "no" }
            ));
        }
        out.push_str("</table>");
    }
    let errors: Vec<String> = details
        .iter()
        .filter_map(|d| {
            Some(format!(
                "{}/{}: {}",
                d.namespace,
                d.pod,
                d.error.as_deref()?
            ))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("<h2>Sidecars not read</h2><ul class=\"error\">");
        for e in errors {
            out.push_str(&format!("<li>{}</li>", esc(&e)));
        }
        out.push_str("</ul>");
    }
    out
}

/// An `ApprovedServer` and the perimeter report on its status.
pub struct EntryView {
    pub object: String,
    pub name: String,
    pub status: EntryStatus,
}

/// A Service whose endpoints are pods with and without the sidecar.
pub struct Mixed {
    pub namespace: String,
    pub service: String,
    pub governed: Vec<String>,
    pub ungoverned: Vec<String>,
}

/// What the governance page shows.
pub struct Governance {
    /// The approved servers the caller may get, or why there are none to show.
    pub entries: Result<Vec<EntryView>, String>,
    /// Ungoverned pods of those servers the caller may list.
    pub ungoverned: Vec<(String, PodRef)>,
    /// Pods labelled as MCP servers, without the sidecar, that no entry approves.
    pub unlisted: Vec<PodRef>,
    /// The Services that mix, or why they could not be read.
    pub mixed: Result<Vec<Mixed>, String>,
    /// Rows whose sidecar enforces another bundle, or whose tool definitions changed.
    pub drift: Vec<Row>,
}

fn pod_rows(id: &str, pods: &[(String, PodRef)], empty: &str) -> String {
    if pods.is_empty() {
        return format!("<p class=\"muted\" id=\"{id}\">{}</p>", esc(empty));
    }
    let mut out = format!(
        "<table id=\"{id}\"><tr><th>NAMESPACE</th><th>POD</th><th>SERVER</th><th>IMAGES</th></tr>"
    );
    for (server, p) in pods {
        out.push_str(&format!(
            "<tr data-pod=\"{0}/{1}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td></tr>",
            esc(&p.namespace),
            esc(&p.name),
            esc(server),
            esc(&p.images.join(", "))
        ));
    }
    out.push_str("</table>");
    out
}

/// The governance page: what runs outside the perimeter, Services that mix, policy drift.
pub fn governance_page(g: &Governance) -> String {
    let mut out = String::from("<h2>Approved servers</h2>");
    match &g.entries {
        Err(why) => out.push_str(&format!(
            "<p class=\"muted\" id=\"servers\">{}</p>",
            esc(why)
        )),
        Ok(entries) if entries.is_empty() => {
            out.push_str("<p class=\"muted\" id=\"servers\">No ApprovedServer you may get.</p>")
        }
        Ok(entries) => {
            out.push_str(
                "<table id=\"servers\"><tr><th>APPROVEDSERVER</th><th>NAME</th>\
                 <th>GOVERNED PODS</th><th>UNGOVERNED PODS</th></tr>",
            );
            for e in entries {
                let class = if e.status.ungoverned_pods > 0 {
                    " class=\"flag\""
                } else {
                    ""
                };
                out.push_str(&format!(
                    "<tr data-server=\"{0}\"><td>{1}</td><td>{2}</td><td>{3}</td><td{class}>{4}</td></tr>",
                    esc(&e.object),
                    // A server's page lists its injected pods: none, no page.
                    if e.status.governed_pods > 0 {
                        server_link(&e.object)
                    } else {
                        esc(&e.object)
                    },
                    esc(&e.name),
                    e.status.governed_pods,
                    e.status.ungoverned_pods
                ));
            }
            out.push_str("</table>");
        }
    }
    out.push_str("<h2>Pods outside the perimeter</h2><p class=\"muted\">Pods running an approved server's images without the sidecar (from each ApprovedServer's status).</p>");
    out.push_str(&pod_rows(
        "ungoverned",
        &g.ungoverned,
        "None in the namespaces you may list.",
    ));
    out.push_str("<h2>Unapproved MCP servers</h2><p class=\"muted\">Pods labelled <code>mcp-guard.dev/server: \"true\"</code>, without the sidecar, that no ApprovedServer approves.</p>");
    let unlisted: Vec<(String, PodRef)> = g
        .unlisted
        .iter()
        .map(|p| ("-".to_string(), p.clone()))
        .collect();
    out.push_str(&pod_rows(
        "unlisted",
        &unlisted,
        "None in the namespaces you may list.",
    ));
    out.push_str("<h2>Services mixing governed and ungoverned pods</h2><p class=\"muted\">A rollout in progress, or a pod that opted out: part of the Service's traffic bypasses the sidecar.</p>");
    match &g.mixed {
        Err(why) => out.push_str(&format!("<p class=\"error\" id=\"mixed\">{}</p>", esc(why))),
        Ok(mixed) if mixed.is_empty() => {
            out.push_str("<p class=\"muted\" id=\"mixed\">None in the namespaces you may list.</p>")
        }
        Ok(mixed) => {
            out.push_str("<table id=\"mixed\"><tr><th>NAMESPACE</th><th>SERVICE</th><th>GOVERNED</th><th>UNGOVERNED</th></tr>");
            for m in mixed {
                out.push_str(&format!(
                "<tr data-service=\"{0}/{1}\"><td>{0}</td><td>{1}</td><td>{2}</td><td class=\"flag\">{3}</td></tr>",
                esc(&m.namespace),
                esc(&m.service),
                esc(&m.governed.join(", ")),
                esc(&m.ungoverned.join(", "))
            ));
            }
            out.push_str("</table>");
        }
    }
    out.push_str("<h2>Policy drift</h2><p class=\"muted\">Sidecars enforcing another bundle than the one distributed, or whose server changed a tool definition.</p>");
    out.push_str(&fleet_table("drift", &g.drift));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_from_the_cluster_are_escaped() {
        assert_eq!(
            esc("<script>\"a\" & 'b'"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;"
        );
        let rows = [Row {
            namespace: "apps".into(),
            pod: "<img src=x>".into(),
            server: Some("a&b".into()),
            policy: "p".into(),
            drift: true,
            ..Row::default()
        }];
        let html = fleet_table("fleet", &rows);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x&gt;"));
        assert!(html.contains("class=\"drift\""));
        assert!(html.contains("name=a%26b"), "{html}");
        assert_eq!(
            url_value("apps/ReplicaSet/x y"),
            "apps%2FReplicaSet%2Fx%20y"
        );
    }

    #[test]
    fn the_html_table_has_the_cli_columns() {
        let html = fleet_table("fleet", &[Row::default()]);
        for c in &COLUMNS {
            assert!(
                html.contains(&format!("<th>{}</th>", c.header)),
                "{}",
                c.header
            );
        }
    }

    #[test]
    fn the_server_page_merges_its_pods_tools_denies_and_history() {
        let rows = [Row {
            namespace: "apps".into(),
            pod: "a".into(),
            distributed_hash: Some("sha256:bbbb".into()),
            ..Row::default()
        }];
        let detail = |pod: &str, hash: &str, see: bool| Detail {
            namespace: "apps".into(),
            pod: pod.into(),
            policy: json!({"history": [{"hash": hash, "loaded_at": "2026-12-06T10:00:00Z"}]}),
            access: json!({"tools": [{"name": "add", "hash": "sha256:1", "changed": see,
                "access": [{"roles": ["admin"], "visible": true, "callable": true},
                           {"roles": null, "visible": see, "callable": false}]}]}),
            denies: json!({"denies": [{"time": "2026-12-06T10:01:00Z", "method": "tools/call",
                "target": "add", "subject": "bob", "roles": [], "reasons": ["<b>no</b>"],
                "source": "policy", "policyHash": hash, "shadow": false}]}),
            error: None,
        };
        let html = server_page(
            &rows,
            &[
                detail("a", "sha256:bbbb", false),
                detail("b", "sha256:aaaa", true),
            ],
        );
        assert!(html.contains("data-tool=\"add\""), "{html}");
        assert!(html.contains(">see, call<"), "{html}");
        assert!(
            html.contains("hidden / see (differs between pods)"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(html.contains("changed since pinned"), "{html}");
        assert!(
            html.contains("<td>a</td><td>bbbb</td><td>yes</td>"),
            "{html}"
        );
    }
}
