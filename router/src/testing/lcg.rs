//! A tiny deterministic pseudo-random generator for test shapes (no dependency needed).

pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}
