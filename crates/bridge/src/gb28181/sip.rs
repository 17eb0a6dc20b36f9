//! SIP message syntax for the GB/T 28181 subset: parse and build requests and responses.
//!
//! Sans-IO: bytes in, bytes out. Headers are kept in order as text (GB/T 28181 peers only ever put
//! ASCII there); bodies are opaque bytes because MANSCDP bodies are usually GB18030.

use std::fmt;

/// Request methods this platform sends or answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Register,
    Message,
    Options,
    Subscribe,
    Notify,
    Invite,
    Ack,
    Bye,
    Cancel,
    Info,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Register => "REGISTER",
            Method::Message => "MESSAGE",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Info => "INFO",
            Method::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Method {
        match s {
            "REGISTER" => Method::Register,
            "MESSAGE" => Method::Message,
            "OPTIONS" => Method::Options,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "INFO" => Method::Info,
            o => Method::Other(o.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content type GB/T 28181 uses for every MANSCDP body (capitalised as the standard writes it).
pub const MANSCDP_XML: &str = "Application/MANSCDP+xml";

/// Ordered header list with case-insensitive lookup that also understands RFC 3261 compact names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

fn canonical(name: &str) -> &str {
    // Compact forms (RFC 3261 §7.3.3); some embedded SIP stacks in IPCs emit them.
    match name {
        "v" | "V" => "via",
        "f" | "F" => "from",
        "t" | "T" => "to",
        "i" | "I" => "call-id",
        "m" | "M" => "contact",
        "l" | "L" => "content-length",
        "c" | "C" => "content-type",
        "o" | "O" => "event",
        "k" | "K" => "supported",
        _ => name,
    }
}

fn same_name(a: &str, b: &str) -> bool {
    canonical(a).eq_ignore_ascii_case(canonical(b))
}

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| same_name(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, comma-joined values split apart only for Via.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| same_name(n, name))
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replace every `name` with one value, keeping the first one's position.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|(n, _)| same_name(n, name)) {
            Some(i) => {
                self.0[i].1 = value;
                let mut j = 0;
                self.0.retain(|(n, _)| {
                    j += 1;
                    j - 1 == i || !same_name(n, name)
                });
            }
            None => self.0.push((name.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !same_name(n, name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why bytes are not (yet) a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes are needed (stream transports); not an error on UDP framing boundaries.
    #[error("incomplete SIP message")]
    Incomplete,
    #[error("malformed start line")]
    StartLine,
    #[error("malformed header line")]
    Header,
    #[error("bad Content-Length")]
    ContentLength,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Message {
    /// Parse one message from the front of `buf`; returns it and the bytes it used.
    ///
    /// On a datagram a missing Content-Length means "the rest of the datagram"; on a stream
    /// it is required (RFC 3261 §18.3), so stream callers pass `stream = true`.
    pub fn parse(buf: &[u8], stream: bool) -> Result<(Message, usize), ParseError> {
        // Tolerate CRLF keep-alive pings (RFC 5626) between messages on a stream.
        let skip = buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(buf.len());
        let rest = &buf[skip..];
        let Some(head_len) = find_head_end(rest) else {
            return Err(ParseError::Incomplete);
        };
        let head = String::from_utf8_lossy(&rest[..head_len - 4]);
        let mut lines: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            // Header folding (obsolete, but cheap to accept).
            if (line.starts_with(' ') || line.starts_with('\t')) && !lines.is_empty() {
                let last = lines.len() - 1;
                lines[last].push(' ');
                lines[last].push_str(line.trim());
            } else {
                lines.push(line.to_owned());
            }
        }
        let mut it = lines.into_iter();
        let start = it.next().ok_or(ParseError::StartLine)?;
        let mut headers = Headers::new();
        for l in it {
            let (n, v) = l.split_once(':').ok_or(ParseError::Header)?;
            let n = n.trim();
            if n.is_empty() {
                return Err(ParseError::Header);
            }
            headers.push(n, v.trim());
        }
        let body_len = match headers.get("content-length") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| ParseError::ContentLength)?,
            None if stream => 0,
            None => rest.len() - head_len,
        };
        if rest.len() < head_len + body_len {
            return Err(if stream {
                ParseError::Incomplete
            } else {
                ParseError::ContentLength
            });
        }
        let body = rest[head_len..head_len + body_len].to_vec();
        let used = skip + head_len + body_len;
        let msg = if let Some(after) = start.strip_prefix("SIP/2.0 ") {
            let (code, reason) = after.split_once(' ').unwrap_or((after, ""));
            let status = code.parse::<u16>().map_err(|_| ParseError::StartLine)?;
            Message::Response(Response {
                status,
                reason: reason.to_owned(),
                headers,
                body,
            })
        } else {
            let mut parts = start.split(' ');
            let (Some(m), Some(uri), Some("SIP/2.0"), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(ParseError::StartLine);
            };
            Message::Request(Request {
                method: Method::parse(m),
                uri: uri.to_owned(),
                headers,
                body,
            })
        };
        Ok((msg, used))
    }

    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

fn write_common(out: &mut Vec<u8>, headers: &Headers, body: &[u8]) {
    for (n, v) in headers.iter() {
        if same_name(n, "content-length") {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
}

impl Request {
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Request {
            method,
            uri: uri.into(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Wire form; Content-Length is always computed from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        out.extend_from_slice(format!("{} {} SIP/2.0\r\n", self.method, self.uri).as_bytes());
        write_common(&mut out, &self.headers, &self.body);
        out
    }

    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("call-id")
    }

    pub fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.headers.get("cseq")?)
    }

    /// Top Via's branch: the transaction key (RFC 3261 §17.2.3).
    pub fn branch(&self) -> Option<&str> {
        param(self.headers.get("via")?, "branch")
    }

    pub fn expires(&self) -> Option<u32> {
        self.headers.get("expires")?.trim().parse().ok()
    }
}

impl Response {
    /// A response to `req`: Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6.2),
    /// with a To tag added when the request had none.
    pub fn to(req: &Request, status: u16, reason: &str, to_tag: &str) -> Self {
        let mut headers = Headers::new();
        for v in req.headers.get_all("via") {
            headers.push("Via", v);
        }
        if let Some(f) = req.headers.get("from") {
            headers.push("From", f);
        }
        if let Some(t) = req.headers.get("to") {
            if param(t, "tag").is_some() || status == 100 {
                headers.push("To", t);
            } else {
                headers.push("To", format!("{t};tag={to_tag}"));
            }
        }
        for n in ["Call-ID", "CSeq"] {
            if let Some(v) = req.headers.get(n) {
                headers.push(n, v);
            }
        }
        Response {
            status,
            reason: reason.to_owned(),
            headers,
            body: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384 + self.body.len());
        out.extend_from_slice(format!("SIP/2.0 {} {}\r\n", self.status, self.reason).as_bytes());
        write_common(&mut out, &self.headers, &self.body);
        out
    }

    pub fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.headers.get("cseq")?)
    }

    pub fn branch(&self) -> Option<&str> {
        param(self.headers.get("via")?, "branch")
    }
}

pub fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let (n, m) = v.trim().split_once(char::is_whitespace)?;
    Some((n.trim().parse().ok()?, Method::parse(m.trim())))
}

/// A `;name=value` parameter of a header value (outside any `<...>` URI).
pub fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let after_uri = match header.rfind('>') {
        Some(i) => &header[i + 1..],
        None => header,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The user part of the URI in a From/To/Contact header or a Request-URI (`sip:USER@host`).
pub fn uri_user(v: &str) -> Option<&str> {
    let start = v
        .find("sip:")
        .map(|i| i + 4)
        .or_else(|| v.find("sips:").map(|i| i + 5))?;
    let rest = &v[start..];
    let end = rest.find('@')?;
    Some(&rest[..end])
}

/// The URI inside `<...>` (or the bare value before parameters).
pub fn header_uri(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// Reason phrases for the codes this platform sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        481 => "Call/Transaction Does Not Exist",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG_401: &[u8] = b"SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP 10.0.8.2:5060;rport=5060;branch=z9hG4bK1;received=10.0.8.2\r\n\
From: <sip:51012400012000000001@5101240001>;tag=abc\r\n\
To: <sip:51012400012000000001@5101240001>;tag=srv\r\n\
Call-ID: 42@10.0.8.2\r\n\
CSeq: 1 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"5101000000\", nonce=\"n1\", algorithm=MD5\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_response() {
        let (m, used) = Message::parse(REG_401, true).unwrap();
        assert_eq!(used, REG_401.len());
        let Message::Response(r) = m else { panic!() };
        assert_eq!(r.status, 401);
        assert_eq!(r.cseq(), Some((1, Method::Register)));
        assert_eq!(r.branch(), Some("z9hG4bK1"));
        assert!(
            r.headers
                .get("www-authenticate")
                .unwrap()
                .contains("5101000000")
        );
    }

    #[test]
    fn stream_framing_waits_for_the_body_and_splits_pipelined_messages() {
        let mut req = Request::new(Method::Message, "sip:1@2");
        req.headers.push("Call-ID", "x");
        req.headers.push("CSeq", "3 MESSAGE");
        req.body = "<Query>中</Query>".as_bytes().to_vec();
        let one = req.to_bytes();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert_eq!(
            Message::parse(&one[..one.len() - 1], true),
            Err(ParseError::Incomplete)
        );
        let (m, used) = Message::parse(&two, true).unwrap();
        assert_eq!(used, one.len());
        let Message::Request(m) = m else { panic!() };
        assert_eq!((m.method, &m.body), (Method::Message, &req.body));
        let (m2, used2) = Message::parse(&two[used..], true).unwrap();
        assert_eq!(used2, one.len());
        assert_eq!(m2.headers().get("call-id"), Some("x"));
    }

    #[test]
    fn compact_headers_and_params() {
        let raw = b"OPTIONS sip:51012400012000000001@10.0.8.2:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\
f: <sip:51010000002000000001@5101000000>;tag=t1\r\n\
t: <sip:51012400012000000001@5101240001>\r\n\
i: c1\r\nCSeq: 9 OPTIONS\r\nl: 0\r\n\r\n";
        let (Message::Request(r), _) = Message::parse(raw, false).unwrap() else {
            panic!()
        };
        assert_eq!(r.method, Method::Options);
        assert_eq!(r.branch(), Some("z9hG4bKx"));
        assert_eq!(r.call_id(), Some("c1"));
        assert_eq!(param(r.headers.get("from").unwrap(), "tag"), Some("t1"));
        assert_eq!(
            uri_user(r.headers.get("from").unwrap()),
            Some("51010000002000000001")
        );
        let resp = Response::to(&r, 200, "OK", "mytag");
        let (Message::Response(back), _) = Message::parse(&resp.to_bytes(), true).unwrap() else {
            panic!()
        };
        assert_eq!(param(back.headers.get("to").unwrap(), "tag"), Some("mytag"));
        assert_eq!(back.headers.get("via"), r.headers.get("via"));
        assert_eq!(back.cseq(), Some((9, Method::Options)));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Message::parse(b"hello\r\n\r\n", false).is_err());
        assert!(Message::parse(b"SIP/2.0 abc OK\r\n\r\n", false).is_err());
    }
}
