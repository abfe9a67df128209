//! Least authority on the broker: one RabbitMQ user per role, each allowed only what its
//! commands do, written as a definitions file (the JSON `rabbitmqctl import_definitions` and
//! the management API's `POST /api/definitions` accept;
//! <https://www.rabbitmq.com/docs/definitions>, <https://www.rabbitmq.com/docs/access-control>).
//!
//! RabbitMQ grants three rights per user and virtual host, each a regular expression over
//! exchange and queue names: *configure* (declare, delete), *write* (publish to an exchange;
//! bind a queue) and *read* (consume or get from a queue; bind from an exchange). Passive
//! declares, which our commands use to check that the topology exists, need none of them.
//! `""` matches nothing. The roles ([`Role`]):
//!
//! | role | user | configure | write | read |
//! |---|---|---|---|---|
//! | setup | `{p}-setup` | everything of `{p}` | everything of `{p}` | everything of `{p}` |
//! | producer (`enqueue`) | `{p}-producer` | – | `{p}.intake` | – |
//! | worker (`work`) | `{p}-worker` | its own `amq.gen-…` queue | `{p}` (retries, dead letters, outcomes), `{p}.fleet` | `{p}.requests`, `{p}.outcomes`, `{p}.control`, `{p}.fleet` |
//! | approver (`approve`) | `{p}-approver` | – | `{p}.intake` | `{p}.awaiting`, `{p}.outcomes` |
//! | admin (`halt`, `resume`, `dlq`, `restore`) | `{p}-admin` | – | `{p}` (the control stream's route), `{p}.intake` | `{p}.dead`, `{p}.outcomes`, `{p}.control` |
//! | reader (`status`, `report`, `audit`) | `{p}-reader` | – | – | `{p}.outcomes`, `{p}.control` |
//!
//! Only `setup` may configure the topology (a worker only its own server-named, exclusive
//! heartbeat queue, `amq.gen-…`): every other command checks the topology passively and says
//! "run `mfa-reset setup`" when something is missing. Passwords are generated here, stored in
//! the file as RabbitMQ's salted SHA-256 hash (`rabbit_password_hashing_sha256`), and written
//! in clear only to a second file created 0600 for the operator to move into a secret store.

use base64::Engine as _;

/// The names RabbitMQ gives server-named queues (a worker's heartbeat queue on `{p}.fleet`).
const PRIVATE_QUEUE: &str = "^amq\\.gen-.*$";
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A role and what its broker user may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `mfa-reset setup`: declares the topology; the only role with configure rights.
    Setup,
    /// `enqueue`: publishes signed requests to the intake, nothing else.
    Producer,
    /// `work`: consumes requests, publishes retries, dead letters and outcome records.
    Worker,
    /// `approve`: reads batches awaiting approval and republishes them to the intake.
    Approver,
    /// `halt`, `resume`, `dlq`, `restore`: the control stream, the dead letters, replays to the
    /// intake, restore records to the outcomes stream.
    Admin,
    /// `status`, `report`, `audit`: read the record, write nothing.
    Reader,
}

/// The rights of one user in one virtual host: three regular expressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rights {
    /// Declare / delete.
    pub configure: String,
    /// Publish to (exchanges), bind (queues).
    pub write: String,
    /// Consume / get (queues).
    pub read: String,
}

impl Role {
    /// Every role, in the order the file lists them.
    pub const ALL: [Role; 6] = [
        Role::Setup,
        Role::Producer,
        Role::Worker,
        Role::Approver,
        Role::Admin,
        Role::Reader,
    ];

    /// `setup`, `producer`, …: the user name's suffix.
    pub fn name(self) -> &'static str {
        match self {
            Role::Setup => "setup",
            Role::Producer => "producer",
            Role::Worker => "worker",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    /// The broker user of this role under `prefix`.
    pub fn user(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name())
    }

    /// What this role's user may do under `prefix`.
    pub fn rights(self, prefix: &str) -> Rights {
        let p = regex_escape(prefix);
        // `{p}` itself is the workers' exchange; `{p}.x` the other exchanges and queues.
        let only = |names: &[&str]| -> String {
            let alternatives: Vec<String> = names
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        String::new()
                    } else {
                        format!("\\.{}", regex_escape(n))
                    }
                })
                .collect();
            format!("^{p}({})$", alternatives.join("|"))
        };
        let nothing = String::new;
        match self {
            Role::Setup => Rights {
                configure: format!("^{p}(\\..*)?$"),
                write: format!("^{p}(\\..*)?$"),
                read: format!("^{p}(\\..*)?$"),
            },
            Role::Producer => Rights {
                configure: nothing(),
                write: only(&["intake"]),
                read: nothing(),
            },
            // Besides the topology: its own server-named, exclusive queue on `{p}.fleet`
            // (heartbeats and shared pauses), which it declares, binds and consumes.
            Role::Worker => Rights {
                configure: PRIVATE_QUEUE.to_string(),
                write: format!("{}|{PRIVATE_QUEUE}", only(&["", "fleet"])),
                read: format!(
                    "{}|{PRIVATE_QUEUE}",
                    only(&["requests", "outcomes", "control", "fleet"])
                ),
            },
            Role::Approver => Rights {
                configure: nothing(),
                write: only(&["intake"]),
                read: only(&["awaiting", "outcomes"]),
            },
            Role::Admin => Rights {
                configure: nothing(),
                // `halt`/`resume` publish to the control stream through `{p}` (rk `control`),
                // `restore` its signed records to the outcomes stream (rk `outcome`).
                write: only(&["", "control", "intake"]),
                read: only(&["dead", "outcomes", "control"]),
            },
            Role::Reader => Rights {
                configure: nothing(),
                write: nothing(),
                read: only(&["outcomes", "control"]),
            },
        }
    }
}

/// A RabbitMQ definitions document (only the parts we fill).
#[derive(Debug, Serialize)]
pub struct Definitions {
    /// Users with their password hashes.
    pub users: Vec<UserDef>,
    /// The virtual host.
    pub vhosts: Vec<VhostDef>,
    /// One entry per user.
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions apply to topic exchanges only; ours are direct, so none.
    pub topic_permissions: Vec<serde_json::Value>,
}

/// `users[]`.
#[derive(Debug, Serialize)]
pub struct UserDef {
    /// User name.
    pub name: String,
    /// base64(salt ‖ SHA-256(salt ‖ password)).
    pub password_hash: String,
    /// How the hash was made.
    pub hashing_algorithm: &'static str,
    /// No management tags: these users never need the management UI.
    pub tags: String,
}

/// `vhosts[]`.
#[derive(Debug, Serialize)]
pub struct VhostDef {
    /// Name.
    pub name: String,
}

/// `permissions[]`.
#[derive(Debug, Serialize)]
pub struct PermissionDef {
    /// User name.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// The rights.
    #[serde(flatten)]
    pub rights: Rights,
}

/// A role's user and the password generated for it.
#[derive(Debug)]
pub struct Credential {
    /// The role.
    pub role: Role,
    /// User name.
    pub user: String,
    /// The generated password, in clear (for the operator's secret store only).
    pub password: secrecy::SecretString,
}

/// The definitions of every role under `prefix` in `vhost`, with fresh random passwords.
pub fn generate(prefix: &str, vhost: &str) -> (Definitions, Vec<Credential>) {
    let mut rng = rand::rng();
    let mut users = Vec::new();
    let mut permissions = Vec::new();
    let mut credentials = Vec::new();
    for role in Role::ALL {
        let user = role.user(prefix);
        let password: String = (0..32)
            .map(|_| {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
                ALPHABET[rng.random_range(0..ALPHABET.len())] as char
            })
            .collect();
        let salt: [u8; 4] = rng.random();
        users.push(UserDef {
            name: user.clone(),
            password_hash: password_hash(&password, salt),
            hashing_algorithm: "rabbit_password_hashing_sha256",
            tags: String::new(),
        });
        permissions.push(PermissionDef {
            user: user.clone(),
            vhost: vhost.to_string(),
            rights: role.rights(prefix),
        });
        credentials.push(Credential {
            role,
            user,
            password: password.into(),
        });
    }
    let definitions = Definitions {
        users,
        vhosts: vec![VhostDef {
            name: vhost.to_string(),
        }],
        permissions,
        topic_permissions: Vec::new(),
    };
    (definitions, credentials)
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)),
/// with a 4-byte salt (https://www.rabbitmq.com/docs/passwords#computing-password-hash).
pub fn password_hash(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(salted)
}

/// The virtual host an AMQP URL names (RabbitMQ's rules: no path = `/`; `%2f` = `/`).
pub fn vhost_of(url: &str) -> anyhow::Result<String> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e| {
        anyhow::anyhow!(
            "broker.url = {:?} is not an AMQP URL ({e})",
            crate::config::redact_url(url)
        )
    })?;
    Ok(uri.vhost)
}

/// Escape `s` for use inside a regular expression (Erlang `re`, PCRE syntax).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_hash_is_the_one_rabbitmq_documents() {
        // The example of https://www.rabbitmq.com/docs/passwords#computing-password-hash:
        // salt 0x908DC60A, password "test12".
        assert_eq!(
            password_hash("test12", [0x90, 0x8d, 0xc6, 0x0a]),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
    }

    #[test]
    fn only_setup_may_configure_and_producers_write_only_the_intake() {
        for role in Role::ALL {
            let rights = role.rights("mfa-reset");
            match role {
                Role::Setup => assert!(!rights.configure.is_empty()),
                // Only its own server-named heartbeat queue, nothing of the topology.
                Role::Worker => assert_eq!(rights.configure, PRIVATE_QUEUE),
                _ => assert!(rights.configure.is_empty(), "{role:?}"),
            }
        }
        assert_eq!(
            Role::Producer.rights("mfa-reset").write,
            "^mfa-reset(\\.intake)$"
        );
        assert_eq!(Role::Producer.rights("mfa-reset").read, "");
        assert_eq!(Role::Reader.rights("mfa-reset").write, "");
        assert_eq!(
            Role::Worker.rights("mfa-reset").write,
            "^mfa-reset(|\\.fleet)$|^amq\\.gen-.*$"
        );
        assert_eq!(
            Role::Worker.rights("a.b").read,
            "^a\\.b(\\.requests|\\.outcomes|\\.control|\\.fleet)$|^amq\\.gen-.*$"
        );
    }

    #[test]
    fn definitions_name_every_role_once_in_the_url_vhost() {
        let vhost = vhost_of("amqp://u:p@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(vhost, "/");
        assert_eq!(vhost_of("amqps://u:p@h/mfa").unwrap(), "mfa");
        let (defs, creds) = generate("p1", "mfa");
        assert_eq!(defs.users.len(), Role::ALL.len());
        assert_eq!(creds.len(), Role::ALL.len());
        let json = serde_json::to_value(&defs).unwrap();
        assert_eq!(json["vhosts"][0]["name"], "mfa");
        assert_eq!(json["permissions"][1]["user"], "p1-producer");
        assert_eq!(json["permissions"][1]["write"], "^p1(\\.intake)$");
        let text = json.to_string();
        for c in &creds {
            use secrecy::ExposeSecret;
            assert!(
                !text.contains(c.password.expose_secret()),
                "no password in clear in the definitions"
            );
        }
    }
}
