//! Cross-tool tests live in `tests/tests/`: each runs the release binaries of tools/ on real files
//! made in a temporary folder. This library is empty; the package exists to hold them.
