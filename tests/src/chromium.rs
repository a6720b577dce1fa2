//! A real browser for the dashboard suite: Debian's `chromium` (installed by
//! `tests/scripts/install-chromium.sh`), run headless once per page. A [`Browser`] keeps one
//! profile directory, so a session cookie set by one run (the login form) is sent by the next,
//! as in a person's browser. The test certificates are not in chromium's trust store, so
//! certificate errors are ignored (the suites check the chain with curl).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{TempDir, run_bounded};

/// `CHROMIUM` from `$MCP_GUARD_CACHE/chromium/env.sh`; panics naming the install script.
pub fn chromium_bin() -> PathBuf {
    crate::installed_bin("chromium", "CHROMIUM", "install-chromium.sh")
}

/// Headless chromium with a profile of its own.
pub struct Browser {
    bin: PathBuf,
    profile: TempDir,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            bin: chromium_bin(),
            profile: TempDir::new("chromium"),
        }
    }

    fn run(&self, args: &[&str], url: &str) -> String {
        let out = run_bounded(
            "chromium",
            Command::new(&self.bin)
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--ignore-certificate-errors",
                    "--password-store=basic",
                ])
                .arg(format!("--user-data-dir={}", self.profile.path().display()))
                .args(args)
                .arg(url),
            Duration::from_secs(90),
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "chromium {args:?} {url} failed: {}",
            out.stderr
        );
        out.stdout
    }

    /// The DOM of `url` once loaded (and its scripts and navigations have run), serialized.
    pub fn dom(&self, url: &str) -> String {
        self.run(&["--virtual-time-budget=5000", "--dump-dom"], url)
    }

    /// A PNG of `url` at 1280×900 to `path`.
    pub fn screenshot(&self, url: &str, path: &Path) {
        let shot = format!("--screenshot={}", path.display());
        self.run(
            &[
                "--virtual-time-budget=5000",
                "--hide-scrollbars",
                "--window-size=1280,900",
                &shot,
            ],
            url,
        );
        assert!(path.exists(), "chromium wrote no {}", path.display());
    }

    /// Submits a form to `action` from a page of its own (a `file://` page that posts itself
    /// on load), as a person pasting into the form would; returns the DOM chromium ends on.
    pub fn submit(&self, action: &str, fields: &[(&str, &str)]) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('"', "&quot;")
                .replace('<', "&lt;")
        };
        let inputs: String = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    esc(k),
                    esc(v)
                )
            })
            .collect();
        let page = self.profile.path().join("submit.html");
        std::fs::write(
            &page,
            format!(
                "<!DOCTYPE html><html><body onload=\"document.forms[0].submit()\">\
                 <form method=\"post\" action=\"{}\">{inputs}</form></body></html>",
                esc(action)
            ),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        self.dom(&format!("file://{}", page.display()))
    }
}
