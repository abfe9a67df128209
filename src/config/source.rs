//! Which settings file is read, and whether it can be trusted.
//!
//! One file at most: `--config FILE`, else the file named by `MFA_RESET_CONFIG`, else
//! [`SYSTEM_FILE`] when it exists. Never a file of the current directory: whoever can write
//! one in a shared folder could point `graph.authority` at their own host and collect the
//! client secret. For the same reason a file that others can write, or that sits in a
//! directory others can write, is refused.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The settings file read when neither `--config` nor `MFA_RESET_CONFIG` names one.
pub const SYSTEM_FILE: &str = "/etc/mfa-reset/config.toml";

/// The environment variable naming the settings file.
pub const FILE_VARIABLE: &str = "MFA_RESET_CONFIG";

/// The settings file to read, if any: `flag`, else `variable`, else `system` when it exists.
/// A file named by the flag or the variable must exist.
pub fn choose(
    flag: Option<&Path>,
    variable: Option<OsString>,
    system: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let named = match (flag, variable.filter(|v| !v.is_empty())) {
        (Some(file), _) => Some((file.to_path_buf(), "--config")),
        (None, Some(file)) => Some((PathBuf::from(file), FILE_VARIABLE)),
        (None, None) => None,
    };
    match named {
        Some((file, by)) => {
            anyhow::ensure!(
                file.exists(),
                "config file {} (named by {by}) does not exist: check the path",
                file.display()
            );
            Ok(Some(file))
        }
        None => Ok(system.exists().then(|| system.to_path_buf())),
    }
}

/// Refuse a settings file that someone else than its reader or root could change.
#[cfg(unix)]
pub fn ensure_trusted(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;

    let real = file
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", file.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let meta = std::fs::metadata(&real)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", real.display()))?;
    check(&real, Holder::File, meta.mode(), meta.uid(), me)?;
    if let Some(dir) = real.parent() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| anyhow::anyhow!("directory {}: {e}", dir.display()))?;
        check(dir, Holder::Directory(&real), meta.mode(), meta.uid(), me)?;
    }
    Ok(())
}

/// Elsewhere there are no Unix permissions to check.
#[cfg(not(unix))]
pub fn ensure_trusted(_file: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// What is checked: the file, or the directory holding it.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Holder<'a> {
    File,
    Directory(&'a Path),
}

/// Write permission for the group or others.
const GROUP_OR_OTHERS_WRITE: u32 = 0o022;
/// Only a file's owner may rename or delete it in such a directory (`/tmp`).
const STICKY: u32 = 0o1000;

/// The verdict on one path, from its `mode` and `owner`, read by user `me`.
#[cfg_attr(not(unix), allow(dead_code))]
fn check(path: &Path, holder: Holder<'_>, mode: u32, owner: u32, me: u32) -> anyhow::Result<()> {
    let shown = path.display();
    let permissions = mode & 0o7777;
    match holder {
        Holder::File => {
            anyhow::ensure!(
                mode & GROUP_OR_OTHERS_WRITE == 0,
                "config file {shown} is writable by group or others (mode {permissions:04o}): \
                 anyone of them could point mfa-reset at their own Graph or broker. \
                 Run `chmod go-w {shown}`"
            );
            anyhow::ensure!(
                owner == me || owner == 0,
                "config file {shown} is owned by uid {owner}, neither you (uid {me}) nor root: \
                 have it owned by you or root (`chown {me} {shown}`), or use a copy of your own"
            );
        }
        Holder::Directory(file) => {
            let file = file.display();
            anyhow::ensure!(
                mode & GROUP_OR_OTHERS_WRITE == 0 || mode & STICKY != 0,
                "config file {file} is in directory {shown}, which group or others can write \
                 (mode {permissions:04o}): they could replace the file. Run `chmod go-w {shown}`, \
                 or move the file to a directory only you or root can write"
            );
            anyhow::ensure!(
                owner == me || owner == 0,
                "config file {file} is in directory {shown}, owned by uid {owner} (neither you, \
                 uid {me}, nor root), who could replace the file: move it to a directory owned \
                 by you or root"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;
    const OTHER: u32 = 1001;

    fn file_verdict(mode: u32, owner: u32) -> Result<(), String> {
        check(Path::new("/x/c.toml"), Holder::File, mode, owner, ME).map_err(|e| e.to_string())
    }

    fn dir_verdict(mode: u32, owner: u32) -> Result<(), String> {
        let file = Path::new("/x/c.toml");
        check(Path::new("/x"), Holder::Directory(file), mode, owner, ME).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_only_its_owner_can_write_is_trusted() {
        assert_eq!(file_verdict(0o100600, ME), Ok(()));
        assert_eq!(file_verdict(0o100644, ME), Ok(()));
        assert_eq!(file_verdict(0o100644, 0), Ok(()), "owned by root");
    }

    #[test]
    fn a_file_group_or_others_can_write_is_refused_naming_the_chmod() {
        for mode in [0o100664, 0o100646, 0o100666] {
            let err = file_verdict(mode, ME).unwrap_err();
            assert!(err.contains("writable by group or others"), "{err}");
            assert!(err.contains("`chmod go-w /x/c.toml`"), "{err}");
        }
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        let err = file_verdict(0o100600, OTHER).unwrap_err();
        assert!(
            err.contains("owned by uid 1001, neither you (uid 1000) nor root"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        assert_eq!(dir_verdict(0o40755, ME), Ok(()));
        assert_eq!(dir_verdict(0o40755, 0), Ok(()));
        assert_eq!(dir_verdict(0o41777, 0), Ok(()), "/tmp: sticky");
        for mode in [0o40775, 0o40777] {
            let err = dir_verdict(mode, ME).unwrap_err();
            assert!(
                err.contains("in directory /x, which group or others can write"),
                "{err}"
            );
            assert!(err.contains("`chmod go-w /x`"), "{err}");
        }
        let err = dir_verdict(0o40755, OTHER).unwrap_err();
        assert!(err.contains("owned by uid 1001"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_group_writable_file_on_disk_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        ensure_trusted(&file).unwrap();

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = ensure_trusted(&file).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_trusted(&file).unwrap_err().to_string();
        assert!(err.contains("which group or others can write"), "{err}");
    }

    #[test]
    fn the_flag_wins_then_the_variable_then_the_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let [flag, variable, system] = ["flag.toml", "variable.toml", "system.toml"].map(|n| {
            let p = dir.path().join(n);
            std::fs::write(&p, "").unwrap();
            p
        });
        let var = || Some(variable.clone().into_os_string());

        assert_eq!(
            choose(Some(&flag), var(), &system).unwrap(),
            Some(flag.clone())
        );
        assert_eq!(
            choose(None, var(), &system).unwrap(),
            Some(variable.clone())
        );
        assert_eq!(choose(None, None, &system).unwrap(), Some(system.clone()));
        assert_eq!(
            choose(None, Some(OsString::new()), &system).unwrap(),
            Some(system.clone()),
            "an empty MFA_RESET_CONFIG names no file"
        );
        let absent = dir.path().join("absent.toml");
        assert_eq!(choose(None, None, &absent).unwrap(), None);
    }

    #[test]
    fn a_named_file_that_does_not_exist_is_an_error_naming_who_named_it() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.toml");
        let system = dir.path().join("system.toml");

        let err = choose(Some(&absent), None, &system)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(named by --config) does not exist"), "{err}");
        let err = choose(None, Some(absent.into_os_string()), &system)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(named by MFA_RESET_CONFIG) does not exist"),
            "{err}"
        );
    }
}
