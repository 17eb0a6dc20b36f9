//! RTSP Digest authentication (RFC 2617 without `qop`, as most cameras do it) with stateless
//! nonces: each nonce carries a keyed check value, so any nonce this server issued is accepted
//! without keeping a table, and a forged one is not.

use md5::{Digest as _, Md5};

pub(crate) const REALM: &str = "xueliang-sim";

#[derive(Debug)]
pub(crate) struct DigestAuth {
    user: String,
    password: String,
    secret: [u8; 16],
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

impl DigestAuth {
    pub(crate) fn new(user: String, password: String) -> Self {
        DigestAuth {
            user,
            password,
            secret: rand::random(),
        }
    }

    fn nonce_check(&self, salt: &str) -> String {
        md5_hex(&[&hex::encode(self.secret), salt])[..16].to_owned()
    }

    /// A fresh `WWW-Authenticate` value.
    pub(crate) fn challenge(&self) -> String {
        let salt = hex::encode(rand::random::<[u8; 8]>());
        let nonce = format!("{salt}{}", self.nonce_check(&salt));
        format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\"")
    }

    /// Whether an `Authorization` header value answers one of our challenges for `method`.
    pub(crate) fn verify(&self, method: &str, header: Option<&str>) -> bool {
        let Some(params) = header.and_then(|h| h.trim().strip_prefix("Digest ")) else {
            return false;
        };
        let params = parse_params(params);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let (Some(user), Some(nonce), Some(uri), Some(response)) =
            (get("username"), get("nonce"), get("uri"), get("response"))
        else {
            return false;
        };
        if user != self.user || get("realm").is_some_and(|r| r != REALM) || nonce.len() != 32 {
            return false;
        }
        let (salt, check) = nonce.split_at(16);
        if self.nonce_check(salt) != check {
            return false;
        }
        let ha1 = md5_hex(&[&self.user, REALM, &self.password]);
        let ha2 = md5_hex(&[method, uri]);
        let expected = match (get("qop"), get("nc"), get("cnonce")) {
            (Some(qop), Some(nc), Some(cnonce)) => md5_hex(&[&ha1, nonce, nc, cnonce, qop, &ha2]),
            _ => md5_hex(&[&ha1, nonce, &ha2]),
        };
        expected.eq_ignore_ascii_case(response)
    }
}

/// `k="v", k2=v2` pairs; quoted values may contain commas.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_owned();
            rest = q.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(a: &DigestAuth, user: &str, pass: &str, method: &str, uri: &str) -> String {
        let ch = a.challenge();
        let nonce = ch.split("nonce=\"").nth(1).unwrap().trim_end_matches('"');
        let ha1 = md5_hex(&[user, REALM, pass]);
        let ha2 = md5_hex(&[method, uri]);
        let resp = md5_hex(&[&ha1, nonce, &ha2]);
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\""
        )
    }

    #[test]
    fn accepts_the_right_password_only() {
        let a = DigestAuth::new("admin".into(), "secret".into());
        let uri = "rtsp://127.0.0.1:554/cam/1";
        assert!(a.verify(
            "DESCRIBE",
            Some(&answer(&a, "admin", "secret", "DESCRIBE", uri))
        ));
        assert!(!a.verify(
            "DESCRIBE",
            Some(&answer(&a, "admin", "wrong", "DESCRIBE", uri))
        ));
        assert!(!a.verify(
            "DESCRIBE",
            Some(&answer(&a, "root", "secret", "DESCRIBE", uri))
        ));
        assert!(!a.verify(
            "SETUP",
            Some(&answer(&a, "admin", "secret", "DESCRIBE", uri))
        ));
        assert!(!a.verify("DESCRIBE", None));
        // A nonce this server did not issue.
        let other = DigestAuth::new("admin".into(), "secret".into());
        assert!(!a.verify(
            "DESCRIBE",
            Some(&answer(&other, "admin", "secret", "DESCRIBE", uri))
        ));
    }
}
