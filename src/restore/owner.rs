//! Who the restored PostgreSQL cluster belongs to, and whether that user can
//! run the `pitr` binary its `restore_command` calls.
//!
//! When `pitr restore` runs as root the cluster belongs to `--owner USER`
//! (or to the owner of the target directory's parent), and PostgreSQL runs
//! `restore_command` as that user. Before anything is unpacked the restore
//! checks, with the classic owner/group/other permission bits (ACLs are not
//! read), that the user can reach the target directory (every existing
//! ancestor searchable) and execute the pitr binary (every ancestor
//! searchable, the file executable). When it cannot run the binary — say
//! pitr was built inside `/root` (mode 0700) — the binary is copied to
//! `<target-dir>.pitr-bin/pitr` (mode 0755, a sibling of the data directory
//! so no base backup of the restored cluster carries it) and the
//! `restore_command` calls the copy. `--recover` removes the copy when it
//! is done; otherwise the restore says where it is, to be removed once
//! recovery has finished.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail};

/// The user the restored cluster belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group of the user (primary included).
    pub groups: Vec<u32>,
}

fn id_of(flag: &str, user: &str) -> anyhow::Result<String> {
    let out = Command::new("id").args([flag, user]).output()?;
    if !out.status.success() {
        bail!("unknown user {user:?}: pass an existing --owner");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Owner {
    /// Looks `user` up (`id`).
    pub fn lookup(user: &str) -> anyhow::Result<Owner> {
        let uid = id_of("-u", user)?.parse()?;
        let gid = id_of("-g", user)?.parse()?;
        let groups = id_of("-G", user)?
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        Ok(Owner {
            name: user.to_string(),
            uid,
            gid,
            groups,
        })
    }

    /// Whether permission bits `mode` of an object owned by `uid:gid`
    /// grant this user `bit` (1 = execute/search, 4 = read).
    fn allowed(&self, uid: u32, gid: u32, mode: u32, bit: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let shift = if uid == self.uid {
            6
        } else if gid == self.gid || self.groups.contains(&gid) {
            3
        } else {
            0
        };
        mode >> shift & bit != 0
    }

    /// The first existing ancestor directory of `path` (itself excluded)
    /// this user cannot search, if any.
    pub fn blocked_at(&self, path: &Path) -> Option<PathBuf> {
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        for d in dirs {
            let Ok(m) = std::fs::metadata(d) else {
                break; // not there yet: created by the restore
            };
            if !self.allowed(m.uid(), m.gid(), m.mode(), 1) {
                return Some(d.to_path_buf());
            }
        }
        None
    }

    /// Ok when this user can execute `file`; else the one sentence why not.
    pub fn can_execute(&self, file: &Path) -> Result<(), String> {
        if let Some(d) = self.blocked_at(file) {
            return Err(format!(
                "user {} cannot run {}: directory {} is not searchable by it",
                self.name,
                file.display(),
                d.display()
            ));
        }
        match std::fs::metadata(file) {
            Ok(m) if self.allowed(m.uid(), m.gid(), m.mode(), 1) => Ok(()),
            Ok(_) => Err(format!(
                "user {} cannot run {}: the file is not executable by it",
                self.name,
                file.display()
            )),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }
}

/// When running as root: the user the restored directory `dir` will belong
/// to (`--owner`, else the owner of its parent); `None` otherwise.
pub fn resolve(dir: &Path, owner: Option<&str>) -> anyhow::Result<Option<Owner>> {
    if !crate::restore::postgres::running_as_root() {
        return Ok(None);
    }
    let o = match owner {
        Some(u) => Owner::lookup(u)?,
        None => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            let m = std::fs::metadata(parent).map_err(|e| {
                anyhow!("{}: {e}; create it or pass --owner USER", parent.display())
            })?;
            let name = crate::restore::postgres::user_name(m.uid())?;
            Owner::lookup(&name)?
        }
    };
    if o.uid == 0 {
        bail!("PostgreSQL cannot run as root: pass --owner USER (e.g. postgres) or restore under a directory owned by that user");
    }
    if let Some(d) = o.blocked_at(&dir.join("x")) {
        bail!(
            "user {} cannot reach {}: directory {} is not searchable by it; restore under a directory {} can reach",
            o.name,
            dir.display(),
            d.display(),
            o.name
        );
    }
    Ok(Some(o))
}

/// Where a copy of the binary goes for `dir`: `<dir>.pitr-bin/`.
pub fn copy_dir_for(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".pitr-bin");
    dir.with_file_name(name)
}

/// The pitr binary `owner` will run in `restore_command`: `exe` when it can,
/// else a copy in [`copy_dir_for`] (returned second, to be removed later).
pub fn runnable_binary(
    exe: &Path,
    dir: &Path,
    owner: Option<&Owner>,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let Some(o) = owner else {
        return Ok((exe.to_path_buf(), None));
    };
    let Err(why) = o.can_execute(exe) else {
        return Ok((exe.to_path_buf(), None));
    };
    let copy_dir = copy_dir_for(dir);
    if copy_dir.exists() {
        std::fs::remove_dir_all(&copy_dir)?;
    }
    std::fs::create_dir_all(&copy_dir)?;
    std::fs::set_permissions(&copy_dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = copy_dir.join("pitr");
    std::fs::copy(exe, &copy)
        .map_err(|e| anyhow!("copying {} to {}: {e}", exe.display(), copy.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    if let Err(still) = o.can_execute(&copy) {
        let _ = std::fs::remove_dir_all(&copy_dir);
        bail!("{why}, nor a copy next to the target directory ({still}); put pitr where {} can run it", o.name);
    }
    eprintln!("{why}: restore_command runs a copy, {}", copy.display());
    Ok((copy, Some(copy_dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_by_owner_group_other() {
        let o = Owner {
            name: "pg".into(),
            uid: 100,
            gid: 200,
            groups: vec![200, 300],
        };
        assert!(o.allowed(100, 0, 0o700, 1));
        assert!(!o.allowed(0, 0, 0o700, 1));
        assert!(o.allowed(0, 300, 0o710, 1));
        assert!(!o.allowed(0, 400, 0o710, 1));
        assert!(o.allowed(0, 0, 0o755, 1));
        assert!(!o.allowed(100, 0, 0o077, 1)); // owner bits decide for the owner
        assert_eq!(
            copy_dir_for(Path::new("/srv/restore/data")),
            PathBuf::from("/srv/restore/data.pitr-bin")
        );
    }
}
