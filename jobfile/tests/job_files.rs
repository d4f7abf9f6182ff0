//! The shipped job files as `check` prints their plans, and a table of bad
//! job files with the message each gets.

use std::path::{Path, PathBuf};

fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs")
}

#[test]
fn shipped_job_files_are_valid_and_their_plans_are_stable() {
    for name in [
        "per-device",
        "site-p95",
        "machine-sessions",
        "demo",
        "plant-alerts",
        "plant-avro",
        "fleet-p99",
    ] {
        let path = jobs_dir().join(format!("{name}.toml"));
        let plan = iotflow_jobfile::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(name, plan.to_string());
    }
}

#[test]
fn the_per_device_file_is_the_default_job() {
    let plan = iotflow_jobfile::load(&jobs_dir().join("per-device.toml")).unwrap();
    let default = iotflow_jobfile::JobPlan::default_job(iotflow_jobfile::DefaultJob {
        name: "per-device".into(),
        input_topic: "iot.readings".into(),
        output_topic: "iot.aggregates".into(),
        dead_letter_topic: "iot.readings.dlq".into(),
        window: iotflow_jobfile::WindowKind::Hopping {
            size_ms: 10_000,
            slide_ms: 10_000,
        },
        watermark: iotflow_jobfile::WatermarkPlan {
            max_out_of_order_ms: 2_000,
            lateness_ms: 0,
            idle_timeout_ms: 5_000,
        },
        emit: iotflow_jobfile::EmitMode::Final,
    });
    assert_eq!(plan, default);
}

/// A valid base a bad case changes one thing of.
const BASE_INPUT: &str = r#"name = "plant-3"
[input]
topic = "iot.readings"
device = "device_id"
time = "timestamp"
seq = "seq"
dimensions = ["site"]
metrics = ["temperature", "humidity"]
"#;

fn with_aggregation(body: &str) -> String {
    format!("{BASE_INPUT}[[aggregation]]\nname = \"site_1m\"\n{body}\n")
}

#[test]
fn bad_job_files_are_refused_at_their_line_with_a_hint() {
    let window = "window = \"tumbling 1m\"\ntopic = \"iot.site_1m\"";
    let cases: Vec<(&str, String)> = vec![
        ("unknown top-level key", format!("colour = \"blue\"\n{BASE_INPUT}")),
        ("unknown input key", BASE_INPUT.replace("seq = \"seq\"", "sequence = \"seq\"")),
        ("wrong type", BASE_INPUT.replace("topic = \"iot.readings\"", "topic = 7")),
        ("no name", BASE_INPUT.replace("name = \"plant-3\"\n", "")),
        ("no aggregation", BASE_INPUT.to_owned()),
        ("aggregation without window", with_aggregation("topic = \"iot.x\"")),
        ("aggregation without output", with_aggregation("window = \"tumbling 1m\"")),
        ("unknown window", with_aggregation("window = \"sliding 1m\"\ntopic = \"iot.x\"")),
        ("hopping without slide", with_aggregation("window = \"hopping 1m\"\ntopic = \"iot.x\"")),
        ("slide past size", with_aggregation("window = \"hopping 1m every 2m\"\ntopic = \"iot.x\"")),
        ("zero window", with_aggregation("window = \"tumbling 0s\"\ntopic = \"iot.x\"")),
        ("sub-millisecond", with_aggregation("window = \"tumbling 1500us\"\ntopic = \"iot.x\"")),
        ("window that never closes", format!("{BASE_INPUT}[watermark]\nlateness = \"7days\"\n[[aggregation]]\nname = \"a\"\n{window}\n")),
        ("unknown group field", with_aggregation(&format!("group_by = [\"line\", \"metric\"]\n{window}"))),
        ("device_id in group_by", with_aggregation(&format!("group_by = [\"device_id\"]\n{window}"))),
        ("group field twice", with_aggregation(&format!("group_by = [\"site\", \"site\"]\n{window}"))),
        ("unknown measure", with_aggregation(&format!("measures = [\"count\", \"median\"]\n{window}"))),
        ("percentile out of range", with_aggregation(&format!("measures = [\"p100\"]\n{window}"))),
        ("measure twice", with_aggregation(&format!("measures = [\"p95\", \"p95.0\"]\n{window}"))),
        ("approx without percentiles", with_aggregation(&format!("measures = [\"mean\"]\npercentiles = \"approx\"\n{window}"))),
        ("approx percentiles over sessions", with_aggregation("measures = [\"p95\"]\npercentiles = \"approx\"\nwindow = \"session 30s\"")),
        ("unknown field in where", with_aggregation(&format!("where = \"metric == 'temperature' and line == 'L2'\"\n{window}"))),
        ("unknown metric in where", with_aggregation(&format!("where = \"metric in ['temperature', 'pressure']\"\n{window}"))),
        ("text ordered in where", with_aggregation(&format!("where = \"site > 'b'\"\n{window}"))),
        ("unquoted text in where", with_aggregation(&format!("where = \"site == lyon\"\n{window}"))),
        ("unclosed parenthesis", with_aggregation(&format!("where = \"(value > 3 or value < 1\"\n{window}"))),
        ("unknown emit", with_aggregation(&format!("emit = \"sometimes\"\n{window}"))),
        ("output topic is the input", with_aggregation("window = \"tumbling 1m\"\ntopic = \"iot.readings\"")),
        ("bad topic name", with_aggregation("window = \"tumbling 1m\"\ntopic = \"iot/site\"")),
        ("bad dataset name", with_aggregation("window = \"tumbling 1m\"\nparquet = \"../x\"")),
        ("aggregation name twice", format!("{}[[aggregation]]\nname = \"site_1m\"\nwindow = \"tumbling 1m\"\ntopic = \"iot.other\"\n", with_aggregation(window))),
        ("dataset twice", format!("{}[[aggregation]]\nname = \"b\"\nwindow = \"tumbling 1m\"\nparquet = \"d\"\n", with_aggregation("window = \"tumbling 1m\"\nparquet = \"d\""))),
        ("dimension named like a measure", BASE_INPUT.replace("[\"site\"]", "[\"meta.count\"]")),
        ("dimension path with alias clash", BASE_INPUT.replace("[\"site\"]", "[\"site\", \"meta.site\"]")),
        ("a metric that is the device", BASE_INPUT.replace("[\"temperature\", \"humidity\"]", "[\"temperature\", \"device_id\"]")),
        ("preset and fields", "name = \"x\"\n[input]\npreset = \"flat\"\ndevice = \"id\"\n".to_owned()),
        ("unknown preset", "name = \"x\"\n[input]\npreset = \"csv\"\n[[aggregation]]\nname = \"a\"\nwindow = \"tumbling 1m\"\ntopic = \"t\"\n".to_owned()),
        ("fields without time", "name = \"x\"\n[input]\ndevice = \"id\"\n".to_owned()),
        ("metric_field without value_field", BASE_INPUT.replace("metrics = [\"temperature\", \"humidity\"]", "metric_field = \"sensor\"")),
        ("unknown time unit", BASE_INPUT.replace("seq = \"seq\"", "time_unit = \"minutes\"")),
        ("bad duration", format!("{BASE_INPUT}[watermark]\nmax_out_of_order = \"5 seconds please\"\n")),
        ("job name with a pipe", BASE_INPUT.replace("plant-3", "plant|3")),
    ];
    let mut report = String::new();
    for (label, text) in &cases {
        let err = iotflow_jobfile::parse(Path::new("job.toml"), text)
            .err()
            .unwrap_or_else(|| panic!("{label}: accepted"));
        let located = err
            .located()
            .unwrap_or_else(|| panic!("{label}: not located"));
        assert!(located.line >= 1, "{label}");
        report.push_str(&format!("── {label}\n{err}\n\n"));
    }
    insta::assert_snapshot!(report);
}

fn with_alert(body: &str) -> String {
    let agg = "window = \"tumbling 10s\"\ntopic = \"iot.site_1m\"\nmeasures = [\"count\", \"mean\", \"p99.9\"]";
    format!(
        "{}[[alert]]\nname = \"hot\"\non = \"site_1m\"\n{body}\n",
        with_aggregation(agg)
    )
}

#[test]
fn bad_alert_rules_are_refused_at_their_line_with_a_hint() {
    let cases: Vec<(&str, String)> = vec![
        ("no condition", with_alert("severity = \"critical\"")),
        (
            "unknown aggregation",
            with_alert("when = \"mean > 1\"").replace("on = \"site_1m\"", "on = \"site_5m\""),
        ),
        (
            "unknown field in when",
            with_alert("when = \"temperature > 80\""),
        ),
        (
            "change without change_of",
            with_alert("when = \"change > 2\""),
        ),
        (
            "change_of not a measure",
            with_alert("change_of = \"stddev\"\nwhen = \"change > 2\""),
        ),
        ("for zero", with_alert("when = \"mean > 1\"\nfor = 0")),
        (
            "for with absence",
            with_alert("absent_for = \"1m\"\nfor = 3"),
        ),
        (
            "absence shorter than the window",
            with_alert("absent_for = \"5s\""),
        ),
        (
            "deviations with a threshold",
            with_alert("when = \"mean > 1\"\ndeviations = 3"),
        ),
        (
            "clear_deviations past deviations",
            with_alert("anomaly_of = \"mean\"\ndeviations = 2\nclear_deviations = 3"),
        ),
        (
            "alpha out of range",
            with_alert("anomaly_of = \"mean\"\nalpha = 1.5"),
        ),
        (
            "warmup of one",
            with_alert("anomaly_of = \"mean\"\nwarmup = 1"),
        ),
        (
            "bad severity",
            with_alert("when = \"mean > 1\"\nseverity = \"very bad!\""),
        ),
        (
            "group field named like an event field",
            with_alert("when = \"mean > 1\"")
                .replace("[\"site\"]", "[\"state\"]")
                .replace(
                    "name = \"site_1m\"\n",
                    "name = \"site_1m\"\ngroup_by = [\"state\"]\n",
                ),
        ),
        ("bad share above one", with_alert("bad_share = 1.5")),
        (
            "clear share above the bad share",
            with_alert("bad_share = 0.2\nclear_share = 0.3"),
        ),
        (
            "min records of zero",
            with_alert("bad_share = 0.2\nmin_records = 0"),
        ),
        (
            "when with a bad share",
            with_alert("bad_share = 0.2\nwhen = \"count > 3\""),
        ),
        (
            "min records with a threshold",
            with_alert("when = \"mean > 1\"\nmin_records = 3"),
        ),
        (
            "unknown alert key",
            with_alert("when = \"mean > 1\"\nrepeat = \"5m\""),
        ),
        (
            "alert name twice",
            format!(
                "{}[[alert]]\nname = \"hot\"\non = \"site_1m\"\nwhen = \"mean > 2\"\n",
                with_alert("when = \"mean > 1\"")
            ),
        ),
        (
            "alerts topic taken",
            with_alert("when = \"mean > 1\"").replace(
                "[[aggregation]]",
                "[output]\nalerts_topic = \"iot.readings\"\n[[aggregation]]",
            ),
        ),
    ];
    let mut report = String::new();
    for (label, text) in &cases {
        let err = iotflow_jobfile::parse(Path::new("job.toml"), text)
            .err()
            .unwrap_or_else(|| panic!("{label}: accepted\n{text}"));
        assert!(
            err.located().is_some_and(|l| l.line >= 1),
            "{label}: not located"
        );
        report.push_str(&format!("── {label}\n{err}\n\n"));
    }
    insta::assert_snapshot!(report);
    // The measure named with a dot is its column in a condition.
    let ok = with_alert("when = \"p99_9 > 1\"");
    iotflow_jobfile::parse(Path::new("job.toml"), &ok).unwrap();
}

#[test]
fn a_missing_file_names_its_path() {
    let err = iotflow_jobfile::load(Path::new("/nonexistent/job.toml")).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/job.toml: "),
        "{err}"
    );
}
