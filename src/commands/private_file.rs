//! Files that hold personal data (`report --out`, `audit export --out`): readable by their
//! owner only, never written through a symbolic link, never half-written.
//!
//! The data goes to a new file beside the target, created with `O_CREAT|O_EXCL` (so never
//! through a link or into a file someone else already holds open) and mode 0600 from its
//! first byte, and is renamed over the target only once complete. A rename replaces the
//! directory entry itself: a symlink or a hard link planted at the target is replaced, and
//! the file it pointed to is never opened. A symlink found at the target is refused outright
//! (someone planted it), and so is anything that is not a regular file.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A private file being written: [`PrivateFile::commit`] puts it in place; dropped without,
/// it disappears and the target is untouched.
#[derive(Debug)]
pub struct PrivateFile {
    temp: tempfile::TempPath,
    target: PathBuf,
}

/// Start writing `path`: the file to write into, and the handle that commits it.
pub fn create(path: &Path) -> anyhow::Result<(std::fs::File, PrivateFile)> {
    refuse_unless_regular(path)?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // tempfile creates with O_CREAT|O_EXCL and mode 0600 on unix.
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a private file next to {}", path.display()))?;
    let (file, temp) = temp.into_parts();
    Ok((
        file,
        PrivateFile {
            temp,
            target: path.to_path_buf(),
        },
    ))
}

/// Write `path` privately with `write`, all or nothing.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let (file, private) = create(path)?;
    let mut out = std::io::BufWriter::new(file);
    write(&mut out)?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    drop(out);
    private.commit()
}

impl PrivateFile {
    /// Put the written file at its path (call after flushing every writer of it).
    pub fn commit(self) -> anyhow::Result<()> {
        // Checked again: a link planted while we wrote is refused too (the rename would
        // replace it without following it, but someone is at work in that folder).
        refuse_unless_regular(&self.target)?;
        let target = self.target;
        self.temp
            .persist(&target)
            .map_err(|e| anyhow::anyhow!("writing {}: {}", target.display(), e.error))?;
        Ok(())
    }
}

fn refuse_unless_regular(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => anyhow::bail!(
            "{} is a symbolic link: refusing to write personal data through it; name a \
             regular file",
            path.display()
        ),
        Ok(meta) if !meta.is_file() => anyhow::bail!(
            "{} is not a regular file: refusing to write personal data to it",
            path.display()
        ),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => {
            Err(anyhow::Error::from(error).context(format!("checking {}", path.display())))
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    fn write(path: &Path, text: &str) -> anyhow::Result<()> {
        let (mut file, private) = create(path)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        private.commit()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn report_files_are_created_0600_whatever_the_umask_or_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("report.csv");
        write(&fresh, "a").unwrap();
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "a");

        // An existing, world-readable file (which someone may hold open) is replaced by a
        // new 0600 file, not rewritten in place.
        let existing = dir.path().join("old.csv");
        std::fs::write(&existing, "old").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let held_open = std::fs::File::open(&existing).unwrap();
        write(&existing, "new").unwrap();
        assert_eq!(mode(&existing), 0o600);
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "new");
        let old = std::io::read_to_string(held_open).unwrap();
        assert_eq!(old, "old", "the old file never received the new data");
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write(&link, "secret").unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let dangling = dir.path().join("dangling.csv");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(write(&dangling, "secret").is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn a_hard_link_at_the_path_keeps_the_other_file_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "keep").unwrap();
        let path = dir.path().join("report.csv");
        std::fs::hard_link(&other, &path).unwrap();
        write(&path, "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.csv");
        let (mut file, private) = create(&path).unwrap();
        file.write_all(b"half").unwrap();
        drop(private);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
