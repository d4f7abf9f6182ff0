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
    let mut out = Vec::new();
    let mut firing: Option<i64> = None;
    let mut boundary = 0usize; // windows before this index cannot count
    for i in 0..means.len() {
        let Some(m) = means[i] else { continue };
        if let Some(since) = firing {
            if m < clear {
                out.push((false, i as i64 * 10, since));
                firing = None;
                boundary = i + 1;
            }
            continue;
        }
        let mut n = 0;
        let mut j = i as i64;
        while j >= boundary as i64 && means[j as usize].is_some_and(|v| v > fire) {
            n += 1;
            j -= 1;
        }
        if n >= streak {
            let since = (i + 1 - streak) as i64 * 10;
            out.push((true, i as i64 * 10, since));
            firing = Some(since);
            boundary = i + 1;
        }
    }
    out
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

proptest! {
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
