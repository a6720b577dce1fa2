//! A policy bundle: the files of a ConfigMap mounted as a directory (`*.rego`, optional
//! `data.json`), read as kubelet lays them out (each file a link into the `..data` directory that
//! kubelet swaps atomically), hashed, and compiled into an engine once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::PolicyError;

/// The files of one bundle, as read from disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `(file name, source)` of each `*.rego` file, sorted by name.
    pub modules: Vec<(String, String)>,
    /// The `data.json` document, if any.
    pub data: Option<String>,
    /// `sha256:<hex>` over every file's name and content: the identity of this policy version.
    pub hash: Arc<str>,
}

impl Bundle {
    /// Reads a bundle directory. Hidden entries (kubelet's `..data` and timestamped folders) are
    /// skipped; the links beside them are followed.
    pub fn read_dir(dir: &Path) -> Result<Bundle, PolicyError> {
        let io = |path: &Path, e: std::io::Error| PolicyError::Read {
            path: path.to_path_buf(),
            source: e,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if name.ends_with(".rego") || name == "data.json" {
                files.push((name, entry.path()));
            }
        }
        files.sort();
        let mut modules = Vec::new();
        let mut data = None;
        for (name, path) in files {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            if name == "data.json" {
                data = Some(text);
            } else {
                modules.push((name, text));
            }
        }
        Ok(Bundle::from_parts(modules, data))
    }

    pub fn from_parts(mut modules: Vec<(String, String)>, data: Option<String>) -> Bundle {
        modules.sort();
        let mut h = Sha256::new();
        for (name, text) in &modules {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        if let Some(d) = &data {
            h.update(b"data.json");
            h.update((d.len() as u64).to_be_bytes());
            h.update(d.as_bytes());
        }
        let hash = format!("sha256:{}", hex(&h.finalize()));
        Bundle {
            modules,
            data,
            hash: hash.into(),
        }
    }

    /// Whether the bundle holds no policy at all.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// Lower-case hexadecimal of `bytes` (digests in hashes and signatures).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_names_contents_and_data() {
        let a = Bundle::from_parts(vec![("a.rego".into(), "x".into())], None);
        let b = Bundle::from_parts(vec![("b.rego".into(), "x".into())], None);
        let c = Bundle::from_parts(vec![("a.rego".into(), "x".into())], Some("{}".into()));
        let a2 = Bundle::from_parts(vec![("a.rego".into(), "x".into())], None);
        assert_eq!(a.hash, a2.hash);
        assert_ne!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert!(a.hash.starts_with("sha256:") && a.hash.len() == 7 + 64);
    }
}
