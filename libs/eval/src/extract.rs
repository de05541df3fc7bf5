//! The generated function: where a completion ends (a stop string, or the brace that closes the
//! function the prompt opened), and the programs assembled from it.
//!
//! Braces are counted by [`crate::braces`], which skips comments and literals, so `"{"` or `'}'`
//! in generated code does not end the function early.

use crate::braces::{open_braces, scan_braces};
use crate::prompts::Task;

/// How a completion's body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEnd {
    /// At a stop string.
    Stop,
    /// At the brace that closes the function.
    Brace,
    /// The completion ran out first: the body is incomplete.
    Truncated,
}

/// The body of the function, as the model wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extraction {
    /// The text between the prompt and the function's closing brace.
    pub body: String,
    pub end: BodyEnd,
}

/// Cuts `completion` at the first of `stops` or at the brace that closes the function `prompt`
/// opened, whichever comes first.
pub fn extract_body(prompt: &str, completion: &str, stops: &[String]) -> Extraction {
    let stop_at = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| completion.find(s.as_str()))
        .min();
    let text = format!("{prompt}{completion}");
    let function_depth = open_braces(prompt);
    let mut depth = 0usize;
    let mut brace_at = None;
    scan_braces(&text, |offset, opens| {
        if opens {
            depth += 1;
        } else if offset >= prompt.len() && depth == function_depth {
            // This brace closes the prompt's innermost open block: the function.
            brace_at = Some(offset - prompt.len());
            return false;
        } else {
            depth = depth.saturating_sub(1);
        }
        true
    });
    let (cut, end) = match (stop_at, brace_at) {
        (Some(s), Some(b)) if b < s => (b, BodyEnd::Brace),
        (Some(s), _) => (s, BodyEnd::Stop),
        (None, Some(b)) => (b, BodyEnd::Brace),
        (None, None) => (completion.len(), BodyEnd::Truncated),
    };
    // The closing brace's own indentation is not part of the body.
    let body = completion[..cut].trim_end_matches([' ', '\t']);
    Extraction {
        body: body.to_string(),
        end,
    }
}

/// The program checked for compiling: the prompt, the body and the braces the prompt left open.
pub fn library_program(task: &Task, body: &str) -> String {
    let mut program = format!("{}{}\n", task.prompt, body.trim_end());
    for _ in 0..task.depth() {
        program.push_str("}\n");
    }
    program
}

/// The program with the task's tests, `None` when it has none.
pub fn test_program(task: &Task, body: &str) -> Option<String> {
    let tests = task.tests.as_ref()?;
    Some(program_with_tests(&task.prompt, body, tests))
}

/// `prompt + body + tests`, the body's trailing whitespace replaced by one line break.
pub fn program_with_tests(prompt: &str, body: &str, tests: &str) -> String {
    format!("{prompt}{}\n{tests}", body.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(prompt: &str) -> Task {
        Task {
            name: "t".into(),
            prompt: prompt.into(),
            tests: None,
            stop_tokens: vec![],
        }
    }

    #[test]
    fn the_body_ends_at_the_functions_closing_brace() {
        let prompt = "fn abs(x: i32) -> i32 {\n";
        let got = extract_body(
            prompt,
            "    if x < 0 { -x } else { x }\n}\n\nfn other() {}",
            &[],
        );
        assert_eq!(got.body, "    if x < 0 { -x } else { x }\n");
        assert_eq!(got.end, BodyEnd::Brace);
        let got = extract_body(prompt, "    x.abs()\n}", &["\n}".to_string()]);
        assert_eq!((got.body.as_str(), got.end), ("    x.abs()", BodyEnd::Stop));
        let got = extract_body(prompt, "    let s = \"}\";\n    match x {", &[]);
        assert_eq!(got.end, BodyEnd::Truncated);
    }

    #[test]
    fn a_method_ends_at_its_own_brace_not_the_impls() {
        let prompt = "struct S(u8);\nimpl S {\n    fn get(&self) -> u8 {\n";
        let got = extract_body(prompt, "        self.0\n    }\n}\n", &[]);
        assert_eq!(got.body, "        self.0\n");
        let t = task(prompt);
        assert_eq!(
            library_program(&t, &got.body),
            format!("{prompt}        self.0\n}}\n}}\n")
        );
        assert_eq!(test_program(&t, &got.body), None);
    }
}
