//! RTSP 1.0 (RFC 2326) message framing: requests in, responses out, and the `$`-framed
//! interleaved data that shares the connection (clients send RTCP receiver reports that way).

use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};

/// Longest request head we accept; real requests are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body (SET_PARAMETER); anything larger is not a keepalive.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) uri: String,
    headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The session id, without `;timeout=` or other parameters.
    pub(crate) fn session(&self) -> Option<&str> {
        self.header("Session")
            .map(|s| s.split(';').next().unwrap_or("").trim())
    }

    /// The path of the request URI (`/cam/1/trackID=0`), without query; `None` for `*`.
    pub(crate) fn path(&self) -> Option<&str> {
        let uri = self.uri.as_str();
        let path = match uri.find("://") {
            Some(i) => {
                let rest = &uri[i + 3..];
                &rest[rest.find('/').unwrap_or(rest.len())..]
            }
            None if uri.starts_with('/') => uri,
            None => return None,
        };
        Some(path.split(['?', '#']).next().unwrap_or(""))
    }
}

/// What the client sent next.
#[derive(Debug)]
pub(crate) enum Item {
    Request(Request),
    /// Interleaved binary data on `channel` (already consumed).
    Interleaved {
        channel: u8,
    },
}

/// Framing errors: answered with their status, then the connection is closed, since the stream
/// can no longer be trusted to be in step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("request head is not UTF-8")]
    NotText,
    #[error("malformed request line {0:?}")]
    RequestLine(String),
    #[error("unsupported protocol version {0:?}")]
    Version(String),
    #[error("malformed header line {0:?}")]
    HeaderLine(String),
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
}

impl FrameError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            FrameError::Version(_) => 505,
            _ => 400,
        }
    }
}

/// Takes one complete item off the front of `buf`, or `None` when more bytes are needed.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
    if buf.first() == Some(&b'$') {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let channel = buf[1];
        buf.advance(4 + len);
        return Ok(Some(Item::Interleaved { channel }));
    }
    // Stray line breaks between messages are allowed (RFC 2326 15.1 via HTTP).
    while buf.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        buf.advance(1);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(FrameError::HeadTooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| FrameError::NotText)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FrameError::RequestLine(line.chars().take(200).collect()));
    };
    if !version.starts_with("RTSP/") {
        return Err(FrameError::RequestLine(line.chars().take(200).collect()));
    }
    if version != "RTSP/1.0" {
        return Err(FrameError::Version(version.to_owned()));
    }
    let mut headers = Vec::new();
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(FrameError::HeaderLine(l.chars().take(200).collect()));
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut req = Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
        headers,
        body: Bytes::new(),
    };
    let body_len = match req.header("Content-Length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => n,
            _ => return Err(FrameError::ContentLength(v.to_owned())),
        },
    };
    if buf.len() < end + 4 + body_len {
        return Ok(None);
    }
    buf.advance(end + 4);
    req.body = buf.split_to(body_len).freeze();
    Ok(Some(Item::Request(req)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        451 => "Parameter Not Understood",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => "Internal Server Error",
    }
}

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(&'static str, String)>,
    body: Option<(&'static str, String)>,
}

impl Response {
    pub(crate) fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn body(mut self, content_type: &'static str, body: String) -> Self {
        self.body = Some((content_type, body));
        self
    }

    pub(crate) fn encode(&self, cseq: Option<&str>) -> Bytes {
        let mut s = format!("RTSP/1.0 {} {}\r\n", self.status, reason(self.status));
        if let Some(c) = cseq {
            let _ = write!(s, "CSeq: {c}\r\n");
        }
        s.push_str("Server: xueliang-sim\r\n");
        for (n, v) in &self.headers {
            let _ = write!(s, "{n}: {v}\r\n");
        }
        match &self.body {
            Some((ct, body)) => {
                let _ = write!(
                    s,
                    "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => s.push_str("\r\n"),
        }
        Bytes::from(s)
    }
}

/// What a client asked for in `Transport:` (the first offer we can serve).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TransportSpec {
    Tcp { channel: Option<u8> },
    Udp { rtp_port: u16, rtcp_port: u16 },
}

/// Picks the first supported offer from a `Transport` header; `None` if none is (-> 461).
pub(crate) fn parse_transport(header: &str) -> Option<TransportSpec> {
    header.split(',').find_map(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        let proto = parts.next()?;
        let params: Vec<&str> = parts.collect();
        if params.iter().any(|p| p.eq_ignore_ascii_case("multicast")) {
            return None;
        }
        let value = |key: &str| {
            params.iter().find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
            })
        };
        let pair = |v: &str| -> Option<(u16, Option<u16>)> {
            let mut it = v.split('-');
            let a = it.next()?.parse().ok()?;
            let b = it.next().map(|b| b.parse()).transpose().ok()?;
            Some((a, b))
        };
        match proto.to_ascii_uppercase().as_str() {
            "RTP/AVP/TCP" => {
                let channel = match value("interleaved") {
                    Some(v) => {
                        let (a, _) = pair(v)?;
                        Some(u8::try_from(a).ok().filter(|c| *c < 255)?)
                    }
                    None => None,
                };
                Some(TransportSpec::Tcp { channel })
            }
            "RTP/AVP" | "RTP/AVP/UDP" => {
                let (a, b) = pair(value("client_port")?)?;
                if a == 0 {
                    return None;
                }
                Some(TransportSpec::Udp {
                    rtp_port: a,
                    rtcp_port: b.unwrap_or(a.wrapping_add(1)),
                })
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_interleaved_data() {
        let mut buf = BytesMut::from(
            &b"$\x01\x00\x02ab\r\nSET_PARAMETER rtsp://h:1/cam/1 RTSP/1.0\r\nCSeq: 7\r\nContent-Length: 3\r\n\r\nx=1OPT"[..],
        );
        assert!(matches!(
            parse(&mut buf).unwrap(),
            Some(Item::Interleaved { channel: 1 })
        ));
        let Some(Item::Request(r)) = parse(&mut buf).unwrap() else {
            panic!("expected a request");
        };
        assert_eq!(r.method, "SET_PARAMETER");
        assert_eq!(r.header("cseq"), Some("7"));
        assert_eq!(r.path(), Some("/cam/1"));
        assert_eq!(&r.body[..], b"x=1");
        assert!(parse(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"OPT");
    }

    #[test]
    fn rejects_garbage_and_other_versions() {
        let mut buf = BytesMut::from(&b"HELLO\r\n\r\n"[..]);
        assert_eq!(parse(&mut buf).unwrap_err().status(), 400);
        let mut buf = BytesMut::from(&b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n"[..]);
        assert_eq!(parse(&mut buf).unwrap_err().status(), 505);
    }

    #[test]
    fn transport_offers() {
        assert_eq!(
            parse_transport("RTP/AVP/TCP;unicast;interleaved=2-3"),
            Some(TransportSpec::Tcp { channel: Some(2) })
        );
        assert_eq!(
            parse_transport("RTP/AVP;multicast,RTP/AVP;unicast;client_port=5000-5001"),
            Some(TransportSpec::Udp {
                rtp_port: 5000,
                rtcp_port: 5001
            })
        );
        assert_eq!(parse_transport("RTP/SAVP;unicast;client_port=1-2"), None);
        assert_eq!(parse_transport("RTP/AVP;unicast"), None);
    }
}
