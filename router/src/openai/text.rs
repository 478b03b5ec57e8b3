//! OpenAI leaves the stop sequence out of the content (TGI keeps it). The generation pipeline
//! ends the request at a stop sequence and cuts the text at its end; this holds back any text
//! that could still become a stop sequence, so a stream never shows stop text it cannot take
//! back, and drops the stop sequence once it matched. Streamed and whole answers both go
//! through it, so they agree.

use crate::generation::FinishReason;
use crate::stop::StopSequenceMatcher;

#[derive(Debug, Clone)]
pub struct StopTextFilter {
    matcher: StopSequenceMatcher,
    /// Text received but not released yet (a possible start of a stop sequence).
    held: String,
}

impl StopTextFilter {
    pub fn new(stop_sequences: Vec<String>) -> Self {
        Self {
            matcher: StopSequenceMatcher::new(stop_sequences),
            held: String::new(),
        }
    }

    /// Takes the next piece of generated text (already cut at the end of a matched stop
    /// sequence) and returns what may be shown now; `finish` is set on the last piece.
    pub fn push(&mut self, piece: &str, finish: Option<FinishReason>) -> String {
        let hit = self.matcher.push(piece);
        self.held.push_str(piece);
        if let Some(hit) = hit {
            // The held text ends with the whole stop sequence (its start was held back).
            let keep = self.held.len().saturating_sub(hit.stop_len_bytes);
            self.held.truncate(keep);
            return std::mem::take(&mut self.held);
        }
        if finish.is_some() {
            return std::mem::take(&mut self.held);
        }
        let pending = self.matcher.pending_prefix_bytes().min(self.held.len());
        let release = self.held.len() - pending;
        let rest = self.held.split_off(release);
        std::mem::replace(&mut self.held, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds pieces as the pipeline would (cut at the end of the first stop match) and returns
    /// what each push released.
    fn run(stops: &[&str], pieces: &[&str]) -> Vec<String> {
        let mut filter = StopTextFilter::new(stops.iter().map(|stop| stop.to_string()).collect());
        let mut pipeline =
            StopSequenceMatcher::new(stops.iter().map(|stop| stop.to_string()).collect());
        let mut released = Vec::new();
        for (index, piece) in pieces.iter().enumerate() {
            let (piece, finish) = match pipeline.push(piece) {
                Some(hit) => (
                    &piece[..hit.piece_end_bytes],
                    Some(FinishReason::StopSequence),
                ),
                None if index + 1 == pieces.len() => (*piece, Some(FinishReason::Length)),
                None => (*piece, None),
            };
            released.push(filter.push(piece, finish));
            if finish.is_some() {
                break;
            }
        }
        released
    }

    #[test]
    fn stop_text_is_never_shown() {
        assert_eq!(
            run(&["Paris"], &["The capital is", " Pa", "r", "is", "."]),
            ["The capital is", " ", "", ""]
        );
        assert_eq!(
            run(&["\n\n"], &["Hello", " world.\n", "\nMore"]),
            ["Hello", " world.", ""]
        );
        // "l" could start "lo w" and is held back; the stop starts one byte later.
        assert_eq!(run(&["lo w"], &["Hel", "lo world"]), ["He", "l"]);
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_stop() {
        assert_eq!(
            run(&["Paris"], &["Pa", "ris", "ian"]),
            ["", ""],
            "stops at Paris"
        );
        assert_eq!(run(&["Paris"], &["Pa", "ul", "!"]), ["", "Paul", "!"]);
        assert_eq!(run(&["</a>"], &["x </", "b>", " y"]), ["x ", "</b>", " y"]);
    }

    #[test]
    fn end_of_generation_releases_everything_held() {
        assert_eq!(run(&["Paris"], &["in Pa"]), ["in Pa"]);
        assert_eq!(run(&[], &["a", "b"]), ["a", "b"]);
    }

    #[test]
    fn multi_byte_stop_sequences() {
        assert_eq!(
            run(&["日本"], &["こんにちは", "日", "本語"]),
            ["こんにちは", "", ""]
        );
        assert_eq!(
            run(&["日本"], &["こんにちは", "日", "曜"]),
            ["こんにちは", "", "日曜"]
        );
    }
}
