//! Property and unit tests of the Guix signature module (filled in below).
