//! `saslStart` / `saslContinue` for SCRAM-SHA-256 with the one configured user. Any
//! failure answers what the server answers: code 18 `AuthenticationFailed`,
//! "Authentication failed.".

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

use super::Conn;
use crate::scram;
use crate::state::{CmdError, CmdResult, Shared};

fn failed() -> CmdError {
    CmdError::new(18, "AuthenticationFailed", "Authentication failed.")
}

fn payload(body: &Document) -> CmdResult<Vec<u8>> {
    match body.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(CmdError::failed_to_parse("payload is missing")),
    }
}

fn bin(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

pub fn sasl_start(shared: &Shared, conn: &mut Conn, body: &Document) -> CmdResult<Document> {
    let mechanism = body.get_str("mechanism").unwrap_or("");
    if mechanism != "SCRAM-SHA-256" {
        return Err(CmdError::new(
            334,
            "MechanismUnavailable",
            format!("Received authentication for mechanism {mechanism} which is not enabled"),
        ));
    }
    let Some(user) = &shared.config.user else {
        return Err(failed());
    };
    let (conv, server_first) = scram::start(user, &payload(body)?).map_err(|e| {
        eprintln!("mongo-double: authentication failed: {}", e.0);
        failed()
    })?;
    conn.skip_empty_exchange = body
        .get_document("options")
        .map(|o| crate::state::truthy(o.get("skipEmptyExchange")))
        .unwrap_or(false);
    conn.conversation = Some(conv);
    conn.authenticated = false;
    Ok(doc! {"conversationId": 1, "done": false, "payload": bin(server_first), "ok": 1.0})
}

pub fn sasl_continue(shared: &Shared, conn: &mut Conn, body: &Document) -> CmdResult<Document> {
    let (Some(user), Some(conv)) = (&shared.config.user, conn.conversation.as_mut()) else {
        return Err(failed());
    };
    if conv.proven {
        // The empty last step of the exchange.
        conn.conversation = None;
        conn.authenticated = true;
        return Ok(doc! {"conversationId": 1, "done": true, "payload": bin(Vec::new()), "ok": 1.0});
    }
    match scram::finish(user, conv, &payload(body)?) {
        Ok(server_final) => {
            let done = conn.skip_empty_exchange;
            if done {
                conn.conversation = None;
                conn.authenticated = true;
            }
            Ok(doc! {"conversationId": 1, "done": done, "payload": bin(server_final), "ok": 1.0})
        }
        Err(e) => {
            eprintln!("mongo-double: authentication failed: {}", e.0);
            conn.conversation = None;
            Err(failed())
        }
    }
}
