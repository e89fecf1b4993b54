//! Black-box tests live in tests/tests; shared helpers in tests/tests/common.
