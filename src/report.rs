//! A study's report ([`crate::study`]): per workload, each optimizer's best trial and its time,
//! steps and tokens to the target; the AlgoPerf scores ([`crate::algoperf`]); and the plots —
//! validation loss against training time and tokens, the performance profiles, and time to
//! target against model size — written next to a markdown file that shows them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::algoperf::{self, MAX_RATIO};
use crate::plot::{self, LinePlot, Series};
use crate::records::{EvalPoint, Record};
use crate::study::describe_hparams;

/// One optimizer on one workload.
#[derive(Debug)]
pub struct Entry<'a> {
    pub optimizer: String,
    /// AlgoPerf's time to target: per study the fastest trial, the median over studies (∞ if
    /// no trial reached the target).
    pub time: f64,
    /// The trial shown in tables and plots: the fastest to the target, or, if none reached
    /// it, the lowest final validation loss among the trials that did not diverge.
    pub best: &'a Record,
    /// Trials that reached the target, and all trials.
    pub reached: usize,
    pub trials: usize,
}

/// One workload of a study.
#[derive(Debug)]
pub struct Workload<'a> {
    pub name: String,
    pub params: usize,
    pub target: f64,
    /// In the order of `Summary::optimizers`; an optimizer without trials here is left out.
    pub entries: Vec<Entry<'a>>,
}

/// A study's results, scored.
#[derive(Debug)]
pub struct Summary<'a> {
    pub study: String,
    /// In the order they first appear in the log (the study file's order).
    pub optimizers: Vec<String>,
    /// Smallest model first.
    pub workloads: Vec<Workload<'a>>,
    /// `ratios[o][w]`: optimizer o's time on workload w over the fastest's (∞: no time; also
    /// where o has no trials on w).
    pub ratios: Vec<Vec<f64>>,
    /// AlgoPerf score of each optimizer.
    pub scores: Vec<f64>,
}

/// The first validation at or below the target, if the run reached it.
pub fn point_at_target(record: &Record) -> Option<&EvalPoint> {
    let target = record.target_loss?;
    record.eval_curve.iter().find(|p| p.val_loss <= target)
}

fn best_trial<'a>(trials: &[&'a Record]) -> &'a Record {
    let fastest = (trials.iter())
        .filter_map(|r| Some((r.time_to_target?, *r)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let lowest = || {
        (trials.iter())
            .filter(|r| r.diverged_at.is_none())
            .min_by(|a, b| a.final_val_loss.total_cmp(&b.final_val_loss))
    };
    fastest
        .map(|(_, r)| r)
        .or_else(|| lowest().copied())
        .unwrap_or(trials[0])
}

fn first_appearances<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

impl<'a> Summary<'a> {
    /// Scores the trials of one study (records that all carry a trial tag of `study`).
    pub fn new(study: &str, trials: &'a [Record]) -> Result<Summary<'a>> {
        let mut tagged = Vec::new();
        for r in trials {
            let tag =
                (r.trial.as_ref()).with_context(|| format!("run {} is no trial", r.run_id))?;
            ensure!(
                tag.study == study,
                "run {} is of study {}",
                r.run_id,
                tag.study
            );
            tagged.push((tag, r));
        }
        ensure!(!tagged.is_empty(), "study {study} has no trials");
        let optimizers = first_appearances(tagged.iter().map(|(t, _)| t.optimizer.as_str()));
        let mut workloads = Vec::new();
        for name in first_appearances(tagged.iter().map(|(t, _)| t.workload.as_str())) {
            let runs: Vec<_> = tagged.iter().filter(|(t, _)| t.workload == name).collect();
            let first = runs[0].1;
            let target = first.target_loss.with_context(|| {
                format!(
                    "trial {} of workload {name} has no target loss",
                    first.run_id
                )
            })?;
            let entries = (optimizers.iter())
                .filter_map(|optimizer| {
                    let mine: Vec<_> = (runs.iter())
                        .filter(|(t, _)| &t.optimizer == optimizer)
                        .collect();
                    if mine.is_empty() {
                        return None;
                    }
                    let mut studies: BTreeMap<usize, Vec<Option<f64>>> = BTreeMap::new();
                    for (t, r) in &mine {
                        studies
                            .entry(t.study_index)
                            .or_default()
                            .push(r.time_to_target);
                    }
                    let studies: Vec<_> = studies.into_values().collect();
                    let records: Vec<&Record> = mine.iter().map(|(_, r)| *r).collect();
                    Some(Entry {
                        optimizer: optimizer.clone(),
                        time: algoperf::time_to_target(&studies),
                        best: best_trial(&records),
                        reached: records
                            .iter()
                            .filter(|r| r.time_to_target.is_some())
                            .count(),
                        trials: records.len(),
                    })
                })
                .collect();
            workloads.push(Workload {
                name,
                params: first.params,
                target,
                entries,
            });
        }
        workloads.sort_by_key(|w| w.params);
        let times: Vec<Vec<f64>> = (optimizers.iter())
            .map(|o| {
                (workloads.iter())
                    .map(|w| {
                        (w.entries.iter())
                            .find(|e| &e.optimizer == o)
                            .map_or(f64::INFINITY, |e| e.time)
                    })
                    .collect()
            })
            .collect();
        let ratios = algoperf::ratios(&times);
        let scores = ratios.iter().map(|r| algoperf::score(r)).collect();
        Ok(Summary {
            study: study.to_string(),
            optimizers,
            workloads,
            ratios,
            scores,
        })
    }

    /// The performance profile of optimizer `o` as the corners of its step function over τ in
    /// [1, MAX_RATIO].
    pub fn profile_points(&self, o: usize) -> Vec<(f64, f64)> {
        let ratios = &self.ratios[o];
        let mut steps: Vec<f64> = (ratios.iter().copied())
            .filter(|&r| r > 1.0 && r <= MAX_RATIO)
            .collect();
        steps.sort_by(f64::total_cmp);
        steps.dedup();
        let mut points = vec![(1.0, algoperf::profile(ratios, 1.0))];
        for r in steps {
            points.push((r, points.last().map_or(0.0, |p| p.1)));
            points.push((r, algoperf::profile(ratios, r)));
        }
        points.push((MAX_RATIO, algoperf::profile(ratios, MAX_RATIO)));
        points
    }
}

fn seconds(t: f64) -> String {
    if t.is_finite() {
        format!("{t:.1} s")
    } else {
        "not reached".into()
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// The report as markdown; `plots` names the image files (relative to the report) to show.
pub fn markdown(summary: &Summary, plots: &Plots) -> String {
    let all: Vec<&Record> = (summary.workloads.iter())
        .flat_map(|w| w.entries.iter().map(|e| e.best))
        .collect();
    let mut hosts = first_appearances(all.iter().map(|r| r.host.as_str()));
    hosts.extend(first_appearances(all.iter().map(|r| r.device.as_str())));
    let mut dates: Vec<&str> = all
        .iter()
        .map(|r| r.date.get(..10).unwrap_or(&r.date))
        .collect();
    dates.sort();
    let commits = first_appearances(all.iter().map(|r| r.git_commit.as_str()));
    let mut out = format!(
        "# Study {}\n\nMachine: {}. Dates: {} to {}. Builds: {}.\n\n\
         Time to target is AlgoPerf's: in each study the fastest trial, then the median over \
         studies; training time only (validation and checkpoints excluded). The best trial is \
         the fastest to the target (or, if none reached it, the lowest final validation loss); \
         its steps, tokens and curves are the ones shown.\n",
        summary.study,
        hosts.join(", "),
        dates.first().unwrap_or(&"-"),
        dates.last().unwrap_or(&"-"),
        commits.join(", "),
    );
    out.push_str(&format!(
        "\n## AlgoPerf scores\n\nScore 1 = fastest to the target on every workload; no credit \
         beyond {MAX_RATIO}× the fastest. Columns: time to target over the fastest optimizer's, \
         per workload.\n\n| optimizer | score |"
    ));
    for w in &summary.workloads {
        out.push_str(&format!(" {} |", w.name));
    }
    out.push_str("\n|---|---:|");
    out.push_str(&"---:|".repeat(summary.workloads.len()));
    out.push('\n');
    let mut order: Vec<usize> = (0..summary.optimizers.len()).collect();
    order.sort_by(|&a, &b| summary.scores[b].total_cmp(&summary.scores[a]));
    for o in order {
        out.push_str(&format!(
            "| {} | {:.3} |",
            summary.optimizers[o], summary.scores[o]
        ));
        for r in &summary.ratios[o] {
            out.push_str(&if r.is_finite() {
                format!(" {r:.2} |")
            } else {
                " ∞ |".into()
            });
        }
        out.push('\n');
    }
    if let Some(profiles) = &plots.profiles {
        out.push_str(&format!("\n![performance profiles]({profiles})\n"));
    }
    if let Some(scale) = &plots.scale {
        out.push_str(&format!(
            "\n![time to target against model size]({scale})\n"
        ));
    }
    for (w, workload) in summary.workloads.iter().enumerate() {
        let budget = workload
            .entries
            .first()
            .map_or(0, |e| e.best.config.max_steps);
        out.push_str(&format!(
            "\n## Workload {}\n\n{:.2}M parameters, target validation loss {}, at most {budget} \
             steps.\n\n| optimizer | best trial | hyper-parameters | time to target | steps to \
             target | tokens to target | final val loss | tokens/s | optimizer state | trials \
             reaching the target |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
            workload.name,
            workload.params as f64 / 1e6,
            workload.target,
        ));
        for e in &workload.entries {
            let tag = e
                .best
                .trial
                .as_ref()
                .expect("summarised records are trials");
            let at = point_at_target(e.best);
            let final_loss = match e.best.diverged_at {
                Some(step) => format!("diverged at step {step}"),
                None => format!("{:.4}", e.best.final_val_loss),
            };
            out.push_str(&format!(
                "| {} | study {} trial {} | {} | {} | {} | {} | {} | {:.0} | {} | {}/{} |\n",
                e.optimizer,
                tag.study_index,
                tag.trial,
                describe_hparams(&tag.hparams),
                seconds(e.time),
                at.map_or("-".into(), |p| p.step.to_string()),
                at.map_or("-".into(), |p| format!("{:.2}M", p.tokens as f64 / 1e6)),
                final_loss,
                e.best.tokens_per_second,
                megabytes(e.best.optimizer_state_bytes),
                e.reached,
                e.trials,
            ));
        }
        for image in &plots.workloads[w] {
            out.push_str(&format!("\n![{}]({image})\n", workload.name));
        }
    }
    out
}

/// The plot files a report shows, relative to its directory.
#[derive(Debug, Default)]
pub struct Plots {
    pub profiles: Option<String>,
    pub scale: Option<String>,
    /// Per workload: loss against time, loss against tokens.
    pub workloads: Vec<Vec<String>>,
}

/// Draws one plot as `{out}/{name}.svg` and `.png`; returns the PNG's file name and records
/// both paths in `written`.
fn draw(plot: &LinePlot, out: &Path, name: &str, written: &mut Vec<PathBuf>) -> Result<String> {
    let [svg, png] = plot::line_plot(plot, &out.join(name))?;
    written.extend([svg, png]);
    Ok(format!("{name}.png"))
}

/// What a loss curve is plotted against: training time or tokens.
type XOf = fn(&EvalPoint) -> f64;

/// Each optimizer's best trial on `workload`: its validation loss against `x` of each point.
fn curves(workload: &Workload, x: XOf) -> Vec<Series> {
    (workload.entries.iter())
        .map(|e| {
            let points = e
                .best
                .eval_curve
                .iter()
                .map(|p| (x(p), p.val_loss))
                .collect();
            Series::new(e.optimizer.clone(), points)
        })
        .collect()
}

/// Writes the plots and `report.md` of `study` (its trials' records) into `out`; returns every
/// file written.
pub fn write(study: &str, trials: &[Record], out: &Path, log_x: bool) -> Result<Vec<PathBuf>> {
    let summary = Summary::new(study, trials)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    let mut plots = Plots::default();

    let profiles: Vec<Series> = (summary.optimizers.iter().enumerate())
        .map(|(o, name)| Series::new(name.clone(), summary.profile_points(o)))
        .collect();
    let title = format!("{study}: performance profiles");
    let plot = LinePlot {
        title: &title,
        x_label: "τ (time to target / fastest optimizer's)",
        y_label: "share of workloads within τ",
        series: profiles,
        ..LinePlot::default()
    };
    plots.profiles = Some(draw(&plot, out, "profiles", &mut written)?);

    let scale: Vec<Series> = (summary.optimizers.iter())
        .map(|o| {
            let points = (summary.workloads.iter())
                .filter_map(|w| {
                    let e = w.entries.iter().find(|e| &e.optimizer == o)?;
                    Some((w.params as f64, e.time))
                })
                .collect();
            Series::new(o.clone(), points)
        })
        .collect();
    let reached = |s: &Series| s.points.iter().any(|p| p.1.is_finite());
    if scale.iter().any(reached) {
        let title = format!("{study}: time to target against model size");
        let plot = LinePlot {
            title: &title,
            x_label: "parameters",
            y_label: "time to target (s)",
            series: scale,
            log_x: true,
            log_y: true,
            ..LinePlot::default()
        };
        plots.scale = Some(draw(&plot, out, "scale", &mut written)?);
    }

    for workload in &summary.workloads {
        let target = vec![("target".to_string(), workload.target)];
        let mut images = Vec::new();
        let axes: [(&str, &str, XOf); 2] = [
            ("time", "training time (s)", |p| p.train_seconds),
            ("tokens", "training tokens", |p| p.tokens as f64),
        ];
        for (what, x_label, x) in axes {
            let series = curves(workload, x);
            if series.iter().all(|s| s.points.is_empty()) {
                // Every best trial diverged before its first validation: no curve to draw.
                continue;
            }
            let title = format!("{study}, {}: best trial of each optimizer", workload.name);
            let plot = LinePlot {
                title: &title,
                x_label,
                y_label: "validation loss",
                series,
                log_x,
                hlines: target.clone(),
                ..LinePlot::default()
            };
            let name = format!("{}_loss_vs_{what}", workload.name);
            images.push(draw(&plot, out, &name, &mut written)?);
        }
        plots.workloads.push(images);
    }

    let path = out.join("report.md");
    let text = markdown(&summary, &plots);
    crate::atomic::write_file(&path, |f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::TrialTag;
    use crate::records::test_support::train_record;

    const INF: f64 = f64::INFINITY;

    /// A trial of study "s": `curve` is (step, val loss) with 1000 tokens and 2 s per step.
    fn trial(
        workload: &str,
        params: usize,
        optimizer: &str,
        study: usize,
        index: usize,
        curve: &[(usize, f64)],
    ) -> Record {
        let mut r = train_record();
        r.run_id = format!("{workload}-{optimizer}-{study}-{index}");
        r.params = params;
        r.target_loss = Some(1.0);
        r.eval_curve = (curve.iter())
            .map(|&(step, loss)| {
                EvalPoint::from((step, 1000 * step as u64, 2.0 * step as f64, loss))
            })
            .collect();
        let at = r.eval_curve.iter().find(|p| p.val_loss <= 1.0);
        r.time_to_target = at.map(|p| p.train_seconds);
        r.final_val_loss = curve.last().unwrap().1;
        r.trial = Some(TrialTag {
            study: "s".into(),
            workload: workload.into(),
            optimizer: optimizer.into(),
            study_index: study,
            trial: index,
            hparams: [(
                "lr".to_string(),
                serde_json::Value::from(0.01 * (index + 1) as f64),
            )]
            .into(),
        });
        r
    }

    /// Two workloads, two optimizers, two studies of two trials.
    /// small: adamw reaches 1.0 at steps {10, 20} in study 0 and {30, never} in study 1 →
    /// fastest 20 s and 60 s, median 40 s. muon: {5, 8}, {6, diverged} → 10 s and 12 s, median 11 s.
    /// large: adamw never; muon {50, never}, {never, never} → studies 100 s and ∞, median ∞…
    /// which makes both ∞ there.
    fn fixture() -> Vec<Record> {
        let reach = |step: usize| vec![(0, 5.0), (step, 0.9)];
        let never = vec![(0, 5.0), (100, 1.5)];
        let mut diverged = trial("small", 100, "muon", 1, 1, &[(0, 5.0)]);
        diverged.diverged_at = Some(3);
        diverged.time_to_target = None;
        vec![
            trial("large", 1000, "adamw", 0, 0, &never),
            trial("large", 1000, "muon", 0, 0, &reach(50)),
            trial("large", 1000, "adamw", 0, 1, &[(0, 5.0), (100, 1.2)]),
            trial("large", 1000, "muon", 0, 1, &never),
            trial("large", 1000, "adamw", 1, 0, &never),
            trial("large", 1000, "muon", 1, 0, &never),
            trial("small", 100, "adamw", 0, 0, &reach(10)),
            trial("small", 100, "muon", 0, 0, &reach(5)),
            trial("small", 100, "adamw", 0, 1, &reach(20)),
            trial("small", 100, "muon", 0, 1, &reach(8)),
            trial("small", 100, "adamw", 1, 0, &reach(30)),
            trial("small", 100, "muon", 1, 0, &reach(6)),
            trial("small", 100, "adamw", 1, 1, &never),
            diverged,
        ]
    }

    #[test]
    fn the_summary_scores_by_the_median_of_each_studys_fastest_trial() {
        let records = fixture();
        let s = Summary::new("s", &records).unwrap();
        assert_eq!(s.optimizers, ["adamw", "muon"]);
        // Smallest model first, whatever the log's order.
        let names: Vec<&str> = s.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["small", "large"]);
        let small = &s.workloads[0];
        // adamw: study 0 fastest 20 s, study 1 fastest 60 s → 40 s; muon: 10 s and 12 s → 11 s.
        assert_eq!((small.entries[0].time, small.entries[1].time), (40.0, 11.0));
        assert_eq!((small.entries[0].reached, small.entries[0].trials), (3, 4));
        assert_eq!(small.entries[1].best.run_id, "small-muon-0-0");
        // large: muon reached it in one of two studies: median of 100 s and ∞ is ∞.
        let large = &s.workloads[1];
        assert_eq!((large.entries[0].time, large.entries[1].time), (INF, INF));
        // adamw's best there is its lowest final loss (1.2), muon's its only success.
        assert_eq!(large.entries[0].best.run_id, "large-adamw-0-1");
        assert_eq!(large.entries[1].best.run_id, "large-muon-0-0");
        // Ratios: small 40/11 and 1; large nobody: ∞. Scores (4 − 40/11)/3/2 and 3/3/2.
        assert_eq!(s.ratios[1], vec![1.0, INF]);
        assert!((s.ratios[0][0] - 40.0 / 11.0).abs() < 1e-12);
        assert!((s.scores[0] - (4.0 - 40.0 / 11.0) / 6.0).abs() < 1e-12);
        assert_eq!(s.scores[1], 0.5);
        // muon's profile: ρ = 1/2 from τ = 1 on; adamw's: 0 until 40/11, then 1/2.
        assert_eq!(s.profile_points(1), vec![(1.0, 0.5), (4.0, 0.5)]);
        let r = 40.0 / 11.0;
        assert_eq!(
            s.profile_points(0),
            vec![(1.0, 0.0), (r, 0.0), (r, 0.5), (4.0, 0.5)]
        );
    }

    #[test]
    fn the_report_tables_show_the_best_trials_and_the_plots_are_images() {
        let records = fixture();
        let dir = tempfile::tempdir().unwrap();
        let written = write("s", &records, dir.path(), false).unwrap();
        let names: Vec<String> = (written.iter())
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in [
            "profiles",
            "scale",
            "small_loss_vs_time",
            "small_loss_vs_tokens",
            "large_loss_vs_time",
            "large_loss_vs_tokens",
        ] {
            for ext in ["svg", "png"] {
                let file = format!("{name}.{ext}");
                assert!(names.contains(&file), "{file} missing from {names:?}");
                let path = dir.path().join(&file);
                if ext == "png" {
                    let image = image::open(&path).unwrap();
                    assert_eq!((image.width(), image.height()), (1024, 640));
                } else {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
                }
            }
        }
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        // muon's best on small: study 0 trial 0 (5 steps, 10 s; lr 0.01), 5000 tokens.
        assert!(
            md.contains("| muon | study 0 trial 0 | lr=0.01 | 11.0 s | 5 | 0.01M | 0.9000 |"),
            "{md}"
        );
        assert!(
            md.contains("| adamw | study 0 trial 1 | lr=0.02 | not reached | - | - | 1.2000 |"),
            "{md}"
        );
        assert!(md.contains("| muon | 0.500 | 1.00 | ∞ |"), "{md}");
        assert!(md.contains("| adamw | 0.061 | 3.64 | ∞ |"), "{md}");
        assert!(md.contains("![small](small_loss_vs_time.png)"));
        // A log-scaled time axis renders too (the step-0 points drop out).
        write("s", &records, &dir.path().join("log"), true).unwrap();
    }

    #[test]
    fn without_any_target_reached_the_scale_plot_is_left_out() {
        let records: Vec<Record> = fixture()
            .into_iter()
            .filter(|r| r.time_to_target.is_none())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let written = write("s", &records, dir.path(), false).unwrap();
        assert!(!written.iter().any(|p| p.ends_with("scale.png")));
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("| muon | 0.000 |"), "{md}");
        assert!(!md.contains("scale.png"));
    }
}
