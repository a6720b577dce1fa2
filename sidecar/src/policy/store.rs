//! The policy in force: compiled off the request path, swapped in atomically, and kept when a new
//! bundle fails. The bundle directory is watched (kubelet's `..data` symlink swap and plain file
//! edits) with a polling fallback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use notify::Watcher;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::mpsc;

use mcp_guard_policy::PolicyError;
use mcp_guard_policy::bundle::Bundle;
use mcp_guard_policy::engine::CompiledBundle;
use mcp_guard_policy::input;

use crate::metrics::Metrics;

/// What `/policy` on the admin port shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub dir: Option<PathBuf>,
    /// Hash of the bundle in force; `null` while none is (every governed request is denied).
    pub hash: Option<String>,
    pub loaded_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Hash of the bundle that failed, so an operator sees which edit was refused.
    pub rejected_hash: Option<String>,
    /// The last [`HISTORY`] bundles put in force, newest first (the first is the one in force).
    pub history: Vec<Loaded>,
    /// How the bundle in force shares decisions; `null` while none is.
    pub sharing: Option<Sharing>,
}

/// How a bundle shares its work between decisions (`docs/policy.md`): what the `policy loaded`
/// log line says, kept for `/policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sharing {
    /// Decisions run on the engine's bytecode (else on its interpreter).
    pub bytecode: bool,
    /// The bundle's caller terms (0: callers are told apart by the input it reads).
    pub caller_terms: usize,
    /// Decisions are remembered for inputs the rules cannot tell apart.
    pub remembers_decisions: bool,
    /// Else the first call not known to be deterministic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_remembered: Option<String>,
    /// Tools no rule can tell apart share one visibility decision per caller.
    pub tool_classes: bool,
    /// Else the first expression that rules classes out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_tool_classes: Option<String>,
}

impl Sharing {
    fn of(compiled: &CompiledBundle) -> Self {
        let not_remembered = compiled.remembers_decisions().err().map(str::to_owned);
        let no_tool_classes = compiled.no_tool_classes().map(str::to_owned);
        Sharing {
            bytecode: compiled.uses_bytecode(),
            caller_terms: compiled
                .frame_terms()
                .map_or(0, mcp_guard_policy::terms::FrameTerms::len),
            remembers_decisions: not_remembered.is_none(),
            not_remembered,
            tool_classes: no_tool_classes.is_none(),
            no_tool_classes,
        }
    }
}

/// Bundles remembered in [`Status::history`].
pub const HISTORY: usize = 10;

/// A bundle that went into force, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loaded {
    pub hash: String,
    pub loaded_at: String,
}

pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwapOption<CompiledBundle>,
    status: RwLock<Status>,
    metrics: Arc<Metrics>,
}

fn now_rfc3339() -> String {
    crate::time::rfc3339(SystemTime::now(), false)
}

impl PolicyStore {
    pub fn new(dir: &Path, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: ArcSwapOption::empty(),
            status: RwLock::new(Status {
                dir: Some(dir.to_path_buf()),
                ..Status::default()
            }),
            metrics,
        })
    }

    /// The bundle in force, if any.
    pub fn current(&self) -> Option<Arc<CompiledBundle>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Status {
        self.status.read().clone()
    }

    /// Reads and, if it changed, compiles the bundle and puts it in force. Blocking: call it off
    /// the request path. Returns whether a new bundle went into force.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let bundle = match Bundle::read_dir(&self.dir) {
            Ok(b) => b,
            Err(e) => return self.failed(e, None),
        };
        let in_force = self.current.load();
        if in_force.as_ref().is_some_and(|c| c.hash == bundle.hash) {
            return Ok(false);
        }
        if self.status.read().rejected_hash.as_deref() == Some(&*bundle.hash) {
            // The same broken bundle as last time: already reported.
            return Ok(false);
        }
        match CompiledBundle::compile(&bundle, &input::probe()) {
            Ok(compiled) => {
                let hash = compiled.hash.to_string();
                let sharing = Sharing::of(&compiled);
                let previous = self.current.swap(Some(Arc::new(compiled)));
                {
                    let mut st = self.status.write();
                    let at = now_rfc3339();
                    st.hash = Some(hash.clone());
                    st.loaded_at = Some(at.clone());
                    st.history.insert(
                        0,
                        Loaded {
                            hash: hash.clone(),
                            loaded_at: at,
                        },
                    );
                    st.history.truncate(HISTORY);
                    st.rejected_hash = None;
                    st.last_error = None;
                    st.last_error_at = None;
                    st.sharing = Some(sharing.clone());
                }
                self.metrics
                    .policy_loaded(&hash, previous.as_ref().map(|p| &*p.hash));
                tracing::info!(
                    policy_hash = %hash,
                    dir = %self.dir.display(),
                    bytecode = sharing.bytecode,
                    caller_terms = sharing.caller_terms,
                    remembers_decisions = sharing.remembers_decisions,
                    not_remembered = sharing.not_remembered.as_deref(),
                    tool_classes = sharing.tool_classes,
                    no_tool_classes = sharing.no_tool_classes.as_deref(),
                    "policy loaded"
                );
                Ok(true)
            }
            Err(e) => self.failed(e, Some(bundle.hash.to_string())),
        }
    }

    fn failed(&self, e: PolicyError, hash: Option<String>) -> Result<bool, PolicyError> {
        let keeping = self.current.load().as_ref().map(|c| c.hash.to_string());
        let message = e.to_string();
        {
            let mut st = self.status.write();
            if st.last_error.as_deref() == Some(message.as_str()) && st.rejected_hash == hash {
                // The same failure as at the last poll: reported already.
                return Err(e);
            }
            st.last_error = Some(message);
            st.last_error_at = Some(now_rfc3339());
            st.rejected_hash = hash;
        }
        self.metrics.policy_failed();
        match &keeping {
            Some(h) => {
                tracing::error!(error = %e, dir = %self.dir.display(), keeping = %h, "new policy refused; the previous one stays in force")
            }
            None => {
                tracing::error!(error = %e, dir = %self.dir.display(), "no valid policy: every governed request is denied until one loads")
            }
        }
        Err(e)
    }

    /// Keeps the bundle current until the process ends: file-system events (debounced) and a
    /// poll every `poll`. The directory may not exist yet (an optional ConfigMap volume that has
    /// no ConfigMap): polling covers that, and the watch is set up once the directory appears.
    /// A watch ends with its directory: when the directory itself is removed, the next wake-up
    /// (the removal's own event, or a poll) watches the directory of that name again, so a
    /// directory made again is watched too.
    pub fn spawn_watcher(self: &Arc<Self>, poll: Duration) {
        let store = Arc::clone(self);
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let ended = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            let mut watcher = store.watch(&tx, &ended, true);
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(()) = rx.recv() => {
                        // Let a burst of events (kubelet writes, then swaps a link) settle.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                    }
                }
                if watcher.is_none() || ended.swap(false, Ordering::Relaxed) {
                    // The ended watch goes before a new one is tried.
                    drop(watcher.take());
                    watcher = store.watch(&tx, &ended, false);
                }
                let s = Arc::clone(&store);
                if let Err(e) = tokio::task::spawn_blocking(move || s.reload()).await {
                    tracing::error!(error = %e, "policy reload task failed");
                }
            }
        });
    }

    /// A watch on the directory; sets `ended` when the directory itself is removed (the kernel
    /// ends the watch with it).
    fn watch(
        &self,
        tx: &mpsc::Sender<()>,
        ended: &Arc<AtomicBool>,
        first: bool,
    ) -> Option<notify::RecommendedWatcher> {
        let tx = tx.clone();
        let ended = Arc::clone(ended);
        let dir = self.dir.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if matches!(event.kind, notify::EventKind::Remove(_)) && event.paths.contains(&dir)
                {
                    ended.store(true, Ordering::Relaxed);
                }
                if may_change(&event.kind) {
                    let _ = tx.try_send(());
                }
            }
        })
        .and_then(|mut w| {
            w.watch(&self.dir, notify::RecursiveMode::NonRecursive)
                .map(|()| w)
        });
        match watcher {
            Ok(w) => {
                if !first {
                    tracing::info!(dir = %self.dir.display(), "watching the policy directory");
                }
                Some(w)
            }
            Err(e) => {
                if first {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot watch the policy directory yet; polling until it can");
                }
                None
            }
        }
    }
}

/// Whether a file-system event in the bundle's directory can mean the bundle changed: a file
/// created, written, renamed, removed or given other metadata. Opening and reading cannot, and
/// every reload opens and reads the files: reacting to those events made each reload trigger the
/// next, a reload every few tens of milliseconds for as long as the sidecar ran.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events the kernel reports for the watched directory, until one `until` accepts.
    fn events_until(
        rx: &std::sync::mpsc::Receiver<notify::Event>,
        until: impl Fn(&notify::Event) -> bool,
    ) -> Vec<notify::EventKind> {
        let mut seen = Vec::new();
        loop {
            let event = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the awaited event never came; saw {seen:?}"));
            seen.push(event.kind);
            if until(&event) {
                return seen;
            }
        }
    }

    #[test]
    fn reading_the_bundle_is_not_a_change_and_writing_it_is() {
        use notify::event::{AccessKind, EventKind};
        let dir = std::env::temp_dir().join(format!("mcp-guard-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.rego");
        std::fs::write(&file, "package mcp.authz\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(e) = res {
                let _ = tx.send(e);
            }
        })
        .unwrap();
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .unwrap();

        // Read as a reload reads: the kernel reports the directory and the file opened, and
        // neither is a change.
        let read = Bundle::read_dir(&dir).unwrap();
        let seen = events_until(&rx, |e| {
            matches!(e.kind, EventKind::Access(AccessKind::Open(_))) && e.paths.contains(&file)
        });
        assert!(seen.iter().all(|k| !may_change(k)), "{seen:?}");

        // Written: a change (and the bundle read again is another one).
        std::fs::write(&file, "package mcp.authz\n\ndefault allow := true\n").unwrap();
        events_until(&rx, |e| may_change(&e.kind));
        assert_ne!(Bundle::read_dir(&dir).unwrap().hash, read.hash);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_broken_bundle_keeps_the_last_good_one() {
        let dir = std::env::temp_dir().join(format!("mcp-guard-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = PolicyStore::new(&dir, Arc::new(Metrics::new()));
        assert!(store.reload().is_err(), "empty directory: no policy");
        assert!(store.current().is_none());
        std::fs::write(
            dir.join("p.rego"),
            "package mcp.authz\nimport rego.v1\nallow := true\n",
        )
        .unwrap();
        assert!(store.reload().unwrap());
        let good = store.current().unwrap().hash.clone();
        std::fs::write(dir.join("p.rego"), "package mcp.authz\nallow if {\n").unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("p.rego"), "{err}");
        assert_eq!(store.current().unwrap().hash, good);
        let st = store.status();
        assert_eq!(st.hash.as_deref(), Some(&*good));
        assert!(st.last_error.is_some() && st.rejected_hash.is_some());
        assert_eq!(
            st.history.len(),
            1,
            "a refused bundle is no part of the history"
        );
        assert_eq!(st.history[0].hash, *good);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_status_says_how_the_bundle_in_force_shares_decisions() {
        let dir = std::env::temp_dir().join(format!("mcp-guard-sharing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = PolicyStore::new(&dir, Arc::new(Metrics::new()));
        assert_eq!(store.status().sharing, None, "no bundle in force");
        let load = |rules: &str| {
            let text =
                format!("package mcp.authz\nimport rego.v1\ndefault allow := false\n{rules}\n");
            std::fs::write(dir.join("p.rego"), text).unwrap();
            assert!(store.reload().unwrap());
            store.status().sharing.expect("a bundle in force")
        };
        let s = load(
            "allow if input.request.tool in {\"echo\"}\nallow if \"admin\" in input.subject.roles",
        );
        assert!(
            s.bytecode && s.remembers_decisions && s.tool_classes,
            "{s:?}"
        );
        assert_eq!(s.caller_terms, 1);
        let s = load("allow if count(input.request.tool) < 10\nallow if time.now_ns() > 0");
        assert_eq!(s.not_remembered.as_deref(), Some("time.now_ns"));
        assert!(!s.remembers_decisions && !s.tool_classes, "{s:?}");
        let s = load("allow if count(input.request.tool) < 10");
        assert!(s.remembers_decisions && !s.tool_classes, "{s:?}");
        let why = s.no_tool_classes.unwrap_or_default();
        assert!(why.contains("`count(input.request.tool)`"), "{why}");
        // The JSON `/policy` serves: the reasons only where there is one.
        let json = serde_json::to_value(store.status()).unwrap();
        assert_eq!(json["sharing"]["tool_classes"], false);
        assert!(json["sharing"].get("not_remembered").is_none(), "{json}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
