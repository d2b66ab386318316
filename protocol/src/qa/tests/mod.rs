//! Tests of the QA engine: small graphs checked by hand, properties over random graphs, and an
//! ignored benchmark at the scale of issue 13 item 10.

mod bench;
mod compare;
mod fixture;
mod history;
mod json;
mod props;
mod ready;
mod status;
mod weather;
