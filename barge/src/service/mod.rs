//! barge's services, each a [`crate::server::Handler`] on the shared server framework.

pub mod upload;
