//! The userspace pipeline's instructions per span, counted by callgrind: repeatable on a
//! shared, noisy host where CPU seconds move by a fifth between rounds. The pipeline bench
//! (`PIPELINE_INSTRUCTIONS=<loops>`) runs the recorded shop corpus through the whole path
//! twice, at two loop counts; only the instructions inside the path (the pipeline thread's
//! `full_pipeline` and the journey thread) are counted, and the difference between the two
//! runs divided by the difference in spans is the cost of one more span: start-up work
//! (regex compilation, the SQLite schema, reading the corpus) cancels out.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{bail, Context};

use crate::setup;

/// The loop counts of the two runs (each loop is the shop corpus again, later in time).
const LOOPS: [u64; 2] = [2, 6];
/// Functions whose instructions are counted, each thread's from its entry to its exit.
const COUNTED: [&str; 2] = ["pipeline::full_pipeline", "tracer::journey::worker::run"];

/// (instructions counted, spans exported) of one run at `loops`.
fn run(loops: u64, out: &Path) -> anyhow::Result<(u64, u64)> {
    let profile = out.join(format!("callgrind.{loops}.out"));
    let mut runner = format!(
        "valgrind --tool=callgrind --callgrind-out-file={}",
        profile.display()
    );
    for function in COUNTED {
        write!(runner, " --toggle-collect={function}")?;
    }
    let result = super::pipeline_bench(&[
        ("PIPELINE_INSTRUCTIONS", loops.to_string()),
        ("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", runner),
    ])
    .context("the pipeline bench under callgrind")?;
    let spans = result["spans"]
        .as_u64()
        .with_context(|| format!("no span count in {result}"))?;
    let counts =
        fs::read_to_string(&profile).with_context(|| format!("reading {}", profile.display()))?;
    let totals = counts
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .with_context(|| format!("no totals in {}", profile.display()))?;
    if totals == 0 {
        bail!("callgrind counted no instructions in {COUNTED:?}: were they renamed or inlined?");
    }
    // A function inlined into its caller has no symbol to toggle on: its thread would go
    // uncounted without a word (the journey thread did once).
    if let Some(missing) = COUNTED.iter().find(|f| !counts.contains(*f)) {
        bail!("callgrind never entered {missing}: renamed, or inlined (it must stay #[inline(never)])");
    }
    Ok((totals, spans))
}

/// Appends the instructions-per-span row to `report`.
pub fn per_span(out: &Path, report: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: userspace instructions per span (callgrind)");
    setup::debian_packages_named(&["valgrind"])?;
    let [(i_few, s_few), (i_many, s_many)] = [run(LOOPS[0], out)?, run(LOOPS[1], out)?];
    if s_many <= s_few || i_many <= i_few {
        bail!("more loops gave no more spans or instructions ({s_few} → {s_many} spans, {i_few} → {i_many} instructions)");
    }
    let per_span = (i_many - i_few) as f64 / (s_many - s_few) as f64;
    writeln!(
        report,
        "| the same corpus, instructions per span (callgrind; {} → {} loops: {s_few} → {s_many} spans; pipeline and journey threads; start-up cancelled out; repeatable on a busy host) | | **{per_span:.0}** | |",
        LOOPS[0], LOOPS[1]
    )?;
    Ok(())
}
