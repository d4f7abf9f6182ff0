//! A disk that fills up or turns read-only under a running job.

use std::path::Path;
use std::process::Command;

use crate::fixture::Fixture;

/// The state and Parquet directories on a small tmpfs (a private mount in a
/// user namespace, so no root is needed): the job fills it, fails staging
/// with ENOSPC and commits nothing for that epoch; with space back, a restart
/// resumes and the output is the reference's. 256 KiB fills at about the
/// tenth of some sixty epochs (staged files are packed: 512 KiB no longer fills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_commits_and_the_job_recovers_when_space_returns() {
    let fx = Fixture::new().await;
    fx.reference();
    let mnt = fx.dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let copy = fx.parquet_dir("full");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let (state, parquet) = (mnt.join("state"), mnt.join("parquet"));
    let job = shell_command(
        &fx.command("full", 2),
        &[(&fx.state_dir("full"), &state), (&copy, &parquet)],
    );
    let script = format!(
        "set -u
         mount -t tmpfs -o size=256k tmpfs '{mnt}' || exit 97
         {job} 2> '{mnt}/../first.err'; echo \"first run: $?\" >&2
         mount -o remount,size=256m '{mnt}' || exit 98
         {job} || exit $?
         cp -a '{parquet}' '{copy}'",
        mnt = mnt.display(),
        parquet = parquet.display(),
        copy = copy.display(),
    );
    let stderr = in_user_namespace(&script);
    let first = std::fs::read_to_string(fx.dir.path().join("first.err")).unwrap();
    assert!(
        stderr.contains("first run: 1"),
        "the small disk did not stop the first run: {stderr}"
    );
    let failed_epoch: u64 = first
        .split("staging epoch ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("no staging failure reported: {first}"));
    assert!(first.contains("No space left on device"), "{first}");
    eprintln!("the disk filled up staging epoch {failed_epoch}");
    fx.assert_matches("full").await;
    // Every epoch committed once except re-runs after the failure: the failed
    // epoch was committed only by the second run, after space returned.
    let commits = fx.commits("full").await;
    let first_generation = commits.iter().map(|c| c.generation).min().unwrap();
    assert!(
        commits
            .iter()
            .all(|c| c.generation > first_generation || c.epoch < failed_epoch),
        "an epoch at or after {failed_epoch} committed in the run that ran out of space"
    );
}

/// The Parquet directory turned read-only while the job runs (a remount,
/// as a failing disk does): publishing a file fails, the job stops with the
/// error naming the directory, and once it is writable again a restart ends
/// with the output of a run never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_parquet_directory_stops_the_job_until_it_is_writable() {
    let fx = Fixture::new().await;
    fx.reference();
    let mnt = fx.dir.path().join("ro-mount");
    std::fs::create_dir_all(&mnt).unwrap();
    let copy = fx.parquet_dir("ro");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let parquet = mnt.join("parquet");
    // The pipeline log (always open for appending) lives elsewhere: the
    // directory could never be remounted read-only under it.
    let log = fx.dir.path().join("ro-pipeline");
    let job = format!(
        "{} --pipeline-log '{}'",
        shell_command(&fx.command("ro", 2), &[(&copy, &parquet)]),
        log.display()
    );
    // The first run's Parquet directory goes read-only once its first file is in.
    let script = format!(
        "set -u
         mount -t tmpfs -o size=256m tmpfs '{mnt}' || exit 97
         {job} 2> '{mnt}/../first.err' &
         job=$!
         for _ in $(seq 600); do
           ls '{parquet}'/aggregates/*/*.parquet >/dev/null 2>&1 && break
           kill -0 $job 2>/dev/null || break
           sleep 0.05
         done
         # Busy while a file is open for writing: try until a moment between writes.
         for _ in $(seq 400); do
           mount -o remount,ro '{mnt}' 2>/dev/null && break
           kill -0 $job 2>/dev/null || break
           sleep 0.01
         done
         wait $job; echo \"first run: $?\" >&2
         mount -o remount,rw '{mnt}' || exit 99
         {job} || exit $?
         cp -a '{parquet}' '{copy}'",
        mnt = mnt.display(),
        parquet = parquet.display(),
        copy = copy.display(),
    );
    let stderr = in_user_namespace(&script);
    let first = std::fs::read_to_string(fx.dir.path().join("first.err")).unwrap();
    if stderr.contains("first run: 0") {
        // The input ended before the remount: nothing was left to publish.
        eprintln!("the first run ended before the directory went read-only");
    } else {
        assert!(stderr.contains("first run: 1"), "{stderr}");
        assert!(first.contains("Read-only file system"), "{first}");
        assert!(
            first.contains(&parquet.display().to_string()),
            "the error names no path: {first}"
        );
        eprintln!("first run stopped: {}", first.lines().last().unwrap_or(""));
    }
    fx.assert_matches("ro").await;
}

/// `c` as a shell command line, each path `from` replaced by `to`.
fn shell_command(c: &Command, swap: &[(&Path, &Path)]) -> String {
    let args: Vec<String> = c
        .get_args()
        .map(|a| {
            let a = a.to_str().unwrap();
            let a = swap
                .iter()
                .find(|(from, _)| a == from.to_str().unwrap())
                .map_or_else(|| a.to_owned(), |(_, to)| to.display().to_string());
            format!("'{a}'")
        })
        .collect();
    format!("'{}' {}", env!("CARGO_BIN_EXE_iotflow"), args.join(" "))
}

/// Runs `script` (bash) as root of a new user and mount namespace, where
/// it may mount tmpfs; its stderr. It must succeed; exit 97 means it could
/// not mount one here.
fn in_user_namespace(script: &str) -> String {
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "bash", "-c", script])
        .output()
        .expect("unshare (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() != Some(97),
        "cannot mount a tmpfs in a user namespace here (unprivileged user namespaces disabled?): {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    stderr
}
