//! The project's own RTSP client (retina, as `xueliang-ingest` uses it) against the simulator.

mod common;

use std::time::Duration;

use common::{camera, clip, serve};
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions,
    Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, ParametersRef};
use xueliang_core::media::VideoCodec;

/// Reads 60 pictures (2.4 s, across two loop boundaries) and checks size, key frames and
/// timestamps.
async fn retina_reads(codec: VideoCodec, transport: Transport, creds: Option<(&str, &str)>) {
    let c = clip(codec, 320, 240).await;
    let srv = serve(vec![camera(c, vec![])], creds).await;
    let url = url::Url::parse(&srv.url("/cam/1")).unwrap();
    let opts = SessionOptions::default().creds(creds.map(|(u, p)| Credentials {
        username: u.into(),
        password: p.into(),
    }));
    let mut session = Session::describe(url, opts).await.expect("DESCRIBE");
    let index = session
        .streams()
        .iter()
        .position(|s| s.media() == "video")
        .expect("a video stream");
    let expected = match codec {
        VideoCodec::H264 => "h264",
        VideoCodec::H265 => "h265",
    };
    assert_eq!(session.streams()[index].encoding_name(), expected);
    session
        .setup(index, SetupOptions::default().transport(transport))
        .await
        .expect("SETUP");
    let mut demuxed = session
        .play(PlayOptions::default())
        .await
        .expect("PLAY")
        .demuxed()
        .unwrap();
    let mut last: Option<i64> = None;
    let mut frames = 0;
    let mut keys = 0;
    let read = async {
        while frames < 60 {
            match demuxed
                .next()
                .await
                .expect("stream ended")
                .expect("stream error")
            {
                CodecItem::VideoFrame(f) => {
                    let ts = f.timestamp().timestamp();
                    if let Some(prev) = last {
                        assert_eq!(ts - prev, 3600, "continuous timestamps");
                    }
                    assert_eq!(f.loss(), 0);
                    last = Some(ts);
                    keys += usize::from(f.is_random_access_point());
                    frames += 1;
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("60 pictures within 10 s");
    assert_eq!(keys, 3, "one key frame per loop of the 1 s clip");
    let Some(ParametersRef::Video(p)) = demuxed.streams()[index].parameters() else {
        panic!("no video parameters");
    };
    assert_eq!(p.pixel_dimensions(), (320, 240));
    drop(demuxed);
    srv.stop().await;
}

#[tokio::test]
async fn retina_h264_tcp() {
    retina_reads(
        VideoCodec::H264,
        Transport::Tcp(TcpTransportOptions::default()),
        None,
    )
    .await;
}

#[tokio::test]
async fn retina_h264_udp_with_digest_auth() {
    retina_reads(
        VideoCodec::H264,
        Transport::Udp(UdpTransportOptions::default()),
        Some(("admin", "s3cret")),
    )
    .await;
}

#[tokio::test]
async fn retina_h265_tcp() {
    retina_reads(
        VideoCodec::H265,
        Transport::Tcp(TcpTransportOptions::default()),
        None,
    )
    .await;
}
