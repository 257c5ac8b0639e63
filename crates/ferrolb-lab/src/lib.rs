#![forbid(unsafe_code)]
//! The ferrolb tooling: the `ferrolb` binary's offline commands (`plan`, `convert`), the
//! cluster commands `status` and `doctor` (also the `kubectl ferrolb` plugin), the
//! network-namespace lab (`ferrolb lab`), the namespace utility and the one test harness that
//! the lab and every root-only test use. The product itself is the `ferrolb` crate; the API
//! stand-in is `kube-standin`.

pub mod convert;
pub mod harness;
pub mod lab;
pub mod netns;
pub mod ops;
pub mod plan;
pub mod realapi;
pub mod wait;
pub mod wire;
