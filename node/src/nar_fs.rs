//! NAR dump from and restore to the filesystem (the I/O side of `buildmesh_protocol::nar`).
