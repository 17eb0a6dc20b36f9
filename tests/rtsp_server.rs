//! The RTSP test camera (`tests/fixtures/rtsp_server.py`) against real clients: ffprobe,
//! ffmpeg and a raw RTSP-over-TCP client, so the recorder tests can trust what it serves.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use xueliang_tests::rtsp::*;

fn need_gst() {
    assert!(
        gst_available(),
        "{PYTHON} cannot run GStreamer's RTSP server (python3-gi, python3-gst-1.0, \
         gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly): run deploy/install-deps.sh test"
    );
}

fn assert_video(stream: &serde_json::Value, codec: Codec, width: u32, height: u32) {
    assert_eq!(stream["codec_type"], "video", "{stream:#}");
    assert_eq!(stream["codec_name"], codec.ffprobe_name(), "{stream:#}");
    assert_eq!(stream["width"], width, "{stream:#}");
    assert_eq!(stream["height"], height, "{stream:#}");
}

/// (pts in 1/90000 s if known, key frame) of each video packet ffprobe reads in `secs`.
fn packets(url: &str, secs: f64) -> (serde_json::Value, Vec<(Option<i64>, bool)>) {
    let interval = format!("%+{secs}");
    let v = ffprobe_json(&[
        "-rtsp_transport",
        "tcp",
        "-select_streams",
        "v",
        "-show_streams",
        "-show_packets",
        "-show_entries",
        "packet=pts,flags:stream",
        "-read_intervals",
        &interval,
        url,
    ]);
    let list = v["packets"]
        .as_array()
        .unwrap_or_else(|| panic!("no packets: {v:#}"))
        .iter()
        .map(|p| {
            (
                p["pts"].as_i64(),
                p["flags"].as_str().unwrap_or("").starts_with('K'),
            )
        })
        .collect();
    (v["streams"][0].clone(), list)
}

/// Index of each key packet; asserts they are exactly `gop` packets (and `gop` frames of
/// pts) apart.
fn assert_key_every(list: &[(Option<i64>, bool)], gop: usize, fps: u32) -> Vec<usize> {
    let keys: Vec<usize> = (0..list.len()).filter(|&i| list[i].1).collect();
    for w in keys.windows(2) {
        assert_eq!(
            w[1] - w[0],
            gop,
            "key frames at packets {keys:?}, want one every {gop}"
        );
        if let (Some(a), Some(b)) = (list[w[0]].0, list[w[1]].0) {
            assert_eq!(
                b - a,
                i64::from(90_000 / fps) * gop as i64,
                "pts between key packets {w:?}"
            );
        }
    }
    keys
}

#[test]
fn h264_over_tcp_and_udp_has_the_configured_codec_and_size() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().size(480, 270).gop(25));
    for transport in ["tcp", "udp"] {
        let s = probe_video(&cam.url(), transport);
        assert_video(&s, Codec::H264, 480, 270);
    }
    // The clients really used both lower transports.
    let log = cam.log();
    assert!(
        log.contains("SETUP RTP/AVP/TCP;unicast;interleaved="),
        "{log}"
    );
    assert!(log.contains("client_port="), "{log}");
    assert!(log.contains("client 1 connected"), "{log}");
    assert!(log.contains("client 1 disconnected"), "{log}");
}

#[test]
fn h265_over_tcp_has_the_configured_codec_and_size() {
    need_gst();
    if !h265_available() {
        eprintln!("skipped: x265enc (gstreamer1.0-plugins-bad) is not available");
        return;
    }
    let cam = RtspServer::start(
        &RtspOptions::default()
            .codec(Codec::H265)
            .size(352, 288)
            .gop(25),
    );
    let (s, list) = packets(&cam.url(), 2.2);
    assert_video(&s, Codec::H265, 352, 288);
    let keys = assert_key_every(&list, 25, 25);
    assert!(keys.len() >= 2, "key packets {keys:?} of {}", list.len());
}

#[test]
fn digest_auth_admits_only_the_configured_user() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().gop(25).auth("viewer", "s3cret-pw"));
    assert!(!cam.url().contains('@'), "{}", cam.url());
    let s = probe_video(&cam.url_with_credentials(), "tcp");
    assert_video(&s, Codec::H264, 640, 360);

    for (url, what) in [
        (cam.url_with("viewer", "wrong-pw"), "wrong password"),
        (cam.url_with("intruder", "s3cret-pw"), "wrong user"),
        (cam.url(), "no credentials"),
    ] {
        let out = ffprobe(&["-rtsp_transport", "tcp", "-show_streams", &url]);
        assert!(!out.status.success(), "{what}: ffprobe succeeded");
        assert!(
            out.stderr.contains("401 Unauthorized"),
            "{what}: {}",
            out.stderr
        );
    }

    // The challenge is Digest only (no Basic fallback).
    let mut c = RawRtsp::connect(cam.port());
    let r = c.request("DESCRIBE", &cam.url(), &[("Accept", "application/sdp")]);
    assert_eq!(r.status, 401, "{r:?}");
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(!challenges.is_empty(), "{r:?}");
    assert!(
        challenges.iter().all(|v| v.starts_with("Digest ")),
        "{challenges:?}"
    );
}

#[test]
fn key_frames_come_exactly_every_gop() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().gop(25).fps(25));
    let (stream, list) = packets(&cam.url(), 4.2);
    assert_eq!(stream["has_b_frames"], 0, "{stream:#}");
    let keys = assert_key_every(&list, 25, 25);
    // ~4.2 s at 25 fps: key frames at 0, 1, 2, 3 and 4 s.
    assert!(keys.len() >= 4, "key packets {keys:?} of {}", list.len());
    assert!(list.len() >= 95, "only {} packets in 4.2 s", list.len());
}

#[test]
fn bframes_and_a_short_gop_are_honoured() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().gop(15).bframes(2));
    let (stream, list) = packets(&cam.url(), 2.2);
    assert_eq!(stream["profile"], "Main", "{stream:#}");
    assert!(
        stream["has_b_frames"].as_i64().unwrap_or(0) >= 1,
        "{stream:#}"
    );
    let keys = assert_key_every(&list, 15, 25);
    assert!(keys.len() >= 3, "key packets {keys:?} of {}", list.len());
    // Decode order differs from presentation order.
    let pts: Vec<i64> = list.iter().filter_map(|p| p.0).collect();
    assert!(
        pts.windows(2).any(|w| w[1] < w[0]),
        "pts always increase: {pts:?}"
    );
}

#[test]
fn stall_stops_frames_on_an_open_connection_and_resume_restarts_them() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().gop(25));
    let mut ff = FrameCounter::start(&cam.url(), "tcp");
    ff.wait_frames(25, Duration::from_secs(10));

    cam.stall();
    std::thread::sleep(Duration::from_millis(700)); // what was already queued
    let at_stall = ff.frames();
    std::thread::sleep(Duration::from_millis(2500));
    let later = ff.frames();
    assert_eq!(
        later,
        at_stall,
        "frames arrived during the stall; log:\n{}",
        cam.log()
    );
    assert!(
        ff.running(),
        "ffmpeg gave up during the stall: {}",
        ff.stderr()
    );

    cam.resume();
    let took = ff.wait_frames(later + 25, Duration::from_secs(5));
    eprintln!("25 frames {took:?} after resume");
    assert!(ff.running(), "{}", ff.stderr());
}

#[test]
fn stalled_session_stays_open_and_answers_keepalives() {
    need_gst();
    let cam = RtspServer::start(&RtspOptions::default().gop(25));
    let url = cam.url();
    let mut c = RawRtsp::connect(cam.port());
    let session = c.play_tcp(&url);

    let before = c.pump(Duration::from_secs(1));
    assert!(before[0] > 10, "RTP packets before the stall: {before:?}");

    cam.stall();
    c.pump(Duration::from_millis(500)); // what was already queued
    let mut during = c.pump(Duration::from_millis(1000));
    for method in ["GET_PARAMETER", "OPTIONS"] {
        let r = c.request(method, &url, &[("Session", &session)]);
        assert_eq!(r.status, 200, "{method} during the stall: {r:?}");
    }
    let rest = c.pump(Duration::from_millis(1500));
    during[0] += rest[0];
    during[1] += rest[1];
    assert_eq!(during[0], 0, "RTP packets during the stall: {during:?}");

    // A new client still gets the (shared, prepared) stream described.
    let mut c2 = RawRtsp::connect(cam.port());
    let d = c2.request("DESCRIBE", &url, &[("Accept", "application/sdp")]);
    assert_eq!(d.status, 200, "{d:?}");
    assert!(d.body.contains("m=video"), "{}", d.body);
    assert!(d.body.contains("sprop-parameter-sets="), "{}", d.body);
    assert!(d.body.contains("profile-level-id="), "{}", d.body);

    cam.resume();
    let after = c.pump(Duration::from_millis(1500));
    assert!(after[0] > 10, "RTP packets after resume: {after:?}");
    let r = c.request("TEARDOWN", &url, &[("Session", &session)]);
    assert_eq!(r.status, 200, "{r:?}");
    eprintln!(
        "interleaved packets [rtp, rtcp]: 1 s before {before:?}, 2.5 s stalled {during:?}, \
         1.5 s after {after:?}"
    );
}

#[test]
fn started_stalled_answers_describe_only_after_resume() {
    need_gst();
    let mut cam = RtspServer::start(&RtspOptions::default().gop(25).stalled(true));
    let mut c = RawRtsp::connect(cam.port());
    c.send("DESCRIBE", &cam.url(), &[("Accept", "application/sdp")]);
    assert!(
        c.read_reply(Duration::from_millis(1500)).is_none(),
        "DESCRIBE answered while stalled"
    );
    cam.resume();
    let r = c
        .read_reply(Duration::from_secs(5))
        .expect("DESCRIBE answered after resume");
    assert_eq!(r.status, 200, "{r:?}");
    drop(c);

    let st = cam.terminate();
    assert!(st.success(), "SIGTERM exit: {st}; log:\n{}", cam.log());
    assert!(cam.log().contains("SIGTERM: exiting"), "{}", cam.log());
}

#[test]
fn restart_serves_again_on_the_same_port() {
    need_gst();
    let mut cam = RtspServer::start(&RtspOptions::default().gop(25));
    let (port, url) = (cam.port(), cam.url());
    let mut ff = FrameCounter::start(&url, "tcp");
    ff.wait_frames(10, Duration::from_secs(10));

    let t = Instant::now();
    cam.restart();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(cam.port(), port);
    assert_eq!(cam.url(), url);
    // The old connection died with the old process.
    assert!(
        ff.wait_exit(Duration::from_secs(5)).is_some(),
        "ffmpeg still running after the server was killed"
    );

    let s = probe_video(&url, "tcp");
    assert_video(&s, Codec::H264, 640, 360);
    assert!(cam.log().contains("--- restart ---"), "{}", cam.log());
}

#[test]
fn transports_limit_what_setup_accepts() {
    need_gst();
    for (allowed, ok, refused) in [
        (Transports::Tcp, "tcp", "udp"),
        (Transports::Udp, "udp", "tcp"),
    ] {
        let cam = RtspServer::start(&RtspOptions::default().gop(25).transports(allowed));
        assert_video(&probe_video(&cam.url(), ok), Codec::H264, 640, 360);
        let out = ffprobe(&["-rtsp_transport", refused, "-show_streams", &cam.url()]);
        assert!(
            !out.status.success(),
            "{refused} accepted by a {ok}-only server"
        );
        assert!(
            out.stderr.contains("461 Unsupported transport"),
            "{refused}: {}",
            out.stderr
        );
    }
}

#[test]
fn shared_means_one_pipeline_for_all_clients() {
    need_gst();
    for (shared, pipelines) in [(true, 1), (false, 2)] {
        let cam = RtspServer::start(&RtspOptions::default().gop(25).shared(shared));
        let mut a = FrameCounter::start(&cam.url(), "tcp");
        a.wait_frames(5, Duration::from_secs(10));
        let mut b = FrameCounter::start(&cam.url(), "tcp");
        b.wait_frames(5, Duration::from_secs(10));
        assert_eq!(
            cam.log_count("media configured"),
            pipelines,
            "shared={shared}; log:\n{}",
            cam.log()
        );
    }
}

// -- a raw RTSP/1.0 client over TCP ----------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Msg {
    /// An interleaved `$` frame on this channel.
    Data(u8),
    Reply(Reply),
}

struct RawRtsp {
    r: BufReader<TcpStream>,
    cseq: u32,
    /// Interleaved frames seen while waiting for replies, per channel 0 (RTP) and 1 (RTCP).
    skipped: [u64; 2],
}

impl RawRtsp {
    fn connect(port: u16) -> RawRtsp {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the camera");
        RawRtsp {
            r: BufReader::new(s),
            cseq: 0,
            skipped: [0; 2],
        }
    }

    fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) {
        self.cseq += 1;
        let mut req = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: xueliang-tests\r\n",
            self.cseq
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.r
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write request");
    }

    /// The next message, or None if nothing starts within `wait`.
    fn read_msg(&mut self, wait: Duration) -> Option<Msg> {
        let s = self.r.get_ref();
        s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("timeout");
        match self.r.fill_buf() {
            Ok([]) => panic!("the camera closed the connection"),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
        // A message has started: the rest must follow promptly.
        self.r
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        if self.r.fill_buf().expect("read")[0] == b'$' {
            let mut head = [0u8; 4];
            self.r.read_exact(&mut head).expect("interleaved header");
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let mut payload = vec![0u8; len];
            self.r
                .read_exact(&mut payload)
                .expect("interleaved payload");
            return Some(Msg::Data(head[1]));
        }
        let mut status_line = String::new();
        self.r.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut reply = Reply {
            status,
            headers,
            body: String::new(),
        };
        let len: usize = reply
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).expect("body");
        reply.body = String::from_utf8_lossy(&body).into_owned();
        Some(Msg::Reply(reply))
    }

    /// The reply to the last request, skipping (and counting) interleaved frames.
    fn read_reply(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read_msg(left)? {
                Msg::Data(ch) => self.skipped[usize::from(ch & 1)] += 1,
                Msg::Reply(r) => {
                    assert_eq!(
                        r.header("CSeq"),
                        Some(self.cseq.to_string().as_str()),
                        "{r:?}"
                    );
                    return Some(r);
                }
            }
        }
    }

    fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(method, url, headers);
        self.read_reply(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no reply to {method} within 10 s"))
    }

    /// Counts interleaved frames [channel 0, channel 1] arriving during `d`.
    fn pump(&mut self, d: Duration) -> [u64; 2] {
        let mut n = std::mem::take(&mut self.skipped);
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            match self.read_msg(left) {
                None => {}
                Some(Msg::Data(ch)) => n[usize::from(ch & 1)] += 1,
                Some(Msg::Reply(r)) => panic!("unexpected reply {r:?}"),
            }
        }
    }

    /// DESCRIBE, SETUP (interleaved TCP) and PLAY; returns the session id.
    fn play_tcp(&mut self, url: &str) -> String {
        let d = self.request("DESCRIBE", url, &[("Accept", "application/sdp")]);
        assert_eq!(d.status, 200, "{d:?}");
        let base = d
            .header("Content-Base")
            .map_or_else(|| format!("{url}/"), str::to_owned);
        let control = d
            .body
            .lines()
            .skip_while(|l| !l.starts_with("m=video"))
            .find_map(|l| l.trim().strip_prefix("a=control:"))
            .unwrap_or_else(|| panic!("no video control in SDP:\n{}", d.body))
            .to_owned();
        let track = if control.starts_with("rtsp://") {
            control
        } else {
            format!("{base}{control}")
        };
        let s = self.request(
            "SETUP",
            &track,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        );
        assert_eq!(s.status, 200, "{s:?}");
        let session = s
            .header("Session")
            .and_then(|v| v.split(';').next())
            .expect("Session header")
            .to_owned();
        let p = self.request("PLAY", url, &[("Session", &session), ("Range", "npt=0-")]);
        assert_eq!(p.status, 200, "{p:?}");
        session
    }
}
