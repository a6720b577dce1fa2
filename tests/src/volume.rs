//! A ConfigMap volume laid out the way kubelet lays it out, and updated the way kubelet updates
//! it: each version of the files in a new timestamped directory, a `..data` link pointing at the
//! current one, swapped atomically by renaming a fresh link over it, and one link per key at the
//! top (`authz.rego -> ..data/authz.rego`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static VERSION: AtomicU64 = AtomicU64::new(0);

/// A volume directory; the caller owns (and removes) `dir`.
#[derive(Debug)]
pub struct ConfigMapVolume {
    dir: PathBuf,
    keys: Vec<String>,
}

impl ConfigMapVolume {
    /// A volume at `dir` (created) holding `files` (key, content).
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> ConfigMapVolume {
        std::fs::create_dir_all(dir).expect("create the volume directory");
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            keys: Vec::new(),
        };
        v.update(files);
        v
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Replaces the volume's content atomically, as kubelet does on a ConfigMap change.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let n = VERSION.fetch_add(1, Ordering::Relaxed);
        let stamp = format!("..2026_11_25_00_00_00.{}_{n}", std::process::id());
        let version_dir = self.dir.join(&stamp);
        std::fs::create_dir(&version_dir).expect("create the version directory");
        for (key, content) in files {
            std::fs::write(version_dir.join(key), content).expect("write a key");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).expect("link ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        // Top-level links for new keys; links of removed keys go.
        for (key, _) in files {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), &link).expect("link a key");
            }
        }
        let new_keys: Vec<String> = files.iter().map(|(k, _)| (*k).to_owned()).collect();
        for old in &self.keys {
            if !new_keys.contains(old) {
                let _ = std::fs::remove_file(self.dir.join(old));
            }
        }
        self.keys = new_keys;
    }
}
