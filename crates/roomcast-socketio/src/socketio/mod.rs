//! Socket.IO v5.
pub mod packet;
