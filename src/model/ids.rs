//! Trace and span IDs: random, never zero (W3C trace context), cheap to draw per span.
use std::cell::Cell;

/// xorshift64* seeded from the kernel's random source: IDs need uniqueness, not secrecy.
pub struct IdGenerator {
    state: Cell<u64>,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        let mut seed = 0u64;
        // SAFETY: getrandom writes at most 8 bytes into `seed`, which is 8 bytes long.
        let n = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
        if n != 8 || seed == 0 {
            seed = crate::model::clock::monotonic_ns() | 1;
        }
        IdGenerator {
            state: Cell::new(seed),
        }
    }

    fn next(&self) -> u64 {
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.next().max(1).to_be_bytes()
    }

    pub fn trace_id_bytes(&self) -> [u8; 16] {
        let (hi, lo) = (self.next(), self.next().max(1));
        (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let g = IdGenerator::new();
        let a = g.trace_id_bytes();
        let b = g.trace_id_bytes();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(g.span_id_bytes().iter().any(|&b| b != 0));
    }
}
