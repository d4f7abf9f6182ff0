use proptest::prelude::*;

use super::*;
use crate::aggregate::Stats;
use crate::window::WindowSpec;
use iotflow_jobfile::{AlertPlan, Measure};

fn aggregation(window: Window) -> Aggregation {
    let mut a = Aggregation::per_device(
        "a",
        WindowSpec::tumbling(10).unwrap_or_else(|e| panic!("{e}")),
        crate::job::EmitMode::Final,
    );
    a.window = window;
    a.measures = vec![Measure::Count, Measure::Mean];
    a
}

fn rule(window: Window, kind: AlertRule, lateness_ms: i64) -> Rule {
    let plan = AlertPlan {
        name: "r".into(),
        on: 0,
        severity: "warning".into(),
        rule: kind,
    };
    AlertRules::new(&[plan], &[aggregation(window)], lateness_ms).rules[0].clone()
}

fn threshold(when: &str, clear: Option<&str>, streak: u32) -> AlertRule {
    struct F;
    impl iotflow_jobfile::expr::Fields for F {
        type Field = AlertField;
        fn resolve(
            &self,
            name: &str,
        ) -> Result<(AlertField, iotflow_jobfile::expr::FieldType), String> {
            match name {
                "count" => Ok((
                    AlertField::Measure(0),
                    iotflow_jobfile::expr::FieldType::Number,
                )),
                "mean" => Ok((
                    AlertField::Measure(1),
                    iotflow_jobfile::expr::FieldType::Number,
                )),
                "change" => Ok((AlertField::Change, iotflow_jobfile::expr::FieldType::Number)),
                _ => Err("no".into()),
            }
        }
    }
    let parse = |t: &str| iotflow_jobfile::expr::parse(t, &F).unwrap_or_else(|e| panic!("{e:?}"));
    AlertRule::Condition {
        when: parse(when),
        clear: clear.map(parse),
        streak,
        change_of: None,
    }
}

fn measured(first: i64, last: i64, mean: f64) -> Measured {
    Measured {
        stats: Stats {
            count: 1,
            sum: mean,
            min: mean,
            max: mean,
            mean,
            stddev: 0.0,
            first_ts: first,
            last_ts: last,
        },
        first_value: mean,
        last_value: mean,
        percentiles: Vec::new(),
    }
}

fn grid(size: i64, slide: i64) -> Window {
    Window::Grid(WindowSpec::hopping(size, slide).unwrap_or_else(|e| panic!("{e}")))
}

/// Means of consecutive 10 ms tumbling windows (None: a window without readings).
fn run(r: &Rule, means: &[Option<f64>]) -> Vec<(bool, i64, i64)> {
    let mut s = Series::default();
    let mut out = Vec::new();
    for (i, m) in means.iter().enumerate() {
        let Some(m) = m else { continue };
        let start = i as i64 * 10;
        let ms = measured(start, start + 9, *m);
        r.window(
            0,
            &mut s,
            Seen {
                group: "d|t",
                start,
                end: start + 10,
                measured: &ms,
            },
            &mut out,
        );
    }
    out.iter()
        .map(|e| (e.firing, e.window_start, e.since))
        .collect()
}

#[test]
fn a_threshold_fires_after_its_streak_and_resolves_with_hysteresis() {
    let r = rule(
        grid(10, 10),
        threshold("mean > 80", Some("mean < 75"), 3),
        0,
    );
    let means = [81.0, 82.0, 83.0, 78.0, 76.0, 74.0, 90.0].map(Some);
    // Fires at the third window (since = the first), stays through 78 and 76, resolves at 74.
    assert_eq!(run(&r, &means), [(true, 20, 0), (false, 50, 0)]);
    // A window without readings breaks the streak.
    let gap = [
        Some(81.0),
        Some(82.0),
        None,
        Some(83.0),
        Some(84.0),
        Some(85.0),
    ];
    assert_eq!(run(&r, &gap), [(true, 50, 30)]);
}

#[test]
fn a_threshold_reports_its_first_comparison() {
    let r = rule(
        grid(10, 10),
        threshold("mean > 80 and count >= 1", None, 1),
        0,
    );
    let mut s = Series::default();
    let mut out = Vec::new();
    let ms = measured(0, 9, 85.5);
    r.window(
        3,
        &mut s,
        Seen {
            group: "d|t",
            start: 0,
            end: 10,
            measured: &ms,
        },
        &mut out,
    );
    assert_eq!(
        (out[0].value, out[0].threshold, out[0].rule),
        (Some(85.5), Some(80.0), 3)
    );
}

#[test]
fn an_anomaly_is_judged_against_the_baseline_of_the_windows_before() {
    let kind = AlertRule::Anomaly {
        of: 1,
        deviations: 3.0,
        clear_deviations: 2.0,
        alpha: 0.5,
        warmup: 3,
        streak: 1,
    };
    let r = rule(grid(10, 10), kind, 0);
    let means = [10.0, 11.0, 10.0, 11.0, 30.0, 10.5].map(Some);
    let events = run(&r, &means);
    assert_eq!(events, [(true, 40, 40), (false, 50, 40)]);
}

/// The naive reading of a threshold rule: walk back from each window over
/// consecutive windows where `when` held, since the last episode changed.
fn naive_threshold(
    means: &[Option<f64>],
    fire: f64,
    clear: f64,
    streak: usize,
) -> Vec<(bool, i64, i64)> {
    naive_episodes(
        means.len(),
        |i| means[i].is_some(),
        |i| means[i].is_some_and(|v| v > fire),
        |i| means[i].is_some_and(|v| v < clear),
        streak,
    )
}

/// Episodes over `n` consecutive 10 ms windows (`present`: it has readings):
/// a firing at the window that ends a run of `streak` windows where `holds`
/// (walking back, never past the last episode's change), since the run's
/// first; a resolve at the first later window where `clears`.
fn naive_episodes(
    n: usize,
    present: impl Fn(usize) -> bool,
    holds: impl Fn(usize) -> bool,
    clears: impl Fn(usize) -> bool,
    streak: usize,
) -> Vec<(bool, i64, i64)> {
    let mut out = Vec::new();
    let mut firing: Option<i64> = None;
    let mut boundary = 0usize; // windows before this index cannot count
    for i in 0..n {
        if !present(i) {
            continue;
        }
        if let Some(since) = firing {
            if clears(i) {
                out.push((false, i as i64 * 10, since));
                firing = None;
                boundary = i + 1;
            }
            continue;
        }
        let mut run = 0;
        let mut j = i as i64;
        while j >= boundary as i64 && present(j as usize) && holds(j as usize) {
            run += 1;
            j -= 1;
        }
        if run >= streak {
            let since = (i + 1 - streak) as i64 * 10;
            out.push((true, i as i64 * 10, since));
            firing = Some(since);
            boundary = i + 1;
        }
    }
    out
}

/// Windows of consecutive 10 ms slots with (count, mean) (None: no readings).
fn run_counted(r: &Rule, windows: &[Option<(u64, f64)>]) -> Vec<(bool, i64, i64)> {
    let mut s = Series::default();
    let mut out = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let Some((count, mean)) = w else { continue };
        let start = i as i64 * 10;
        let mut ms = measured(start, start + 9, *mean);
        ms.stats.count = *count;
        let seen = Seen {
            group: "d",
            start,
            end: start + 10,
            measured: &ms,
        };
        r.window(0, &mut s, seen, &mut out);
    }
    out.iter()
        .map(|e| (e.firing, e.window_start, e.since))
        .collect()
}

/// Absence from the readings themselves: every gap longer than the limit
/// fires (at the window of last + limit) and resolves (at the next reading);
/// the trailing silence fires once a watermark that is not the end of time reaches its due time.
fn naive_absence(
    times: &[i64],
    spec: WindowSpec,
    limit: i64,
    lateness: i64,
    wms: &[i64],
) -> Vec<(bool, i64, i64, i64)> {
    let mut out = Vec::new();
    let window_of = |t: i64| spec.windows_of(t).next().unwrap_or_default();
    for pair in times.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b - a > limit {
            let s = window_of(a + limit);
            out.push((true, s, a, b.min(spec.end(s)) - a));
            out.push((false, window_of(b), a, b - a));
        }
    }
    if let Some(&l) = times.last() {
        let s = window_of(l + limit);
        let due = spec.end(s) + lateness;
        if wms.iter().any(|&w| w != i64::MAX && w >= due) {
            out.push((true, s, l, spec.end(s) - l));
        }
    }
    out
}

fn change_rule(fire: f64, clear: f64, streak: u32) -> AlertRule {
    let parse = |t: String| match threshold(&t, None, 1) {
        AlertRule::Condition { when, .. } => when,
        _ => unreachable!(),
    };
    AlertRule::Condition {
        when: parse(format!("change > {fire}")),
        clear: Some(parse(format!("change < {clear}"))),
        streak,
        change_of: Some(1),
    }
}

proptest! {
    #[test]
    fn bad_data_events_match_the_naive_reading(
        // Tenths, so a share often equals a bound exactly (`>` and `<=` are tested).
        windows in proptest::collection::vec(
            proptest::option::weighted(0.85, (1u64..20, 0u32..7)), 0..60),
        share in 1u32..5,
        clear in 0u32..3,
        min_records in 1u64..8,
        streak in 1u32..4,
    ) {
        let windows: Vec<Option<(u64, f64)>> =
            windows.into_iter().map(|w| w.map(|(n, k)| (n, f64::from(k) / 10.0))).collect();
        let clear_share = f64::from(share.saturating_sub(clear)) / 10.0;
        let share = f64::from(share) / 10.0;
        let kind = AlertRule::BadData { share, clear_share, min_records, streak };
        let r = rule(grid(10, 10), kind, 0);
        let want = naive_episodes(
            windows.len(),
            |i| windows[i].is_some(),
            |i| windows[i].is_some_and(|(n, x)| n >= min_records && x > share),
            |i| windows[i].is_some_and(|(_, x)| x <= clear_share),
            streak as usize,
        );
        prop_assert_eq!(run_counted(&r, &windows), want);
    }

    #[test]
    fn rate_of_change_events_match_the_naive_reading(
        means in proptest::collection::vec(proptest::option::weighted(0.85, 0.0f64..30.0), 0..60),
        streak in 1u32..4,
    ) {
        let r = rule(grid(10, 10), change_rule(5.0, 1.0, streak), 0);
        // The change from the previous window; unknown after a window without readings.
        let change = |i: usize| match (i.checked_sub(1).and_then(|p| means[p]), means[i]) {
            (Some(p), Some(x)) => Some(x - p),
            _ => None,
        };
        let want = naive_episodes(
            means.len(),
            |i| means[i].is_some(),
            |i| change(i).is_some_and(|c| c > 5.0),
            |i| change(i).is_some_and(|c| c < 1.0),
            streak as usize,
        );
        let windows: Vec<Option<(u64, f64)>> = means.iter().map(|m| m.map(|x| (1, x))).collect();
        prop_assert_eq!(run_counted(&r, &windows), want);
    }

    #[test]
    fn anomaly_events_match_a_recomputed_baseline(
        means in proptest::collection::vec(proptest::option::weighted(0.9, 0.0f64..10.0), 0..60),
        spikes in proptest::collection::vec(0usize..60, 0..6),
        streak in 1u32..3,
        warmup in 2u32..6,
    ) {
        let mut means = means;
        let n = means.len();
        for i in spikes.into_iter().filter(|i| *i < n) {
            means[i] = means[i].map(|x| x + 100.0);
        }
        let (deviations, clear_deviations, alpha) = (3.0, 2.0, 0.3);
        let kind = AlertRule::Anomaly { of: 1, deviations, clear_deviations, alpha, warmup, streak };
        let r = rule(grid(10, 10), kind, 0);
        // z of each window against the baseline of every window before it
        // (mean and variance weighted by alpha), and whether it is judged yet.
        let mut z: Vec<Option<(f64, bool)>> = Vec::new();
        let (mut seen, mut m, mut v) = (0u32, 0.0f64, 0.0f64);
        for x in &means {
            let Some(x) = *x else { z.push(None); continue };
            let sd = v.max(0.0).sqrt();
            let d = x - m;
            let zi = if d == 0.0 { 0.0 } else if sd == 0.0 { d.signum() * f64::INFINITY } else { d / sd };
            z.push(Some((zi, seen >= warmup)));
            if seen == 0 { m = x; v = 0.0; } else { let inc = alpha * d; m += inc; v = (1.0 - alpha) * (v + d * inc); }
            seen += 1;
        }
        let want = naive_episodes(
            means.len(),
            |i| z[i].is_some(),
            |i| z[i].is_some_and(|(zi, judged)| judged && zi.abs() > deviations),
            |i| z[i].is_some_and(|(zi, judged)| judged && zi.abs() <= clear_deviations),
            streak as usize,
        );
        let windows: Vec<Option<(u64, f64)>> = means.iter().map(|m| m.map(|x| (1, x))).collect();
        prop_assert_eq!(run_counted(&r, &windows), want);
    }

    #[test]
    fn threshold_events_match_the_naive_reading(
        means in proptest::collection::vec(proptest::option::weighted(0.85, 70.0f64..90.0), 0..60),
        streak in 1u32..4,
    ) {
        let r = rule(grid(10, 10), threshold("mean > 80", Some("mean < 75"), streak), 0);
        prop_assert_eq!(run(&r, &means), naive_threshold(&means, 80.0, 75.0, streak as usize));
    }

    #[test]
    fn absence_events_match_the_readings_however_epochs_cut_them(
        mut times in proptest::collection::vec(0i64..2_000, 1..40),
        hopping in any::<bool>(),
        limit in 100i64..400,
        lateness in 0i64..30,
        cuts in proptest::collection::vec(0i64..2_500, 0..8),
        bounded in any::<bool>(),
    ) {
        times.sort_unstable();
        times.dedup();
        let spec = if hopping { WindowSpec::hopping(100, 50) } else { WindowSpec::tumbling(100) }
            .unwrap_or_else(|e| panic!("{e}"));
        let r = rule(Window::Grid(spec), AlertRule::Absence { absent_for_ms: limit }, lateness);
        // Every window with readings, by start, with its first and last reading.
        let mut windows: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
        for &t in &times {
            for s in spec.windows_of(t) {
                let e = windows.entry(s).or_insert((t, t));
                e.0 = e.0.min(t);
                e.1 = e.1.max(t);
            }
        }
        let mut wms: Vec<i64> = cuts;
        wms.sort_unstable();
        wms.push(if bounded { i64::MAX } else { 2_600 + 400 });
        let mut s = Series::default();
        let mut out = Vec::new();
        let mut delivered = 0usize;
        let list: Vec<(i64, (i64, i64))> = windows.into_iter().collect();
        for &wm in &wms {
            // Windows final under wm (end + lateness <= wm), in start order.
            while let Some(&(start, (first, last))) = list.get(delivered) {
                if spec.end(start).saturating_add(lateness) > wm { break; }
                let ms = measured(first, last, 1.0);
                r.window(0, &mut s, Seen { group: "d", start, end: spec.end(start), measured: &ms }, &mut out);
                delivered += 1;
            }
            if let Some(e) = r.deadline(0, "d", &mut s, wm) { out.push(e); }
        }
        let got: Vec<(bool, i64, i64, i64)> = out.iter()
            .map(|e| (e.firing, e.window_start, e.since, e.value.unwrap_or(f64::NAN) as i64))
            .collect();
        prop_assert_eq!(got, naive_absence(&times, spec, limit, lateness, &wms));
    }
}
