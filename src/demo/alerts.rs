//! The demo's alerts: what the job's rules raised over the devices' spells
//! of trouble, read back from the alert topic and checked against the
//! Parquet dataset `alerts` and against the spells the simulator made.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use iotflow_jobfile::alert::{DEFAULT_ALERTS_DATASET, DEFAULT_ALERTS_TOPIC};
use iotflow_redpanda::rskafka::client::partition::UnknownTopicHandling;
use iotflow_redpanda::topics;

use crate::run_cmd::end_offsets;
use crate::target::Target;

/// The rule of `jobs/demo.toml` that each spell kind must raise.
pub const RULE_OF_EPISODE: [(&str, &str); 3] = [
    ("overheat", "overheat"),
    ("stuck", "stuck_sensor"),
    ("silent", "silent"),
];

/// The alert topic's end offsets (none before a cluster's first demo).
pub async fn offsets(target: &Target) -> Result<BTreeMap<i32, i64>> {
    Ok(
        match topics::partitions_of(&target.client, DEFAULT_ALERTS_TOPIC).await? {
            Some(_) => end_offsets(&target.client, DEFAULT_ALERTS_TOPIC).await?,
            None => BTreeMap::new(),
        },
    )
}

/// The alert events written since `before`, as JSON objects.
async fn events_since(
    target: &Target,
    before: &BTreeMap<i32, i64>,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut events: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    for (p, end) in offsets(target).await? {
        let pc = target
            .client
            .partition_client(DEFAULT_ALERTS_TOPIC, p, UnknownTopicHandling::Retry)
            .await
            .context("connecting to the alert topic")?;
        let from = before.get(&p).copied().unwrap_or(0);
        for r in iotflow_redpanda::scan::read_range(&pc, from, end).await? {
            if let Some(v) = r.record.value.as_deref()
                && let Ok(e) = serde_json::from_slice(v)
            {
                events.push(e);
            }
        }
    }
    events.sort_by_key(|e| e["window_end"].as_i64());
    Ok(events)
}

/// Prints what the rules raised; returns the checks that failed.
pub async fn report(
    target: &Target,
    before: &BTreeMap<i32, i64>,
    parquet_dir: &Path,
    episodes: &[&str],
) -> Result<Vec<String>> {
    let events = events_since(target, before).await?;
    let mut per_rule: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
    for e in &events {
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let entry = per_rule
            .entry(text("alert").to_owned())
            .or_insert_with(|| (text("severity").to_owned(), 0, 0));
        match text("state") {
            "firing" => entry.1 += 1,
            _ => entry.2 += 1,
        }
    }
    let mut problems = Vec::new();
    println!("   alerts (rules of jobs/demo.toml over the devices' spells of trouble)");
    println!(
        "     {:<14} {:<9} {:>7} {:>9}",
        "rule", "severity", "fired", "resolved"
    );
    for (rule, (severity, fired, resolved)) in &per_rule {
        println!("     {rule:<14} {severity:<9} {fired:>7} {resolved:>9}");
    }
    for (episode, rule) in RULE_OF_EPISODE {
        if episodes.contains(&episode) {
            let fired = per_rule.get(rule).map_or(0, |r| r.1);
            let ok = fired > 0;
            if !ok {
                problems.push(format!("{rule}: no alert for the {episode} spells"));
            }
            println!(
                "     {episode} spells raise {rule}: {}",
                if ok { "ok" } else { "MISSING" }
            );
        }
    }
    let (files, rows) = super::parquet_dataset_size(&parquet_dir.join(DEFAULT_ALERTS_DATASET))?;
    let on_topic = events.len() as i64;
    let ok = rows == on_topic;
    if !ok {
        problems.push(format!(
            "alerts: {on_topic} events on {DEFAULT_ALERTS_TOPIC}, {rows} rows in Parquet"
        ));
    }
    println!(
        "     on {DEFAULT_ALERTS_TOPIC} {on_topic:>10} events, in Parquet {rows} rows in {files} files  [{}]",
        if ok { "ok" } else { "MISMATCH" }
    );
    if let Some(last) = events.iter().rev().find(|e| e["state"] == "firing") {
        println!(
            "     the latest firing: {}",
            serde_json::Value::Object(last.clone())
        );
    }
    Ok(problems)
}
