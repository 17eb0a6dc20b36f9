//! MANSCDP XML bodies (GB/T 28181 Annex A): the ones a lower platform sends, and the few fields
//! it needs from the queries it receives. Text is escaped and encoded in the configured charset.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};
use xueliang_core::config::Charset;

use super::{Catalog, Channel, ChannelKind};

/// XML prolog; the label must match the bytes, receivers (dom4j in wvp) decode by it.
fn prolog(charset: Charset) -> &'static str {
    match charset {
        Charset::Gb18030 => "<?xml version=\"1.0\" encoding=\"GB18030\"?>\r\n",
        Charset::Utf8 => "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n",
    }
}

/// Encode the whole document. GB18030 is a superset of GB2312/GBK, so text within GB2312 gives
/// the same bytes a GB2312 receiver expects.
pub fn encode(charset: Charset, text: &str) -> Vec<u8> {
    match charset {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Gb18030 => encoding_rs::GB18030.encode(text).0.into_owned(),
    }
}

/// Decode a received body by its prolog label; no or unknown label → UTF-8 if valid, else GB18030
/// (GB/T 28181-2016 peers that omit the prolog send GB2312).
pub fn decode(body: &[u8]) -> String {
    let head = &body[..body.len().min(100)];
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let label = head
        .find("encoding=")
        .and_then(|i| head[i + 9..].split(['"', '\'']).nth(1).map(str::to_owned));
    let gb = match label.as_deref() {
        Some(l) if l.starts_with("gb") => true,
        Some(_) => false,
        None => std::str::from_utf8(body).is_err(),
    };
    if gb {
        encoding_rs::GB18030
            .decode_without_bom_handling(body)
            .0
            .into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}

/// Escape text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0; drop them rather than emit an
            // unparseable body.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn el(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>\r\n", escape(value));
}

/// Coordinates as GB/T 28181 writes them: decimal degrees, no exponent.
fn coord(v: f64) -> String {
    format!("{v:.6}")
}

/// `Keepalive` notify (§9.6, A.2.5).
pub fn keepalive(sn: u32, device_id: &str, charset: Charset) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Notify>\r\n");
    el(&mut s, "CmdType", "Keepalive");
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "Status", "OK");
    s.push_str("</Notify>\r\n");
    encode(charset, &s)
}

/// What happened to a channel, as a Catalog NOTIFY's `<Event>` says it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CatalogEvent {
    On,
    Off,
    Add,
    Del,
}

impl CatalogEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogEvent::On => "ON",
            CatalogEvent::Off => "OFF",
            CatalogEvent::Add => "ADD",
            CatalogEvent::Del => "DEL",
        }
    }
}

/// A `Catalog` notify for the upper's catalog subscription: each changed channel as a full
/// item with its `<Event>` (wvp reads the item for ADD, the id and event for the rest).
pub fn catalog_notify(
    sn: u32,
    device_id: &str,
    changes: &[(Channel, CatalogEvent)],
    charset: Charset,
) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Notify>\r\n");
    el(&mut s, "CmdType", "Catalog");
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "SumNum", &changes.len().to_string());
    let _ = write!(s, "<DeviceList Num=\"{}\">\r\n", changes.len());
    for (ch, event) in changes {
        item(&mut s, ch, device_id, Some(*event));
    }
    s.push_str("</DeviceList>\r\n</Notify>\r\n");
    encode(charset, &s)
}

fn item(s: &mut String, ch: &Channel, parent_id: &str, event: Option<CatalogEvent>) {
    s.push_str("<Item>\r\n");
    el(s, "DeviceID", &ch.id);
    el(s, "Name", &ch.name);
    el(s, "Manufacturer", "Xueliang");
    el(
        s,
        "Model",
        match ch.kind {
            ChannelKind::Camera => "IPC",
            ChannelKind::AlarmInput => "AlarmInput",
        },
    );
    el(s, "Owner", "0");
    // CivilCode: the administrative division is the first 6 digits of a coding-rule-A id;
    // wvp rejects items without it (issue #554).
    el(s, "CivilCode", ch.id.get(..6).unwrap_or(""));
    el(s, "Address", ch.address.as_deref().unwrap_or(""));
    el(s, "Parental", "0");
    el(s, "ParentID", parent_id);
    el(s, "RegisterWay", "1");
    el(s, "Secrecy", "0");
    el(s, "Status", if ch.online { "ON" } else { "OFF" });
    if let Some((lat, lon)) = ch.location {
        el(s, "Longitude", &coord(lon));
        el(s, "Latitude", &coord(lat));
    }
    if ch.kind == ChannelKind::Camera {
        // PTZType 3 = fixed box camera: the village cameras have no PTZ control here.
        s.push_str("<Info>\r\n");
        el(s, "PTZType", "3");
        s.push_str("</Info>\r\n");
    }
    if let Some(e) = event {
        el(s, "Event", e.as_str());
    }
    s.push_str("</Item>\r\n");
}

/// The `Catalog` response, split into pages of at most `page_size` items. Every page echoes the
/// query's SN and carries the exact `SumNum`, because uppers (wvp) correlate pages by SN and only
/// commit once the unique items received equal SumNum. An empty catalog is one page of zero items.
pub fn catalog_pages(
    sn: u32,
    device_id: &str,
    catalog: &Catalog,
    page_size: usize,
    charset: Charset,
) -> Vec<Vec<u8>> {
    let page_size = page_size.max(1);
    let total = catalog.channels.len();
    let mut chunks: Vec<&[Channel]> = catalog.channels.chunks(page_size).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    chunks
        .into_iter()
        .map(|chunk| {
            let mut s = String::from(prolog(charset));
            s.push_str("<Response>\r\n");
            el(&mut s, "CmdType", "Catalog");
            el(&mut s, "SN", &sn.to_string());
            el(&mut s, "DeviceID", device_id);
            el(&mut s, "SumNum", &total.to_string());
            let _ = write!(s, "<DeviceList Num=\"{}\">\r\n", chunk.len());
            for ch in chunk {
                item(&mut s, ch, device_id, None);
            }
            s.push_str("</DeviceList>\r\n</Response>\r\n");
            encode(charset, &s)
        })
        .collect()
}

/// What the `DeviceInfo` response says about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
}

pub fn device_info(
    sn: u32,
    device_id: &str,
    info: &DeviceInfo,
    channels: usize,
    charset: Charset,
) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Response>\r\n");
    el(&mut s, "CmdType", "DeviceInfo");
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "DeviceName", &info.name);
    el(&mut s, "Result", "OK");
    el(&mut s, "Manufacturer", &info.manufacturer);
    el(&mut s, "Model", &info.model);
    el(&mut s, "Firmware", &info.firmware);
    el(&mut s, "Channel", &channels.to_string());
    s.push_str("</Response>\r\n");
    encode(charset, &s)
}

/// `DeviceStatus` response. `now` is the platform's local wall time (`DeviceTime`).
pub fn device_status(
    sn: u32,
    device_id: &str,
    online: bool,
    now: DateTime<FixedOffset>,
    charset: Charset,
) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Response>\r\n");
    el(&mut s, "CmdType", "DeviceStatus");
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "Result", "OK");
    el(&mut s, "Online", if online { "ONLINE" } else { "OFFLINE" });
    el(&mut s, "Status", "OK");
    el(&mut s, "Encode", "ON");
    el(&mut s, "Record", "ON");
    el(&mut s, "DeviceTime", &gb_time(now));
    s.push_str("</Response>\r\n");
    encode(charset, &s)
}

/// `Response` with `Result` for a SUBSCRIBE (body of its 200) or any other acknowledged query.
pub fn result(cmd_type: &str, sn: u32, device_id: &str, ok: bool, charset: Charset) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Response>\r\n");
    el(&mut s, "CmdType", cmd_type);
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "Result", if ok { "OK" } else { "ERROR" });
    s.push_str("</Response>\r\n");
    encode(charset, &s)
}

/// GB/T 28181 time: local wall time `yyyy-MM-ddTHH:mm:ss`, no zone (A.2.1 dateTime).
pub fn gb_time(t: DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// China Standard Time, the zone GB/T 28181 platforms read zone-less times in.
pub fn china_standard_time() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("constant offset")
}

/// `AlarmMethod` values (A.2.4.9).
pub mod alarm_method {
    pub const TELEPHONE: u8 = 1;
    pub const DEVICE: u8 = 2;
    pub const VIDEO: u8 = 5;
    pub const DEVICE_FAULT: u8 = 6;
}

/// The Alarm notify body (§9.4, A.2.5), built once when the alarm is enqueued so every
/// retransmission is byte-identical, SN included: receivers that dedupe on a hash of the body
/// (gowvp-owl's alarm inbox) then see one alarm.
///
/// `priority` 1 (most urgent) … 4; `method` per [`alarm_method`]; `alarm_type` goes into `<Info>`
/// (2016 profile) and is omitted when `None`, e.g. a panic button (method 2, no type).
#[allow(clippy::too_many_arguments)]
pub fn alarm_body(
    sn: u32,
    device_id: &str,
    priority: u8,
    method: u8,
    alarm_type: Option<u8>,
    time: DateTime<FixedOffset>,
    lat: Option<f64>,
    lon: Option<f64>,
    description: &str,
    charset: Charset,
) -> Vec<u8> {
    let mut s = String::from(prolog(charset));
    s.push_str("<Notify>\r\n");
    el(&mut s, "CmdType", "Alarm");
    el(&mut s, "SN", &sn.to_string());
    el(&mut s, "DeviceID", device_id);
    el(&mut s, "AlarmPriority", &priority.to_string());
    el(&mut s, "AlarmMethod", &method.to_string());
    el(&mut s, "AlarmTime", &gb_time(time));
    el(&mut s, "AlarmDescription", description);
    if let (Some(lat), Some(lon)) = (lat, lon) {
        el(&mut s, "Longitude", &coord(lon));
        el(&mut s, "Latitude", &coord(lat));
    }
    if let Some(t) = alarm_type {
        // Capital-I `<Info>`: wvp emits `<info>` but its own parser reads `Info`, losing the type.
        s.push_str("<Info>\r\n");
        el(&mut s, "AlarmType", &t.to_string());
        s.push_str("</Info>\r\n");
    }
    s.push_str("</Notify>\r\n");
    encode(charset, &s)
}

/// The few fields of a received MANSCDP document the platform dispatches on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Root element: `Query`, `Notify`, `Response` or `Control`.
    pub root: String,
    pub cmd_type: String,
    pub sn: Option<u32>,
    pub device_id: Option<String>,
}

/// Text of the first `<name>` element (case-insensitive: GB/T 28181-2022 transcriptions write
/// `cmdType`, real peers `CmdType`).
pub fn element(doc: &str, name: &str) -> Option<String> {
    let lower = doc.to_ascii_lowercase();
    let open = format!("<{}", name.to_ascii_lowercase());
    let mut from = 0;
    while let Some(i) = lower[from..].find(&open) {
        let start = from + i;
        let after = start + open.len();
        match lower.as_bytes().get(after) {
            Some(b'>') => {
                let body_start = after + 1;
                let close = format!("</{}", name.to_ascii_lowercase());
                let end = lower[body_start..].find(&close)? + body_start;
                return Some(unescape(doc[body_start..end].trim()));
            }
            Some(b' ' | b'\t' | b'\r' | b'\n') => {
                let gt = lower[after..].find('>')? + after;
                if lower.as_bytes()[gt - 1] == b'/' {
                    return Some(String::new());
                }
                let close = format!("</{}", name.to_ascii_lowercase());
                let end = lower[gt + 1..].find(&close)? + gt + 1;
                return Some(unescape(doc[gt + 1..end].trim()));
            }
            Some(b'/') => return Some(String::new()),
            _ => from = after,
        }
    }
    None
}

/// Parse the envelope of a received body (any charset).
pub fn parse_envelope(body: &[u8]) -> Option<Envelope> {
    let doc = decode(body);
    let mut rest = doc.as_str();
    // Skip the prolog and comments to the root element.
    let root = loop {
        let i = rest.find('<')?;
        rest = &rest[i + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        let end = rest.find(|c: char| c == '>' || c.is_whitespace())?;
        break rest[..end].to_owned();
    };
    Some(Envelope {
        root,
        cmd_type: element(&doc, "CmdType")?,
        sn: element(&doc, "SN").and_then(|s| s.parse().ok()),
        device_id: element(&doc, "DeviceID"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cams(n: usize) -> Catalog {
        Catalog {
            channels: (0..n)
                .map(|i| Channel {
                    id: format!("5101240001132{i:07}"),
                    name: format!("村口 <东> & {i}"),
                    kind: ChannelKind::Camera,
                    online: i % 2 == 0,
                    location: Some((30.8, 103.9)),
                    address: None,
                })
                .collect(),
        }
    }

    #[test]
    fn catalog_pages_carry_sumnum_num_and_the_query_sn() {
        let pages = catalog_pages(17, "51012400012000000001", &cams(5), 2, Charset::Utf8);
        assert_eq!(pages.len(), 3);
        let mut ids = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            let doc = decode(p);
            let env = parse_envelope(p).unwrap();
            assert_eq!(env.root, "Response");
            assert_eq!(env.cmd_type, "Catalog");
            assert_eq!(env.sn, Some(17));
            assert_eq!(element(&doc, "SumNum").as_deref(), Some("5"));
            let num = if i < 2 { 2 } else { 1 };
            assert!(doc.contains(&format!("<DeviceList Num=\"{num}\">")));
            assert!(doc.contains("村口 &lt;东&gt; &amp; "));
            ids.extend(
                doc.match_indices("<DeviceID>51012400011")
                    .map(|(j, _)| doc[j..j + 30].to_owned()),
            );
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5);
        let empty = catalog_pages(1, "x", &Catalog::default(), 10, Charset::Utf8);
        assert_eq!(empty.len(), 1);
        assert!(decode(&empty[0]).contains("<SumNum>0</SumNum>"));
    }

    #[test]
    fn gb18030_body_round_trips_and_is_not_utf8() {
        let body = keepalive(1, "x", Charset::Gb18030);
        assert!(decode(&body).contains("encoding=\"GB18030\""));
        let pages = catalog_pages(3, "x", &cams(1), 10, Charset::Gb18030);
        let bytes = &pages[0];
        assert!(std::str::from_utf8(bytes).is_err());
        // 村 is B4 E5 in GB2312, GBK and GB18030 alike.
        assert!(bytes.windows(2).any(|w| w == [0xB4, 0xE5]));
        let text = decode(bytes);
        assert!(text.contains("<Name>村口 &lt;东&gt; &amp; 0</Name>"));
        assert_eq!(element(&text, "Name").unwrap(), "村口 <东> & 0");
    }

    #[test]
    fn alarm_body_is_deterministic_with_all_fields() {
        let t = china_standard_time()
            .with_ymd_and_hms(2026, 5, 1, 21, 14, 3)
            .unwrap();
        let a = alarm_body(
            271828,
            "51012400011340000001",
            1,
            alarm_method::DEVICE,
            None,
            t,
            Some(30.8),
            Some(103.9),
            "一键报警 \"东门\"",
            Charset::Gb18030,
        );
        let b = alarm_body(
            271828,
            "51012400011340000001",
            1,
            alarm_method::DEVICE,
            None,
            t,
            Some(30.8),
            Some(103.9),
            "一键报警 \"东门\"",
            Charset::Gb18030,
        );
        assert_eq!(a, b);
        let doc = decode(&a);
        for (k, v) in [
            ("CmdType", "Alarm"),
            ("SN", "271828"),
            ("AlarmPriority", "1"),
            ("AlarmMethod", "2"),
            ("AlarmTime", "2026-05-01T21:14:03"),
            ("AlarmDescription", "一键报警 \"东门\""),
            ("Longitude", "103.900000"),
            ("Latitude", "30.800000"),
        ] {
            assert_eq!(element(&doc, k).as_deref(), Some(v), "{k}");
        }
        assert!(element(&doc, "AlarmType").is_none());
        let m = alarm_body(
            1,
            "c",
            3,
            alarm_method::VIDEO,
            Some(2),
            t,
            None,
            None,
            "motion",
            Charset::Utf8,
        );
        let doc = decode(&m);
        assert!(doc.contains("<Info>\r\n<AlarmType>2</AlarmType>\r\n</Info>"));
        assert!(element(&doc, "Longitude").is_none());
    }

    #[test]
    fn envelope_of_a_query_in_either_case() {
        let q = b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<cmdType>Catalog</cmdType>\r\n<SN>730412</SN>\r\n<DeviceID>51012400012000000001</DeviceID>\r\n</Query>\r\n";
        let e = parse_envelope(q).unwrap();
        assert_eq!(e.root, "Query");
        assert_eq!(e.cmd_type, "Catalog");
        assert_eq!(e.sn, Some(730412));
        assert_eq!(e.device_id.as_deref(), Some("51012400012000000001"));
        assert!(parse_envelope(b"not xml").is_none());
    }
}
