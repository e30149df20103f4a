//! `tls-server-end-point` channel binding (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS: the hash
//! of the server's TLS certificate, mixed into the SCRAM proof, so that a login cannot be
//! relayed through someone holding another certificate in between.
//!
//! The hash function is the one of the certificate's signature algorithm, except that MD5
//! and SHA-1 are replaced by SHA-256 (the RFC's rule, and what the PostgreSQL server
//! computes). Only `signatureAlgorithm` is read from the DER: `Certificate ::= SEQUENCE {
//! tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { algorithm OID, ... }, ... }`.
//! A certificate signed otherwise (RSASSA-PSS, Ed25519) gives no binding data.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The DER contents of the certificate's signature algorithm OID.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, body, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = tlv(body)? else {
        return None;
    };
    let (SEQUENCE, alg, _) = tlv(rest)? else {
        return None;
    };
    let (OID, oid, _) = tlv(alg)? else {
        return None;
    };
    Some(oid)
}

/// RSA PKCS#1 (1.2.840.113549.1.1.x) and ECDSA (1.2.840.10045.4.x) OID prefixes.
const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];

/// The binding data for the server certificate `cert` (DER), if its signature algorithm
/// names a hash.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_oid(cert)?;
    // 256, 224, 384, 512: the digest that signs; MD5 and SHA-1 become SHA-256.
    let bits = if let Some(last) = oid.strip_prefix(RSA) {
        match last {
            [0x04] | [0x05] | [0x0b] => 256, // md5, sha1, sha256 WithRSAEncryption
            [0x0e] => 224,
            [0x0c] => 384,
            [0x0d] => 512,
            _ => return None,
        }
    } else if let Some(last) = oid.strip_prefix(ECDSA) {
        match last {
            [0x01] | [0x03, 0x02] => 256, // ecdsa-with-SHA1, -SHA256
            [0x03, 0x01] => 224,
            [0x03, 0x03] => 384,
            [0x03, 0x04] => 512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match bits {
        224 => Sha224::digest(cert).to_vec(),
        384 => Sha384::digest(cert).to_vec(),
        512 => Sha512::digest(cert).to_vec(),
        _ => Sha256::digest(cert).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate shell: SEQUENCE { SEQUENCE {}, SEQUENCE { OID }, BIT STRING }.
    fn shell(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let rsa256 = shell(&[RSA, &[0x0b]].concat());
        assert_eq!(
            server_end_point(&rsa256).unwrap(),
            Sha256::digest(&rsa256).to_vec()
        );
        let sha1 = shell(&[RSA, &[0x05]].concat());
        assert_eq!(
            server_end_point(&sha1).unwrap().len(),
            32,
            "SHA-1 becomes SHA-256"
        );
        let ec384 = shell(&[ECDSA, &[0x03, 0x03]].concat());
        assert_eq!(
            server_end_point(&ec384).unwrap(),
            Sha384::digest(&ec384).to_vec()
        );
        let pss = shell(&[RSA, &[0x0a]].concat());
        assert_eq!(server_end_point(&pss), None);
        assert_eq!(server_end_point(&[0x30, 0x05, 0x01]), None, "truncated");
    }
}
