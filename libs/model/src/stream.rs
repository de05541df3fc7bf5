//! Turning generated token ids into text deltas: UTF-8 complete, and never any part of a stop
//! string (text that could still grow into one is held back until it cannot).
//!
//! [`Detokenizer`] decodes incrementally (each new token costs a decode of a few tokens, not of
//! the whole completion); [`TextStream`] decides what of that text may be sent.

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The completion's text, decoded a few tokens at a time: the byte-level decoder turns a run of
/// tokens into the concatenation of their bytes, so the text of tokens `[prefix, n)` minus that
/// of `[prefix, read)` is what tokens `[read, n)` add, once it no longer ends in half a
/// character (shown as U+FFFD). The window restarts after each such complete piece.
#[derive(Debug, Default)]
pub struct Detokenizer {
    text: String,
    prefix: usize,
    read: usize,
    /// The text of tokens `[prefix, read)`, kept rather than decoded again every token.
    head: String,
}

impl Detokenizer {
    /// The complete characters of the tokens taken so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes `ids` (every token of the completion so far; the last one is new).
    pub fn update(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<(), TokenizerError> {
        let now = tokenizer.decode(&ids[self.prefix..])?;
        if now.len() > self.head.len() && !now.ends_with('\u{FFFD}') {
            match now.strip_prefix(self.head.as_str()) {
                Some(added) => {
                    self.text.push_str(added);
                    self.head = added.to_string();
                }
                // Not a concatenation after all (a decoder that rewrites text): whole decode.
                None => {
                    self.text = tokenizer.decode(ids)?;
                    self.head = tokenizer.decode(&ids[self.read..])?;
                }
            }
            self.prefix = self.read;
            self.read = ids.len();
        }
        Ok(())
    }

    /// The whole text of `ids` at the end of the completion, a trailing partial character
    /// included (as U+FFFD).
    pub fn finish(&self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
        let now = tokenizer.decode(&ids[self.prefix..])?;
        Ok(match now.strip_prefix(self.head.as_str()) {
            Some(added) => format!("{}{added}", self.text),
            None => tokenizer.decode(ids)?,
        })
    }
}

/// What to do after a token's text arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// Send this text (possibly empty) and go on.
    More(String),
    /// A stop string was generated: send this text (what came before it) and finish.
    Stopped(String),
}

/// The completion text so far and how much of it was sent.
#[derive(Debug, Default)]
pub struct TextStream {
    stop: Vec<String>,
    sent: usize,
}

impl TextStream {
    /// `stop`: the request's stop strings (empty ones are ignored).
    pub fn new(stop: &[String]) -> Self {
        TextStream {
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            sent: 0,
        }
    }

    /// Given the whole decoded completion `text` (which only grows, apart from a trailing partial
    /// character that the decoder shows as U+FFFD), the next piece to send.
    pub fn update(&mut self, text: &str) -> Delta {
        // A trailing replacement character is usually half of a multi-byte character: wait.
        let stable = text.strip_suffix('\u{FFFD}').unwrap_or(text);
        let search_from = self.sent.min(stable.len());
        let first_stop = self
            .stop
            .iter()
            .filter_map(|s| {
                // A stop string may straddle what was already sent only if it was held back, so
                // searching from the sent boundary minus its length suffices.
                let from = floor_char_boundary(stable, search_from.saturating_sub(s.len()));
                stable[from..].find(s.as_str()).map(|i| from + i)
            })
            .min();
        if let Some(at) = first_stop {
            let delta = stable[self.sent.min(at)..at].to_string();
            self.sent = at;
            return Delta::Stopped(delta);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let held = self
            .stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| stable.ends_with(*prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let end = floor_char_boundary(stable, stable.len() - held).max(self.sent);
        let delta = stable[self.sent..end].to_string();
        self.sent = end;
        Delta::More(delta)
    }

    /// Text held back at the end of a completion that stopped for another reason (it was not a
    /// stop string after all).
    pub fn flush(&mut self, text: &str) -> String {
        let end = text.len();
        let rest = text.get(self.sent..end).unwrap_or("").to_string();
        self.sent = end;
        rest
    }
}

/// The largest char boundary at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after another (as growing text) and returns the deltas.
    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<Delta>, String) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut s = TextStream::new(&stop);
        let mut text = String::new();
        let mut out = Vec::new();
        for p in pieces {
            text.push_str(p);
            let d = s.update(&text);
            let stopped = matches!(d, Delta::Stopped(_));
            out.push(d);
            if stopped {
                return (out, String::new());
            }
        }
        let rest = s.flush(&text);
        (out, rest)
    }

    fn joined(deltas: &[Delta]) -> String {
        deltas
            .iter()
            .map(|d| match d {
                Delta::More(t) | Delta::Stopped(t) => t.as_str(),
            })
            .collect()
    }

    #[test]
    fn without_stop_strings_everything_is_sent_at_once() {
        let (d, rest) = run(&[], &["fn ", "main", "()"]);
        assert_eq!(d[1], Delta::More("main".into()));
        assert_eq!(joined(&d) + &rest, "fn main()");
    }

    #[test]
    fn a_stop_string_across_tokens_is_never_sent() {
        let (d, _) = run(&["\n}\n"], &["x + 1", "\n", "}", "\n", "more"]);
        assert_eq!(d.last().unwrap(), &Delta::Stopped(String::new()));
        assert_eq!(joined(&d), "x + 1");
        // Partial matches are held, then released when they turn out not to stop.
        let (d, rest) = run(&["\n}\n"], &["a", "\n", "}", "b"]);
        assert_eq!(d[1], Delta::More(String::new()));
        assert_eq!(joined(&d) + &rest, "a\n}b");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (d, _) = run(&["END", "fn"], &["let x = 1; fn f() END"]);
        assert_eq!(d, vec![Delta::Stopped("let x = 1; ".into())]);
    }

    #[test]
    fn incremental_decoding_gives_the_whole_decode() {
        let tokenizer =
            Tokenizer::from_json(&crate::tokenizer::byte_level_json(300)).expect("tokenizer");
        // Multi-byte characters split across tokens (one byte each), and an end-of-text token.
        let mut ids = tokenizer.encode("fn café() { \"日本\" } // ok ✓").unwrap();
        ids.insert(7, tokenizer.end_of_text());
        let mut detok = Detokenizer::default();
        let mut seen = Vec::new();
        for n in 1..=ids.len() {
            detok.update(&tokenizer, &ids[..n]).unwrap();
            let whole = tokenizer.decode(&ids[..n]).unwrap();
            assert!(whole.starts_with(detok.text()), "{n}: {:?}", detok.text());
            assert!(!detok.text().contains('\u{FFFD}'));
            seen.push(detok.text().len());
        }
        assert!(
            seen.windows(2).any(|w| w[0] == w[1]),
            "a split character waited"
        );
        let all = tokenizer.decode(&ids).unwrap();
        assert_eq!(detok.text(), all);
        assert_eq!(detok.finish(&tokenizer, &ids).unwrap(), all);
        // Ending inside a character: the partial one comes out as the whole decode shows it.
        let cut = &ids[..ids.len() - 1];
        let mut detok = Detokenizer::default();
        for n in 1..=cut.len() {
            detok.update(&tokenizer, &cut[..n]).unwrap();
        }
        assert_eq!(
            detok.finish(&tokenizer, cut).unwrap(),
            tokenizer.decode(cut).unwrap()
        );
    }

    #[test]
    fn partial_characters_wait_for_their_bytes() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.update("caf\u{FFFD}"), Delta::More("caf".into()));
        assert_eq!(s.update("café"), Delta::More("é".into()));
        let mut s = TextStream::new(&["é!".to_string()]);
        assert_eq!(s.update("aé"), Delta::More("a".into()));
        assert_eq!(s.update("aé!"), Delta::Stopped(String::new()));
    }
}
