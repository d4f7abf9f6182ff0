//! Episodes: spells of trouble a device goes through, so that alert rules
//! have something real to find (`produce --episodes overheat,stuck,silent`).
//!
//! ```text
//!   device d, event time t:  phase_d = mix(seed, d) mod every
//!   spell k = ⌊(t − origin − phase_d) / every⌋, inside it while (…) mod every < length
//!   spell k happens when mix(seed, d, k) < share; its kind: mix(…) mod kinds
//!     overheat  temperature (or the first metric) + 60 · ramp (20 % up, 60 % held, 20 % down)
//!     stuck     every metric repeats its value at the spell's start, without noise
//!     silent    the device sends nothing
//! ```
//!
//! A pure function of (seed, device, time): the same flags give the same
//! spells whatever the rate, and turning episodes on changes nothing else.

use serde::Serialize;

/// One kind of trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeKind {
    Overheat,
    Stuck,
    Silent,
}

impl EpisodeKind {
    pub const ALL: [EpisodeKind; 3] = [Self::Overheat, Self::Stuck, Self::Silent];

    pub fn code(self) -> &'static str {
        match self {
            Self::Overheat => "overheat",
            Self::Stuck => "stuck",
            Self::Silent => "silent",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// How much an overheating spell adds at its height.
pub const OVERHEAT_DEGREES: f64 = 60.0;

/// When and how devices get into trouble.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episodes {
    pub kinds: Vec<EpisodeKind>,
    /// A device's spells start `every_ms` apart (event time), at a phase of its own.
    pub every_ms: i64,
    pub length_ms: i64,
    /// Share of spells that happen (the others are skipped).
    pub share: f64,
}

/// One spell of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub kind: EpisodeKind,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Episode {
    /// 0 → 1 over the first fifth, 1, then 1 → 0 over the last fifth.
    pub fn ramp(&self, ts_ms: i64) -> f64 {
        let len = (self.end_ms - self.start_ms).max(1) as f64;
        let x = (ts_ms - self.start_ms) as f64 / len;
        (x.min(1.0 - x) * 5.0).clamp(0.0, 1.0)
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Episodes {
    pub fn validate(&self) -> Result<(), String> {
        if self.kinds.is_empty() {
            return Err("episodes need at least one kind".into());
        }
        if self.length_ms <= 0 || self.every_ms <= self.length_ms {
            return Err(format!(
                "an episode ({} ms) must be shorter than the time between a device's episodes ({} ms)",
                self.length_ms, self.every_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.share) {
            return Err(format!(
                "episode share must be in [0, 1], not {}",
                self.share
            ));
        }
        Ok(())
    }

    /// The spell device `device` is in at event time `ts_ms`, if any
    /// (spells counted from `origin_ms`, the simulation's start).
    pub fn at(&self, seed: u64, device: u32, origin_ms: i64, ts_ms: i64) -> Option<Episode> {
        let every = self.every_ms.max(1);
        let device_seed = mix(seed ^ 0xE915_0DE5 ^ u64::from(device).rotate_left(32));
        let phase = (device_seed % every as u64) as i64;
        let since = ts_ms - origin_ms - phase;
        if since < 0 || since.rem_euclid(every) >= self.length_ms {
            return None;
        }
        let k = since.div_euclid(every);
        let draw = mix(device_seed ^ (k as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        if (draw >> 11) as f64 / (1u64 << 53) as f64 >= self.share {
            return None;
        }
        let kind = self.kinds[(mix(draw) % self.kinds.len() as u64) as usize];
        let start_ms = origin_ms + phase + k * every;
        Some(Episode {
            kind,
            start_ms,
            end_ms: start_ms + self.length_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episodes(share: f64) -> Episodes {
        Episodes {
            kinds: EpisodeKind::ALL.to_vec(),
            every_ms: 600_000,
            length_ms: 120_000,
            share,
        }
    }

    #[test]
    fn spells_last_their_length_recur_and_cover_the_share() {
        let e = episodes(0.5);
        let (mut inside, mut spells, mut kinds) = (0u64, 0u64, std::collections::BTreeSet::new());
        for device in 0..200 {
            let mut last: Option<Episode> = None;
            for t in (0..6 * 3_600_000).step_by(1000) {
                if let Some(ep) = e.at(7, device, 0, t) {
                    inside += 1;
                    assert!((ep.start_ms..ep.end_ms).contains(&t));
                    assert_eq!(ep.end_ms - ep.start_ms, 120_000);
                    kinds.insert(ep.kind.code());
                    if last != Some(ep) {
                        spells += 1;
                    }
                    last = Some(ep);
                }
            }
        }
        // 200 devices × 36 slots × share 0.5 ≈ 3600 spells of 120 s.
        assert!((3000..4200).contains(&spells), "{spells}");
        // Every spell is whole but a device's last, which the 6 h may cut short.
        assert!(
            inside <= spells * 120 && inside > (spells - 200) * 120,
            "{inside}"
        );
        assert_eq!(kinds.len(), 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_spells_and_share_zero_none() {
        let e = episodes(0.3);
        for t in (0..3_600_000).step_by(7_000) {
            assert_eq!(e.at(1, 5, 0, t), e.at(1, 5, 0, t));
            assert_eq!(episodes(0.0).at(1, 5, 0, t), None);
        }
    }

    #[test]
    fn the_ramp_rises_holds_and_falls() {
        let ep = Episode {
            kind: EpisodeKind::Overheat,
            start_ms: 0,
            end_ms: 100,
        };
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(ep.ramp(0), 0.0));
        assert!(near(ep.ramp(10), 0.5));
        assert!(near(ep.ramp(50), 1.0));
        assert!(near(ep.ramp(90), 0.5));
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut e = episodes(0.5);
        e.every_ms = e.length_ms;
        assert!(e.validate().is_err());
        assert!(
            Episodes {
                kinds: vec![],
                ..episodes(0.5)
            }
            .validate()
            .is_err()
        );
        assert!(episodes(1.5).validate().is_err());
        assert!(episodes(0.5).validate().is_ok());
    }
}
