use proptest::prelude::*;

use super::*;
use crate::aggregation::Aggregation;
use crate::job::EmitMode;
use crate::watermark::ShareState;
use crate::window::WindowSpec;

/// Per (device, metric) and per metric, tumbling 10, no lateness.
fn rules() -> WindowRules {
    let per_device =
        Aggregation::per_device("a", WindowSpec::tumbling(10).unwrap(), EmitMode::Final);
    let per_metric = Aggregation {
        name: "m".into(),
        group_by: vec![iotflow_jobfile::GroupField::Metric],
        ..per_device.clone()
    };
    WindowRules {
        aggregations: vec![per_device, per_metric].into(),
        lateness_ms: 0,
    }
}

fn snapshot(worker: u32, workers: u32, devices: &[&str]) -> WorkerSnapshot {
    WorkerSnapshot {
        format: SNAPSHOT_FORMAT,
        epoch: 7,
        worker,
        workers,
        reports: vec![ShareReport {
            partition: 0,
            share: 0,
            shares: 1,
            top: vec![5, 4],
            state: ShareState::Active,
            next_offset: 12,
        }],
        watermark: Some(3),
        seen: devices
            .iter()
            .map(|d| SeenKey::new(d, "t", 1, 100))
            .collect(),
        windows: devices
            .iter()
            .map(|d| OpenWindow {
                aggregation: 0,
                key: format!("{d}|t").into(),
                start: 0,
                readings: vec![(1, 2.5f64.to_bits())],
            })
            .collect(),
        alerts: devices
            .iter()
            .map(|d| AlertSeries {
                rule: 0,
                aggregation: 0,
                key: format!("{d}|t").into(),
                series: crate::alert::Series {
                    streak: 2,
                    streak_since: 10,
                    last_seen: Some(9),
                    baseline: (3, 1.5, 0.25),
                    ..Default::default()
                },
            })
            .collect(),
        previous: None,
    }
}

#[test]
fn round_trip_and_every_corruption_is_caught() {
    let s = snapshot(0, 1, &["a", "b"]);
    let bytes = s.encode().unwrap();
    assert_eq!(WorkerSnapshot::decode(&bytes).unwrap(), s);
    let json = crate::sealed::seal(&s).unwrap();
    // Format 1 is JSON of the snapshot's own fields: a key keeps the layout
    // older binaries wrote, whatever its type looks like in memory.
    let key = br#""seen":[{"device":"a","metric":"t","seq":1,"expires_at":100}"#;
    assert!(
        json.windows(key.len()).any(|w| w == key),
        "a key's format 1 layout"
    );
    assert!(
        json.len() > 2 * bytes.len(),
        "{} vs {} bytes",
        json.len(),
        bytes.len()
    );
    assert_eq!(
        WorkerSnapshot::decode(&json).unwrap(),
        s,
        "format 1 still reads"
    );
    for i in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 1;
        assert!(
            WorkerSnapshot::decode(&bad).is_err(),
            "flip at {i} accepted"
        );
    }
    assert!(WorkerSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
    assert_eq!(
        WorkerSnapshot::decode(&[]),
        Err(SnapshotError::Sealed(Unsealed::Truncated(0)))
    );
}

#[test]
fn a_chain_puts_together_what_each_epoch_added_less_what_closed() {
    // Windows of 10: start 0 closes at 10, start 10 at 20.
    let close_at = &rules();
    let key = |device: &str, seq, expires_at| SeenKey::new(device, "t", seq, expires_at);
    let window = |device: &str, start, readings: &[(i64, f64)]| OpenWindow {
        aggregation: 0,
        key: format!("{device}|t").into(),
        start,
        readings: readings.iter().map(|&(t, v)| (t, v.to_bits())).collect(),
    };
    let mut whole = snapshot(0, 1, &[]);
    whole.epoch = 4;
    whole.watermark = Some(5);
    whole.seen = vec![key("a", 1, 10)];
    // The same window twice: a restored run and the epoch's own.
    whole.windows = vec![window("a", 0, &[(3, 1.0)]), window("a", 0, &[(4, 0.5)])];
    let delta = |epoch: u64, wm, seen, windows| {
        let mut d = snapshot(0, 1, &[]);
        (d.epoch, d.watermark, d.seen, d.windows) = (epoch, Some(wm), seen, windows);
        d.previous = Some(Link {
            epoch: epoch - 1,
            bytes: 0,
            checksum: 0,
        });
        d
    };
    let five = delta(
        5,
        8,
        vec![key("a", 2, 20)],
        vec![window("a", 0, &[(1, 2.0)]), window("a", 10, &[(12, 4.0)])],
    );
    let six = delta(6, 10, vec![], vec![window("a", 10, &[(11, 5.0)])]);
    let got = materialize(vec![whole.clone(), five.clone(), six.clone()], close_at).unwrap();
    assert_eq!(got.epoch, 6);
    assert_eq!(got.watermark, Some(10));
    assert_eq!(got.previous, None);
    assert_eq!(got.seen, vec![key("a", 2, 20)], "a/1 expired at 10");
    assert_eq!(
        got.windows,
        vec![window("a", 10, &[(11, 5.0), (12, 4.0)])],
        "window 0 closed at 10; window 10's readings sorted"
    );
    let at_five = materialize(vec![whole.clone(), five.clone()], close_at).unwrap();
    assert_eq!(
        at_five.windows[0],
        window("a", 0, &[(1, 2.0), (3, 1.0), (4, 0.5)])
    );
    assert!(
        materialize(vec![five.clone(), six.clone()], close_at).is_err(),
        "no whole start"
    );
    assert!(materialize(vec![whole, six], close_at).is_err(), "a gap");
    assert!(
        reshard(&[five], 1, &rules()).is_err(),
        "deltas are put together first"
    );
}

/// A session closed at one epoch stays closed: a later reading within the
/// gap of it starts a new session, as Collect saw it, not a merged one.
#[test]
fn a_chain_closes_sessions_epoch_by_epoch() {
    let session = Aggregation {
        name: "s".into(),
        window: Window::Session { gap_ms: 10 },
        ..Aggregation::per_device("s", WindowSpec::tumbling(10).unwrap(), EmitMode::Final)
    };
    let rules = WindowRules {
        aggregations: vec![session].into(),
        lateness_ms: 0,
    };
    let slot = |times: &[i64]| OpenWindow {
        aggregation: 0,
        key: "a|t".into(),
        start: crate::aggregation::SESSION_SLOT,
        readings: times.iter().map(|&t| (t, 1f64.to_bits())).collect(),
    };
    let mut whole = snapshot(0, 1, &[]);
    (whole.epoch, whole.watermark, whole.windows) = (1, Some(0), vec![slot(&[1, 5])]);
    let mut closes = snapshot(0, 1, &[]);
    (closes.epoch, closes.watermark, closes.windows) = (2, Some(16), vec![]);
    closes.previous = Some(Link {
        epoch: 1,
        bytes: 0,
        checksum: 0,
    });
    let mut later = snapshot(0, 1, &[]);
    (later.epoch, later.watermark, later.windows) = (3, Some(16), vec![slot(&[12])]);
    later.previous = Some(Link {
        epoch: 2,
        bytes: 0,
        checksum: 0,
    });
    let got = materialize(vec![whole, closes, later], &rules).unwrap();
    assert_eq!(
        got.windows,
        vec![slot(&[12])],
        "[1, 15) closed at 16; 12 is a session of its own"
    );
}

#[test]
fn inconsistent_sets_are_refused() {
    let a = snapshot(0, 2, &["a"]);
    assert!(
        reshard(std::slice::from_ref(&a), 1, &rules()).is_err(),
        "one of two snapshots"
    );
    let mut b = snapshot(1, 2, &["b"]);
    b.epoch = 8;
    assert!(reshard(&[a, b], 1, &rules()).is_err(), "two epochs");
    assert!(reshard(&[], 1, &rules()).is_err());
}

/// Tumbling 10 per device (0), sessions of gap 10 per device (1).
fn grid_and_session_rules() -> WindowRules {
    let grid = Aggregation::per_device("g", WindowSpec::tumbling(10).unwrap(), EmitMode::Final);
    let session = Aggregation {
        name: "s".into(),
        window: Window::Session { gap_ms: 10 },
        ..grid.clone()
    };
    WindowRules {
        aggregations: vec![grid, session].into(),
        lateness_ms: 0,
    }
}

/// A chain: a whole snapshot, then deltas, watermarks never going back.
/// Per link: (watermark step, keys (device, expiry − watermark), grid
/// windows (device, start − watermark in tens, reading), session readings
/// (device, time − watermark), an alert series or not).
fn arb_chain() -> impl Strategy<Value = Vec<WorkerSnapshot>> {
    let link = (
        // Sometimes a step past everything open: the next link stands alone.
        prop_oneof![3 => 0i64..25, 1 => 40i64..80],
        prop::collection::vec((0u8..3, -10i64..30), 0..5),
        prop::collection::vec((0u8..3, -2i64..3, 0i64..10), 0..5),
        prop::collection::vec((0u8..3, -15i64..70), 0..4),
        prop::bool::weighted(0.1),
    );
    prop::collection::vec(link, 1..7).prop_map(|links| {
        let mut wm = 0;
        links
            .into_iter()
            .enumerate()
            .map(|(i, (step, keys, grid, session, alert))| {
                wm += step;
                let mut s = snapshot(0, 1, &[]);
                s.epoch = i as u64;
                s.watermark = Some(wm);
                s.previous = (i > 0).then(|| Link {
                    epoch: i as u64 - 1,
                    bytes: 0,
                    checksum: 0,
                });
                s.seen = keys
                    .into_iter()
                    .enumerate()
                    .map(|(n, (d, e))| {
                        SeenKey::new(&format!("d{d}"), "t", (i * 10 + n) as u64, wm + e)
                    })
                    .collect();
                let start = |tens: i64| (wm / 10 + tens) * 10;
                s.windows = grid
                    .into_iter()
                    .map(|(d, tens, at)| OpenWindow {
                        aggregation: 0,
                        key: format!("d{d}|t").into(),
                        start: start(tens),
                        readings: vec![(start(tens) + at, 1f64.to_bits())],
                    })
                    .chain(session.into_iter().map(|(d, at)| OpenWindow {
                        aggregation: 1,
                        key: format!("d{d}|t").into(),
                        start: crate::aggregation::SESSION_SLOT,
                        readings: vec![(wm + at, 2f64.to_bits())],
                    }))
                    .collect();
                if !alert {
                    s.alerts.clear();
                } else {
                    s.alerts = snapshot(0, 1, &["d0"]).alerts;
                }
                s
            })
            .collect()
    })
}

proptest! {
    /// Leaving out of each link what its own watermark closed keeps the
    /// chain's state; once a watermark closed all the chain held, the
    /// next link alone (made whole) is that state.
    #[test]
    fn links_without_what_closed_and_a_link_after_everything_closed_keep_the_state(
        chain in arb_chain(),
    ) {
        let rules = grid_and_session_rules();
        let mut dropped = chain.clone();
        dropped.iter_mut().for_each(|s| s.drop_closed(&rules));
        prop_assert_eq!(
            materialize(dropped.clone(), &rules).unwrap(),
            materialize(chain.clone(), &rules).unwrap()
        );
        let mut final_at = dropped[0].final_at(&rules);
        for i in 1..dropped.len() {
            if final_at.is_none_or(|at| !outlives(at, dropped[i].watermark)) {
                let mut alone = dropped[i].clone();
                alone.previous = None;
                prop_assert_eq!(
                    materialize(vec![alone], &rules).unwrap(),
                    materialize(chain[..=i].to_vec(), &rules).unwrap(),
                    "link {} after everything closed", i
                );
            }
            final_at = final_at.max(dropped[i].final_at(&rules));
        }
    }

    /// A fold may start at the oldest link the head's watermark has not all
    /// closed (the sink's `Chain::oldest_open`): the links before it hold
    /// only what that watermark closed.
    #[test]
    fn a_chain_from_its_oldest_link_still_open_keeps_the_state(chain in arb_chain()) {
        let rules = grid_and_session_rules();
        let mut dropped = chain.clone();
        dropped.iter_mut().for_each(|s| s.drop_closed(&rules));
        for head in 1..dropped.len() {
            let wm = dropped[head].watermark;
            let open = (0..head).find(|&i| {
                dropped[i].final_at(&rules).is_some_and(|at| outlives(at, wm))
            });
            let Some(from) = open else { continue };
            let mut suffix = dropped[from..=head].to_vec();
            suffix[0].previous = None;
            prop_assert_eq!(
                materialize(suffix, &rules).unwrap(),
                materialize(chain[..=head].to_vec(), &rules).unwrap(),
                "links {}..={}", from, head
            );
        }
    }

    /// Resharding N → M keeps exactly the same state, puts every key on the
    /// worker the routing picks, and M → N → M is the identity.
    #[test]
    fn resharding_keeps_the_state_and_routes_every_key(
        devices in prop::collection::btree_set("[a-z]{1,6}", 0..40),
        from in 1u32..5,
        to in 1u32..5,
    ) {
        let devices: Vec<String> = devices.into_iter().collect();
        let mut shards: Vec<Vec<&str>> = vec![Vec::new(); from as usize];
        for d in &devices {
            shards[device_owner(d, from) as usize].push(d);
        }
        let rules = rules();
        let mut before: Vec<WorkerSnapshot> = shards
            .iter()
            .enumerate()
            .map(|(w, ds)| snapshot(w as u32, from, ds))
            .collect();
        // Aggregation 1 (per metric) keyed by the device's name as its metric.
        for d in &devices {
            let w = OpenWindow { aggregation: 1, key: d.as_str().into(), start: 0, readings: vec![(1, 1)] };
            let owner = rules.owner(&w, from) as usize;
            before[owner].windows.push(w);
        }
        let after = reshard(&before, to, &rules).unwrap();
        prop_assert_eq!(after.len(), to as usize);
        let mut all: Vec<String> = Vec::new();
        for s in &after {
            for w in &s.windows {
                prop_assert_eq!(rules.owner(w, to), s.worker);
                if w.aggregation == 0 {
                    let device = w.key.split('|').next().unwrap_or_default();
                    prop_assert_eq!(device_owner(device, to), s.worker);
                    all.push(device.to_string());
                }
            }
            for k in &s.seen {
                prop_assert_eq!(device_owner(&k.series.device, to), s.worker);
            }
            // Alert series follow their aggregation's key owner.
            for a in &s.alerts {
                let device = a.key.split('|').next().unwrap_or_default();
                prop_assert_eq!(device_owner(device, to), s.worker);
            }
        }
        prop_assert_eq!(after.iter().map(|s| s.alerts.len()).sum::<usize>(), devices.len());
        all.sort();
        prop_assert_eq!(all, devices.clone());
        prop_assert_eq!(after.iter().map(|s| s.windows.len()).sum::<usize>(), 2 * devices.len());
        let back = reshard(&reshard(&after, from, &rules).unwrap(), to, &rules).unwrap();
        prop_assert_eq!(back, after);
    }
}

#[test]
fn keys_order_by_series_name_whether_they_share_their_names_or_not() {
    let shared = SeenKey::new("d1", "t", 1, 10);
    let sharing = SeenKey {
        series: std::sync::Arc::clone(&shared.series),
        seq: 2,
        expires_at: 10,
    };
    let own = SeenKey::new("d1", "t", 2, 10);
    assert_eq!(sharing, own);
    assert!(shared < sharing);
    let by_device = SeenKey::new("d0", "z", 9, 99);
    let by_metric = SeenKey::new("d1", "s", 5, 0);
    let mut keys = vec![
        own.clone(),
        by_device.clone(),
        shared.clone(),
        by_metric.clone(),
    ];
    keys.sort_unstable();
    assert_eq!(keys, [by_device, by_metric, shared, own]);
    // The point of sharing: a key per reading stays small while it waits to be staged.
    assert_eq!(std::mem::size_of::<SeenKey>(), 24);
}

#[test]
fn a_run_captures_its_first_staged_epoch_whole_then_deltas_or_checkpoints() {
    use Capture::{Delta, Nothing, Whole};
    let deltas = CapturePlan {
        first: 5,
        checkpoint_every: None,
    };
    let at = |plan: CapturePlan| (3..=9).map(|e| plan.at(e)).collect::<Vec<_>>();
    assert_eq!(
        at(deltas),
        [Nothing, Nothing, Whole, Delta, Delta, Delta, Delta]
    );
    let every_4 = CapturePlan {
        checkpoint_every: std::num::NonZeroU64::new(4),
        ..deltas
    };
    // Epochs 3 and 4 are replayed; 8 is a checkpoint.
    assert_eq!(
        at(every_4),
        [Nothing, Nothing, Whole, Nothing, Nothing, Whole, Nothing]
    );
    let every_1 = CapturePlan {
        checkpoint_every: std::num::NonZeroU64::new(1),
        ..deltas
    };
    assert!((5..9).all(|e| every_1.at(e) == Whole));
}
