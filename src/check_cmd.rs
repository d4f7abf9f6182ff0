//! `iotflow check JOB_FILE`: validates a job file and prints its plan, or
//! the refusal (file:line:column, the line, a caret, a hint) with exit code 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The job file (TOML).
    job_file: PathBuf,
}

pub fn run(args: &CheckArgs) -> ExitCode {
    match iotflow_jobfile::load(&args.job_file) {
        Ok(plan) => {
            // A closed pipe (`| head`) is not an error of the job file.
            let _ = writeln!(
                std::io::stdout(),
                "{}: valid\n\n{plan}",
                args.job_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
