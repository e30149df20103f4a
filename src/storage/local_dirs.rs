//! Leftovers of killed writers in a local (`file://`) repository.
//!
//! The local backend stores an object by writing `<key>#<n>` next to it and
//! then linking it to `<key>`; a process killed between the two leaves the
//! staging file behind. Listings never show it (it is not an object), so a
//! deleted backup directory would keep it, and the directory, forever.
//! [`Repo::remove_leftovers`] removes such files under a prefix whose
//! writer is known to be gone (an orphaned or interrupted backup), then the
//! directories left empty, up to the repository root (never the root
//! itself). Other backends have no such files: a no-op there.

use std::path::{Path, PathBuf};

use super::{Repo, StorageError};

/// `name` is a staging file of the local backend: `<anything>#<digits>`.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(k, n)| {
        !k.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

fn sweep(root: &Path, dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            removed += sweep(root, &path)?;
        } else if is_staging(&e.file_name().to_string_lossy()) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    // The directory and its parents, while empty (fails harmlessly if not).
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| *p != root && p.starts_with(root)) {
        if std::fs::remove_dir(p).is_err() {
            break;
        }
        d = p.parent();
    }
    Ok(removed)
}

impl Repo {
    /// The repository's directory when it is a local one.
    fn local_root(&self) -> Option<PathBuf> {
        self.inner.label.strip_prefix("file://").map(PathBuf::from)
    }

    /// Removes staging files that killed writers left under `prefix`, and
    /// the directories left empty; returns how many files were removed.
    /// Only for a prefix no live process writes to.
    pub async fn remove_leftovers(&self, prefix: &str) -> Result<usize, StorageError> {
        let Some(root) = self.local_root() else {
            return Ok(0);
        };
        let rel = prefix.trim_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Ok(0);
        }
        let dir = root.join(rel);
        let err_dir = dir.display().to_string();
        tokio::task::spawn_blocking(move || sweep(&root, &dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|cause| StorageError::LocalDir {
                path: err_dir,
                cause,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging("base.tar.zst.000#1"));
        assert!(is_staging("manifest.json#12"));
        assert!(!is_staging("base.tar.zst.000"));
        assert!(!is_staging("a#b"));
        assert!(!is_staging("#1"));
        assert!(!is_staging("a#"));
    }

    #[tokio::test]
    async fn removes_staging_files_and_empty_dirs_only() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let repo = Repo::open(&tmp.path().display().to_string()).await?;
        let root = std::fs::canonicalize(tmp.path())?;
        let dead = root.join("db/backups/x_1");
        std::fs::create_dir_all(&dead)?;
        std::fs::write(dead.join("base.tar.zst.000#1"), b"x")?;
        let live = root.join("db/backups/y_2");
        std::fs::create_dir_all(&live)?;
        std::fs::write(live.join("base.tar.zst.000#1"), b"x")?;
        std::fs::write(root.join("db/source.json"), b"{}")?;
        assert_eq!(repo.remove_leftovers("db/backups/x_1/").await?, 1);
        assert!(!dead.exists());
        assert!(live.join("base.tar.zst.000#1").exists());
        assert!(root.join("db/source.json").exists());
        assert_eq!(repo.remove_leftovers("db/backups/nothing/").await?, 0);
        assert_eq!(repo.remove_leftovers("../etc").await?, 0);
        let mem = Repo::open("memory://").await?;
        assert_eq!(mem.remove_leftovers("db/backups/x_1/").await?, 0);
        Ok(())
    }
}
