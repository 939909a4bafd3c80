//! Simulcast: the layers of a published track, their measured bitrates, and the choice of the layer each
//! subscriber gets from its bandwidth estimate (with hysteresis).

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// Simulcast layers tracked per published m-line.
pub(super) const MAX_LAYERS: usize = 4;

/// One simulcast layer (or the only stream, `rid: None`) of a track.
///
/// Besides its bitrate, a layer holds the state of keyframe requests for it (see `keyframe`).
#[derive(Debug)]
pub(super) struct Layer {
    pub(super) rid: Option<Rid>,
    window_start: Option<Instant>,
    window_bytes: u64,
    bitrate_bps: u64,
    pub(super) last_kf_request: Option<Instant>,
    pub(super) kf_pending: bool,
}

impl Layer {
    pub(super) fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            window_start: None,
            window_bytes: 0,
            bitrate_bps: 0,
            last_kf_request: None,
            kf_pending: false,
        }
    }

    /// Count a packet of `bytes` payload bytes into the bitrate window (renewed every 500 ms).
    pub(super) fn measure(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += bytes as u64;
        let span = now.saturating_duration_since(start);
        if span >= Duration::from_millis(500) {
            self.bitrate_bps = self.window_bytes * 8 * 1000 / (span.as_millis().max(1) as u64);
            self.window_bytes = 0;
            self.window_start = Some(now);
        }
    }
}

/// Layer bitrates of a track, copied with each forwarded packet so subscribers pick theirs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LayerSnapshot {
    /// Layers in use at the front of `layers`; more than one means simulcast.
    pub(super) n: usize,
    layers: [(Option<Rid>, u64); MAX_LAYERS],
}

/// Simulcast: a layer is kept while it fits this share of the estimate (percent)…
const LAYER_KEEP_PERCENT: u64 = 85;
/// …and a higher layer is chosen only when it fits this smaller share,
const LAYER_UP_PERCENT: u64 = 70;
/// and no sooner than this after the last switch, so an estimate hovering at a layer's rate does not flap.
const LAYER_UP_HOLD: Duration = Duration::from_secs(2);

impl LayerSnapshot {
    /// The rids and current bitrates of a track's layers (at most [`MAX_LAYERS`]).
    pub(super) fn of(track_layers: &[Layer]) -> Self {
        let mut layers = LayerSnapshot::default();
        for (i, l) in track_layers.iter().enumerate().take(MAX_LAYERS) {
            layers.layers[i] = (l.rid, l.bitrate_bps);
            layers.n = i + 1;
        }
        layers
    }

    /// The layer a subscriber should get with estimate `bwe_bps`, given the layer it gets now (`current`)
    /// and the time since its last switch (`None`: it never switched; its first layer is not a switch).
    /// Without a current layer: the best that fits 85% of the estimate, else the lowest. Down at once when the current layer no longer fits 85%; up only to a layer that fits
    /// 70%, and not within [`LAYER_UP_HOLD`] of the last switch; otherwise stay.
    pub(super) fn pick(&self, bwe_bps: u64, current: Option<Rid>, since_switch: Option<Duration>) -> Option<Rid> {
        let layers = &self.layers[..self.n];
        let keep = bwe_bps.saturating_mul(LAYER_KEEP_PERCENT) / 100;
        let up = bwe_bps.saturating_mul(LAYER_UP_PERCENT) / 100;
        // A layer without a measured rate yet (or one the browser skips) is never a target while others
        // are known; with none known, the first (lowest) layer: start low, go up as the estimate allows.
        let known = || layers.iter().filter(|(_, b)| *b > 0);
        let best_under = |budget: u64| known().filter(|(_, b)| *b <= budget).max_by_key(|(_, b)| *b);
        let lowest = known().min_by_key(|(_, b)| *b).or(layers.first());
        let Some(&(cur, cur_rate)) = current.and_then(|c| layers.iter().find(|(r, _)| *r == Some(c))) else {
            return best_under(keep).or(lowest).and_then(|(r, _)| *r);
        };
        if cur_rate > keep {
            return best_under(keep).or(lowest).and_then(|(r, _)| *r);
        }
        let held = since_switch.is_some_and(|d| d < LAYER_UP_HOLD);
        match best_under(up) {
            Some(&(r, rate)) if rate > cur_rate && !held => r,
            _ => cur,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(rates: &[(&str, u64)]) -> LayerSnapshot {
        let mut s = LayerSnapshot::default();
        for (i, (rid, bps)) in rates.iter().enumerate() {
            s.layers[i] = (Some(Rid::from(*rid)), *bps);
        }
        s.n = rates.len();
        s
    }

    #[test]
    fn simulcast_layer_choice_has_hysteresis() {
        let s = snapshot(&[("q", 150_000), ("h", 500_000), ("f", 1_500_000)]);
        let (q, h, f) = (Some(Rid::from("q")), Some(Rid::from("h")), Some(Rid::from("f")));
        let long = Some(Duration::from_secs(10));
        // First choice: the best under 85%, else the lowest.
        assert_eq!(s.pick(2_000_000, None, None), f);
        assert_eq!(s.pick(1_000_000, None, None), h);
        assert_eq!(s.pick(100_000, None, None), q);
        // Down at once when the current layer no longer fits 85% (even right after a switch).
        assert_eq!(s.pick(1_700_000, f, Some(Duration::ZERO)), h);
        assert_eq!(s.pick(400_000, h, Some(Duration::ZERO)), q);
        // Between 70% and 85%: stay, in either direction (no flapping around a layer's rate).
        assert_eq!(s.pick(1_800_000, f, long), f, "f fits 85% of 1.8 Mbps: keep it");
        assert_eq!(
            s.pick(1_800_000, h, long),
            h,
            "f does not fit 70% of 1.8 Mbps: no upgrade yet"
        );
        // Up when the higher layer fits 70%, but not within the hold after a switch.
        assert_eq!(s.pick(2_200_000, h, long), f);
        assert_eq!(s.pick(2_200_000, h, Some(Duration::from_millis(500))), h);
        assert_eq!(s.pick(2_200_000, h, None), f, "never switched: no hold");
        // A current layer that vanished (the browser stopped sending it): chosen afresh.
        let two = snapshot(&[("q", 150_000), ("h", 500_000)]);
        assert_eq!(two.pick(2_200_000, f, long), h);
        // No rate measured yet: start at the first (lowest) layer; a layer without a rate is never chosen
        // while others have one.
        let unknown = snapshot(&[("q", 0), ("h", 0), ("f", 0)]);
        assert_eq!(unknown.pick(5_000_000, None, None), q);
        let skipped = snapshot(&[("q", 0), ("h", 500_000), ("f", 0)]);
        assert_eq!(skipped.pick(100_000, None, None), h, "the lowest layer that flows");
        assert_eq!(skipped.pick(5_000_000, h, long), h, "f sends nothing: stay");
    }
}
