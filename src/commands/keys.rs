//! `mfa-reset keys --dir DIR`: throw-away keys to try mfa-reset out (the demo makes its own).

use anyhow::Context;

use crate::cli::KeysArgs;
use crate::trust::KeySet;

/// Generate the keys and `allowed_signers`, and say how to use them.
pub fn run(args: &KeysArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let keys = KeySet::generate(&args.dir).context("generating keys")?;
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
        "  enqueue --key {}   then   approve --key {}",
        keys.requester.path.display(),
        keys.approver.path.display()
    );
    Ok(())
}
