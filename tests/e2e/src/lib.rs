//! End-to-end tests; see tests/e2e/run.sh.
