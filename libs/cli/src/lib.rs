//! The command-line conventions every tool shares (docs/ARCHITECTURE.md, "Tool conventions"):
//! `--help` and `--version` print on stdout and succeed; a usage error is one line on stderr,
//! naming the tool and pointing at `--help`, with exit code 2. Unlike the other libraries this one
//! does print: printing these messages is the convention it exists to keep in one place.

use std::process::ExitCode;

/// Parses the process arguments into `C`, or says why not (already printed) with the exit code.
pub fn parse<C: clap::Parser>(tool: &str) -> Result<C, ExitCode> {
    parse_from(tool, std::env::args_os())
}

/// [`parse`] over given arguments (the first is the program name).
pub fn parse_from<C, I, T>(tool: &str, args: I) -> Result<C, ExitCode>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match C::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            // --help and --version: printed on stdout, success.
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{tool}: {} (see {tool} --help)", one_line(&e));
            Err(ExitCode::from(2))
        }
    }
}

/// clap's message up to its usage block, joined into one line, without the `error: ` prefix.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long)]
        count: u32,
    }

    #[test]
    fn good_arguments_parse_and_bad_ones_exit_2_with_one_line() {
        let args: Args = parse_from("t", ["t", "--count", "3"]).unwrap();
        assert_eq!(args.count, 3);
        let err = clap::Error::raw(
            clap::error::ErrorKind::InvalidValue,
            "bad count\n\nUsage: t",
        );
        assert_eq!(one_line(&err), "bad count");
        assert_eq!(
            parse_from::<Args, _, _>("t", ["t", "--count", "x"]).unwrap_err(),
            ExitCode::from(2)
        );
    }
}
