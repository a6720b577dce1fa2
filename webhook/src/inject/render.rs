//! A [`Plan`] rendered as a JSON patch on the raw pod: the pod is never re-serialised, so fields
//! our Kubernetes types do not know (a newer cluster's) survive untouched. The operations come in
//! a fixed order (edits inside existing containers first, while their indices are still the
//! original ones), which the golden files pin.

use serde::Serialize;
use serde_json::{Value, json};

use super::UPSTREAM_PORT_NAME;
use super::plan::{Action, Handler, Plan};
use crate::patch::{PatchBuilder, PatchError};

/// The patch that carries out `plan` on `pod` (the raw object the plan was made from).
pub fn render(plan: &Plan, pod: &Value) -> Result<json_patch::Patch, PatchError> {
    let mut b = PatchBuilder::new();
    // 1. Edits inside existing containers.
    if let Some(t) = &plan.takeover {
        let container = format!("/spec/containers/{}", t.container);
        b.replace(
            format!("{container}/ports/{}/name", t.port),
            json!(UPSTREAM_PORT_NAME),
        );
        for (handler, action) in &t.named_by {
            let path = format!("{container}/{}/{}/port", handler.field(), action.field());
            b.replace(path, json!(t.number));
        }
    }
    if let Some(w) = &plan.wrap {
        let container = format!("/spec/containers/{}", w.container);
        b.replace(format!("{container}/command"), json!(w.command));
        b.append(
            pod,
            &format!("{container}/volumeMounts"),
            vec![value(&w.mount)?],
        );
    }
    // 2. The sidecar and the init containers.
    let sidecar = value(&plan.sidecar)?;
    let mut init = values(&plan.init_containers)?;
    if plan.native {
        init.push(sidecar);
        b.prepend(pod, "/spec/initContainers", init);
    } else {
        b.prepend(pod, "/spec/initContainers", init);
        b.add("/spec/containers/0", sidecar);
    }
    // 3. Volumes, 4. metadata.
    b.append(pod, "/spec/volumes", values(&plan.volumes)?);
    b.add_map_entries(pod, "/metadata/annotations", &plan.annotations);
    b.add_map_entries(pod, "/metadata/labels", &plan.labels);
    b.into_patch()
}

impl Handler {
    /// The handler's place in a container, as JSON Pointer tokens.
    fn field(self) -> &'static str {
        match self {
            Handler::Liveness => "livenessProbe",
            Handler::Readiness => "readinessProbe",
            Handler::Startup => "startupProbe",
            Handler::PostStart => "lifecycle/postStart",
            Handler::PreStop => "lifecycle/preStop",
        }
    }
}

impl Action {
    fn field(self) -> &'static str {
        match self {
            Action::HttpGet => "httpGet",
            Action::TcpSocket => "tcpSocket",
        }
    }
}

fn value(v: &impl Serialize) -> Result<Value, PatchError> {
    serde_json::to_value(v).map_err(|e| PatchError {
        path: "/spec".to_string(),
        reason: format!("the injected object does not serialise: {e}"),
    })
}

fn values<T: Serialize>(items: &[T]) -> Result<Vec<Value>, PatchError> {
    items.iter().map(value).collect()
}
