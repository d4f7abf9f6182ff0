//! Simulator properties: determinism per seed, disorder bounds, ratios, and
//! that every injected class is what the real parser says it is.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use iotflow_dataflow::{ParseLimits, parse_record};
use iotflow_ingest::simulator::{BadKind, Format, RecordClass, SimConfig, Simulator};

fn cfg(format: Format) -> SimConfig {
    SimConfig {
        devices: 50,
        interval_ms: 100,
        format,
        late_ratio: 0.02,
        duplicate_ratio: 0.03,
        bad_ratio: 0.04,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_same_records_other_seed_other_records() {
    let a: Vec<_> = Simulator::new(cfg(Format::Canonical))
        .unwrap()
        .take(5_000)
        .collect();
    let b: Vec<_> = Simulator::new(cfg(Format::Canonical))
        .unwrap()
        .take(5_000)
        .collect();
    assert_eq!(a, b);
    let c: Vec<_> = Simulator::new(SimConfig {
        seed: 7,
        ..cfg(Format::Canonical)
    })
    .unwrap()
    .take(5_000)
    .collect();
    assert_ne!(a, c);
}

#[test]
fn disorder_is_bounded_and_late_records_are_exactly_late_by_behind() {
    let c = cfg(Format::Flat);
    let mut max_seen = i64::MIN;
    let mut disordered = 0;
    for rec in Simulator::new(c.clone()).unwrap().take(50_000) {
        match rec.class {
            RecordClass::Valid => {
                let delay = rec.arrival_ms - rec.ts_ms;
                assert!((0..c.disorder_ms).contains(&delay), "delay {delay}");
                assert_eq!(rec.disordered, delay > 0);
                disordered += u32::from(rec.disordered);
                // The peers' guarantee: a `disorder` watermark never makes a valid record late.
                assert!(rec.ts_ms > max_seen.saturating_sub(c.disorder_ms));
                max_seen = max_seen.max(rec.ts_ms);
            }
            RecordClass::Late => {
                let behind = rec.arrival_ms - rec.ts_ms;
                assert!((c.late_by_ms..c.late_by_ms + c.interval_ms).contains(&behind));
            }
            _ => {}
        }
    }
    assert!(disordered > 0);
}

#[test]
fn class_ratios_match_the_config() {
    let n = 200_000;
    let c = cfg(Format::Canonical);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad_kinds = HashSet::new();
    for rec in Simulator::new(c.clone()).unwrap().take(n) {
        let k = match rec.class {
            RecordClass::Valid => "valid",
            RecordClass::Late => "late",
            RecordClass::Duplicate => "duplicate",
            RecordClass::Bad(kind) => {
                bad_kinds.insert(kind);
                "bad"
            }
        };
        *counts.entry(k).or_default() += 1;
    }
    let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / n as f64;
    // Duplicates are extra records, so shares are of all records: within 10 % relative.
    let close = |got: f64, want: f64| (got - want).abs() < want * 0.1;
    assert!(
        close(share("bad"), c.bad_ratio / (1.0 + c.duplicate_ratio)),
        "{counts:?}"
    );
    assert!(
        close(
            share("duplicate"),
            c.duplicate_ratio / (1.0 + c.duplicate_ratio)
        ),
        "{counts:?}"
    );
    // Late records start once a late_by of history exists (60 s of 400 s here).
    assert!(
        share("late") > 0.7 * c.late_ratio && share("late") < c.late_ratio,
        "{counts:?}"
    );
    assert_eq!(
        bad_kinds.len(),
        BadKind::ALL.len(),
        "every bad class appears"
    );
}

#[test]
fn every_record_parses_as_its_class_says_in_every_format() {
    for format in [Format::Canonical, Format::Flat, Format::Long] {
        let c = cfg(format);
        let mut firsts = HashSet::new();
        for rec in Simulator::new(c.clone()).unwrap().take(20_000) {
            let mut out = Vec::new();
            let got = parse_record(&rec.value, &ParseLimits::default(), &mut out);
            match rec.class {
                RecordClass::Bad(kind) => {
                    let reason = got.expect_err("bad record accepted");
                    assert_eq!(
                        reason.code(),
                        kind.code(),
                        "{format:?} {}",
                        String::from_utf8_lossy(&rec.value)
                    );
                }
                _ => {
                    assert_eq!(
                        got,
                        Ok(()),
                        "{format:?} {}",
                        String::from_utf8_lossy(&rec.value)
                    );
                    assert_eq!(out.len() as u32, rec.readings);
                    for r in &out {
                        assert_eq!(r.device_id, rec.key);
                        assert_eq!(r.ts_ms, rec.ts_ms);
                        assert!(r.value.is_finite());
                    }
                    let seq = out[0].seq.expect("simulated records carry seq");
                    let fresh = firsts.insert((rec.key.clone(), seq, out[0].metric.clone()));
                    assert_eq!(
                        fresh,
                        rec.class != RecordClass::Duplicate,
                        "(device, seq) repeats only for duplicates"
                    );
                }
            }
        }
    }
}

#[test]
fn invalid_settings_are_refused() {
    assert!(
        Simulator::new(SimConfig {
            devices: 0,
            ..SimConfig::default()
        })
        .is_err()
    );
    assert!(
        Simulator::new(SimConfig {
            bad_ratio: 1.5,
            ..SimConfig::default()
        })
        .is_err()
    );
    assert!(
        Simulator::new(SimConfig {
            bad_ratio: 0.6,
            late_ratio: 0.6,
            ..SimConfig::default()
        })
        .is_err()
    );
    let bad_name = SimConfig {
        metrics: vec![iotflow_ingest::MetricSpec::new("a|b", 1.0, 1.0, 1)],
        ..SimConfig::default()
    };
    assert!(Simulator::new(bad_name).is_err());
}

/// Spells change only the devices in them, and in the way their kind says.
#[test]
fn episodes_silence_freeze_and_heat_devices_and_nothing_else() {
    use iotflow_ingest::episodes::{EpisodeKind, Episodes};
    let episodes = Episodes {
        kinds: EpisodeKind::ALL.to_vec(),
        every_ms: 120_000,
        length_ms: 40_000,
        share: 0.5,
    };
    let base = SimConfig {
        devices: 20,
        interval_ms: 1000,
        disorder_ratio: 0.0,
        late_ratio: 0.0,
        duplicate_ratio: 0.0,
        bad_ratio: 0.0,
        ..cfg(Format::Canonical)
    };
    let with = SimConfig {
        episodes: Some(episodes.clone()),
        ..base.clone()
    };
    let n = 20 * 3600;
    let plain: Vec<_> = Simulator::new(base.clone()).unwrap().take(n).collect();
    let troubled: Vec<_> = Simulator::new(with.clone())
        .unwrap()
        .take_while(|r| r.ts_ms < plain[n - 1].ts_ms)
        .collect();
    let spell = |r: &iotflow_ingest::simulator::SimRecord| {
        let d: u32 = r.key.trim_start_matches("dev-").parse().unwrap();
        episodes.at(with.seed, d, with.start_ms, r.ts_ms)
    };
    // Silent devices sent nothing during their spells.
    assert!(
        troubled
            .iter()
            .all(|r| spell(r).map(|e| e.kind) != Some(EpisodeKind::Silent))
    );
    let silent = plain
        .iter()
        .filter(|r| spell(r).map(|e| e.kind) == Some(EpisodeKind::Silent))
        .count();
    assert!(silent > 100, "no silence to speak of: {silent}");
    // Every other record is the plain run's, values changed only inside a spell.
    let (mut stuck, mut hot) = (BTreeMap::<(String, i64), BTreeSet<String>>::new(), 0);
    let plain_by_slot: BTreeMap<(String, i64), &str> = plain
        .iter()
        .map(|r| {
            (
                (r.key.clone(), r.ts_ms),
                std::str::from_utf8(&r.value).unwrap(),
            )
        })
        .collect();
    for r in &troubled {
        let value = std::str::from_utf8(&r.value).unwrap();
        let json: serde_json::Value = serde_json::from_str(value).unwrap();
        match spell(r) {
            None => assert_eq!(plain_by_slot.get(&(r.key.clone(), r.ts_ms)), Some(&value)),
            Some(e) if e.kind == EpisodeKind::Stuck => {
                stuck
                    .entry((r.key.clone(), e.start_ms))
                    .or_default()
                    .insert(json["metrics"].to_string());
            }
            Some(e) => {
                assert_eq!(e.kind, EpisodeKind::Overheat);
                let t = json["metrics"]["temperature"].as_f64().unwrap();
                if e.ramp(r.ts_ms) == 1.0 {
                    assert!(t > 70.0, "{value}");
                    hot += 1;
                }
            }
        }
    }
    assert!(
        hot > 100 && stuck.len() > 5,
        "{hot} hot, {} stuck spells",
        stuck.len()
    );
    assert!(
        stuck.values().all(|values| values.len() == 1),
        "a stuck sensor repeats one value"
    );
}
