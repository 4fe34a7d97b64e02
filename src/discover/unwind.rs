//! Function bounds from `.eh_frame`, which every x86-64 build keeps for unwinding, the stripped
//! official images included: one FDE per function (and per cold part of one), with its start
//! and length. A call target derived from machine code (src/discover/derive.rs) must be where
//! one starts, and its code is read within that length and no further.
//!
//! The section is someone else's bytes: read with one bounded `pread`, parsed by gimli (not by
//! hand), and a parse error anywhere refuses every derivation in the file.
use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use std::ops::Range;

/// `.eh_frame` beyond this is not read (libpython's is about 400 KB).
pub const MAX_EH_FRAME_BYTES: usize = 8 << 20;
/// More entries (CIEs and FDEs) than this are refused (libpython has about 6,000).
const MAX_FUNCTIONS: usize = 500_000;
/// A function longer than this is not one (CPython's evaluation loop is about 100 KB).
const MAX_FUNCTION_LEN: u64 = 4 << 20;

/// The functions an `.eh_frame` describes, sorted by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Functions {
    ranges: Vec<Range<u64>>,
}

impl Functions {
    /// Parses `data`, the section loaded at `section_address`, in a file whose `.text` starts
    /// at `text_address` (the bases of pc-relative and text-relative pointers).
    pub fn parse(
        data: &[u8],
        section_address: u64,
        text_address: u64,
    ) -> Result<Functions, String> {
        if data.len() > MAX_EH_FRAME_BYTES {
            return Err(format!(".eh_frame of {} bytes is too large", data.len()));
        }
        let eh = EhFrame::new(data, LittleEndian);
        let bases = BaseAddresses::default()
            .set_eh_frame(section_address)
            .set_text(text_address);
        let mut entries = eh.entries(&bases);
        let mut ranges = Vec::new();
        // Each CIE parsed once: an FDE names its CIE by offset, and a CIE's augmentation string
        // is walked character by character, so re-parsing a long one for each of many FDEs
        // would cost the product of the two.
        let mut cies = std::collections::HashMap::new();
        let mut seen = 0usize;
        loop {
            let entry = entries.next().map_err(|e| format!(".eh_frame: {e}"))?;
            let Some(entry) = entry else { break };
            seen += 1;
            if seen > MAX_FUNCTIONS {
                return Err(format!(".eh_frame: more than {MAX_FUNCTIONS} entries"));
            }
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            let fde = partial
                .parse(|section, bases, offset| {
                    if let Some(cie) = cies.get(&offset) {
                        return Ok(Clone::clone(cie));
                    }
                    let cie = section.cie_from_offset(bases, offset)?;
                    cies.insert(offset, cie.clone());
                    Ok(cie)
                })
                .map_err(|e| format!(".eh_frame: {e}"))?;
            let (start, len) = (fde.initial_address(), fde.len());
            if len == 0 || len > MAX_FUNCTION_LEN {
                continue;
            }
            let end = start
                .checked_add(len)
                .ok_or(".eh_frame: a function past the address space")?;
            ranges.push(start..end);
        }
        ranges.sort_by_key(|r| r.start);
        Ok(Functions { ranges })
    }

    /// Functions given by their ranges (sorted here).
    #[cfg(test)]
    pub fn from_ranges(mut ranges: Vec<Range<u64>>) -> Functions {
        ranges.sort_by_key(|r| r.start);
        Functions { ranges }
    }

    /// The function starting exactly at `address`.
    pub fn starting_at(&self, address: u64) -> Option<Range<u64>> {
        let i = self.ranges.partition_point(|r| r.start < address);
        self.ranges.get(i).filter(|r| r.start == address).cloned()
    }

    /// Every function's range, by start.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_are_found_exactly() {
        let f = Functions {
            ranges: vec![0x10..0x20, 0x40..0x80],
        };
        assert_eq!(f.starting_at(0x40), Some(0x40..0x80));
        assert_eq!(f.starting_at(0x41), None);
        assert_eq!(f.starting_at(0x0), None);
        assert_eq!(f.starting_at(0x90), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes give an error or some functions, never a panic.
        #[test]
        fn arbitrary_sections_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Functions::parse(&bytes, 0x1000, 0x2000);
        }
    }
}
