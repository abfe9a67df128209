//! `mfa-reset keys --dir DIR`: throw-away keys to try mfa-reset out (the demo makes its own).

use anyhow::Context;

use crate::backup::BackupIdentity;
use crate::cli::KeysArgs;
use crate::trust::KeySet;

/// The restore key's file name in `--dir`.
pub const RESTORE_KEY: &str = "restore.key";

/// Generate the keys and `allowed_signers`, and say how to use them.
pub fn run(args: &KeysArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let keys = KeySet::generate(&args.dir).context("generating keys")?;
    // The restore key: an age X25519 identity, as `age-keygen -o restore.key` writes it.
    let restore_path = args.dir.join(RESTORE_KEY);
    let restore = match BackupIdentity::from_file(&restore_path) {
        Ok(existing) => existing,
        Err(_) => {
            let key = BackupIdentity::generate();
            key.write_new(&restore_path)
                .context("writing the restore key")?;
            key
        }
    };
    println!("Throw-away keys for trying mfa-reset out (never production):");
    for (role, key) in [
        ("operator (request, approve)", &keys.requester),
        ("operator (request, approve)", &keys.approver),
        ("worker", &keys.worker),
        ("admin", &keys.admin),
    ] {
        println!(
            "  {:<28} {:<22} {}",
            role,
            key.principal,
            key.path.display()
        );
    }
    println!();
    println!(
        "  security.allowed_signers = {:?}",
        keys.allowed_signers.display().to_string()
    );
    println!(
        "  worker.key               = {:?}",
        keys.worker.path.display().to_string()
    );
    println!(
        "  reset.backup_recipient   = {:?}   (with reset.backup = true)",
        restore.recipient().to_string()
    );
    println!(
        "  restore --identity {}   (the restore key: keep it away from the workers; \
         `age-keygen -o FILE` makes one too)",
        restore_path.display()
    );
    println!(
        "  enqueue --key {}   then   approve --key {}",
        keys.requester.path.display(),
        keys.approver.path.display()
    );
    Ok(())
}
