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
            seed = crate::report::clock::monotonic_ns() | 1;
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

    pub fn span_id(&self) -> Vec<u8> {
        let id = self.next().max(1);
        id.to_be_bytes().to_vec()
    }

    pub fn trace_id(&self) -> Vec<u8> {
        let (hi, lo) = (self.next(), self.next().max(1));
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&hi.to_be_bytes());
        id.extend_from_slice(&lo.to_be_bytes());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let g = IdGenerator::new();
        let a = g.trace_id();
        let b = g.trace_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert_eq!(g.span_id().len(), 8);
        assert!(g.span_id().iter().any(|&b| b != 0));
    }
}
