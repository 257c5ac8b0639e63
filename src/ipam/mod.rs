//! The pure allocator: pools, ranges, selectors, sharing. No I/O.
