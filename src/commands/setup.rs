//! `mfa-reset setup`: declare the topology, or (`--definitions FILE`) write the broker users
//! of each role with least-authority permissions.

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::broker::definitions::{self, Role};
use crate::broker::{self, Topology};
use crate::cli::SetupArgs;
use crate::config::Settings;

/// Declare every exchange and queue (idempotent) and say what exists.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    run_with(settings, &SetupArgs::default()).await
}

/// `setup` with its options.
pub async fn run_with(settings: &Settings, args: &SetupArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.definitions {
        return write_definitions(settings, path);
    }
    let topology = Topology::new(&settings.broker, &settings.retry);
    let conn = broker::connect(&settings.broker, "mfa-reset setup").await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await.context(
        "declaring the topology (setup needs a broker user with configure rights: the \
         `{prefix}-setup` user of `setup --definitions`, or an administrator)",
    )?;
    println!("broker {} ready:", settings.broker.shown_addresses());
    for exchange in topology.exchanges() {
        println!("  exchange {exchange}");
    }
    for q in topology.all_queues() {
        println!("  queue    {q}");
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// Write the definitions to `path` and the passwords to `path.passwords`, both 0600 and
/// never through a symlink.
fn write_definitions(settings: &Settings, path: &std::path::Path) -> anyhow::Result<()> {
    let vhost = definitions::vhost_of(&settings.broker.url)?;
    let (defs, credentials) = definitions::generate(&settings.broker.prefix, &vhost);
    super::private_file::write_with(path, |file| {
        serde_json::to_writer_pretty(&mut *file, &defs)?;
        file.write_all(b"\n")?;
        Ok(())
    })?;
    let secrets_path = std::path::PathBuf::from(format!("{}.passwords", path.display()));
    super::private_file::write_with(&secrets_path, |secrets| {
        writeln!(
            secrets,
            "# role user password (vhost {vhost:?}); move these to your secret store and delete this file"
        )?;
        for c in &credentials {
            writeln!(
                secrets,
                "{} {} {}",
                c.role.name(),
                c.user,
                c.password.expose_secret()
            )?;
        }
        Ok(())
    })?;
    println!(
        "wrote {} (users and permissions for vhost {vhost:?}) and {} (their passwords, 0600)",
        path.display(),
        secrets_path.display()
    );
    println!("import:  rabbitmqctl import_definitions {}", path.display());
    println!("then give each process its own user in broker.url:");
    for role in Role::ALL {
        let what = match role {
            Role::Setup => "mfa-reset setup (the only one that may declare)",
            Role::Producer => "mfa-reset enqueue",
            Role::Worker => "mfa-reset work",
            Role::Approver => "mfa-reset approve",
            Role::Admin => "mfa-reset halt / resume / dlq",
            Role::Reader => "mfa-reset status / report / audit",
        };
        println!("  {:<28} {what}", role.user(&settings.broker.prefix));
    }
    Ok(())
}
