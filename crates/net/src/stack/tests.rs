//! Frame-by-frame tests of the stack.
