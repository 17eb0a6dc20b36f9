//! `clip_from_annex_b` on real encoder output.

mod common;

use xueliang_core::media::VideoCodec;

#[tokio::test]
async fn splits_real_h264_and_h265_streams() {
    for codec in [VideoCodec::H264, VideoCodec::H265] {
        let c = common::clip(codec, 320, 240).await;
        assert_eq!((c.width, c.height, c.fps), (320, 240, 25), "{codec}");
        assert_eq!(c.units.len(), 25, "{codec}");
        assert_eq!(c.duration, 90_000, "{codec}");
        assert!(c.units[0].is_key, "{codec}");
        assert_eq!(c.units.iter().filter(|u| u.is_key).count(), 1, "{codec}");
        assert!(
            c.units
                .iter()
                .enumerate()
                .all(|(i, u)| u.pts == i as i64 * 3600)
        );
        assert_eq!(c.vps.is_some(), codec == VideoCodec::H265);
        let odd = common::clip(codec, 200, 150).await;
        assert_eq!((odd.width, odd.height), (200, 150), "{codec}");
    }
}
