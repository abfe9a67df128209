//! Trust core against the real OpenSSH tools: signatures made here verify with
//! `ssh-keygen -Y verify`, signatures made by `ssh-keygen -Y sign` verify here, both read an
//! allowed-signers file alike, and signing works through a real `ssh-agent`.
//! The Merkle tree and hash chain are unit-tested in `src/trust/`; the microbenchmark is the
//! ignored test at the end.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mfa_reset::trust::agent::AgentClient;
use mfa_reset::trust::signer::{generate_ed25519, write_key_pair};
use mfa_reset::trust::{verify, AllowedSigners, Namespace, Signer, SignerError, VerifyError};
use ssh_key::PublicKey;

const MESSAGE: &[u8] = b"{\"batch\":\"7f3a\",\"count\":1000,\"root\":\"5e1f\"}";

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn ssh_keygen(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new("ssh-keygen");
    command.args(args);
    if let Some(path) = stdin {
        command.stdin(std::fs::File::open(path).unwrap());
    }
    command.output().expect("ssh-keygen runs")
}

/// `ssh-keygen -t TYPE` into `dir/name`, no passphrase unless given.
fn keygen(dir: &Path, name: &str, key_type: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let output = ssh_keygen(
        &[
            "-q",
            "-t",
            key_type,
            "-N",
            passphrase,
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

fn public_key(path: &Path) -> PublicKey {
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    PublicKey::from_openssh(public.trim()).unwrap()
}

fn allowed_line(principal: &str, options: &str, key: &PublicKey) -> String {
    format!("{principal} {options} {}\n", key.to_openssh().unwrap())
}

/// `ssh-keygen -Y verify` of `signature` over `message`: did OpenSSH accept it?
fn openssh_accepts(
    dir: &Path,
    allowed: &str,
    principal: &str,
    namespace: &str,
    signature: &str,
    message: &[u8],
    at: Option<&str>,
) -> bool {
    let allowed_path = dir.join("allowed_signers.openssh");
    let signature_path = dir.join("message.sig");
    let message_path = dir.join("message");
    std::fs::write(&allowed_path, allowed).unwrap();
    std::fs::write(&signature_path, signature).unwrap();
    std::fs::write(&message_path, message).unwrap();
    let mut args = vec![
        "-Y",
        "verify",
        "-f",
        allowed_path.to_str().unwrap(),
        "-I",
        principal,
        "-n",
        namespace,
    ];
    args.extend(["-s", signature_path.to_str().unwrap()]);
    let option = at.map(|at| format!("verify-time={at}"));
    if let Some(option) = &option {
        args.extend(["-O", option]);
    }
    ssh_keygen(&args, Some(&message_path)).status.success()
}

#[test]
fn signatures_made_here_verify_with_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let ed25519 = dir.path().join("alice");
    write_key_pair(&generate_ed25519("alice").unwrap(), &ed25519).unwrap();
    let ecdsa = keygen(dir.path(), "bob", "ecdsa", "");
    for (principal, path) in [("alice@contoso.com", ed25519), ("bob@contoso.com", ecdsa)] {
        let signer = Signer::from_key_file(&path).unwrap();
        let allowed = allowed_line(
            principal,
            "namespaces=\"mfa-reset-request\"",
            signer.public_key(),
        );
        let signature = signer.sign(Namespace::Request, MESSAGE).unwrap();

        assert!(openssh_accepts(
            dir.path(),
            &allowed,
            principal,
            "mfa-reset-request",
            &signature,
            MESSAGE,
            None
        ));
        assert!(!openssh_accepts(
            dir.path(),
            &allowed,
            principal,
            "mfa-reset-request",
            &signature,
            b"other",
            None
        ));
        assert!(!openssh_accepts(
            dir.path(),
            &allowed,
            principal,
            "mfa-reset-approve",
            &signature,
            MESSAGE,
            None
        ));
    }
}

#[test]
fn signatures_made_by_ssh_keygen_verify_here() {
    let dir = tempfile::tempdir().unwrap();
    for (principal, key_type) in [
        ("alice@contoso.com", "ed25519"),
        ("bob@contoso.com", "ecdsa"),
    ] {
        let key = keygen(dir.path(), key_type, key_type, "");
        let allowed_path = dir.path().join("allowed_signers");
        std::fs::write(
            &allowed_path,
            allowed_line(principal, "", &public_key(&key)),
        )
        .unwrap();
        let allowed = AllowedSigners::read(&allowed_path).unwrap();
        let message = dir.path().join("manifest.json");
        std::fs::write(&message, MESSAGE).unwrap();
        let sign = |namespace: &str| {
            let output = ssh_keygen(
                &[
                    "-Y",
                    "sign",
                    "-f",
                    key.to_str().unwrap(),
                    "-n",
                    namespace,
                    message.to_str().unwrap(),
                ],
                None,
            );
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let signature = std::fs::read_to_string(message.with_extension("json.sig")).unwrap();
            std::fs::remove_file(message.with_extension("json.sig")).unwrap();
            signature
        };

        let signature = sign("mfa-reset-request");
        let verified = verify(&signature, Namespace::Request, MESSAGE, &allowed, now()).unwrap();
        assert_eq!(verified.principal.as_str(), principal);
        let error = verify(&signature, Namespace::Request, b"other", &allowed, now()).unwrap_err();
        assert_eq!(error.reason(), "bad_signature");
        let git = sign("git");
        let error = verify(&git, Namespace::Request, MESSAGE, &allowed, now()).unwrap_err();
        assert!(matches!(error, VerifyError::BadSignature(_)), "{error:?}");
    }
}

#[test]
fn allowed_signers_options_are_read_as_ssh_keygen_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_private_key(generate_ed25519("carol").unwrap()).unwrap();
    let key = signer.public_key();
    let options = [
        "",
        "namespaces=\"mfa-reset-request\"",
        "namespaces=\"mfa-reset-*,!mfa-reset-admin\"",
        "valid-after=\"20260101Z\"",
        "valid-before=\"20260101Z\"",
        "valid-after=\"20250101Z\",valid-before=\"20270101Z\",namespaces=\"mfa-reset-admin\"",
    ];
    let times = [
        ("20251231235959", "2025-12-31T23:59:59Z"),
        ("20260601000000", "2026-06-01T00:00:00Z"),
    ];
    for option in options {
        let allowed_text = allowed_line("carol@contoso.com", option, key);
        let allowed = AllowedSigners::parse(&allowed_text, "allowed_signers").unwrap();
        for namespace in [Namespace::Request, Namespace::Admin] {
            let signature = signer.sign(namespace, MESSAGE).unwrap();
            for (openssh_time, time) in times {
                let at = DateTime::parse_from_rfc3339(time)
                    .unwrap()
                    .with_timezone(&Utc);
                // OpenSSH reads a verify-time without Z as local time; ours is UTC.
                let openssh_at = format!("{openssh_time}Z");
                let openssh = openssh_accepts(
                    dir.path(),
                    &allowed_text,
                    "carol@contoso.com",
                    namespace.as_str(),
                    &signature,
                    MESSAGE,
                    Some(&openssh_at),
                );
                let here = verify(&signature, namespace, MESSAGE, &allowed, at).is_ok();
                assert_eq!(here, openssh, "options {option:?}, {namespace} at {time}");
            }
        }
    }
}

/// A FIDO2 signature as the token makes it (PROTOCOL.u2f): no software key can make one, so
/// it is assembled here from a software key of the same curve.
fn fido2_signature(
    kind: &str,
    seed: u8,
    namespace: &str,
    message: &[u8],
    flags: u8,
) -> (PublicKey, String) {
    use base64::Engine as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use sha2::{Digest as _, Sha256};
    use signature::Signer as _;
    use ssh_key::public::{KeyData, SkEcdsaSha2NistP256, SkEd25519};
    let string = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend((bytes.len() as u32).to_be_bytes());
        out.extend(bytes);
    };
    let signed_data =
        ssh_key::SshSig::signed_data(namespace, ssh_key::HashAlg::Sha512, message).unwrap();
    let mut token_message = Sha256::digest(b"ssh:").to_vec();
    token_message.push(flags);
    token_message.extend(9u32.to_be_bytes());
    token_message.extend(Sha256::digest(&signed_data));
    let (key, raw): (KeyData, Vec<u8>) = if kind == "ed25519" {
        let keypair = ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        let raw = keypair
            .try_sign(&token_message)
            .unwrap()
            .as_bytes()
            .to_vec();
        (
            KeyData::SkEd25519(SkEd25519::new(keypair.public, "ssh:")),
            raw,
        )
    } else {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let point = secret.public_key().to_encoded_point(false);
        let keypair = ssh_key::private::EcdsaKeypair::NistP256 {
            public: point,
            private: secret.into(),
        };
        let raw = keypair
            .try_sign(&token_message)
            .unwrap()
            .as_bytes()
            .to_vec();
        (
            KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(point, "ssh:")),
            raw,
        )
    };
    let key = PublicKey::new(key, "fido2");
    let mut signature = Vec::new();
    string(&mut signature, key.algorithm().as_str().as_bytes());
    string(&mut signature, &raw);
    signature.push(flags);
    signature.extend(9u32.to_be_bytes());
    let mut blob = b"SSHSIG\0\0\0\x01".to_vec();
    string(&mut blob, &key.to_bytes().unwrap());
    string(&mut blob, namespace.as_bytes());
    string(&mut blob, b"");
    string(&mut blob, b"sha512");
    string(&mut blob, &signature);
    let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(70)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    (
        key,
        format!(
            "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
            lines.join("\n")
        ),
    )
}

#[test]
fn fido2_signatures_verify_here_as_with_ssh_keygen_and_must_be_touched_here() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ed25519", "ecdsa"] {
        let (key, touched) = fido2_signature(kind, 3, "mfa-reset-approve", MESSAGE, 0x01);
        let allowed_text = allowed_line("carol@contoso.com", "", &key);
        let allowed = AllowedSigners::parse(&allowed_text, "allowed_signers").unwrap();
        assert!(
            openssh_accepts(
                dir.path(),
                &allowed_text,
                "carol@contoso.com",
                "mfa-reset-approve",
                &touched,
                MESSAGE,
                None
            ),
            "{kind}"
        );
        let verified = verify(&touched, Namespace::Approve, MESSAGE, &allowed, now()).unwrap();
        assert_eq!(verified.principal.as_str(), "carol@contoso.com");
        assert!(!openssh_accepts(
            dir.path(),
            &allowed_text,
            "carol@contoso.com",
            "mfa-reset-approve",
            &touched,
            b"other",
            None
        ));

        // Without the user-presence flag OpenSSH still accepts; this tool does not.
        let (_, untouched) = fido2_signature(kind, 3, "mfa-reset-approve", MESSAGE, 0x00);
        assert!(openssh_accepts(
            dir.path(),
            &allowed_text,
            "carol@contoso.com",
            "mfa-reset-approve",
            &untouched,
            MESSAGE,
            None
        ));
        let error = verify(&untouched, Namespace::Approve, MESSAGE, &allowed, now()).unwrap_err();
        assert_eq!(error.reason(), "bad_signature");
    }
}

/// A private `ssh-agent` on a socket in a temporary folder, stopped when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a", socket.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent starts");
        let agent = Agent {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&agent.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn add(&self, key: &Path) {
        let output = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .expect("ssh-add runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn signing_through_ssh_agent_verifies_here_and_with_ssh_keygen() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    for (principal, key_type) in [
        ("alice@contoso.com", "ed25519"),
        ("bob@contoso.com", "ecdsa"),
    ] {
        let key = keygen(dir.path(), key_type, key_type, "");
        agent.add(&key);
        let public = public_key(&key);
        let signer = Signer::from_agent(AgentClient::new(&agent.socket), public.clone()).unwrap();
        assert!(format!("{signer:?}").contains("ssh-agent"), "{signer:?}");
        let signature = signer.sign(Namespace::Admin, MESSAGE).unwrap();

        let allowed_text = allowed_line(principal, "namespaces=\"mfa-reset-admin\"", &public);
        let allowed = AllowedSigners::parse(&allowed_text, "allowed_signers").unwrap();
        let verified = verify(&signature, Namespace::Admin, MESSAGE, &allowed, now()).unwrap();
        assert_eq!(verified.principal.as_str(), principal);
        assert!(openssh_accepts(
            dir.path(),
            &allowed_text,
            principal,
            "mfa-reset-admin",
            &signature,
            MESSAGE,
            None
        ));
    }
}

#[test]
fn a_key_the_agent_does_not_hold_is_refused_with_the_fix() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "id_ed25519", "ed25519", "");
    let error = Signer::from_agent(AgentClient::new(&agent.socket), public_key(&key)).unwrap_err();
    assert!(matches!(error, SignerError::NotInAgent { .. }), "{error:?}");
    assert!(error.to_string().contains("ssh-add"), "{error}");
}

#[test]
fn a_passphrase_protected_key_file_points_to_ssh_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "id_ed25519", "ed25519", "correct horse");
    let error = Signer::from_key_file(&key).unwrap_err();
    assert!(matches!(error, SignerError::Encrypted { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("ssh-add") && message.contains("id_ed25519.pub"),
        "{message}"
    );
}

#[test]
fn an_rsa_key_is_refused_naming_the_supported_types() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "id_rsa", "rsa", "");
    let message = Signer::from_key_file(&key).unwrap_err().to_string();
    assert!(
        message.contains("ssh-rsa") && message.contains("ssh-ed25519, ecdsa-sha2-nistp256"),
        "{message}"
    );
    let allowed = allowed_line("alice@contoso.com", "", &public_key(&key));
    let message = AllowedSigners::parse(&allowed, "allowed_signers")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ssh-rsa keys are not supported"),
        "{message}"
    );
}

/// Microbenchmark, numbers only (run with
/// `cargo test --release --test it trust::microbenchmark -- --ignored --nocapture`):
/// the Merkle tree of a 1M-row batch with every proof, and sshsig sign/verify rates.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn microbenchmark() {
    use mfa_reset::trust::merkle::{self, MerkleTree};
    const ROWS: u64 = 1_000_000;
    // A request's canonical bytes are about this long.
    let leaves: Vec<Vec<u8>> = (0..ROWS)
        .map(|i| {
            format!(
                "{{\"batch\":\"0b9d4f3e-7f3a-4c41-9a57-3f1d2c0e8b11\",\"index\":{i},\"reason\":\"phishing\",\"requested_at\":\"2026-06-01T12:00:00Z\",\"user\":\"user{i:07}@contoso.com\"}}"
            )
            .into_bytes()
        })
        .collect();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|line| line.starts_with("VmHWM"))
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    let before = rss();
    let started = Instant::now();
    let tree = MerkleTree::from_leaves(&leaves);
    let built = started.elapsed();
    let root = tree.root();
    let started = Instant::now();
    let mut bytes = 0usize;
    for index in 0..ROWS {
        let proof = tree.proof(index).unwrap();
        bytes += serde_json::to_vec(&proof).unwrap().len();
    }
    let proved = started.elapsed();
    let started = Instant::now();
    for index in (0..ROWS).step_by(10) {
        let proof = tree.proof(index).unwrap();
        assert!(proof.verify(&leaves[index as usize], &root));
    }
    let verified = started.elapsed() * 10;
    let per_row = |elapsed: Duration| elapsed.as_secs_f64() * 1e6 / ROWS as f64;
    println!("merkle, {ROWS} leaves of {} bytes:", leaves[0].len());
    println!(
        "  build (leaf hashes + tree): {built:.2?} ({:.2} us/row)",
        per_row(built)
    );
    println!(
        "  every proof, as JSON:       {proved:.2?} ({:.2} us/row, {} bytes/proof)",
        per_row(proved),
        bytes as u64 / ROWS
    );
    println!(
        "  verify every proof:         {verified:.2?} ({:.2} us/row)",
        per_row(verified)
    );
    println!(
        "  peak RSS {} MiB (leaves alone: {} MiB before the tree)",
        rss(),
        before
    );
    let started = Instant::now();
    let streamed = merkle::root(&leaves);
    println!("  root only, streamed:        {:.2?}", started.elapsed());
    assert_eq!(streamed, root);

    for (name, signer) in [
        (
            "ed25519",
            Signer::from_private_key(generate_ed25519("bench").unwrap()).unwrap(),
        ),
        ("ecdsa-p256", {
            let dir = tempfile::tempdir().unwrap();
            Signer::from_key_file(&keygen(dir.path(), "ecdsa", "ecdsa", "")).unwrap()
        }),
    ] {
        let allowed =
            AllowedSigners::parse(&allowed_line("worker-1", "", signer.public_key()), "bench")
                .unwrap();
        let record = &leaves[0];
        let count = 2_000;
        let started = Instant::now();
        let signatures: Vec<String> = (0..count)
            .map(|_| signer.sign(Namespace::Worker, record).unwrap())
            .collect();
        let signing = started.elapsed();
        let started = Instant::now();
        for signature in &signatures {
            verify(signature, Namespace::Worker, record, &allowed, now()).unwrap();
        }
        let verifying = started.elapsed();
        let rate = |elapsed: Duration| count as f64 / elapsed.as_secs_f64();
        println!(
            "sshsig {name}: sign {:.0}/s, verify {:.0}/s",
            rate(signing),
            rate(verifying)
        );
    }
}

/// The signed-request format end to end with OpenSSH: the manifest signature `enqueue` puts
/// in the `mfa-manifest` header verifies with `ssh-keygen -Y verify` over the manifest's
/// canonical JSON, and an approval made by `ssh-keygen -Y sign` over the manifest digest (as
/// an operator without mfa-reset could make it) is accepted by the workers' check.
#[test]
fn a_manifest_signed_here_verifies_with_ssh_keygen_and_an_approval_by_ssh_keygen_is_accepted() {
    use mfa_reset::domain::{ResetRequest, UserRef, REQUEST_VERSION};
    use mfa_reset::trust::requests::{
        approval_message, manifest_bytes, verdict, Policy, Seal, SealedBatch, Verdict,
    };

    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    write_key_pair(&generate_ed25519("alice").unwrap(), &alice).unwrap();
    let bob = keygen(dir.path(), "bob", "ed25519", "");
    let both = "namespaces=\"mfa-reset-request,mfa-reset-approve\"";
    let alice_signer = Signer::from_key_file(&alice).unwrap();
    let allowed_text = allowed_line("alice@contoso.com", both, alice_signer.public_key())
        + &allowed_line("bob@contoso.com", both, &public_key(&bob));
    let allowed = AllowedSigners::parse(&allowed_text, "allowed_signers").unwrap();

    let requests: Vec<ResetRequest> = (0..3)
        .map(|i| {
            let user = UserRef::parse(&format!("user{i}@contoso.com")).unwrap();
            ResetRequest {
                version: REQUEST_VERSION,
                request_id: ResetRequest::id_for("interop", &user),
                batch: "interop".into(),
                user,
                ticket: None,
                reason: None,
                requested_by: None,
                dry_run: false,
                revoke_sessions: false,
                requested_at: now(),
                replay: 0,
                tap: None,
                carry: None,
                proof: None,
            }
        })
        .collect();
    let sealed = SealedBatch::seal(&requests, "alice@contoso.com", &alice_signer, now()).unwrap();
    assert!(openssh_accepts(
        dir.path(),
        &allowed_text,
        "alice@contoso.com",
        "mfa-reset-request",
        &sealed.manifest.signature,
        &manifest_bytes(&sealed.manifest.manifest).unwrap(),
        None
    ));

    let digest = sealed.manifest.digest().unwrap();
    let message = dir.path().join("digest");
    std::fs::write(&message, approval_message(&digest)).unwrap();
    let output = ssh_keygen(
        &[
            "-Y",
            "sign",
            "-f",
            bob.to_str().unwrap(),
            "-n",
            "mfa-reset-approve",
            message.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let approval = std::fs::read_to_string(dir.path().join("digest.sig")).unwrap();

    let manifest = sealed.manifest.to_header();
    let policy = Policy {
        allowed: &allowed,
        approval_above: 2,
    };
    for (i, request) in requests.iter().enumerate() {
        let proof = sealed.proof_header(i);
        let seal = Seal {
            manifest: Some(&manifest),
            proof: Some(&proof),
            leaf: None,
            approval: Some(&approval),
            replay: None,
        };
        let Verdict::Verified(who) = verdict(request, seal, &policy, now()) else {
            panic!("request {i} refused");
        };
        assert_eq!(who.requested_by.as_str(), "alice@contoso.com");
        assert_eq!(
            who.approved_by.as_ref().map(|p| p.as_str()),
            Some("bob@contoso.com")
        );
    }
}
