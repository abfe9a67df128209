//! The two ssh-agent requests signing needs, over the agent's unix socket (`SSH_AUTH_SOCK`):
//! list the keys it holds, and sign with one (draft-miller-ssh-agent, sections 3.5 and 3.6).
//!
//! Written by hand because the protocol is this small and the agent-client crates pull in
//! `ssh-key` with its `rsa` feature (RUSTSEC-2023-0071). Blocking and one connection per
//! request: signing happens once per batch or per record, and a FIDO2 key waits for a touch
//! anyway; async callers run it in `spawn_blocking`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Agent replies "failure" (also the two legacy failure codes below).
const SSH_AGENT_FAILURE: u8 = 5;
const SSH2_AGENT_FAILURE: u8 = 30;
const SSH_COM_AGENT2_FAILURE: u8 = 102;
const SSH2_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH2_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH2_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH2_AGENT_SIGN_RESPONSE: u8 = 14;

/// OpenSSH's own limit on an agent message.
const MAX_MESSAGE: usize = 256 * 1024;

/// How long to wait for listing keys.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a signature: a FIDO2 key waits for its owner's touch (and PIN).
const SIGN_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection target: the agent's socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

/// A key the agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The public key, in SSH wire encoding.
    pub key_blob: Vec<u8>,
    /// The comment `ssh-add` stored with it.
    pub comment: String,
}

/// Talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be opened.
    #[error("cannot reach ssh-agent at {socket}: {source}; start one (`eval $(ssh-agent)`) and `ssh-add` the key, or point SSH_AUTH_SOCK at it")]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error(
        "ssh-agent at {socket} did not answer: {source} (for a FIDO2 key: touch it when it blinks)"
    )]
    Io {
        /// The socket path.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent said no (key not held, confirmation declined, FIDO2 touch or PIN missing).
    #[error("ssh-agent refused the request (key not loaded, confirmation declined, or the FIDO2 key was not touched)")]
    Refused,
    /// The agent's answer was not what the protocol says.
    #[error("ssh-agent sent an answer this tool cannot read: {0}")]
    Protocol(String),
}

impl AgentClient {
    /// An agent listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> AgentClient {
        AgentClient {
            socket: socket.into(),
        }
    }

    /// The agent named by `SSH_AUTH_SOCK`, if set.
    pub fn from_env() -> Option<AgentClient> {
        std::env::var_os("SSH_AUTH_SOCK")
            .filter(|socket| !socket.is_empty())
            .map(AgentClient::new)
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The keys the agent holds.
    pub fn identities(&self) -> Result<Vec<Identity>, AgentError> {
        let reply = self.request(&[SSH2_AGENTC_REQUEST_IDENTITIES], LIST_TIMEOUT)?;
        let mut reader = WireReader(&reply);
        match reader.byte()? {
            SSH2_AGENT_IDENTITIES_ANSWER => {}
            code => return Err(unexpected(code)),
        }
        let count = reader.u32()?;
        let mut identities = Vec::new();
        for _ in 0..count {
            let key_blob = reader.string()?.to_vec();
            let comment = String::from_utf8_lossy(reader.string()?).into_owned();
            identities.push(Identity { key_blob, comment });
        }
        Ok(identities)
    }

    /// Sign `data` with the key whose public blob is `key_blob`; returns the signature blob
    /// (`string algorithm, string signature` and, for FIDO2 keys, `byte flags, uint32 counter`).
    pub fn sign(&self, key_blob: &[u8], data: &[u8]) -> Result<Vec<u8>, AgentError> {
        let mut message = vec![SSH2_AGENTC_SIGN_REQUEST];
        put_string(&mut message, key_blob);
        put_string(&mut message, data);
        // Flags: none; the RSA hash flags do not apply to the key types we support.
        message.extend_from_slice(&0u32.to_be_bytes());
        let reply = self.request(&message, SIGN_TIMEOUT)?;
        let mut reader = WireReader(&reply);
        match reader.byte()? {
            SSH2_AGENT_SIGN_RESPONSE => Ok(reader.string()?.to_vec()),
            code => Err(unexpected(code)),
        }
    }

    fn request(&self, message: &[u8], timeout: Duration) -> Result<Vec<u8>, AgentError> {
        let socket = || self.socket.display().to_string();
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| AgentError::Connect {
                socket: socket(),
                source,
            })?;
        let io = |source| AgentError::Io {
            socket: socket(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(LIST_TIMEOUT)).map_err(io)?;
        let length = u32::try_from(message.len())
            .map_err(|_| AgentError::Protocol("request too large".to_string()))?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        stream.write_all(&framed).map_err(io)?;
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).map_err(io)?;
        let length = u32::from_be_bytes(length) as usize;
        if length == 0 || length > MAX_MESSAGE {
            return Err(AgentError::Protocol(format!("answer of {length} bytes")));
        }
        let mut reply = vec![0u8; length];
        stream.read_exact(&mut reply).map_err(io)?;
        Ok(reply)
    }
}

fn unexpected(code: u8) -> AgentError {
    match code {
        SSH_AGENT_FAILURE | SSH2_AGENT_FAILURE | SSH_COM_AGENT2_FAILURE => AgentError::Refused,
        code => AgentError::Protocol(format!("unexpected message type {code}")),
    }
}

/// Append an SSH `string`: a big-endian u32 length, then the bytes.
pub(crate) fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every blob here is far below 4 GiB (messages are capped at 256 KiB).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads SSH wire types from a byte slice.
struct WireReader<'a>(&'a [u8]);

impl<'a> WireReader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], AgentError> {
        if self.0.len() < count {
            return Err(AgentError::Protocol("answer cut short".to_string()));
        }
        let (head, tail) = self.0.split_at(count);
        self.0 = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, AgentError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, AgentError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], AgentError> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot fake agent that answers every request with `reply` and hands back what it
    /// received (the protocol framing is what is under test here; the real agent is tested in
    /// tests/it/trust.rs).
    fn fake_agent(reply: Vec<u8>) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).unwrap();
            let mut request = vec![0u8; u32::from_be_bytes(length) as usize];
            stream.read_exact(&mut request).unwrap();
            let mut framed = (reply.len() as u32).to_be_bytes().to_vec();
            framed.extend(reply);
            stream.write_all(&framed).unwrap();
            request
        });
        (dir, handle)
    }

    #[test]
    fn sign_request_is_framed_as_the_protocol_says() {
        let mut reply = vec![SSH2_AGENT_SIGN_RESPONSE];
        put_string(&mut reply, b"signature-blob");
        let (dir, agent) = fake_agent(reply);
        let client = AgentClient::new(dir.path().join("agent.sock"));
        assert_eq!(client.sign(b"key", b"data").unwrap(), b"signature-blob");
        let request = agent.join().unwrap();
        assert_eq!(request, b"\x0d\0\0\0\x03key\0\0\0\x04data\0\0\0\0");
    }

    #[test]
    fn failure_answer_is_a_refusal() {
        let (dir, agent) = fake_agent(vec![SSH_AGENT_FAILURE]);
        let client = AgentClient::new(dir.path().join("agent.sock"));
        assert!(matches!(
            client.sign(b"key", b"data"),
            Err(AgentError::Refused)
        ));
        agent.join().unwrap();
    }

    #[test]
    fn identities_are_read_and_a_short_answer_is_refused() {
        let mut reply = vec![SSH2_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 2];
        put_string(&mut reply, b"k1");
        put_string(&mut reply, b"alice");
        put_string(&mut reply, b"k2");
        put_string(&mut reply, b"bob");
        let (dir, agent) = fake_agent(reply);
        let client = AgentClient::new(dir.path().join("agent.sock"));
        let identities = client.identities().unwrap();
        assert_eq!(identities.len(), 2);
        assert_eq!(identities[1].key_blob, b"k2");
        assert_eq!(identities[1].comment, "bob");
        assert_eq!(agent.join().unwrap(), [SSH2_AGENTC_REQUEST_IDENTITIES]);

        let (dir, agent) = fake_agent(vec![SSH2_AGENT_IDENTITIES_ANSWER, 0, 0, 0, 1, 0, 0, 0, 9]);
        let client = AgentClient::new(dir.path().join("agent.sock"));
        assert!(matches!(client.identities(), Err(AgentError::Protocol(_))));
        agent.join().unwrap();
    }

    #[test]
    fn a_missing_socket_names_the_fix() {
        let client = AgentClient::new("/nonexistent/agent.sock");
        let message = client.identities().unwrap_err().to_string();
        assert!(message.contains("/nonexistent/agent.sock"), "{message}");
        assert!(message.contains("ssh-add"), "{message}");
    }
}
