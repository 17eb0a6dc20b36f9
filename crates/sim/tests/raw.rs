//! The simulator through a raw in-process RTSP client: status codes, keepalives, session
//! timeouts, scheduled faults and a small load test.

mod common;

use std::time::Duration;

use common::{Raw, camera, clip, serve, serve_with_timeout};
use tokio::time::Instant;
use xueliang_core::media::VideoCodec;
use xueliang_sim::Fault;

#[tokio::test]
async fn error_answers() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let r = raw.request("OPTIONS", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("Public").unwrap().contains("GET_PARAMETER"));
    for path in ["/cam/99", "/cam/0", "/cam/1/sub", "/nothing"] {
        let r = raw.request("DESCRIBE", &srv.url(path), &[]).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    let r = raw
        .request("PLAY", &srv.url("/cam/1"), &[("Session", "DEADBEEF")])
        .await;
    assert_eq!(r.status, 454);
    let r = raw
        .request(
            "SETUP",
            &srv.url("/cam/1/trackID=0"),
            &[("Transport", "RTP/SAVP;unicast;client_port=4000-4001")],
        )
        .await;
    assert_eq!(r.status, 461);
    let r = raw
        .request(
            "SETUP",
            &srv.url("/cam/1/trackID=0"),
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("Session").unwrap().ends_with(";timeout=60"));
    let session = r.session();
    let r = raw
        .request("PAUSE", &srv.url("/cam/1"), &[("Session", &session)])
        .await;
    assert_eq!(r.status, 405);
    let r = raw.request("FROB", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 501);
    // No CSeq: 400, connection stays usable.
    raw.send_raw(b"OPTIONS * RTSP/1.0\r\n\r\n").await;
    let r = raw.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("CSeq"), None);
    let r = raw.request("OPTIONS", "*", &[]).await;
    assert_eq!(r.status, 200);
    // Garbage: 400, then the connection is closed.
    raw.send_raw(b"HELLO\r\n\r\n").await;
    let r = raw.response().await;
    assert_eq!(r.status, 400);
    raw.read_for(Duration::from_secs(2)).await;
    assert!(raw.eof, "closed after a malformed request");
    srv.stop().await;
}

#[tokio::test]
async fn second_stream_in_one_session_is_459() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c.clone(), vec![]), camera(c, vec![])], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let t = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")];
    let r = raw.request("SETUP", &srv.url("/cam/1/trackID=0"), &t).await;
    let session = r.session();
    let r = raw
        .request(
            "SETUP",
            &srv.url("/cam/2/trackID=0"),
            &[t[0], ("Session", &session)],
        )
        .await;
    assert_eq!(r.status, 459);
    srv.stop().await;
}

#[tokio::test]
async fn keepalives_are_answered_while_playing() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let url = srv.url("/cam/1");
    let session = raw.play_tcp(&url).await;
    raw.read_for(Duration::from_millis(500)).await;
    let r = raw
        .request("GET_PARAMETER", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.session(), session);
    let r = raw
        .request("SET_PARAMETER", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 200);
    raw.read_for(Duration::from_millis(500)).await;
    assert!(raw.frames() >= 15, "frames: {}", raw.frames());
    // Sequence numbers are consecutive on one SSRC.
    assert!(
        raw.rtp
            .windows(2)
            .all(|w| w[1].seq == w[0].seq.wrapping_add(1))
    );
    assert!(
        raw.rtp
            .iter()
            .all(|p| p.ssrc == raw.rtp[0].ssrc && p.channel == 0)
    );
    let r = raw
        .request("TEARDOWN", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 200);
    let r = raw
        .request("GET_PARAMETER", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 454);
    srv.stop().await;
}

#[tokio::test]
async fn silent_sessions_time_out() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve_with_timeout(vec![camera(c, vec![])], None, Duration::from_secs(2)).await;
    let mut raw = Raw::connect(srv.addr).await;
    let url = srv.url("/cam/1");
    let session = raw.play_tcp(&url).await;
    let played = Instant::now();
    raw.read_for(Duration::from_secs(4)).await;
    let last = raw.rtp.last().expect("some RTP").at;
    let ran = last.duration_since(played);
    assert!(
        ran > Duration::from_millis(1500) && ran < Duration::from_millis(3000),
        "RTP should stop about 2 s after the last request, stopped after {ran:?}"
    );
    let r = raw
        .request("GET_PARAMETER", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 454);
    srv.stop().await;
}

#[tokio::test]
async fn raw_digest_challenge() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], Some(("admin", "pw"))).await;
    let mut raw = Raw::connect(srv.addr).await;
    let r = raw.request("OPTIONS", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 200, "OPTIONS needs no credentials");
    let r = raw.request("DESCRIBE", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 401);
    let ch = r.header("WWW-Authenticate").unwrap();
    assert!(
        ch.starts_with("Digest realm=\"xueliang-sim\", nonce=\""),
        "{ch}"
    );
    let r = raw
        .request(
            "DESCRIBE",
            &srv.url("/cam/1"),
            &[("Authorization", "Digest username=\"admin\", realm=\"xueliang-sim\", nonce=\"00000000000000000000000000000000\", uri=\"x\", response=\"0\"")],
        )
        .await;
    assert_eq!(r.status, 401);
    srv.stop().await;
}

#[tokio::test]
async fn refuse_auth_fault_answers_401_then_recovers() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let faults = vec![Fault::RefuseAuth {
        from: Duration::ZERO,
        until: Duration::from_secs(1),
    }];
    let srv = serve(vec![camera(c, faults)], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let r = raw.request("DESCRIBE", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = raw.request("DESCRIBE", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn drop_fault_closes_the_connection() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let faults = vec![Fault::Drop {
        at: Duration::from_secs(1),
    }];
    let srv = serve(vec![camera(c, faults)], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let _ = raw.play_tcp(&srv.url("/cam/1")).await;
    let played = Instant::now();
    raw.read_for(Duration::from_secs(5)).await;
    let closed = played.elapsed();
    assert!(raw.eof, "the connection should be closed");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}"
    );
    assert!(
        raw.frames() >= 15,
        "frames before the drop: {}",
        raw.frames()
    );
    srv.stop().await;
}

#[tokio::test]
async fn stall_fault_stops_rtp_but_not_rtsp() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let faults = vec![Fault::Stall {
        at: Duration::from_secs(1),
        for_: Duration::from_millis(1500),
    }];
    let srv = serve(vec![camera(c, faults)], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let url = srv.url("/cam/1");
    let session = raw.play_tcp(&url).await;
    let played = Instant::now();
    raw.read_for(Duration::from_millis(1800)).await;
    let r = raw
        .request("GET_PARAMETER", &url, &[("Session", &session)])
        .await;
    assert_eq!(r.status, 200, "RTSP answers during the stall");
    raw.read_for(Duration::from_millis(2700)).await;
    assert!(!raw.eof);
    let t = |p: &common::Rtp| p.at.duration_since(played);
    let before = raw
        .rtp
        .iter()
        .filter(|p| t(p) < Duration::from_millis(900))
        .count();
    let during = raw
        .rtp
        .iter()
        .filter(|p| (Duration::from_millis(1200)..Duration::from_millis(2400)).contains(&t(p)))
        .count();
    let after = raw
        .rtp
        .iter()
        .filter(|p| t(p) > Duration::from_millis(2600))
        .count();
    assert!(before > 0 && after > 0, "before {before}, after {after}");
    assert_eq!(during, 0, "no RTP during the stall");
    srv.stop().await;
}

#[tokio::test]
async fn new_ssrc_fault_restarts_the_stream() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let faults = vec![Fault::NewSsrc {
        at: Duration::from_millis(700),
    }];
    let srv = serve(vec![camera(c, faults)], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let _ = raw.play_tcp(&srv.url("/cam/1")).await;
    raw.read_for(Duration::from_millis(1500)).await;
    let first = raw.rtp[0].ssrc;
    let switched = raw
        .rtp
        .iter()
        .position(|p| p.ssrc != first)
        .expect("a new SSRC");
    assert!(
        raw.rtp[switched..]
            .iter()
            .all(|p| p.ssrc == raw.rtp[switched].ssrc)
    );
    assert!(
        raw.rtp[switched - 1].marker,
        "the switch happens between pictures"
    );
    srv.stop().await;
}

#[tokio::test]
async fn slow_start_delays_describe() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let faults = vec![Fault::SlowStart {
        delay: Duration::from_millis(1500),
    }];
    let srv = serve(vec![camera(c, faults)], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let t = Instant::now();
    let r = raw.request("OPTIONS", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
    let t = Instant::now();
    let r = raw.request("DESCRIBE", &srv.url("/cam/1"), &[]).await;
    assert_eq!(r.status, 200);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1450) && took < Duration::from_secs(4),
        "DESCRIBE took {took:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_32_tcp_sessions() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let url = srv.url("/cam/1");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = url.clone();
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            let _ = raw.play_tcp(&url).await;
            raw.read_for(Duration::from_secs(3)).await;
            assert!(!raw.eof);
            raw.frames()
        }));
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    // 25 fps for 3 s is 75 pictures; allow for start-up and a loaded CI box.
    assert!(
        counts.iter().all(|n| (55..=80).contains(n)),
        "pictures per session: {counts:?}"
    );
    srv.stop().await;
}

/// CPU cost of 256 TCP sessions. Ignored by default (it measures, it does not check much, and
/// the number depends on the build profile); run with
/// `cargo test -p xueliang-sim --release --test raw -- --ignored --nocapture cpu_of_256`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement to run by hand, not a check"]
async fn cpu_of_256_tcp_sessions() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    fn cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    let c = clip(VideoCodec::H264, 640, 360).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let mut tasks = Vec::new();
    for i in 0..256 {
        let addr = srv.addr;
        let url = srv.url("/cam/1");
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            let r = raw.request("DESCRIBE", &url, &[]).await;
            assert_eq!(r.status, 200);
            let r = raw
                .request(
                    "SETUP",
                    &format!("{url}/trackID=0"),
                    &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
                )
                .await;
            let session = r.session();
            // Send PLAY by hand and then just count bytes: the client should cost next to
            // nothing so the measurement is mostly the server.
            let mut stream = raw.into_stream();
            let req = format!(
                "PLAY {url} RTSP/1.0\r\nCSeq: {}\r\nSession: {session}\r\n\r\n",
                10 + i
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut total = 0usize;
            let mut buf = vec![0u8; 65536];
            let deadline = Instant::now() + Duration::from_secs(6);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, c0) = (Instant::now(), cpu_ticks());
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    let (secs, ticks) = (t0.elapsed().as_secs_f64(), cpu_ticks() - c0);
    let cpu = ticks as f64 / 100.0 / secs * 100.0;
    eprintln!(
        "256 sessions: {:.1} MB/s in all, process CPU {cpu:.0}% of one core (server and clients)",
        bytes as f64 / 6.0 / 1e6
    );
    srv.stop().await;
}

/// Over UDP, the client's RTCP receiver reports keep a session alive without RTSP keepalives;
/// when they stop, the session times out and RTP stops.
#[tokio::test]
async fn udp_session_kept_alive_by_rtcp_reports() {
    use tokio::net::UdpSocket;

    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve_with_timeout(vec![camera(c, vec![])], None, Duration::from_secs(1)).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (rtp_port, rtcp_port) = (
        rtp.local_addr().unwrap().port(),
        rtcp.local_addr().unwrap().port(),
    );
    let mut raw = Raw::connect(srv.addr).await;
    let url = srv.url("/cam/1");
    let transport = format!("RTP/AVP;unicast;client_port={rtp_port}-{rtcp_port}");
    let r = raw
        .request(
            "SETUP",
            &format!("{url}/trackID=0"),
            &[("Transport", &transport)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.header("Transport").unwrap();
    let server_rtcp: u16 = t
        .split(';')
        .find_map(|p| p.strip_prefix("server_port="))
        .and_then(|p| p.split('-').nth(1))
        .and_then(|p| p.parse().ok())
        .expect("server_port");
    let r = raw
        .request("PLAY", &url, &[("Session", &r.session())])
        .await;
    assert_eq!(r.status, 200);

    // Receives RTP for `d`, sending a receiver report every 300 ms if `report`; returns the
    // arrival times.
    async fn receive(
        rtp: &UdpSocket,
        rtcp: &UdpSocket,
        server_rtcp: u16,
        d: Duration,
        report: bool,
    ) -> Vec<Instant> {
        let end = Instant::now() + d;
        let mut next_rr = Instant::now();
        let mut arrivals = Vec::new();
        let mut buf = vec![0u8; 2048];
        while Instant::now() < end {
            if report && Instant::now() >= next_rr {
                let rr = [0x80, 201, 0, 1, 1, 2, 3, 4];
                rtcp.send_to(&rr, ("127.0.0.1", server_rtcp)).await.unwrap();
                next_rr += Duration::from_millis(300);
            }
            let wait = end.min(next_rr.max(Instant::now() + Duration::from_millis(10)));
            if let Ok(Ok(_)) = tokio::time::timeout_at(wait, rtp.recv_from(&mut buf)).await {
                arrivals.push(Instant::now());
            }
        }
        arrivals
    }

    let kept = receive(&rtp, &rtcp, server_rtcp, Duration::from_secs(3), true).await;
    let last = *kept.last().expect("RTP over UDP");
    assert!(
        last.elapsed() < Duration::from_millis(300),
        "RTP should still flow after 3 s of receiver reports (1 s timeout)"
    );
    let started = Instant::now();
    let after = receive(&rtp, &rtcp, server_rtcp, Duration::from_secs(4), false).await;
    let stopped = after
        .last()
        .map_or(Duration::ZERO, |t| t.duration_since(started));
    assert!(
        stopped < Duration::from_millis(2500),
        "RTP should stop within about 2 s of the last report, ran {stopped:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn two_sessions_on_one_connection_get_distinct_channels() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c.clone(), vec![]), camera(c, vec![])], None).await;
    let mut raw = Raw::connect(srv.addr).await;
    let mut channels = Vec::new();
    for cam in ["/cam/1", "/cam/2"] {
        let url = srv.url(cam);
        let r = raw
            .request(
                "SETUP",
                &format!("{url}/trackID=0"),
                &[("Transport", "RTP/AVP/TCP;unicast")],
            )
            .await;
        assert_eq!(r.status, 200);
        channels.push(r.header("Transport").unwrap());
        let r = raw
            .request("PLAY", &url, &[("Session", &r.session())])
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(channels[0].contains("interleaved=0-1"), "{channels:?}");
    assert!(channels[1].contains("interleaved=2-3"), "{channels:?}");
    raw.read_for(Duration::from_millis(1000)).await;
    for ch in [0, 2] {
        let n = raw
            .rtp
            .iter()
            .filter(|p| p.channel == ch && p.marker)
            .count();
        assert!(n >= 15, "channel {ch}: {n} pictures");
    }
    srv.stop().await;
}
