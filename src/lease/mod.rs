//! Client-go style leases: the pure `decide(observed, now) -> action` and the API calls around it.
