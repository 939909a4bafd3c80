//! A small streaming WebM (Matroska) writer for recordings, and the export-time fix-up of its duration.
//!
//! Own code rather than a crate: what is needed is the live-streaming subset of Matroska (EBML header,
//! `Segment` and `Cluster`s of unknown size, `SimpleBlock`s, as browsers' MediaRecorder writes it), about
//! 200 lines with no allocation per frame beyond the block itself. The crates on crates.io either build the
//! whole element tree in memory before writing (`webm-iterable`/`ebml-iterable` write tags, but a cluster
//! must be buffered to know its size unless written by hand as unknown-size), or wrap libwebm (C++). The
//! output is checked by ffprobe/ffmpeg in the end-to-end test.
//!
//! Timestamps are milliseconds (`TimecodeScale` 1 000 000 ns). A new cluster starts every
//! [`CLUSTER_MS`], on a video keyframe, or when a block would fall outside the signed 16-bit offset.

/// Longest span of one cluster.
pub const CLUSTER_MS: u64 = 5_000;

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TRACKS: u32 = 0x1654_AE6B;
const CLUSTER: u32 = 0x1F43_B675;
const DURATION: u32 = 0x4489;
const TIMECODE: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
/// The EBML "unknown size" (8-byte form).
const UNKNOWN: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// A track's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackCodec {
    /// Opus, 48 kHz, stereo (the RTP clock; mono streams decode as stereo with both channels equal).
    Opus,
    /// VP8.
    Vp8,
}

/// A track declared in the header.
#[derive(Debug, Clone)]
pub struct TrackSpec {
    /// Its number (1, 2, …).
    pub number: u8,
    /// The codec.
    pub codec: TrackCodec,
    /// Its name (`visitor audio`, `agent video`).
    pub name: String,
}

fn id_bytes(id: u32) -> Vec<u8> {
    let b = id.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

fn size_bytes(n: usize) -> Vec<u8> {
    // Up to 2^56 - 2 in the 8-byte form; shorter forms for small sizes.
    let n = n as u64;
    for len in 1..=8u32 {
        if n < (1u64 << (7 * len)) - 1 {
            let marker = 1u64 << (7 * len);
            let v = n | marker;
            return v.to_be_bytes()[(8 - len as usize)..].to_vec();
        }
    }
    UNKNOWN.to_vec()
}

fn element(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = id_bytes(id);
    out.extend_from_slice(&size_bytes(body.len()));
    out.extend_from_slice(body);
    out
}

fn uint(id: u32, v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take(7).take_while(|&&x| x == 0).count();
    element(id, &b[skip..])
}

fn float(id: u32, v: f64) -> Vec<u8> {
    element(id, &v.to_be_bytes())
}

fn string(id: u32, s: &str) -> Vec<u8> {
    element(id, s.as_bytes())
}

/// The `OpusHead` of a 48 kHz stereo stream (RFC 7845 §5.1), the CodecPrivate Matroska requires.
fn opus_head() -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1); // version
    h.push(2); // channels
    h.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // mapping family
    h
}

fn track_entry(t: &TrackSpec) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(uint(0xD7, u64::from(t.number)));
    body.extend(uint(0x73C5, u64::from(t.number)));
    body.extend(string(0x536E, &t.name));
    body.extend(uint(0x9C, 0)); // FlagLacing off
    match t.codec {
        TrackCodec::Opus => {
            body.extend(uint(0x83, 2));
            body.extend(string(0x86, "A_OPUS"));
            body.extend(element(0x63A2, &opus_head()));
            let mut audio = float(0xB5, 48_000.0);
            audio.extend(uint(0x9F, 2));
            body.extend(element(0xE1, &audio));
        }
        TrackCodec::Vp8 => {
            body.extend(uint(0x83, 1));
            body.extend(string(0x86, "V_VP8"));
            // The decoder takes the size from the bitstream; these are the defaults of a browser camera.
            let mut video = uint(0xB0, 640);
            video.extend(uint(0xBA, 480));
            body.extend(element(0xE0, &video));
        }
    }
    element(0xAE, &body)
}

/// The file's beginning: EBML header, an unknown-size Segment, Info (duration 0, fixed at export) and the
/// tracks.
pub fn header(tracks: &[TrackSpec]) -> Vec<u8> {
    let mut ebml = uint(0x4286, 1);
    ebml.extend(uint(0x42F7, 1));
    ebml.extend(uint(0x42F2, 4));
    ebml.extend(uint(0x42F3, 8));
    ebml.extend(string(0x4282, "webm"));
    ebml.extend(uint(0x4287, 4));
    ebml.extend(uint(0x4285, 2));
    let mut out = element(EBML, &ebml);
    out.extend(id_bytes(SEGMENT));
    out.extend(UNKNOWN);
    let mut info = uint(0x2AD7B1, 1_000_000);
    info.extend(string(0x4D80, "relaydesk"));
    info.extend(string(0x5741, "relaydesk"));
    info.extend(float(DURATION, 0.0));
    out.extend(element(INFO, &info));
    let mut t = Vec::new();
    for spec in tracks {
        t.extend(track_entry(spec));
    }
    out.extend(element(TRACKS, &t));
    out
}

/// Writes clusters and blocks after the [`header`].
#[derive(Debug, Default)]
pub struct ClusterWriter {
    cluster_ms: Option<u64>,
}

impl ClusterWriter {
    /// The bytes of one frame of track `track` at `ms` (file time), starting a cluster first when needed.
    pub fn block(&mut self, track: u8, ms: u64, keyframe: bool, video: bool, frame: &[u8], out: &mut Vec<u8>) {
        let rel = self.cluster_ms.map(|c| ms as i64 - c as i64);
        let new_cluster = match rel {
            None => true,
            Some(r) => {
                r > CLUSTER_MS as i64
                    || r < i64::from(i16::MIN)
                    || r > i64::from(i16::MAX)
                    || (video && keyframe && r > 0)
            }
        };
        if new_cluster {
            out.extend(id_bytes(CLUSTER));
            out.extend(UNKNOWN);
            out.extend(uint(TIMECODE, ms));
            self.cluster_ms = Some(ms);
        }
        let base = self.cluster_ms.unwrap_or(ms);
        let rel = i16::try_from(ms as i64 - base as i64).unwrap_or(0);
        let mut body = Vec::with_capacity(4 + frame.len());
        body.push(0x80 | track); // track number as a 1-byte vint (tracks 1..=126)
        body.extend_from_slice(&rel.to_be_bytes());
        body.push(if keyframe { 0x80 } else { 0 });
        body.extend_from_slice(frame);
        out.extend(id_bytes(SIMPLE_BLOCK));
        out.extend(size_bytes(body.len()));
        out.extend(body);
    }
}

/// Reads an EBML variable-length integer at `at`: (value, length); `None` if cut or invalid. With
/// `strip_marker` false the marker bit stays (element ids).
fn vint(b: &[u8], at: usize, strip_marker: bool) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let bytes = b.get(at..at + len)?;
    let mut v = u64::from(if strip_marker {
        first & (0xFFu16 >> len) as u8
    } else {
        first
    });
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

/// The time span of the blocks in a file written by this module (ms of the last block end, taken as the
/// last block's time plus 20 ms), and sets the `Duration` of its Info to it. Returns the duration; `None`
/// when the file has no block or is not laid out as this writer lays it out (then nothing is changed).
pub fn fix_duration(webm: &mut [u8]) -> Option<u64> {
    // Skip the EBML header, enter the segment.
    let (id, n) = vint(webm, 0, false)?;
    if id != u64::from(EBML) {
        return None;
    }
    let (size, m) = vint(webm, n, true)?;
    let mut at = n + m + size as usize;
    let (id, n) = vint(webm, at, false)?;
    if id != u64::from(SEGMENT) {
        return None;
    }
    at += n + 8;
    let mut duration_at = None;
    let mut cluster = 0u64;
    let mut last: Option<u64> = None;
    while at < webm.len() {
        let (id, n) = vint(webm, at, false)?;
        let (size, m) = vint(webm, at + n, true)?;
        let body = at + n + m;
        if id == u64::from(CLUSTER) {
            // Unknown size: its children follow.
            at = body;
            continue;
        }
        let size = size as usize;
        match u32::try_from(id).ok()? {
            INFO => {
                // Find Duration among Info's children.
                let mut c = body;
                while c < body + size {
                    let (cid, cn) = vint(webm, c, false)?;
                    let (csize, cm) = vint(webm, c + cn, true)?;
                    if cid == u64::from(DURATION) && csize == 8 {
                        duration_at = Some(c + cn + cm);
                    }
                    c += cn + cm + csize as usize;
                }
            }
            TIMECODE => {
                let mut v = 0u64;
                for &x in webm.get(body..body + size)? {
                    v = (v << 8) | u64::from(x);
                }
                cluster = v;
            }
            SIMPLE_BLOCK => {
                let rel = i16::from_be_bytes([*webm.get(body + 1)?, *webm.get(body + 2)?]);
                let t = (cluster as i64 + i64::from(rel)).max(0) as u64;
                last = Some(last.map_or(t, |l: u64| l.max(t)));
            }
            _ => {}
        }
        at = body + size;
    }
    let total = last? + 20;
    let d = duration_at?;
    webm.get_mut(d..d + 8)?.copy_from_slice(&(total as f64).to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_minimal_vints() {
        assert_eq!(size_bytes(0), vec![0x80]);
        assert_eq!(size_bytes(126), vec![0xFE]);
        assert_eq!(size_bytes(127), vec![0x40, 0x7F]);
        assert_eq!(vint(&size_bytes(300_000), 0, true), Some((300_000, 3)));
        assert_eq!(id_bytes(CLUSTER), vec![0x1F, 0x43, 0xB6, 0x75]);
    }

    #[test]
    fn duration_is_found_and_set() {
        let tracks = [TrackSpec {
            number: 1,
            codec: TrackCodec::Opus,
            name: "visitor audio".into(),
        }];
        let mut out = header(&tracks);
        let mut w = ClusterWriter::default();
        for i in 0..400u64 {
            w.block(1, i * 20, true, false, &[0xFC, 0xFF, 0xFE], &mut out);
        }
        assert_eq!(fix_duration(&mut out), Some(399 * 20 + 20));
        assert!(out.windows(8).any(|x| x == 8000f64.to_be_bytes()));
        assert_eq!(fix_duration(&mut b"not webm".to_vec()), None);
    }
}
