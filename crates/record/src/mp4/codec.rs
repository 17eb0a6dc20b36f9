//! The codec-specific corner of the container: which sample entry a codec gets, checks that a
//! decoder configuration record fits the frames we mux, and RFC 6381 names read back from one.

use xueliang_core::media::{VideoCodec, VideoParams};

use super::Mp4Error;

/// Sample entry and configuration box types for a codec. `avc1` / `hvc1` promise that every
/// parameter set is in the configuration record, which is what `VideoFrame` guarantees.
pub(crate) fn entry_types(codec: VideoCodec) -> (&'static [u8; 4], &'static [u8; 4]) {
    match codec {
        VideoCodec::H264 => (b"avc1", b"avcC"),
        VideoCodec::H265 => (b"hvc1", b"hvcC"),
    }
}

/// Offset of the byte holding `lengthSizeMinusOne` in its low two bits, and the smallest
/// well-formed record.
fn layout(codec: VideoCodec) -> (usize, usize) {
    match codec {
        // version, profile, compat, level, 0xfc|lengthSizeMinusOne, 0xe0|numSPS, numPPS
        VideoCodec::H264 => (4, 7),
        // 22 fixed bytes then numOfArrays
        VideoCodec::H265 => (21, 23),
    }
}

/// Rejects parameters that would produce a file players cannot decode, before anything is
/// written: a recorder that only learns this from a player has lost the footage.
pub(crate) fn check_params(params: &VideoParams) -> Result<(), Mp4Error> {
    let invalid = |m: String| Err(Mp4Error::InvalidParams(m));
    for (name, v) in [("width", params.width), ("height", params.height)] {
        if v == 0 || v > u32::from(u16::MAX) {
            return invalid(format!(
                "{name} {v} does not fit the sample entry's 16-bit field (1..=65535)"
            ));
        }
    }
    if let Some((h, v)) = params.pixel_aspect
        && (h == 0 || v == 0)
    {
        return invalid(format!("pixel aspect {h}:{v} has a zero term"));
    }
    let config = &params.decoder_config;
    let (_, config_box) = entry_types(params.codec);
    let config_box = String::from_utf8_lossy(config_box);
    let (length_at, min_len) = layout(params.codec);
    if config.len() < min_len {
        return invalid(format!(
            "{} decoder configuration is {} bytes; a `{config_box}` record needs at least {min_len}",
            params.codec,
            config.len()
        ));
    }
    if config[0] != 1 {
        // Annex B bytes (00 00 00 01 ...) passed by mistake land here too.
        return invalid(format!(
            "`{config_box}` configurationVersion is {}, expected 1",
            config[0]
        ));
    }
    let length_size = (config[length_at] & 0x03) + 1;
    if length_size != 4 {
        return invalid(format!(
            "`{config_box}` declares {length_size}-byte NAL unit lengths; frames carry 4-byte lengths"
        ));
    }
    Ok(())
}

/// RFC 6381 `codecs` value from a sample entry type and its configuration record
/// (14496-15 Annex E for HEVC). `None` if the record is too short to hold the fields.
pub(crate) fn rfc6381(codec: VideoCodec, entry: &str, config: &[u8]) -> Option<String> {
    match codec {
        VideoCodec::H264 => {
            let [_, profile, compat, level, ..] = *config else {
                return None;
            };
            Some(format!("{entry}.{profile:02x}{compat:02x}{level:02x}"))
        }
        VideoCodec::H265 => {
            if config.len() < 13 {
                return None;
            }
            let space = ["", "A", "B", "C"][usize::from(config[1] >> 6)];
            let tier = if config[1] & 0x20 != 0 { 'H' } else { 'L' };
            let profile = config[1] & 0x1f;
            // The compatibility flags are written bit-reversed, as the annex prescribes.
            let compat = u32::from_be_bytes(config[2..6].try_into().ok()?).reverse_bits();
            let level = config[12];
            let mut s = format!("{entry}.{space}{profile}.{compat:X}.{tier}{level}");
            let constraints = &config[6..12];
            let used = constraints
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            for b in &constraints[..used] {
                s.push_str(&format!(".{b:02X}"));
            }
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn params(codec: VideoCodec, config: &[u8]) -> VideoParams {
        VideoParams {
            codec,
            width: 320,
            height: 240,
            decoder_config: Bytes::copy_from_slice(config),
            rfc6381: String::new(),
            pixel_aspect: None,
        }
    }

    const AVCC: [u8; 11] = [1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, 2, 0x67, 0x64, 0];

    #[test]
    fn accepts_a_well_formed_record_and_rejects_broken_ones() {
        check_params(&params(VideoCodec::H264, &AVCC)).expect("valid avcC");

        let mut two_byte_lengths = AVCC;
        two_byte_lengths[4] = 0xfd;
        let annex_b = [0, 0, 0, 1, 0x67, 0x64, 0, 0x1f];
        let cases: Vec<(VideoParams, &str)> = vec![
            (params(VideoCodec::H264, &two_byte_lengths), "2-byte"),
            (
                params(VideoCodec::H264, &annex_b),
                "configurationVersion is 0",
            ),
            (params(VideoCodec::H264, &AVCC[..5]), "needs at least 7"),
            (params(VideoCodec::H265, &AVCC), "needs at least 23"),
            (
                VideoParams {
                    width: 70_000,
                    ..params(VideoCodec::H264, &AVCC)
                },
                "width 70000",
            ),
            (
                VideoParams {
                    height: 0,
                    ..params(VideoCodec::H264, &AVCC)
                },
                "height 0",
            ),
            (
                VideoParams {
                    pixel_aspect: Some((4, 0)),
                    ..params(VideoCodec::H264, &AVCC)
                },
                "zero term",
            ),
        ];
        for (p, needle) in cases {
            let err = check_params(&Arc::new(p)).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn rfc6381_names_follow_the_record_fields() {
        assert_eq!(
            rfc6381(VideoCodec::H264, "avc1", &AVCC).as_deref(),
            Some("avc1.64001f")
        );
        // HEVC Main, level 3.1 (93 = 3.1 * 30), Main compatibility bits 1 and 2, progressive
        // source flag only: the 14496-15 Annex E example "hvc1.1.6.L93.B0".
        let mut hvcc = [0u8; 23];
        hvcc[0] = 1;
        hvcc[1] = 0x01;
        hvcc[2..6].copy_from_slice(&0x6000_0000u32.to_be_bytes());
        hvcc[6] = 0xb0;
        hvcc[12] = 93;
        assert_eq!(
            rfc6381(VideoCodec::H265, "hvc1", &hvcc).as_deref(),
            Some("hvc1.1.6.L93.B0")
        );
        hvcc[1] = 0x40 | 0x20 | 0x02;
        hvcc[8] = 0x01;
        assert_eq!(
            rfc6381(VideoCodec::H265, "hev1", &hvcc).as_deref(),
            Some("hev1.A2.6.H93.B0.00.01")
        );
        assert_eq!(rfc6381(VideoCodec::H265, "hvc1", &hvcc[..12]), None);
    }
}
