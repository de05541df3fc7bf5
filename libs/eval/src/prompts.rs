//! Prompt sets: JSONL, one task a line, in the MultiPL-E layout (`name`, `prompt`, optional
//! `tests`, optional `stop_tokens`). A task's program is `prompt + body + tests`; without tests,
//! `prompt + body` and the braces the prompt left open (see [`crate::extract`]).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::braces::open_braces;

/// One task of a prompt set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Task {
    pub name: String,
    /// The code a model continues: ends inside the function to write.
    pub prompt: String,
    /// Appended after the body: closes the function, then a `fn main` of assertions (MultiPL-E)
    /// or `#[test]` functions. `None`: the task is only compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    /// Strings that end a completion. Empty: the closing brace of the function at the prompt's
    /// indentation (see [`Task::stops`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_tokens: Vec<String>,
}

impl Task {
    /// Braces the prompt leaves open (1 for a top-level function, 2 for a method in an impl).
    pub fn depth(&self) -> usize {
        open_braces(&self.prompt)
    }

    /// The stop strings of a generation: the task's own, or the line that closes the function
    /// (`"\n}"` at top level, `"\n    }"` inside an impl), as MultiPL-E does.
    pub fn stops(&self) -> Vec<String> {
        if !self.stop_tokens.is_empty() {
            return self.stop_tokens.clone();
        }
        let indent = "    ".repeat(self.depth().saturating_sub(1));
        vec![format!("\n{indent}}}")]
    }
}

/// Why a prompt set could not be read; the message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PromptError {
    pub path: String,
    pub message: String,
}

/// Reads a JSONL prompt set: every line a task (blank lines skipped), names unique, every prompt
/// ending inside at least one open brace.
pub fn load_prompts(path: &Path) -> Result<Vec<Task>, PromptError> {
    let error = |message: String| PromptError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    parse_prompts(&text).map_err(error)
}

/// [`load_prompts`] on text already read.
pub fn parse_prompts(text: &str) -> Result<Vec<Task>, String> {
    let mut tasks = Vec::new();
    let mut names = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let task: Task =
            serde_json::from_str(line).map_err(|e| format!("line {line_no}: bad task: {e}"))?;
        if task.name.is_empty() {
            return Err(format!("line {line_no}: empty \"name\""));
        }
        if !names.insert(task.name.clone()) {
            return Err(format!(
                "line {line_no}: duplicate task name {:?}",
                task.name
            ));
        }
        if task.depth() == 0 {
            return Err(format!(
                "line {line_no}: the prompt of {:?} does not end inside a function (no open brace)",
                task.name
            ));
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err("no tasks".into());
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_multipl_e_layout_and_derives_stops() {
        let text = concat!(
            r#"{"name":"a","prompt":"/// Doc\nfn a(x: i32) -> i32 {\n","tests":"}\n\nfn main() {}\n","stop_tokens":["\n}"]}"#,
            "\n\n",
            r#"{"name":"b","prompt":"struct S;\nimpl S {\n    fn b(&self) -> u8 {\n"}"#,
            "\n"
        );
        let tasks = parse_prompts(text).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].stops(), vec!["\n}".to_string()]);
        assert_eq!(tasks[1].tests, None);
        assert_eq!(tasks[1].depth(), 2);
        assert_eq!(tasks[1].stops(), vec!["\n    }".to_string()]);
    }

    #[test]
    fn bad_sets_name_the_line() {
        let dup = "{\"name\":\"a\",\"prompt\":\"fn a() {\\n\"}\n{\"name\":\"a\",\"prompt\":\"fn b() {\\n\"}";
        assert!(parse_prompts(dup)
            .unwrap_err()
            .contains("line 2: duplicate"));
        let closed = "{\"name\":\"a\",\"prompt\":\"fn a() {}\\n\"}";
        assert!(parse_prompts(closed).unwrap_err().contains("no open brace"));
        assert!(parse_prompts("{\"name\":1}")
            .unwrap_err()
            .contains("line 1"));
        assert_eq!(parse_prompts("\n").unwrap_err(), "no tasks");
    }
}
