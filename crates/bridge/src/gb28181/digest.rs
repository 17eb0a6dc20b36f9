//! HTTP Digest (RFC 2617, MD5) as GB/T 28181 REGISTER uses it: parse the challenge, answer it.
//!
//! Both forms occur in the field: wvp-GB28181-pro challenges with `qop="auth"`, several vendor
//! city platforms and the standard's own example use the RFC 2069 form without qop.

use md5::{Digest, Md5};

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Option<String>,
    /// The qop options offered, e.g. `auth` or `auth,auth-int`.
    pub qop: Option<String>,
    pub stale: bool,
}

/// Split `k=v, k="v, with comma"` pairs.
fn pairs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = rest[eq + 1..].trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_owned(), &q[(end + 1).min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key, val));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let h = header.trim();
        let (scheme, rest) = h.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut c = Challenge::default();
        for (k, v) in pairs(rest) {
            match k.as_str() {
                "realm" => c.realm = v,
                "nonce" => c.nonce = v,
                "opaque" => c.opaque = Some(v),
                "algorithm" => c.algorithm = Some(v),
                "qop" => c.qop = Some(v),
                "stale" => c.stale = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        if c.nonce.is_empty() {
            return None;
        }
        Some(c)
    }

    /// Whether we can answer it: MD5 only (SM3 from GB/T 28181-2022 is not supported).
    pub fn supported(&self) -> bool {
        self.algorithm
            .as_deref()
            .is_none_or(|a| a.eq_ignore_ascii_case("md5"))
    }

    fn offers_auth(&self) -> bool {
        self.qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")))
    }
}

pub fn md5_hex(data: &str) -> String {
    let d = Md5::digest(data.as_bytes());
    let mut s = String::with_capacity(32);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The `response` value. `qop` is `Some((nc, cnonce))` when answering with `qop=auth`.
pub fn response(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{username}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The `Authorization` header value answering `ch`. `nc` counts uses of this nonce, from 1.
pub fn authorization(
    ch: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let nc_s = format!("{nc:08x}");
    let qop = ch.offers_auth().then_some((nc_s.as_str(), cnonce));
    let resp = response(username, &ch.realm, password, method, uri, &ch.nonce, qop);
    let mut h = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5",
        ch.realm, ch.nonce
    );
    if let Some((nc, cnonce)) = qop {
        h.push_str(&format!(", cnonce=\"{cnonce}\", qop=auth, nc={nc}"));
    }
    if let Some(o) = &ch.opaque {
        h.push_str(&format!(", opaque=\"{o}\""));
    }
    h
}

/// The fields of an `Authorization` header, for checking what a peer sent (tests, logs).
pub fn parse_authorization(header: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    scheme.eq_ignore_ascii_case("digest").then(|| pairs(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_vector() {
        // RFC 2617 §3.5.
        let r = response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc2069_form_without_qop() {
        // HA1/HA2 by hand: MD5("a:r:p"), MD5("REGISTER:sip:x").
        let ha1 = md5_hex("a:r:p");
        let ha2 = md5_hex("REGISTER:sip:x");
        assert_eq!(
            response("a", "r", "p", "REGISTER", "sip:x", "n", None),
            md5_hex(&format!("{ha1}:n:{ha2}"))
        );
    }

    #[test]
    fn parses_wvp_and_vendor_challenges() {
        let c = Challenge::parse(
            "Digest realm=\"3402000000\",nonce=\"9f3c\",opaque=\"o, x\",algorithm=MD5,qop=\"auth\"",
        )
        .unwrap();
        assert_eq!(c.realm, "3402000000");
        assert_eq!(c.nonce, "9f3c");
        assert_eq!(c.opaque.as_deref(), Some("o, x"));
        assert!(c.offers_auth() && c.supported());
        let c = Challenge::parse("Digest realm=\"5101000000\", nonce=\"n1\"").unwrap();
        assert!(!c.offers_auth());
        assert!(Challenge::parse("Basic realm=\"x\"").is_none());
        let sm3 = Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SM3").unwrap();
        assert!(!sm3.supported());
    }

    #[test]
    fn authorization_header_round_trips() {
        let c = Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth\"").unwrap();
        let h = authorization(&c, "u", "p", "REGISTER", "sip:s@h", "cn", 1);
        let f = parse_authorization(&h).unwrap();
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("nc").as_deref(), Some("00000001"));
        assert_eq!(get("qop").as_deref(), Some("auth"));
        assert_eq!(
            get("response").unwrap(),
            response(
                "u",
                "r",
                "p",
                "REGISTER",
                "sip:s@h",
                "n",
                Some(("00000001", "cn"))
            )
        );
    }
}
