//! SCRAM-SHA-256 (RFC 5802 / RFC 7677), server side, as MongoDB runs it over
//! `saslStart` / `saslContinue` (and `speculativeAuthenticate` in `hello`).
//!
//! 1. client-first `n,,n=<user>,r=<cnonce>` → server-first `r=<cnonce><snonce>,s=<salt>,i=<n>`
//! 2. client-final `c=biws,r=<nonce>,p=<proof>` → server-final `v=<server signature>`,
//!    after checking `H(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey`.
//!
//! The one configured password is taken as given (no SASLprep: ASCII passwords only).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ITERATIONS: u32 = 15_000;

/// The configured user's SCRAM-SHA-256 credentials.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// An authentication that failed; the client sees `AuthenticationFailed`.
#[derive(Debug)]
pub struct Failed(pub String);

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

impl User {
    pub fn new(name: &str, password: &str) -> User {
        let mut salt = vec![0u8; 28];
        rand::rng().fill_bytes(&mut salt);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key).to_vec();
        let server_key = hmac(&salted, b"Server Key");
        User {
            name: name.to_string(),
            salt,
            stored_key,
            server_key,
        }
    }
}

/// One conversation, between `saslStart` and its last `saslContinue`.
#[derive(Debug, Clone)]
pub struct Conversation {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    pub user: String,
    /// Set once the client proof has been checked.
    pub proven: bool,
}

fn attr<'a>(msg: &'a str, key: char) -> Option<&'a str> {
    msg.split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// Handles client-first; returns the conversation and server-first.
pub fn start(user: &User, payload: &[u8]) -> Result<(Conversation, Vec<u8>), Failed> {
    let msg = std::str::from_utf8(payload).map_err(|_| Failed("payload is not UTF-8".into()))?;
    let bare = msg
        .strip_prefix("n,,")
        .or_else(|| msg.strip_prefix("y,,"))
        .ok_or_else(|| Failed("channel binding is not supported".into()))?;
    let name = attr(bare, 'n')
        .ok_or_else(|| Failed("client-first has no user name".into()))?
        .replace("=2C", ",")
        .replace("=3D", "=");
    let cnonce = attr(bare, 'r').ok_or_else(|| Failed("client-first has no nonce".into()))?;
    let mut snonce = [0u8; 24];
    rand::rng().fill_bytes(&mut snonce);
    let nonce = format!("{cnonce}{}", B64.encode(snonce));
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&user.salt));
    let conv = Conversation {
        client_first_bare: bare.to_string(),
        server_first: server_first.clone(),
        nonce,
        user: name,
        proven: false,
    };
    Ok((conv, server_first.into_bytes()))
}

/// Handles client-final; returns server-final when the proof is right.
pub fn finish(user: &User, conv: &mut Conversation, payload: &[u8]) -> Result<Vec<u8>, Failed> {
    if conv.user != user.name {
        return Err(Failed(format!("unknown user {}", conv.user)));
    }
    let msg = std::str::from_utf8(payload).map_err(|_| Failed("payload is not UTF-8".into()))?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or_else(|| Failed("client-final has no proof".into()))?;
    if attr(without_proof, 'r') != Some(conv.nonce.as_str()) {
        return Err(Failed("nonce mismatch".into()));
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| Failed("proof is not base64".into()))?;
    let auth_message = format!(
        "{},{},{}",
        conv.client_first_bare, conv.server_first, without_proof
    );
    let signature = hmac(&user.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Err(Failed("proof has the wrong length".into()));
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    if Sha256::digest(&client_key).as_slice() != user.stored_key.as_slice() {
        return Err(Failed("wrong password".into()));
    }
    conv.proven = true;
    let server_sig = hmac(&user.server_key, auth_message.as_bytes());
    Ok(format!("v={}", B64.encode(server_sig)).into_bytes())
}
