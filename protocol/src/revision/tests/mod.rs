//! Tests of revisions: the header ([`header`]), the manifest encoding ([`manifest`]), the builder
//! ([`builder`]).

mod builder;
mod header;
mod manifest;
