//! Stop sequences matched on generated text, across token boundaries.
//!
//! Text arrives in pieces (one per token). A stop sequence may straddle pieces ("Par" + "is")
//! or end inside a piece ("Paris." for stop "Paris"), so the matcher keeps the last
//! `longest stop - 1` bytes of text and searches the tail plus the new piece. It reports where
//! in the new piece the stop sequence ends: TGI keeps the stop text in `generated_text` (cut
//! there); OpenAI drops it (cut `stop_len_bytes` earlier).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopHit {
    /// Which of the request's stop sequences matched.
    pub sequence_index: usize,
    /// Bytes of the pushed piece up to and including the end of the stop sequence.
    pub piece_end_bytes: usize,
    /// Length of the matched stop sequence (it may start in earlier pieces).
    pub stop_len_bytes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct StopSequenceMatcher {
    stop_sequences: Vec<String>,
    /// Recent text, at most `longest stop - 1` bytes: enough to complete any match.
    tail: String,
    max_tail_bytes: usize,
}

impl StopSequenceMatcher {
    /// Empty sequences never match (validation refuses them).
    pub fn new(stop_sequences: Vec<String>) -> Self {
        let stop_sequences: Vec<String> = stop_sequences
            .into_iter()
            .filter(|stop| !stop.is_empty())
            .collect();
        let longest_bytes = stop_sequences.iter().map(String::len).max().unwrap_or(0);
        Self {
            stop_sequences,
            tail: String::new(),
            max_tail_bytes: longest_bytes.saturating_sub(1),
        }
    }

    /// Adds the next piece of text. Returns the earliest-ending match that ends inside this
    /// piece (ties go to the sequence listed first).
    pub fn push(&mut self, piece: &str) -> Option<StopHit> {
        if self.stop_sequences.is_empty() || piece.is_empty() {
            return None;
        }
        let piece_start = self.tail.len();
        self.tail.push_str(piece);
        let hit = self
            .stop_sequences
            .iter()
            .enumerate()
            .filter_map(|(index, stop)| {
                // Matches ending in the old tail were reported by an earlier push.
                self.tail
                    .match_indices(stop.as_str())
                    .map(|(start, _)| start + stop.len())
                    .find(|&end| end > piece_start)
                    .map(|end| (end, index, stop.len()))
            })
            .min_by_key(|&(end, index, _)| (end, index))
            .map(|(end, sequence_index, stop_len_bytes)| StopHit {
                sequence_index,
                piece_end_bytes: end - piece_start,
                stop_len_bytes,
            });
        self.keep_tail();
        hit
    }

    /// Bytes at the end of the text that could still become a stop sequence (the longest
    /// suffix that is a proper prefix of one). A streamer that must not show stop text holds
    /// these back.
    pub fn pending_prefix_bytes(&self) -> usize {
        self.stop_sequences
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&len| stop.is_char_boundary(len))
                    .find(|&len| self.tail.ends_with(&stop[..len]))
            })
            .max()
            .unwrap_or(0)
    }

    fn keep_tail(&mut self) {
        if self.tail.len() <= self.max_tail_bytes {
            return;
        }
        let mut cut = self.tail.len() - self.max_tail_bytes;
        while !self.tail.is_char_boundary(cut) {
            cut += 1;
        }
        self.tail.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopSequenceMatcher {
        StopSequenceMatcher::new(stops.iter().map(|stop| stop.to_string()).collect())
    }

    /// Pushes pieces until a hit; returns (index of the piece that hit, hit).
    fn first_hit(stops: &[&str], pieces: &[&str]) -> Option<(usize, StopHit)> {
        let mut matcher = matcher(stops);
        pieces
            .iter()
            .enumerate()
            .find_map(|(i, piece)| matcher.push(piece).map(|hit| (i, hit)))
    }

    #[test]
    fn matches_across_token_boundaries() {
        let (piece, hit) = first_hit(&["Paris"], &["The capital is", " Pa", "r", "is", "."])
            .expect("stop must match");
        assert_eq!(piece, 3);
        assert_eq!(
            hit,
            StopHit {
                sequence_index: 0,
                piece_end_bytes: 2,
                stop_len_bytes: 5
            }
        );
    }

    #[test]
    fn match_ending_inside_a_piece_reports_where_to_cut() {
        let (piece, hit) = first_hit(&["\n\n"], &["Hello", " world.\n", "\nMore"]).expect("hit");
        assert_eq!((piece, hit.piece_end_bytes), (2, 1));
        let (piece, hit) = first_hit(&["lo w"], &["Hel", "lo world"]).expect("hit");
        assert_eq!(piece, 1);
        assert_eq!(&"lo world"[..hit.piece_end_bytes], "lo w");
    }

    #[test]
    fn earliest_ending_stop_wins_then_listed_order() {
        let (_, hit) = first_hit(&["world", "lo"], &["Hello world"]).expect("hit");
        assert_eq!(hit.sequence_index, 1, "`lo` ends before `world`");
        let (_, hit) = first_hit(&["b", "ab"], &["xab"]).expect("hit");
        assert_eq!(hit.sequence_index, 0, "same end: the first listed wins");
    }

    #[test]
    fn no_false_match_and_bounded_tail() {
        let mut matcher = matcher(&["STOP"]);
        for _ in 0..1000 {
            for piece in ["ST", "Op", "S", "TO", "!", "STO", "p"] {
                assert_eq!(matcher.push(piece), None);
            }
        }
        assert!(matcher.tail.len() <= 3);
    }

    #[test]
    fn multi_byte_stop_sequences_and_text() {
        let (piece, hit) = first_hit(&["日本"], &["こんにちは", "日", "本語"]).expect("hit");
        assert_eq!(piece, 2);
        assert_eq!(&"本語"[..hit.piece_end_bytes], "本");
        // A tail cut must stay on a character boundary.
        let mut matcher = matcher(&["éé"]);
        assert_eq!(
            matcher.push("ééé日"),
            Some(StopHit {
                sequence_index: 0,
                piece_end_bytes: 4,
                stop_len_bytes: 4
            })
        );
        assert_eq!(matcher.push("é"), None);
    }

    #[test]
    fn pending_prefix_is_the_longest_possible_start_of_a_stop() {
        let mut matcher = matcher(&["</answer>", "##"]);
        matcher.push("the result </ans");
        assert_eq!(matcher.pending_prefix_bytes(), "</ans".len());
        matcher.push("x #");
        assert_eq!(matcher.pending_prefix_bytes(), 1);
        matcher.push("y");
        assert_eq!(matcher.pending_prefix_bytes(), 0);
    }

    #[test]
    fn empty_stop_sequences_never_match() {
        assert_eq!(first_hit(&[""], &["anything"]), None);
        assert_eq!(first_hit(&[], &["anything"]), None);
    }
}
