//! Many programs through one rustc run: each program in its own `mod f_0001 { .. }` of one file
//! (so names never clash), compiled or tested together in the sandbox of [`crate::check`]. rustc's
//! JSON diagnostics say by their line which program an error belongs to; those programs are
//! dropped and the rest compiled again until the file is clean. An error that points at no
//! program (or a build past its time limit) splits the batch in two. The test binary runs one
//! test at a time and prints each name before running it, so a crash or a hang names its test.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::examples::tests_text;
use super::ExampleVerdict;
use crate::check::{CompileOutcome, Sandbox, TestRun};
use crate::extract::program_with_tests;

/// A batch file and where each program lies in it.
struct BatchFile {
    text: String,
    /// Per program: its lines in the file (1-based, end excluded).
    lines: Vec<Range<usize>>,
}

/// `mod f_NNNN { program }` for each program, in order.
fn batch_file<'a>(programs: impl Iterator<Item = &'a str>) -> BatchFile {
    let mut text = String::new();
    let mut lines = Vec::new();
    let mut line = 1;
    for (k, program) in programs.enumerate() {
        text.push_str(&format!("mod f_{k:04} {{\n"));
        line += 1;
        let start = line;
        text.push_str(program);
        if !program.ends_with('\n') {
            text.push('\n');
        }
        line += program.lines().count();
        lines.push(start..line);
        text.push_str("}\n");
        line += 1;
    }
    BatchFile { text, lines }
}

/// One of rustc's JSON diagnostics, reduced to what attribution needs.
struct Diagnostic {
    level: String,
    code: Option<String>,
    /// Lines of its primary spans in the compiled file (spans in std's sources left out).
    lines: Vec<usize>,
}

/// rustc's `--error-format=json` output, one diagnostic a line (other lines skipped).
fn diagnostics(json_lines: &str) -> Vec<Diagnostic> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|d| Diagnostic {
            level: d["level"].as_str().unwrap_or("").to_string(),
            code: d["code"]["code"].as_str().map(str::to_string),
            lines: d["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["is_primary"] == true)
                // The batch file is named relative to its folder; std's sources are absolute.
                .filter(|s| s["file_name"].as_str().is_some_and(|f| !f.starts_with('/')))
                .filter_map(|s| s["line_start"].as_u64().map(|l| l as usize))
                .collect(),
        })
        .collect()
}

/// Which of `ranges` holds `line`.
fn owner(ranges: &[Range<usize>], line: usize) -> Option<usize> {
    ranges.iter().position(|r| r.contains(&line))
}

/// What a compile batch says of one program: `None` when it does not compile, else the lines of
/// the program (0-based) that hold an import it does not use.
pub type Compiled = Option<Vec<usize>>;

/// Compiles each program as a library (a batch at a time); rustc runs counted in `runs`.
pub fn compile_batch(
    sandbox: &Sandbox,
    programs: &[&str],
    runs: &mut usize,
) -> Result<Vec<Compiled>, String> {
    let mut verdicts: Vec<Option<Compiled>> = vec![None; programs.len()];
    let mut pending: Vec<usize> = (0..programs.len()).collect();
    while !pending.is_empty() {
        let file = batch_file(pending.iter().map(|&i| programs[i]));
        *runs += 1;
        let compilation =
            sandbox.compile_library(&file.text, &["--force-warn", "unused_imports"])?;
        let found = diagnostics(&compilation.diagnostics);
        if compilation.outcome == CompileOutcome::Ok {
            for (k, &i) in pending.iter().enumerate() {
                let unused = found
                    .iter()
                    .filter(|d| d.code.as_deref() == Some("unused_imports"))
                    .flat_map(|d| &d.lines)
                    .filter(|&&line| file.lines[k].contains(&line))
                    .map(|&line| line - file.lines[k].start)
                    .collect();
                verdicts[i] = Some(Some(unused));
            }
            break;
        }
        let failed: HashSet<usize> = found
            .iter()
            .filter(|d| d.level == "error")
            .flat_map(|d| &d.lines)
            .filter_map(|&line| owner(&file.lines, line))
            .map(|k| pending[k])
            .collect();
        if failed.is_empty() {
            // Nothing to blame (a time limit, an error outside every program): halve.
            if let [only] = pending[..] {
                verdicts[only] = Some(None);
                break;
            }
            let (left, right) = pending.split_at(pending.len() / 2);
            for half in [left, right] {
                let part: Vec<&str> = half.iter().map(|&i| programs[i]).collect();
                for (&i, verdict) in half.iter().zip(compile_batch(sandbox, &part, runs)?) {
                    verdicts[i] = Some(verdict);
                }
            }
            break;
        }
        for &i in &failed {
            verdicts[i] = Some(None);
        }
        pending.retain(|i| !failed.contains(i));
    }
    Ok(verdicts.into_iter().map(Option::flatten).collect())
}

/// A function and the examples to test it with.
pub struct TestUnit<'a> {
    /// The task's prompt and the function's body, as [`crate::extract`] cuts it.
    pub prompt: &'a str,
    pub body: &'a str,
    pub examples: Vec<&'a str>,
}

/// Runs every example of every unit as a `#[test]` beside its function (the program a task with
/// these examples as its tests gives); a verdict per unit, per example. rustc and test runs
/// counted in `runs`.
pub fn test_batch(
    sandbox: &Sandbox,
    units: &[TestUnit],
    runs: &mut usize,
) -> Result<Vec<Vec<ExampleVerdict>>, String> {
    let mut passed: Vec<Vec<Option<ExampleVerdict>>> =
        units.iter().map(|u| vec![None; u.examples.len()]).collect();
    // (unit, example) pairs still to settle.
    let mut pending: Vec<(usize, usize)> = units
        .iter()
        .enumerate()
        .flat_map(|(u, unit)| (0..unit.examples.len()).map(move |e| (u, e)))
        .collect();
    while !pending.is_empty() {
        let settled = test_once(sandbox, units, &pending, runs)?;
        if settled.is_empty() {
            // Nothing settled (a crash before any test started): halve, or fail a lone example.
            if let [(u, e)] = pending[..] {
                passed[u][e] = Some(ExampleVerdict::Fails);
                break;
            }
            let (left, right) = pending.split_at(pending.len() / 2);
            for half in [left, right] {
                settle_part(sandbox, units, half, &mut passed, runs)?;
            }
            break;
        }
        for (&(u, e), &verdict) in &settled {
            passed[u][e] = Some(verdict);
        }
        pending.retain(|key| !settled.contains_key(key));
    }
    Ok(passed
        .into_iter()
        .map(|examples| {
            examples
                .into_iter()
                .map(|verdict| verdict.unwrap_or(ExampleVerdict::Fails))
                .collect()
        })
        .collect())
}

/// [`test_batch`] on a part of the examples, results written into `passed`.
fn settle_part(
    sandbox: &Sandbox,
    units: &[TestUnit],
    part: &[(usize, usize)],
    passed: &mut [Vec<Option<ExampleVerdict>>],
    runs: &mut usize,
) -> Result<(), String> {
    let mut sub_units: Vec<TestUnit> = Vec::new();
    for (i, &(u, e)) in part.iter().enumerate() {
        if i == 0 || part[i - 1].0 != u {
            sub_units.push(TestUnit {
                prompt: units[u].prompt,
                body: units[u].body,
                examples: Vec::new(),
            });
        }
        if let Some(sub) = sub_units.last_mut() {
            sub.examples.push(units[u].examples[e]);
        }
    }
    let results = test_batch(sandbox, &sub_units, runs)?;
    for (&(u, e), verdict) in part.iter().zip(results.into_iter().flatten()) {
        passed[u][e] = Some(verdict);
    }
    Ok(())
}

/// One build and run of the `pending` examples: the verdicts of those it settles.
fn test_once(
    sandbox: &Sandbox,
    units: &[TestUnit],
    pending: &[(usize, usize)],
    runs: &mut usize,
) -> Result<HashMap<(usize, usize), ExampleVerdict>, String> {
    // Per unit with pending examples: its program and, per test, (example, first line).
    let mut order: Vec<usize> = pending.iter().map(|&(u, _)| u).collect();
    order.dedup();
    let mut programs = Vec::new();
    let mut tests: Vec<Vec<(usize, usize)>> = Vec::new();
    for &u in &order {
        let examples: Vec<usize> = pending
            .iter()
            .filter(|&&(pu, _)| pu == u)
            .map(|&(_, e)| e)
            .collect();
        let codes: Vec<&str> = examples.iter().map(|&e| units[u].examples[e]).collect();
        let program = program_with_tests(units[u].prompt, units[u].body, &tests_text(&codes));
        let starts = program.lines().enumerate().filter_map(|(i, line)| {
            let number = line
                .strip_prefix("    fn doc_example_")?
                .strip_suffix("() {")?;
            Some((number.parse::<usize>().ok()?, i + 1))
        });
        tests.push(starts.map(|(n, line)| (examples[n - 1], line)).collect());
        programs.push(program);
    }
    let file = batch_file(programs.iter().map(String::as_str));
    *runs += 1;
    let mut settled = HashMap::new();
    let output = match sandbox.run_test_program(&file.text)? {
        TestRun::BuildFailed(compilation) => {
            let errors = diagnostics(&compilation.diagnostics);
            for line in errors
                .iter()
                .filter(|d| d.level == "error")
                .flat_map(|d| &d.lines)
            {
                let Some(k) = owner(&file.lines, *line) else {
                    continue;
                };
                // An error in a test fails that example; one in the function, all of them.
                let in_program = line - file.lines[k].start + 1;
                let blamed = match tests[k].iter().rposition(|&(_, first)| first <= in_program) {
                    Some(t) => tests[k][t..=t].to_vec(),
                    None => tests[k].clone(),
                };
                for (e, _) in blamed {
                    settled.insert((order[k], e), ExampleVerdict::DoesNotCompile);
                }
            }
            return Ok(settled);
        }
        TestRun::TimedOut { output } | TestRun::Exited { output, .. } => output,
    };
    let names: HashMap<String, (usize, usize)> = order
        .iter()
        .enumerate()
        .flat_map(|(k, &u)| {
            tests[k].iter().enumerate().map(move |(t, &(e, _))| {
                (format!("f_{k:04}::tests::doc_example_{}", t + 1), (u, e))
            })
        })
        .collect();
    // `test NAME ... ok` / `... FAILED`; a test that started and never finished (it crashed the
    // binary or ran past the limit) is the last line, with something else or nothing after `...`.
    for line in output.lines() {
        let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        else {
            continue;
        };
        if let Some(&key) = names.get(name) {
            let verdict = match result.trim() {
                "ok" => ExampleVerdict::Passes,
                _ => ExampleVerdict::Fails,
            };
            settled.entry(key).or_insert(verdict);
        }
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_by_their_lines() {
        let file = batch_file(["fn a() {}\n", "use std::fmt;\nfn b() {}"].into_iter());
        assert_eq!(
            file.text,
            "mod f_0000 {\nfn a() {}\n}\nmod f_0001 {\nuse std::fmt;\nfn b() {}\n}\n"
        );
        assert_eq!(file.lines, vec![2..3, 5..7]);
        assert_eq!(owner(&file.lines, 6), Some(1));
        assert_eq!(owner(&file.lines, 4), None);
        let json = concat!(
            r#"{"level":"warning","code":{"code":"unused_imports"},"spans":[{"file_name":"sample.rs","line_start":5,"is_primary":true}]}"#,
            "\n",
            r#"{"level":"error","code":null,"spans":[{"file_name":"/rustc/x/library/core/src/a.rs","line_start":9,"is_primary":true},{"file_name":"sample.rs","line_start":2,"is_primary":false}]}"#,
            "\nnot json\n"
        );
        let found = diagnostics(json);
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].code.as_deref(), &found[0].lines[..]),
            (Some("unused_imports"), &[5][..])
        );
        assert!(
            found[1].lines.is_empty(),
            "std's spans and secondary spans blame no program"
        );
    }
}
