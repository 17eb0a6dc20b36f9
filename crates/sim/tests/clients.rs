//! Real RTSP clients against the simulator: ffprobe/ffmpeg (libavformat) and GStreamer's
//! rtspsrc, over TCP and UDP, H.264 and H.265.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{camera, clip, serve};
use tokio::time::Instant;
use xueliang_core::media::VideoCodec;
use xueliang_sim::SimCamera;

async fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
        .expect("start the client")
}

async fn probe(url: &str, transport: &str) -> Output {
    run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "default=nw=1",
            url,
        ],
        Duration::from_secs(15),
    )
    .await
}

async fn ffprobe_reports(codec: VideoCodec, transport: &str) {
    let c = clip(codec, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let out = probe(&srv.url("/cam/1"), transport).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = match codec {
        VideoCodec::H264 => "h264",
        VideoCodec::H265 => "hevc",
    };
    assert!(stdout.contains(&format!("codec_name={name}")), "{stdout}");
    assert!(stdout.contains("width=320"), "{stdout}");
    assert!(stdout.contains("height=240"), "{stdout}");
    srv.stop().await;
}

#[tokio::test]
async fn ffprobe_h264_tcp() {
    ffprobe_reports(VideoCodec::H264, "tcp").await;
}

#[tokio::test]
async fn ffprobe_h264_udp() {
    ffprobe_reports(VideoCodec::H264, "udp").await;
}

#[tokio::test]
async fn ffprobe_h265_tcp() {
    ffprobe_reports(VideoCodec::H265, "tcp").await;
}

#[tokio::test]
async fn ffprobe_h265_udp() {
    ffprobe_reports(VideoCodec::H265, "udp").await;
}

#[tokio::test]
async fn ffprobe_reads_sub_streams_and_several_cameras() {
    let main = clip(VideoCodec::H264, 320, 240).await;
    let sub = clip(VideoCodec::H264, 160, 120).await;
    let other = clip(VideoCodec::H265, 320, 240).await;
    let srv = serve(
        vec![
            SimCamera {
                main,
                sub: Some(sub),
                faults: vec![],
            },
            camera(other, vec![]),
        ],
        None,
    )
    .await;
    for (path, want) in [
        ("/cam/1/sub", "codec_name=h264\nwidth=160\nheight=120"),
        ("/cam/2", "codec_name=hevc\nwidth=320\nheight=240"),
    ] {
        let out = probe(&srv.url(path), "tcp").await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), want, "{path}");
    }
    srv.stop().await;
}

/// Reads 3 s of a 1 s clip with `-c copy` and checks the frame count and that timestamps keep
/// increasing across both loop boundaries.
async fn ffmpeg_reads_three_seconds(codec: VideoCodec, transport: &str) {
    let c = clip(codec, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let url = srv.url("/cam/1");
    let started = Instant::now();
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-i",
            &url,
            "-t",
            "3",
            "-c",
            "copy",
            "-f",
            "framecrc",
            "-",
        ],
        Duration::from_secs(20),
    )
    .await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg failed: {stderr}");
    assert!(stderr.trim().is_empty(), "ffmpeg reported errors: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // framecrc lines: stream, dts, pts, duration, size, crc
    let pts: Vec<i64> = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(2)?.trim().parse().ok())
        .collect();
    assert!(
        (65..=80).contains(&pts.len()),
        "expected about 75 frames in 3 s, got {}",
        pts.len()
    );
    // libavformat's RTSP demuxer hands out the very first picture without a pts (ffprobe
    // -show_packets says N/A; the CLI then fills in 0 and shifts the rest to start at 0 too), so
    // strict increase is checked from the second picture on.
    assert!(
        pts[1..].windows(2).all(|w| w[1] - w[0] == 3600),
        "timestamps must keep increasing by one frame across loops: {stdout}"
    );
    // Real-time pacing: 3 s of stream cannot arrive much faster than 3 s.
    assert!(took >= Duration::from_millis(2500), "too fast: {took:?}");
    srv.stop().await;
}

#[tokio::test]
async fn ffmpeg_h264_tcp_loops_with_increasing_timestamps() {
    ffmpeg_reads_three_seconds(VideoCodec::H264, "tcp").await;
}

#[tokio::test]
async fn ffmpeg_h265_udp_loops_with_increasing_timestamps() {
    ffmpeg_reads_three_seconds(VideoCodec::H265, "udp").await;
}

async fn gstreamer_plays(codec: VideoCodec, protocols: &str) {
    let c = clip(codec, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], None).await;
    let (depay, parse) = match codec {
        VideoCodec::H264 => ("rtph264depay", "h264parse"),
        VideoCodec::H265 => ("rtph265depay", "h265parse"),
    };
    let location = format!("location={}", srv.url("/cam/1"));
    let protocols = format!("protocols={protocols}");
    let out = run(
        "/usr/bin/gst-launch-1.0",
        &[
            "-q",
            "rtspsrc",
            &location,
            &protocols,
            "!",
            depay,
            "!",
            parse,
            "!",
            "fakesink",
            "num-buffers=50",
        ],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        out.status.success(),
        "gst-launch failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    srv.stop().await;
}

#[tokio::test]
async fn gstreamer_h264_tcp() {
    gstreamer_plays(VideoCodec::H264, "tcp").await;
}

#[tokio::test]
async fn gstreamer_h264_udp() {
    gstreamer_plays(VideoCodec::H264, "udp").await;
}

#[tokio::test]
async fn gstreamer_h265_tcp() {
    gstreamer_plays(VideoCodec::H265, "tcp").await;
}

#[tokio::test]
async fn gstreamer_h265_udp() {
    gstreamer_plays(VideoCodec::H265, "udp").await;
}

#[tokio::test]
async fn digest_auth_with_ffprobe() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], Some(("admin", "s3cret"))).await;
    let ok = probe(&srv.url_with("admin", "s3cret", "/cam/1"), "tcp").await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = probe(&srv.url_with("admin", "nope", "/cam/1"), "tcp").await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let missing = probe(&srv.url("/cam/1"), "tcp").await;
    assert!(!missing.status.success());
    srv.stop().await;
}

#[tokio::test]
async fn digest_auth_with_gstreamer() {
    let c = clip(VideoCodec::H264, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], Some(("admin", "s3cret"))).await;
    let location = format!("location={}", srv.url("/cam/1"));
    let out = run(
        "/usr/bin/gst-launch-1.0",
        &[
            "-q",
            "rtspsrc",
            &location,
            "protocols=tcp",
            "user-id=admin",
            "user-pw=s3cret",
            "!",
            "fakesink",
            "num-buffers=20",
        ],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.stop().await;
}
